"""Reading a run directory for `sftlab report` and the board: metrics rows, JSON records, config, model card.

    run = load_run(Path("runs/a"))                          # RunData
    rows = read_metrics_rows(Path("runs/a/metrics.jsonl"))  # [] when the file is not there

A broken file is a one-line SftlabError naming it (and the line, and the field): text that is not UTF-8, a line
that is not JSON, a row that is not a JSON object or has no whole-number `step`, a record that is not a JSON
object. The one exception is the last line of `metrics.jsonl` when it has no newline yet: training appends one
row at a time, so while a run is in progress (or after it was killed mid-write) that line may be cut short, and
it is skipped rather than refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sftlab.errors import SftlabError
from sftlab.io import read_json, read_text
from sftlab.train.runlog import read_metrics_rows  # noqa: F401  (the reader lives beside the writer)


@dataclass
class RunData:
    """Everything a report shows about one run."""

    name: str
    path: Path
    train_rows: list[dict] = field(default_factory=list)
    eval_rows: list[dict] = field(default_factory=list)
    final: dict = field(default_factory=dict)
    config_text: str = ""
    extras: dict[str, dict] = field(default_factory=dict)  # data_stats, trainable, eval results
    eval_images: list[Path] = field(default_factory=list)  # PNGs of `sftlab eval` results in the run
    per_class: dict[str, dict] = field(default_factory=dict)  # eval dir name -> {label: {precision, recall, ...}}


def read_object(path: Path) -> dict:
    """The JSON object in `path`; a one-line SftlabError when it is not valid JSON or not an object."""
    value = read_json(path)
    if not isinstance(value, dict):
        raise SftlabError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def final_is_current(final: dict, train_rows: list[dict]) -> bool:
    """Whether `metrics.json` describes the run's latest training: a run resumed to train further (`--resume
    train.max_steps=N`) keeps the previous end's metrics.json until it ends again, while its rows go past that step."""
    step = final.get("step")
    return not (isinstance(step, int) and train_rows and train_rows[-1]["step"] > step)


def card_section(card: Path, heading: str) -> str:
    """The text of one `## ...` section of a model card ('' when the card or the section is missing)."""
    if not Path(card).is_file():
        return ""
    lines, inside = [], False
    for line in Path(card).read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("## "):
            inside = line.strip() == heading
            continue
        if inside:
            lines.append(line)
    return "\n".join(lines).strip()


def card_bullets(card: Path, heading: str) -> str:
    """The bullet lines of one model-card section, joined with '; ' (the report's trainable-parameter summary)."""
    return "; ".join(line.strip().lstrip("- ") for line in card_section(card, heading).splitlines() if line.strip())


def _eval_results(run: RunData, run_dir: Path) -> None:
    """`sftlab eval` results saved in `RUN/eval*/`: summary, per-class table (label tasks) and PNGs."""
    for result in sorted(run_dir.glob("eval*/metrics.json")):
        summary = read_object(result)
        metrics = summary.get("metrics") if isinstance(summary.get("metrics"), dict) else {}
        run.extras[f"sftlab eval: {result.parent.name}"] = {
            "task": summary.get("task"), "data": summary.get("data"), "metrics": metrics,
            "baselines": summary.get("baselines") if isinstance(summary.get("baselines"), dict) else {}}
        if isinstance(metrics.get("per_class"), dict) and metrics["per_class"]:
            run.per_class[result.parent.name] = metrics["per_class"]
        run.eval_images += sorted(result.parent.glob("*.png"))


def load_run(run_dir: Path, name: str | None = None) -> RunData:
    """Read a run directory; it needs at least `metrics.jsonl` or `metrics.json`."""
    run_dir = Path(run_dir)
    log, final_file = run_dir / "metrics.jsonl", run_dir / "metrics.json"
    if not run_dir.is_dir():
        if run_dir.exists():
            raise SftlabError(f"{run_dir}: a file, not a run directory")
        raise SftlabError(f"run directory not found: {run_dir}")
    if not log.is_file() and not final_file.is_file():
        raise SftlabError(f"{run_dir}: not a run directory (no metrics.jsonl or metrics.json)")
    run = RunData(name=name or run_dir.resolve().name, path=run_dir)
    for row in read_metrics_rows(log):
        (run.eval_rows if row.get("eval") else run.train_rows).append(row)
    if final_file.is_file():
        run.final = read_object(final_file)
    if (run_dir / "config.yaml").is_file():
        run.config_text = read_text(run_dir / "config.yaml")
    for extra in ("data_stats", "trainable"):
        if (run_dir / f"{extra}.json").is_file():
            run.extras[extra] = read_object(run_dir / f"{extra}.json")
    if "trainable" not in run.extras and (run_dir / "model" / "README.md").is_file():
        strategy = card_bullets(run_dir / "model" / "README.md", "## Strategy")
        if strategy:
            run.extras["trainable"] = {"strategy": strategy}
    _eval_results(run, run_dir)
    return run
