"""Plain-text rendering of a plan: the data summary, the run's steps, the strategy table, the run time and the
recommendation."""

from __future__ import annotations

from sftlab.plan.runtime import steps_line, time_lines


def human_bytes(value: float | None) -> str:
    """1536 -> '1.5 KiB'; None -> '-'."""
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """Left-aligned first column, right-aligned others, columns sized to their widest cell."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    def line(cells):
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def strategy_rows(plan: dict) -> tuple[list[str], list[list[str]]]:
    """Header and one row per strategy: trainable, memory parts, fit, measured step and peak."""
    headers = ["strategy", "trainable", "%", "weights", "grads", "optim", "activ", "est. peak", "fits"]
    probed = any("probe" in row for row in plan["rows"].values())
    checked = any("estimate_error" in row.get("probe", {}) for row in plan["rows"].values())
    if probed:
        headers += ["s/step", "measured peak"]
    if checked:
        headers.append("est. error")
    lines = []
    for kind, row in plan["rows"].items():
        est = row["estimate"]
        count = f"{'~' if row['approximate'] else ''}{row['trainable']:,}"
        name = f"{kind} (4-bit)" if row.get("four_bit") else kind  # QLoRA: the base's linear weights in 4-bit
        cells = [name, count, f"{100 * row['trainable'] / max(row['total'], 1):.2f}", human_bytes(est["weights"]),
                 human_bytes(est["gradients"]), human_bytes(est["optimizer"]), human_bytes(est["activations"]),
                 human_bytes(est["total"]), "yes" if row["fits"] else "no"]
        probe = row.get("probe", {})
        if probed:
            cells += [f"{probe['step_seconds']:.3f}" if probe else "-", human_bytes(probe.get("peak_bytes"))]
        if checked:
            error = probe.get("estimate_error")
            cells.append(f"{100 * error:+.1f}%" if error is not None else "-")
        lines.append(cells)
    return headers, lines


def render_plan(plan: dict) -> str:
    """The text `sftlab plan` prints."""
    data, work, memory = plan["data"], plan["workload"], plan["memory"]
    parts = [f"model {plan['model']} (stage {plan['stage']})",
             f"data: {data['examples']:,} training examples, {data['validation_examples']:,} validation; "
             f"{data['tokens']:,} tokens; {data['supervised']:,} supervised {data['supervised_unit']}, "
             f"{data['supervised_per_parameter']:.4g} per model parameter"]
    if data.get("label_distribution"):
        parts.append("labels: " + ", ".join(f"{k} {v}" for k, v in data["label_distribution"].items()))
    run = plan.get("run")  # absent from plans made before the run length was part of them
    parts += [steps_line(run)] if run else []
    where = "; ".join(part for part in (memory["device"], memory.get("limit")) if part)
    parts.append(f"memory available: {human_bytes(memory['bytes'])} ({where}); estimates for the "
                 f"worst micro-batch: {work['batch']} rows x {work['seq']} tokens, {work['supervised']} supervised")
    parts += [plan[key] for key in ("caveat", "precision_warning") if plan.get(key)]
    headers, lines = strategy_rows(plan)
    parts += ["", format_table(headers, lines), "", *(time_lines(plan) if run else [])]
    per = [f"{kind} {row['supervised_per_trainable']:.3g}" for kind, row in plan["rows"].items()]
    parts.append(f"supervised {data['supervised_unit']} per trainable parameter: " + ", ".join(per))
    advice = plan["recommendation"]
    settings = " ".join(f"{key}={str(value).lower()}" for key, value in advice.get("settings", {}).items())
    parts.append(f"recommendation: {advice['kind'] or 'none'}" + (f" with {settings}" if settings else ""))
    parts += [f"  - {reason}" for reason in advice["reasons"]]
    return "\n".join(parts)
