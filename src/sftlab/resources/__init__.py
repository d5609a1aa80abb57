"""Data files shipped with sftlab (read with importlib.resources): demo data, refusal patterns, question templates, synonyms."""
