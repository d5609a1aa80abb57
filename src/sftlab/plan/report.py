"""The strategy comparison's outputs: compare.json, compare.md (a table) and compare.png (bars), written atomically."""

from __future__ import annotations

import io
from pathlib import Path

from sftlab.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from sftlab.plan.table import human_bytes


def metric_names(rows: list[dict]) -> list[str]:
    """Task metric names present in any row, in first-seen order."""
    names: list[str] = []
    for row in rows:
        names += [name for name in row["eval"] if name not in names and isinstance(row["eval"][name], (int, float))]
    return names


def _number(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def comparison_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    """Header and one row per strategy: trainable, peak memory, time, steps, time per step, final val loss, metrics."""
    rows = summary["rows"]
    names = metric_names(rows)
    headers = ["strategy", "trainable", "%", "peak memory", "train s", "steps", "s/step", "stopped", "val loss", *names]
    lines = [[row["kind"], f"{row['trainable']:,}", f"{100 * row['trainable'] / max(row['total'], 1):.2f}",
              human_bytes(row.get("peak_bytes")), f"{row['train_seconds']:.1f}", str(row["steps"]),
              f"{row['train_seconds'] / max(row['steps'], 1):.3f}", row["stopped"],
              _number(row["final_val_loss"]), *(_number(row["eval"].get(name)) for name in names)] for row in rows]
    return headers, lines


def markdown(summary: dict) -> str:
    """compare.md: what was compared, then the table as Markdown."""
    headers, lines = comparison_table(summary)
    budget = summary["budget"]
    unit = "optimizer steps" if budget["kind"] == "steps" else "seconds of training"
    table = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|",
             *("| " + " | ".join(line) + " |" for line in lines)]
    return "\n".join([f"# Strategy comparison: {summary['model']} ({summary['stage']})", "",
                      f"Same data, seed {summary['seed']} and budget ({budget['value']:g} {unit}) for every strategy; "
                      "validation metrics after the last step.", "", *table, ""])


def plot_png(summary: dict) -> bytes:
    """Three bar charts (trainable parameters, peak memory, final validation loss) as PNG bytes."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    kinds = [row["kind"] for row in rows]
    panels = [("trainable parameters", [row["trainable"] for row in rows]),
              ("peak memory (MiB)", [(row.get("peak_bytes") or 0) / 2**20 for row in rows]),
              ("final validation loss", [row["final_val_loss"] if row["final_val_loss"] is not None else math.nan
                                         for row in rows])]  # no validation split: no bar
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for axis, (title, values) in zip(axes, panels):
        axis.bar(kinds, values, color="#4c72b0")
        axis.set_title(title, fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def write_report(summary: dict, out_dir: Path) -> None:
    """Write compare.json, compare.md and compare.png into `out_dir`, each atomically, once all three are made."""
    text, image = markdown(summary), plot_png(summary)  # before any file: a failure leaves the earlier three
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "compare.json", summary)
    atomic_write_text(out_dir / "compare.md", text)
    atomic_write_bytes(out_dir / "compare.png", image)
