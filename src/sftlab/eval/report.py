"""Run reports (`report.html` + PNGs, viewable offline) and the plots of `sftlab eval`.

    write_report([Path("runs/a"), Path("runs/b")], Path("runs/compare"))   # side by side

A run directory is what training writes: `metrics.jsonl` (step rows with loss, lr, tokens_per_s; eval
rows with `"eval": true`), `metrics.json` (final metrics), `config.yaml` (resolved config) and, when
present, `data_stats.json` and `trainable.json` (else the Strategy lines of `model/README.md`); `sftlab
eval` results in `eval*/` below the run (metrics.json, per-label table and its PNGs) are shown too. Reading
and checking them is `sftlab.eval.report_data`. The report has loss curves (training and validation), learning
rate, tokens/s, the chosen validation metrics over time, final metrics, trainable parameters, data statistics
and the resolved config. PNGs are drawn into a temporary directory that replaces `plots/` whole, then
report.html is written atomically; the PNGs are also embedded in the HTML as data URIs (no internet assets).
Numbers are shown with 6 significant digits (`format_number`).
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from sftlab.errors import SftlabError
from sftlab.eval.report_data import RunData, final_is_current, load_run
from sftlab.io import atomic_dir, atomic_write_bytes, atomic_write_text, check_output_dir

_TRAIN_CURVES = (("lr", "learning rate"), ("tokens_per_s", "tokens/s"))
_OWN_TABLES = ("per_class", "confusion")  # shown as their own table / the confusion-matrix PNG, not flattened
_HEADLINE = ("accuracy", "macro_f1", "auc", "exact_match", "bleu", "rouge_l", "mrr", "perplexity")


def format_number(value) -> str:
    """How a number appears in the report: ints as is, floats with 6 significant digits."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return str(value) if isinstance(value, int) else f"{value:.6g}"


# ------------------------------------------------------------------------------------------------ plots


def _figure(title: str, xlabel: str = "step", ylabel: str = ""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=80)
    fig.subplots_adjust(left=0.12, right=0.97, top=0.9, bottom=0.15)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def save_png(fig, path: Path, tight: bool = False) -> bytes:
    """Render `fig` to PNG, write it atomically to `path`, close it and return the bytes."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight" if tight else None)
    plt.close(fig)
    data = buffer.getvalue()
    atomic_write_bytes(path, data)
    return data


def _legend_and_save(fig, ax, path: Path) -> bytes:
    ax.legend(fontsize=8)
    return save_png(fig, path)


def _discard(fig) -> None:
    """Close a figure with nothing drawn on it (no PNG is written)."""
    import matplotlib.pyplot as plt

    plt.close(fig)
    return None


def plot_curves(runs: list[RunData], key: str, title: str, rows: str, path: Path) -> bytes | None:
    """One line per run of `key` over steps from its train or eval rows; None when no run has it."""
    fig, ax = _figure(title, ylabel=key)
    drawn = False
    for run in runs:
        points = [(r["step"], r[key]) for r in getattr(run, rows) if isinstance(r.get(key), (int, float)) and "step" in r]
        if points:
            ax.plot(*zip(*points), marker="o" if len(points) < 20 else None, markersize=3, label=run.name)
            drawn = True
    return _legend_and_save(fig, ax, path) if drawn else _discard(fig)


def run_stage(run: RunData) -> str | None:
    """The run's `train.stage` (pt, sft, cls) from its config.yaml; None when it cannot be read."""
    import yaml

    try:
        raw = yaml.safe_load(run.config_text) if run.config_text else None
    except yaml.YAMLError:
        return None
    train = raw.get("train") if isinstance(raw, dict) else None
    return str(train["stage"]) if isinstance(train, dict) and train.get("stage") else None


def plot_loss(runs: list[RunData], path: Path, title: str = "loss") -> bytes | None:
    """Training loss (solid) and validation loss (dashed, markers) of every run."""
    fig, ax = _figure(title, ylabel="loss")
    drawn = False
    for run in runs:
        train = [(r["step"], r["loss"]) for r in run.train_rows if isinstance(r.get("loss"), (int, float))]
        val = [(r["step"], r["loss"]) for r in run.eval_rows if isinstance(r.get("loss"), (int, float))]
        if train:
            line, = ax.plot(*zip(*train), label=f"{run.name} train")
            drawn = True
        if val:
            ax.plot(*zip(*val), linestyle="--", marker="o", markersize=3, label=f"{run.name} validation",
                    color=line.get_color() if train else None)
            drawn = True
    return _legend_and_save(fig, ax, path) if drawn else _discard(fig)


def plot_confusion(confusion: dict, path: Path, title: str = "confusion matrix") -> bytes:
    """Heat map of a confusion matrix (rows: true labels, columns: predicted, last column unparseable)."""
    fig, ax = _figure(title, xlabel="predicted", ylabel="true")
    matrix = confusion["matrix"]
    size = max(4.0, 0.6 * len(confusion["predicted"]) + 2)
    fig.set_size_inches(size + 1, size)
    ax.grid(False)
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(confusion["predicted"])), confusion["predicted"], rotation=45, ha="right")
    ax.set_yticks(range(len(confusion["true"])), confusion["true"])
    top = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > top / 2 else "black")
    fig.colorbar(image, ax=ax)
    return save_png(fig, path, tight=True)


def plot_pr_curve(result: dict, path: Path) -> bytes:
    """Precision-recall curve of a two-label result, with the chosen (best-F1) threshold marked."""
    fig, ax = _figure(f"precision-recall ({result['positive']} positive)", xlabel="recall", ylabel="precision")
    curve = result["pr_curve"]
    ax.plot(curve["recall"], curve["precision"], label=f"AP={result['average_precision']:.3f}")
    ax.scatter([result["threshold_recall"]], [result["threshold_precision"]], color="red", zorder=3,
               label=f"threshold {result['threshold']:.3g} (F1={result['threshold_f1']:.3f})")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    return save_png(fig, path)


# ------------------------------------------------------------------------------------------------- html

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}th{background:#f3f3f3}
.row{display:flex;flex-wrap:wrap;gap:1em}.row>div{flex:1;min-width:320px}
pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:12px}img{max-width:100%;border:1px solid #eee}"""


def _cell(run: str, key: str, value) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'<td class="num" data-run="{html.escape(run)}" data-metric="{html.escape(key)}">{format_number(value)}</td>'
    if isinstance(value, (dict, list)):
        return f"<td><code>{html.escape(json.dumps(value, ensure_ascii=False)[:300])}</code></td>"
    return f"<td>{html.escape('' if value is None else str(value))}</td>"


def metrics_table(columns: list[tuple[str, dict]], section: str = "") -> str:
    """A table of the non-nested entries of several dicts: one row per key, one column per run."""
    keys: list[str] = []
    for _, values in columns:
        keys += [k for k, v in values.items() if not isinstance(v, (dict, list)) and k not in keys]
    if not keys:
        return ""
    head = "".join(f"<th>{html.escape(name)}</th>" for name, _ in columns)
    body = "".join(f"<tr><th>{html.escape(key)}</th>" + "".join(_cell(f"{section}{name}", key, values.get(key))
                                                                 for name, values in columns) + "</tr>"
                   for key in keys)
    return f"<table><tr><th></th>{head}</tr>{body}</table>"


def _image(title: str, data: bytes, file_name: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return (f'<div><h3>{html.escape(title)}</h3><img alt="{html.escape(title)}" src="data:image/png;base64,{encoded}">'
            f'<br><small>plots/{html.escape(file_name)}</small></div>')


def _loss_images(runs: list[RunData], plot_dir: Path) -> list[str]:
    """One loss plot, or one per stage when the runs' stages differ: a classifier's cross-entropy over its labels
    and a language model's over its vocabulary are different quantities, so they never share axes."""
    by_stage: dict[str, list[RunData]] = {}
    for run in runs:
        by_stage.setdefault(run_stage(run) or "unknown", []).append(run)
    groups = [("", "", runs)] if len(by_stage) == 1 else [
        (f"_{_file_safe(stage)}", f", {stage} runs", group) for stage, group in by_stage.items()]
    images = []
    for suffix, which, group in groups:
        data = plot_loss(group, plot_dir / f"loss{suffix}.png", f"loss{which}")
        if data:
            images.append(_image(f"training and validation loss{which}", data, f"loss{suffix}.png"))
    return images


def _plots(runs: list[RunData], plot_dir: Path) -> list[str]:
    images = _loss_images(runs, plot_dir)
    for key, title in _TRAIN_CURVES:
        data = plot_curves(runs, key, title, "train_rows", plot_dir / f"{key}.png")
        if data:
            images.append(_image(title, data, f"{key}.png"))
    for key in chosen_eval_metrics(runs):
        safe = _file_safe(key)
        data = plot_curves(runs, key, f"validation {key}", "eval_rows", plot_dir / f"eval_{safe}.png")
        if data:
            images.append(_image(f"validation {key}", data, f"eval_{safe}.png"))
    return images


def _file_safe(text: str) -> str:
    """`text` usable in a PNG's file name: letters, digits, '_' and '-' kept, anything else '_'."""
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in text)


def run_state(run: RunData) -> str:
    """How the run ended (`stopped` of metrics.json), or that it has not finished and where it can resume from."""
    current = final_is_current(run.final, run.train_rows)
    if run.final and current:
        return f"stopped: {run.final['stopped']}" if run.final.get("stopped", "completed") != "completed" else "completed"
    from sftlab.checkpoints import list_checkpoints  # complete ones: what --resume would start from

    steps = [step for step, _ in list_checkpoints(run.path)]
    where = f"; latest checkpoint step-{max(steps)}" if steps else ""
    final = "no metrics.json" if current else f"its metrics.json is of an earlier end, at step {run.final['step']}"
    return f"not finished (in progress, stopped or failed: {final}{where})"


def chosen_eval_metrics(runs: list[RunData], limit: int = 6) -> list[str]:
    """Validation metrics plotted over time: each run's `eval.metric`, then headline metrics present."""
    import yaml

    chosen: list[str] = []
    for run in runs:
        try:
            metric = ((yaml.safe_load(run.config_text) or {}).get("eval") or {}).get("metric")
        except (yaml.YAMLError, AttributeError):
            metric = None
        if isinstance(metric, str) and metric != "loss" and metric not in chosen:
            chosen.append(metric)
    present = {k for run in runs for r in run.eval_rows for k, v in r.items() if isinstance(v, (int, float))}
    ndcg = sorted((k for k in present if k.startswith("ndcg@")), key=lambda k: int(k.split("@")[1]) if k[5:].isdigit() else 0)
    for key in list(_HEADLINE) + ndcg[:1]:
        if key in present and key not in chosen:
            chosen.append(key)
    return [key for key in chosen if key in present][:limit]


def _details(runs: list[RunData]) -> list[str]:
    """Tables for the nested parts: trainable parameters, data statistics, eval results, nested final metrics."""
    parts = []
    sections = sorted({key for run in runs for key in run.extras}
                      | {key for run in runs for key, value in run.final.items() if isinstance(value, dict)})
    for section in sections:
        columns = [(run.name, run.extras.get(section) or run.final.get(section) or {}) for run in runs]
        columns = [(name, _flatten(values)) for name, values in columns]
        table = metrics_table(columns, section=f"{section}/")
        if table:
            parts.append(f"<h2>{html.escape(section.replace('_', ' '))}</h2>{table}")
        parts += _per_class_tables(runs, section.removeprefix("sftlab eval: "))
    return parts


def _per_class_tables(runs: list[RunData], eval_dir: str) -> list[str]:
    """Per-label precision, recall, F1 and support of the `sftlab eval` result in `eval_dir` of each run."""
    parts = []
    for run in runs:
        per_class = run.per_class.get(eval_dir)
        if not per_class:
            continue
        keys = [key for key in ("precision", "recall", "f1", "support")
                if any(isinstance(v, dict) and key in v for v in per_class.values())]
        where = f"per_class/{run.name}/{eval_dir}"
        body = "".join(f"<tr><th>{html.escape(str(label))}</th>" + "".join(
            _cell(where, f"{label}.{key}", values.get(key) if isinstance(values, dict) else None) for key in keys)
            + "</tr>" for label, values in per_class.items())
        head = "".join(f"<th>{key}</th>" for key in keys)
        parts.append(f"<h3>{html.escape(run.name)}: {html.escape(eval_dir)}, per label</h3>"
                     f"<table><tr><th>label</th>{head}</tr>{body}</table>")
    return parts


def _eval_images(runs: list[RunData]) -> list[str]:
    parts = []
    for run in runs:
        for png in run.eval_images:
            title = f"{run.name}: {png.parent.name}/{png.name}"
            encoded = base64.b64encode(png.read_bytes()).decode("ascii")
            parts.append(f'<div><h3>{html.escape(title)}</h3><img alt="{html.escape(title)}" '
                         f'src="data:image/png;base64,{encoded}"></div>')
    return ["<h2>evaluation plots</h2><div class='row'>", *parts, "</div>"] if parts else []


def _flatten(values: dict, prefix: str = "", depth: int = 0) -> dict:
    out = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key in _OWN_TABLES and depth > 0:  # a label result's per-label values and confusion matrix
            continue
        if isinstance(value, dict) and depth < 2:
            out.update(_flatten(value, f"{name}.", depth + 1))
        else:
            out[name] = value
    return out


def render_html(runs: list[RunData], plot_dir: Path) -> str:
    """The whole report page for `runs` (writes its PNGs into `plot_dir`)."""
    title = "sftlab report: " + ", ".join(run.name for run in runs)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1><ul>",
             *[f"<li><b>{html.escape(r.name)}</b>: {html.escape(str(r.path))} ({len(r.train_rows)} logged steps, "
               f"{len(r.eval_rows)} evaluations; {html.escape(run_state(r))})</li>" for r in runs], "</ul>",
             "<h2>final metrics</h2>", metrics_table([(run.name, run.final) for run in runs], section="final/")
             or "<p>no metrics.json</p>",
             "<h2>curves</h2><div class='row'>", *_plots(runs, plot_dir), "</div>", *_details(runs),
             *_eval_images(runs),
             "<h2>resolved config</h2><div class='row'>",
             *[f"<div><h3>{html.escape(r.name)}</h3><pre>{html.escape(r.config_text or '(no config.yaml)')}</pre></div>"
               for r in runs], "</div></body></html>"]
    return "\n".join(parts)


def _unique_names(run_dirs: list[Path]) -> list[str]:
    """Each run's directory name, with as many parent names as it takes to tell runs apart; a run given twice is an
    error (its curves would be drawn on top of each other under one label)."""
    paths = [Path(d).resolve() for d in run_dirs]
    for index, path in enumerate(paths):
        if path in paths[:index]:
            raise SftlabError(f"{run_dirs[index]}: the same run directory is given twice "
                              f"(as {run_dirs[paths.index(path)]} too); give each run once")
    depth = [1] * len(paths)
    while True:
        names = ["/".join(path.parts[-size:]).lstrip("/") for path, size in zip(paths, depth)]
        clashes = [i for i, name in enumerate(names) if names.count(name) > 1 and depth[i] < len(paths[i].parts)]
        if not clashes:
            return names
        for i in clashes:
            depth[i] += 1


def check_out_dir(out_dir: Path) -> None:
    """Refuse, before any work, an output directory that is (or lies under) a file, or whose report.html path is a
    directory (a `plots` path that is a file is refused by `atomic_dir`, before any PNG is drawn)."""
    check_output_dir(out_dir, overwrite=True)
    if (Path(out_dir) / "report.html").is_dir():
        raise SftlabError(f"{Path(out_dir) / 'report.html'} is a directory; the report is written to that path")


def write_report(run_dirs: list[Path], out_dir: Path) -> Path:
    """Write `out_dir/report.html` and `out_dir/plots/*.png` for one run or several side by side.

    Every input is read and checked first, then the output path; the PNGs are drawn into a temporary directory that then replaces
    `plots/` whole (so no PNG of an earlier report stays behind), and report.html is written last, atomically."""
    runs = [load_run(Path(d), name) for d, name in zip(run_dirs, _unique_names(run_dirs))]
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    with atomic_dir(out_dir / "plots", overwrite=True) as plot_dir:
        page = render_html(runs, plot_dir)
    return atomic_write_text(out_dir / "report.html", page)
