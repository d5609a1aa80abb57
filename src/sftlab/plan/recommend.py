"""The planner's recommendation: full, freeze, auto or lora, with its reasons in plain words.

The rule (thresholds in `thresholds.yaml`, overridable with `sftlab plan --thresholds FILE`):

1. Much task data (supervised tokens per model parameter >= `full_min_tokens_per_param`), full
   fine-tuning fits in memory and the general knowledge need not be kept -> **full**. For
   classification the unit is the training example and the `cls_*` thresholds apply.
2. Otherwise (little data, `keep_general_knowledge: true`, or full does not fit) -> a partial strategy
   among freeze / auto / lora that fits: the one with the most trainable parameters that the data can
   still support (supervised tokens per trainable parameter >= `partial_min_tokens_per_param`), else
   the one with the fewest trainable parameters.
3. No partial strategy fits, but lora would with its base in 4-bit (the lora row's `qlora` estimate, when the
   config does not already set strategy.lora.quantize_4bit) -> **lora** with `strategy.lora.quantize_4bit=true`
   (QLoRA), named in the recommendation's `settings`.
4. No partial strategy fits or none was planned, but full fits -> **full** (with `keep_general_knowledge`: no
   recommendation, kind None).
5. Nothing fits -> the strategy with the smallest estimated peak, with the advice to lower
   train.batch_size / train.max_length or turn on train.gradient_checkpointing.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml

from sftlab.errors import SftlabError
from sftlab.io import read_yaml_mapping

PARTIAL = ("freeze", "auto", "lora")


def load_thresholds(path: str | Path | None = None) -> dict:
    """The packaged thresholds, updated with those in `path` (unknown keys and wrong types fail)."""
    defaults = yaml.safe_load(resources.files("sftlab.plan").joinpath("thresholds.yaml").read_text(encoding="utf-8"))
    if path is None:
        return defaults
    path = Path(path)
    if not path.is_file():
        raise SftlabError(f"--thresholds {path}: file not found")
    given = read_yaml_mapping(path, "a mapping of threshold names to values")
    for key, value in given.items():
        if key not in defaults:
            raise SftlabError(f"{path}: unknown threshold {key!r}; known: {', '.join(defaults)}")
        expected = type(defaults[key])
        if expected is bool and not isinstance(value, bool) or expected is not bool and (
                isinstance(value, bool) or not isinstance(value, (int, float))):
            raise SftlabError(f"{path}: {key} must be {'true/false' if expected is bool else 'a number'}, got {value!r}")
        _check_range(path, key, value)
    return {**defaults, **given}


SHARES = ("memory_headroom", "freeze_last_fraction")  # shares of the memory or of the blocks: (0, 1]


def _check_range(path: Path, key: str, value) -> None:
    """Shares must lie in (0, 1], the minimum ratios be finite and 0 or more (NaN is neither)."""
    if isinstance(value, bool):
        return
    if key in SHARES and not 0 < value <= 1:
        raise SftlabError(f"{path}: {key} must be above 0 and at most 1 (a share), got {value!r}")
    if key not in SHARES and not 0 <= value < float("inf"):
        raise SftlabError(f"{path}: {key} must be 0 or more (a finite number), got {value!r}")


def data_thresholds(thresholds: dict, stage: str) -> tuple[float, float, str]:
    """(full minimum, partial minimum, unit word) for the stage: tokens for pt/sft, examples for cls."""
    if stage == "cls":
        return (thresholds["cls_full_min_examples_per_param"], thresholds["cls_partial_min_examples_per_param"],
                "training examples")
    return thresholds["full_min_tokens_per_param"], thresholds["partial_min_tokens_per_param"], "supervised tokens"


def recommend(rows: dict[str, dict], supervised: int, total_params: int, thresholds: dict, stage: str = "sft") -> dict:
    """Pick a strategy from the plan rows ({kind: {trainable, fits, estimate: {total}}}); return {kind, reasons}.

    `supervised` counts supervised tokens (pt/sft) or training examples (cls)."""
    full_minimum, minimum, unit = data_thresholds(thresholds, stage)
    ratio = supervised / max(total_params, 1)
    much_data = ratio >= full_minimum
    data_words = (f"{supervised:,} {unit} for {total_params:,} parameters "
                  f"({ratio:.3g} per parameter; 'much data' starts at {full_minimum:g})")
    full = rows.get("full")
    if full and full["fits"] and much_data and not thresholds["keep_general_knowledge"]:
        return {"kind": "full", "reasons": [f"much task data: {data_words}",
                                            "full fine-tuning fits in the available memory"]}
    reasons = []
    if not much_data:
        reasons.append(f"little task data: {data_words}")
    if thresholds["keep_general_knowledge"]:
        reasons.append("keep_general_knowledge is set: change as few weights as possible")
    if full and not full["fits"]:
        reasons.append("full fine-tuning does not fit in the available memory")
    fitting = {kind: row for kind, row in rows.items() if kind in PARTIAL and row["fits"]}
    four_bit = rows.get("lora", {}).get("qlora")
    if not fitting and four_bit and four_bit["fits"]:
        from sftlab.plan.table import human_bytes

        return {"kind": "lora", "settings": {"strategy.lora.quantize_4bit": True}, "reasons": reasons + [
            f"no strategy fits as configured; with its base weights in 4-bit (strategy.lora.quantize_4bit=true, "
            f"QLoRA; needs bitsandbytes) lora needs an estimated {human_bytes(four_bit['estimate']['total'])} "
            f"instead of {human_bytes(rows['lora']['estimate']['total'])}, which fits"]}
    if not fitting and full and full["fits"]:
        return _only_full_fits(rows, reasons, thresholds)
    if not fitting:
        smallest = min(rows, key=lambda kind: rows[kind]["estimate"]["total"])
        return {"kind": smallest, "reasons": reasons + [
            f"no strategy fits; {smallest} needs the least memory: lower train.batch_size or train.max_length, "
            "or set train.gradient_checkpointing=selective (less memory; little extra time in fp32) or =true "
            "(the least memory, one extra forward)"]}
    supported = {kind: row for kind, row in fitting.items() if supervised / max(row["trainable"], 1) >= minimum}
    if supported:
        kind = max(supported, key=lambda k: supported[k]["trainable"])
        reasons.append(f"{kind} trains the most parameters ({supported[kind]['trainable']:,}) that the data supports "
                       f"(at least {minimum:g} {unit} per trainable parameter) and fits in memory")
    else:
        kind = min(fitting, key=lambda k: fitting[k]["trainable"])
        reasons.append(f"{kind} trains the fewest parameters ({fitting[kind]['trainable']:,}) of the strategies that "
                       f"fit; the data is below {minimum:g} {unit} per trainable parameter for all of them")
    return {"kind": kind, "reasons": reasons}


def _only_full_fits(rows: dict, reasons: list[str], thresholds: dict) -> dict:
    """Full fits but no partial strategy does, or none was planned: full, unless keep_general_knowledge rules it out
    (then no recommendation, kind None)."""
    absent = [kind for kind in PARTIAL if kind not in rows]
    present = [kind for kind in PARTIAL if kind in rows]
    why = "; ".join(part for part in (f"{', '.join(absent)}: not planned" if absent else "",
                                      f"{', '.join(present)}: do not fit" if present else "") if part)
    if thresholds["keep_general_knowledge"]:
        return {"kind": None, "reasons": reasons + [
            f"keep_general_knowledge rules out full, the only planned strategy that fits ({why}); plan the partial "
            "strategies (--strategies full,freeze,lora,auto) or lower the memory they need"]}
    return {"kind": "full", "reasons": reasons + [
        f"full fine-tuning fits and is the only planned strategy that does ({why}); with little data a partial "
        "strategy may keep more of the model's general knowledge: plan them with --strategies"]}
