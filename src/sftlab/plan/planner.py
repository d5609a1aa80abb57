"""`sftlab plan`: one row per strategy (trainable parameters, estimated memory, fit, measured step) and advice.

    plan = build_plan(cfg, base_dir, load_thresholds(), probe_steps=3, check=True)
    plan["rows"]["lora"]["trainable"], plan["rows"]["lora"]["estimate"]["total"], plan["recommendation"]

Trainable counts come from the training code itself: each strategy's model is built with the same
function `sftlab train` uses (`sftlab.train.setup._load_model`: stage model, gradient checkpointing,
`select_trainable`, auto's calibration batches), so they equal the count in the training log. Models
whose weight files exceed `REAL_COUNT_MAX_BYTES` are instead built on the meta device (no memory);
their auto row then shows the budget (`strategy.auto.budget`), which bounds the real count from above.

With `strategy.lora.quantize_4bit` the lora row is QLoRA: its 4-bit weights are those of the loaded model (or, on
the meta device, those transformers' rule picks: `sftlab.models.nf4.quantizable_weights`), estimated at NF4 size.
Without it, the lora row carries `qlora`: the same row's estimate had the base been loaded in 4-bit, which the
recommendation turns to when no strategy fits as configured (`sftlab.plan.recommend`).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from sftlab.errors import SftlabError
from sftlab.jemalloc import resolve_allocator
from sftlab.plan.memory import ModelShape, Workload, backprop_depth, estimate_memory
from sftlab.plan.recommend import recommend
from sftlab.train.precision import precision_line, resolve_precision

KINDS = ("full", "freeze", "lora", "auto")
REAL_COUNT_MAX_BYTES = 2 * 1024**3


def require_in_memory_data(cfg, command: str) -> None:
    """The planner measures the longest training rows, so it needs the whole training set, not a stream."""
    from sftlab.errors import SftlabError

    if getattr(cfg.data, "streaming", False):
        raise SftlabError(f"data.streaming: `sftlab {command}` needs the training set in memory; run it with "
                          "data.streaming=false on a sample of the corpus (e.g. data.max_samples=10000)")


def strategy_config(cfg, kind: str, thresholds: dict, num_layers: int | None = None):
    """`cfg` with strategy.kind=kind; the freeze row trains the last blocks when strategy.freeze selects nothing."""
    strategy = cfg.strategy.model_copy(update={"kind": kind}, deep=True)
    freeze = strategy.freeze
    if kind == "freeze" and freeze.layers == "none" and not freeze.modules:
        blocks = max(1, math.ceil(thresholds["freeze_last_fraction"] * (num_layers or 1)))
        strategy.freeze = freeze.model_copy(update={"layers": f"last:{blocks}"})
    return cfg.model_copy(update={"strategy": strategy}, deep=True)


def data_summary(prepared, stage: str) -> dict:
    """Examples, tokens, supervised units (tokens for pt/sft, tokenized examples for cls), label distribution."""
    train = prepared.stats.get("train", {})
    examples = len(prepared.train_examples) or len(prepared.train)
    summary = {"examples": examples, "validation_examples": len(prepared.val_examples),
               "tokens": train.get("tokens", 0),
               "supervised": len(prepared.train) if stage == "cls" else int(train.get("supervised_tokens", 0)),
               "supervised_unit": "examples" if stage == "cls" else "tokens"}
    distribution = prepared.stats.get("label_distribution")
    if distribution:
        summary["label_distribution"] = distribution["train"]
    return summary


def weights_bytes(cfg) -> int:
    """Size of the model directory's weight files."""
    from sftlab.models.load import resolve_model_path

    directory = resolve_model_path(cfg.model.path)
    return sum(p.stat().st_size for p in directory.iterdir() if p.suffix in (".safetensors", ".bin", ".pt"))


def count_strategy(cfg, tokenizer, prepared, collate, real: bool) -> dict:
    """Trainable/total counts, trainable names' backprop depth, shape and dtype of cfg's strategy."""
    if real:
        from accelerate.utils import set_seed

        from sftlab.train.setup import _load_model

        set_seed(cfg.train.seed)  # as build_session does: a new classifier head starts the same
        model, trainable = _load_model(cfg, tokenizer, prepared, collate)
        approximate = False
    else:
        model, trainable, approximate = _count_on_meta(cfg, prepared)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    counts = {"trainable": trainable.trainable, "total": trainable.total, "copies": trainable.copies,
              "approximate": approximate,
              "depth": backprop_depth(model, trainable.names), "shape": asdict(ModelShape.from_model(model)),
              "param_dtype": dtype, "notes": trainable.notes}
    if qlora(cfg):  # the 4-bit weights: as loaded, or as bitsandbytes would quantise them (meta device)
        from sftlab.models.nf4 import quantizable_weights, quantized_weights

        four_bit = quantized_weights(model) if real else quantizable_weights(_meta_model(cfg, prepared))
        counts.update(four_bit=sorted(four_bit.values()), param_dtype="float32")  # the rest: float32 (peft)
    return counts


def _counted(cfg, tokenizer, prepared, collate, real: bool, progress, position: str) -> dict:
    """`count_strategy`, announced to `progress` first (with auto's scoring batches as they are scored)."""
    from sftlab.strategy.importance import scoring_progress

    if progress is None:
        return count_strategy(cfg, tokenizer, prepared, collate, real)
    kind = cfg.strategy.kind
    scoring = f", then scoring up to {cfg.strategy.auto.batches} calibration batches" if kind == "auto" and real else ""
    progress(f"plan: {kind} ({position}): building its model{scoring}")
    with scoring_progress(lambda line: progress(f"plan: {line}")):
        return count_strategy(cfg, tokenizer, prepared, collate, real)


def qlora(cfg) -> bool:
    """Whether `cfg` trains LoRA on a 4-bit base."""
    return cfg.strategy.kind == "lora" and cfg.strategy.lora.quantize_4bit


def _meta_model(cfg, prepared):
    """The stage's model built from its config on the meta device (no memory), in `model.dtype`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from sftlab.models.load import resolve_model_path

    remote = cfg.model.trust_remote_code  # a model with its own code: as training loads it
    config = AutoConfig.from_pretrained(resolve_model_path(cfg.model.path), local_files_only=True,
                                        trust_remote_code=remote)
    auto = AutoModelForCausalLM
    if cfg.train.stage == "cls":
        config.num_labels, auto = len(prepared.label_names), AutoModelForSequenceClassification
    with torch.device("meta"):
        return auto.from_config(config, dtype=getattr(torch, cfg.model.dtype), trust_remote_code=remote)


def _count_on_meta(cfg, prepared):
    """Build the model without memory (meta device) and apply the strategy; auto falls back to its budget."""
    from sftlab.strategy import select_trainable
    from sftlab.strategy.importance import budget_in_params, check_budget_fits_a_unit, group_units

    model = _meta_model(cfg, prepared)
    if cfg.model.fused_layers:  # as training would run it (the shape records it)
        from sftlab.models.fused import fuse_layers

        fuse_layers(model)
    if cfg.strategy.kind != "auto":
        model, trainable = select_trainable(model, cfg.strategy)
        return model, trainable, False
    model, trainable = select_trainable(model, cfg.strategy.model_copy(update={"kind": "full"}))
    trainable.trainable = budget_in_params(cfg.strategy.auto.budget, trainable.total)
    sizes = {name: param.numel() for name, param in model.named_parameters()}
    units = group_units(model, cfg.strategy.auto.granularity)  # a budget below every unit would choose nothing
    check_budget_fits_a_unit(trainable.trainable, min(sum(sizes[name] for name in names) for names in units.values()),
                             cfg.strategy.auto.granularity)
    trainable.kind = "auto"
    return model, trainable, True


# The memory limit of this process's cgroup (v2, then v1): a container's (docker --memory, Kubernetes limits)
CGROUP_LIMIT_FILES = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def available_memory() -> dict:
    """Memory a single training process can use: the smallest GPU's on CUDA, else the machine's RAM, or the
    container's memory limit (cgroup) where that is lower (`limit` then says so)."""
    import torch

    if torch.cuda.is_available():
        sizes = [torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())]
        return {"device": f"cuda x{len(sizes)}", "bytes": min(sizes)}
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in CGROUP_LIMIT_FILES:
        try:
            text = Path(path).read_text(encoding="ascii").strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < ram:
            return {"device": "cpu", "bytes": int(text), "limit": f"cgroup memory limit ({path})"}
        break  # the first file that exists is this system's cgroup version ("max": no limit)
    return {"device": "cpu", "bytes": ram}


def estimate_row(counts: dict, workload: dict, cfg) -> dict:
    """The memory estimate of one strategy for the worst-case micro-batch."""
    from sftlab.models.attention import resolve_attention  # auto counts as matmul, as it loads

    work = Workload(batch=workload["batch"], seq=workload["seq"], supervised=workload["supervised"],
                    param_dtype=counts["param_dtype"], precision=cfg.train.precision,
                    checkpointing=cfg.train.gradient_checkpointing,
                    attention=resolve_attention(cfg.model.attn_implementation))
    held = counts["total"] + counts.get("copies", 0)  # with peft's trained copies of modules_to_save modules
    return estimate_memory(ModelShape(**counts["shape"]), held, counts["trainable"], counts["depth"],
                           work, counts.get("four_bit")).to_dict()


def qlora_alternative(counts: dict, workload: dict, cfg, prepared, limit: float) -> dict | None:
    """The lora row's estimate had strategy.lora.quantize_4bit been set: its weights bitsandbytes would quantise
    in 4-bit, the rest in float32; whether that fits under `limit` bytes. None for models sftlab does not load
    in 4-bit (vision-language models) or that have no causal-LM or classifier class to build."""
    from sftlab.models.nf4 import quantizable_weights
    from sftlab.vision.load import is_vision_model

    if is_vision_model(cfg.model):
        return None
    try:
        four_bit = sorted(quantizable_weights(_meta_model(cfg, prepared)).values())
    except ValueError:  # transformers: no such auto class for this config
        return None
    estimate = estimate_row({**counts, "four_bit": four_bit, "param_dtype": "float32"}, workload, cfg)
    return {"estimate": estimate, "fits": estimate["total"] <= limit}


def build_plan(cfg, base_dir: str | Path | None, thresholds: dict, kinds: tuple[str, ...] = KINDS,
               probe_steps: int | None = None, check: bool = False, processes: int = 1,
               progress: Callable[[str], None] | None = None) -> dict:
    """Everything `sftlab plan` prints: data summary, run length, per-strategy rows, memory available,
    recommendation; with a probe, each strategy's run time (`processes`: the run's training processes).
    `progress(line)` hears of each slow phase as it starts (each strategy's model, auto's scoring batches, the probe)."""
    from sftlab.data.pipeline import prepare_data
    from sftlab.models.load import load_tokenizer
    from sftlab.plan.probe import worst_case_workload
    from sftlab.plan.runtime import run_length
    from sftlab.train.setup import make_collate

    require_in_memory_data(cfg, "plan")
    cfg, _ = resolve_precision(cfg)  # as sftlab train will run it on this machine
    tokenizer = load_tokenizer(cfg.model)
    prepared = prepare_data(cfg, tokenizer, base_dir)
    collate = make_collate(cfg, tokenizer)
    workload = worst_case_workload(prepared, collate, cfg.train)
    memory = available_memory()
    real = weights_bytes(cfg) <= REAL_COUNT_MAX_BYTES
    data = data_summary(prepared, cfg.train.stage)
    run = run_length(cfg, prepared, processes)
    rows, configs, num_layers = {}, {}, None
    order = ("full", *[k for k in kinds if k != "full"])  # full first: it tells the block count
    for index, kind in enumerate(order, 1):
        configs[kind] = strategy_config(cfg, kind, thresholds, num_layers)
        counts = _counted(configs[kind], tokenizer, prepared, collate, real, progress, f"{index}/{len(order)}")
        num_layers = num_layers or counts["shape"]["layers"]
        estimate = estimate_row(counts, workload, configs[kind])
        limit = thresholds["memory_headroom"] * memory["bytes"]
        rows[kind] = {**counts, "estimate": estimate, "fits": estimate["total"] <= limit,
                      "supervised_per_trainable": data["supervised"] / max(counts["trainable"], 1)}
        alternative = None if kind != "lora" or qlora(configs[kind]) else qlora_alternative(
            counts, workload, configs[kind], prepared, limit)
        if alternative:
            rows[kind]["qlora"] = alternative
    if probe_steps or check:
        _add_probe(rows, configs, kinds, probe_steps or 3, base_dir, check, run["steps"], progress)
    total = rows["full"]["total"]
    rows = {kind: rows[kind] for kind in kinds}
    data["supervised_per_parameter"] = data["supervised"] / max(total, 1)
    advice = recommend(rows, data["supervised"], total, thresholds, cfg.train.stage)
    if advice["kind"] == "freeze" and configs["freeze"].strategy.freeze != cfg.strategy.freeze:  # the default row
        advice["settings"] = {**advice.get("settings", {}),
                              "strategy.freeze.layers": configs["freeze"].strategy.freeze.layers}
    cpu = memory["device"] == "cpu"
    caveat = cpu_estimate_caveat(cfg.train.allocator) if cpu else None
    return {"model": cfg.model.path, "stage": cfg.train.stage, "workload": workload, "memory": memory,
            "data": data, "run": run, "rows": rows, "thresholds": thresholds, "recommendation": advice,
            "caveat": caveat, "precision_warning": precision_line(cfg, "cpu") if cpu else None}


def cpu_estimate_caveat(allocator: str) -> str:
    """The line `sftlab plan` prints under CPU memory estimates: the malloc they were calibrated on, and
    whether a run with `train.allocator` = `allocator` would be on it here (docs/planner.md)."""
    try:
        jemalloc = resolve_allocator(allocator) is not None
    except SftlabError:  # train.allocator=jemalloc without the library: sftlab train says so when it starts
        jemalloc = False
    if jemalloc:
        return ("memory estimates are calibrated on jemalloc's resident memory, which sftlab train runs on here "
                "(docs/planner.md; --check measures this run)")
    return ("memory estimates are calibrated on jemalloc's resident memory; this run would use the system malloc "
            "(train.allocator, or no jemalloc library found), whose peaks ran 9-58% above them "
            "(docs/planner.md; --check measures this run)")


def _add_probe(rows: dict, configs: dict, kinds, steps: int, base_dir, check: bool, run_steps: int,
               progress: Callable[[str], None] | None = None) -> None:
    """Measured step time (median), the run time it implies over `run_steps` steps, and peak memory per strategy;
    with `check`, the estimate's relative error."""
    from statistics import median

    from sftlab.plan.probe import run_probe
    from sftlab.plan.runtime import run_seconds

    for kind, result in zip(kinds, run_probe([configs[kind] for kind in kinds], steps, base_dir, progress=progress)):
        row = rows[kind]
        step_seconds = median(result["step_seconds"])
        row["probe"] = {"step_seconds": step_seconds, "run_seconds": run_seconds(run_steps, step_seconds),
                        "peak_bytes": result["peak_bytes"], "device": result["device"],
                        "trainable": result["trainable"], "allocator": result["allocator"]}
        if check and result["peak_bytes"]:
            measured = result["peak_bytes"]
            row["probe"]["estimate_error"] = (row["estimate"]["total"] - measured) / measured
