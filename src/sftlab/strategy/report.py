"""What a run trained: `trainable.json` always, and for strategy.kind=auto the importance report.

    write_trainable_report(trainable, out_dir, batches_per_epoch)
        OUT/trainable.json     kind, trainable / total parameters, the notes of the trainable log line (tied
                               weights, the head), the trainable parameters' names (tied ones once, under the name
                               `model.named_parameters()` gives first), the settings (freeze: layers, globs, head; lora:
                               rank, alpha, targets), and (auto) every unit's score, size, chosen flag, the budget, the
                               scoring time and how many batches it used against one epoch
        OUT/importance.png     (auto) bar chart of the highest-scoring units, chosen ones highlighted
    importance_table(details)  the Markdown table the model card shows
"""

from __future__ import annotations

from pathlib import Path

from sftlab.io import atomic_write_json

SHOWN_UNITS = 30


def write_trainable_report(trainable, out_dir: Path, batches_per_epoch: int | None = None) -> list[Path]:
    """Write trainable.json (and importance.png for auto); returns the paths written."""
    report = {"kind": trainable.kind, "trainable": trainable.trainable, "total": trainable.total,
              "percent": round(100.0 * trainable.trainable / max(trainable.total, 1), 4),
              "notes": list(trainable.notes), "names": list(trainable.names)}
    details = dict(trainable.details or {})
    written = []
    if "units" in details:
        details["batches_per_epoch"] = batches_per_epoch
        report["importance"] = details
        written.append(plot_importance(details, Path(out_dir) / "importance.png"))
    elif details:
        report["settings"] = details  # freeze: the layers, globs and head; lora: rank, alpha, targets
    written.insert(0, atomic_write_json(Path(out_dir) / "trainable.json", report))
    return written


def plot_importance(details: dict, path: Path) -> Path:
    """Horizontal bars of the top units' normalised scores; chosen units in colour, the rest grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = sorted(details["units"], key=lambda u: -u["score"])[:SHOWN_UNITS]
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(units) + 1.4))
    ax.barh(range(len(units)), [u["score"] for u in units],
            color=["tab:orange" if u["chosen"] else "lightgrey" for u in units])
    ax.set_yticks(range(len(units)), [u["name"] for u in units], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"{details['score']} importance per parameter")
    ax.set_title(f"top {len(units)} of {len(details['units'])} {details['granularity']} units "
                 f"(orange: trained, {details['chosen_params']:,} of {details['budget_params']:,} budget)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


def importance_table(details: dict, limit: int = SHOWN_UNITS) -> list[str]:
    """Markdown lines: budget, scoring cost, then the top units with score, size and whether they train."""
    per_epoch = details.get("batches_per_epoch")
    cost = f"{details['batches']} calibration batches" + (f" (one epoch is {per_epoch})" if per_epoch else "")
    lines = [f"Importance ({details['score']}, per {details['granularity']} unit) scored in {details['seconds']} s on "
             f"{cost}; budget {details['budget_params']:,} parameters, {details['chosen_params']:,} chosen.", "",
             "| unit | score | parameters | trained |", "| --- | --- | --- | --- |"]
    for unit in sorted(details["units"], key=lambda u: -u["score"])[:limit]:
        lines.append(f"| {unit['name']} | {unit['score']:.3g} | {unit['size']:,} | {'yes' if unit['chosen'] else 'no'} |")
    if len(details["units"]) > limit:
        lines.append(f"\n{len(details['units']) - limit} lower-scoring units are listed in `trainable.json`.")
    return lines
