"""Strategy planning: memory estimates, measured probe steps, recommendations and strategy comparisons."""
