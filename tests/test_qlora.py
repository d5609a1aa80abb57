"""QLoRA (strategy.lora.quantize_4bit) on CPU through bitsandbytes' CPU backend: training, resume, the saved
adapter, export --merge into the dequantised base, generation and serving (the planner side: test_qlora_plan.py)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from sftlab.cli import main
from sftlab.errors import SftlabError
from test_train_loop import tiny_run, train

QLORA = {"kind": "lora", "lora": {"rank": 4, "quantize_4bit": True}}


def four_bit_storage(model) -> dict[str, list[torch.Tensor]]:
    """Copies of every 4-bit weight's packed codes and quantisation constants, by parameter name."""
    from sftlab.models.nf4 import _four_bit_params

    copies = {}
    for name, param in _four_bit_params(model):
        state = param.quant_state
        copies[name] = [t.detach().clone() for t in (param.data, state.absmax, state.code, state.offset,
                                                     state.state2.absmax, state.state2.code)]
    return copies


def load_four_bit(base_dir, **kwargs):
    from transformers import AutoModelForCausalLM

    from sftlab.models.nf4 import four_bit_kwargs, keep_training_layout

    model = AutoModelForCausalLM.from_pretrained(base_dir, **four_bit_kwargs(), **kwargs)
    keep_training_layout(model)
    return model


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory):
    """One QLoRA run of tiny qwen2 with an evaluation after every step, on 4-bit layers that believe the CPU has
    AVX-512 BF16 (where bitsandbytes repacks 4-bit weights for inference at the first evaluation): the live model
    and copies of its 4-bit storage and adapter weights as loaded."""
    import bitsandbytes.nn.modules

    import sftlab.train.setup as setup

    tmp = tmp_path_factory.mktemp("qlora")
    seen = {}
    load_model = setup._load_model

    def capture(*args, **kwargs):
        model, trainable = load_model(*args, **kwargs)
        seen.update(model=model, storage=four_bit_storage(model),
                    adapter={n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
        return model, trainable

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bitsandbytes.nn.modules, "has_avx512bf16", lambda: True)
        patch.setattr(setup, "_load_model", capture)
        raw = tiny_run(tmp, "qwen2", strategy=QLORA, data={"val_ratio": 0.25},
                       train={"max_steps": 4, "lr": 1e-2, "batch_size": 2}, eval={"every_n_steps": 1})
        result = train(raw)
    return {**seen, "result": result, "base": tmp / "base-qwen2-causal_lm", "tmp": tmp}


def test_qlora_trains_the_adapter_and_leaves_the_4bit_base_bit_identical(qlora_run):
    model, result = qlora_run["model"], qlora_run["result"]
    assert len(result.losses) == 4 and all(loss == loss for loss in result.losses)
    assert any(type(p).__name__ == "Params4bit" for p in model.parameters())
    history = [json.loads(line) for line in (result.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert sum(bool(row.get("eval")) for row in history) == 4  # an evaluation after every training step
    after = dict(model.named_parameters())
    for name, before in qlora_run["adapter"].items():
        assert "lora_" in name and not torch.equal(after[name], before), name  # every adapter weight trained
    storage = four_bit_storage(model)
    assert storage.keys() == qlora_run["storage"].keys() and len(storage) == 7
    for name, tensors in qlora_run["storage"].items():
        assert all(torch.equal(a, b) for a, b in zip(storage[name], tensors)), name  # not repacked, not changed
    fresh = four_bit_storage(load_four_bit(qlora_run["base"]))  # what bitsandbytes makes of the base
    for name, tensors in fresh.items():
        assert all(torch.equal(a, b) for a, b in zip(storage[name], tensors)), name


def test_the_saved_model_is_an_adapter_on_its_local_base(qlora_run):
    from peft import PeftModel

    out = qlora_run["result"].out_dir
    adapter = json.loads((out / "model" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(qlora_run["base"])
    assert not (out / "model" / "config.json").exists()
    from sftlab.models.nf4 import compute_dtype_name

    record = json.loads((out / "model" / "sftlab_qlora.json").read_text())
    assert record == {"quant_type": "nf4", "double_quant": True, "blocksize": 64, "weights_dtype": "float32",
                      "compute_dtype": compute_dtype_name()}
    card = (out / "model" / "README.md").read_text()
    assert f"QLoRA: 7 linear weights NF4 4-bit (bitsandbytes, double quantisation), computing in {compute_dtype_name()}" in card
    assert json.loads((out / "best" / "sftlab_qlora.json").read_text()) == record
    total = json.loads((out / "trainable.json").read_text())["total"]  # values, not packed bytes
    plain = sum(t.numel() for t in load_file(qlora_run["base"] / "model.safetensors").values())
    lora = sum(t.numel() for t in load_file(out / "model" / "adapter_model.safetensors").values())
    assert total == plain + lora
    peft_model = PeftModel.from_pretrained(load_four_bit(qlora_run["base"]), out / "model")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert peft_model(input_ids=ids).logits.shape == (1, 4, peft_model.config.vocab_size)


def test_compute_dtype_is_bf16_only_where_the_cpu_has_bf16_instructions(monkeypatch):
    import sftlab.train.precision as precision
    from sftlab.models.nf4 import compute_dtype_name, four_bit_kwargs

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for hardware, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(precision, "cpu_runs_in_hardware", lambda kind, hardware=hardware: hardware and kind == "bf16")
        kwargs = four_bit_kwargs()
        assert kwargs["quantization_config"].bnb_4bit_compute_dtype == expected and "device_map" not in kwargs
        assert compute_dtype_name() == str(expected).removeprefix("torch.")
    quant = kwargs["quantization_config"]
    assert quant.bnb_4bit_quant_type == "nf4" and quant.bnb_4bit_use_double_quant and quant.load_in_4bit


def test_compute_dtype_on_cuda_is_bf16_only_where_the_gpu_has_bf16_units(monkeypatch):
    from sftlab.models.nf4 import compute_dtype_name

    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.is_bf16_supported", lambda including_emulation=True: True)  # an A100 or H100
    assert compute_dtype_name() == "bfloat16"
    monkeypatch.setattr("torch.cuda.is_bf16_supported", lambda including_emulation=True: including_emulation)  # a T4
    assert compute_dtype_name() == "float16"


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(tmp_path):
    from sftlab.train import TrainingInterrupted

    def stop_at_3(step, loss):
        if step == 3:
            raise KeyboardInterrupt

    settings = dict(strategy={"kind": "lora", "lora": {"rank": 4, "dropout": 0.1, "quantize_4bit": True}},
                    train={"max_steps": 5, "batch_size": 3, "scheduler": "cosine", "warmup_steps": 1, "lr": 1e-2,
                           "gradient_checkpointing": True},
                    output={"dir": str(tmp_path / "a"), "keep_checkpoints": 2, "tensorboard": False})
    straight = train(tiny_run(tmp_path, "llama", **settings))
    settings["output"]["dir"] = str(tmp_path / "b")
    with pytest.raises(TrainingInterrupted):  # 7 rows / batch 3: step 3 stops in the second epoch
        train(tiny_run(tmp_path, "llama", **settings), callbacks=[stop_at_3])
    assert (tmp_path / "b" / "checkpoints" / "step-3" / "sftlab_qlora.json").is_file()
    resumed = train(tiny_run(tmp_path, "llama", **settings), resume=True)
    assert len(resumed.losses) == 5
    assert resumed.losses == pytest.approx(straight.losses, rel=1e-6, abs=1e-7)
    assert len(set(straight.losses)) == 5  # the adapter trains: every step's loss differs


def _qlora_logits(base_dir, adapter_dir, ids, compute_dtype: str | None = None):
    """Logits of the QLoRA model as it trained: the 4-bit base (its other weights in float32) and the adapter; the
    4-bit matmuls in this machine's compute dtype, or in `compute_dtype` ('float32')."""
    from peft import PeftModel, prepare_model_for_kbit_training

    from sftlab.models.nf4 import as_trained

    model = prepare_model_for_kbit_training(load_four_bit(base_dir), use_gradient_checkpointing=False)
    if compute_dtype:
        as_trained(model, {"compute_dtype": compute_dtype})
    with torch.no_grad():
        return PeftModel.from_pretrained(model, str(adapter_dir)).eval()(input_ids=ids).logits


def test_export_merges_into_the_dequantised_base_by_default(qlora_run, capsys):
    """The adapter trained against the dequantised NF4 weights: merged into them, the logits are those of the
    QLoRA model with float32 matmuls, and those of the trained model to within its compute dtype's rounding;
    merged into the original full-precision base they differ by the quantisation error."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from sftlab.models.nf4 import compute_dtype_name

    run, base, tmp = qlora_run["result"].out_dir, qlora_run["base"], qlora_run["tmp"]
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11]])
    trained = _qlora_logits(base, run / "model", ids)
    exact = _qlora_logits(base, run / "model", ids, compute_dtype="float32")
    # bf16 compute (CPUs with AVX-512 BF16 or AMX) rounds every 4-bit layer's input: 1.1e-3 measured on Zen 4
    rounding = 1e-4 if compute_dtype_name() == "float32" else 5e-3
    assert main(["export", str(run), "--merge", str(tmp / "deq")]) == 0
    printed = capsys.readouterr().out
    assert "into the dequantised NF4 base of" in printed
    assert main(["export", str(run), "--merge", str(tmp / "orig"), "--merge-base", "original"]) == 0
    records = {name: json.loads((tmp / name / "sftlab_export.json").read_text()) for name in ("deq", "orig")}
    assert records["deq"]["merge_base"] == "dequantized" and records["orig"]["merge_base"] == "original"
    assert records["deq"]["qlora"]["quant_type"] == "nf4"
    assert records["deq"]["max_abs_logit_diff"] < rounding < 1e-2 < records["orig"]["max_abs_logit_diff"]
    if compute_dtype_name() == "float32":
        assert "max_abs_logit_diff_float32_compute" not in records["deq"]
    else:  # the merge's own error, told apart from the compute dtype's rounding (0.87 on Gemma 3 270M in bf16)
        assert records["deq"]["max_abs_logit_diff_float32_compute"] < 1e-4
        assert f"against the QLoRA model computing in float32: the rest is its {compute_dtype_name()} rounding" in printed
    with torch.no_grad():
        merged = {name: AutoModelForCausalLM.from_pretrained(tmp / name).eval()(input_ids=ids).logits
                  for name in ("deq", "orig")}
        full = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(run / "model")).eval()
        on_full_base = full(input_ids=ids).logits
    assert not hasattr(AutoModelForCausalLM.from_pretrained(tmp / "deq").config, "quantization_config")
    torch.testing.assert_close(merged["deq"], exact, atol=1e-4, rtol=0)  # the merge itself adds no error
    torch.testing.assert_close(merged["deq"], trained, atol=rounding, rtol=0)
    torch.testing.assert_close(merged["orig"], on_full_base, atol=1e-4, rtol=0)  # base + adapter, as before
    assert (merged["orig"] - trained).abs().max() > 1e-2


def test_merge_base_dequantized_needs_a_qlora_adapter(tmp_path):
    from test_export import lora_run

    run, _ = lora_run(tmp_path, "llama", "causal_lm")
    with pytest.raises(SftlabError, match="--merge-base dequantized: this adapter was not trained on a 4-bit base"):
        from sftlab.commands.export import merge_adapter

        merge_adapter(run, tmp_path / "out", merge_base="dequantized")
    assert not (tmp_path / "out").exists()


def test_generate_and_serve_load_a_qlora_run(qlora_run, capsys):
    """A QLoRA run's model/ is an adapter: sftlab generate, serve's and eval's loaders take it, on its 4-bit base,
    without a note."""
    from sftlab.infer.engine import generate_all
    from sftlab.infer.loading import load_served
    from sftlab.infer.prompts import render_chat, stop_token_ids
    from sftlab.infer.sampling import SamplingParams

    run, tmp = qlora_run["result"].out_dir, qlora_run["tmp"]
    served = load_served(run)
    assert served.names == ["run"] and served.adapters["run"] is not None and served.base_dir == qlora_run["base"]
    assert sum(type(p).__name__ == "Params4bit" for p in served.model.parameters()) == 7  # the 4-bit base
    prompt = render_chat(served.tokenizer, [{"role": "user", "content": "hello"}], served.template)
    stops = stop_token_ids(served.tokenizer, served.model)
    adapter = served.adapters["run"]
    text = generate_all(served, [prompt], SamplingParams(max_new_tokens=5), stops, adapter=adapter)[0]["text"]
    (tmp / "in.jsonl").write_text('{"prompt": "hello"}\n', encoding="utf-8")
    capsys.readouterr()
    assert main(["generate", str(run), "--input", str(tmp / "in.jsonl"), "--output", str(tmp / "out.jsonl"),
                 "--max-new-tokens", "5"]) == 0
    assert json.loads((tmp / "out.jsonl").read_text())["output"] == text
    assert "note:" not in capsys.readouterr().err
    from sftlab.eval.run import load_for_eval

    model, _, _ = load_for_eval(run, device="cpu")  # sftlab eval's loader
    assert model.is_loaded_in_4bit and "note:" not in capsys.readouterr().err


def test_a_served_qlora_run_computes_as_the_model_that_trained(qlora_run):
    """load_served puts the adapter on the base quantised as training did: its logits are those of the live model
    at the end of training (to 1e-5; 0 measured) and of a freshly built QLoRA model; on the full-precision base
    they differ by the quantisation error (more than 1e-3)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from sftlab.infer.loading import load_served
    from sftlab.models.nf4 import layer_compute_dtype

    run, base, live = qlora_run["result"].out_dir, qlora_run["base"], qlora_run["model"]
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11]])
    served = load_served(run)
    assert served.model.is_loaded_in_4bit and layer_compute_dtype(served.model) == layer_compute_dtype(live)
    was_training = live.training
    with torch.no_grad():
        trained = live.eval()(input_ids=ids).logits
        logits = served.model(input_ids=ids).logits
        full = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(run / "model")).eval()
        on_full_base = full(input_ids=ids).logits
    live.train(was_training)
    torch.testing.assert_close(logits, trained, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, _qlora_logits(base, run / "model", ids), atol=1e-5, rtol=0)
    assert (on_full_base - trained).abs().max() > 1e-3


def test_extra_adapters_on_a_served_qlora_run_must_share_its_4bit_base(qlora_run, capsys):
    """Beside a QLoRA adapter only QLoRA adapters recorded with the same quantisation; a QLoRA adapter beside a
    full-precision served model runs on that base with a note; --dtype other than float32 is refused."""
    import shutil

    from sftlab.infer.loading import load_served

    run, tmp = qlora_run["result"].out_dir, qlora_run["tmp"]
    plain, other, same = (tmp / "extra" / name for name in ("plain", "other", "same"))
    for directory in (plain, other, same):
        shutil.copytree(run / "model", directory, dirs_exist_ok=True)
    (plain / "sftlab_qlora.json").unlink()
    record = json.loads((other / "sftlab_qlora.json").read_text())
    record["weights_dtype"] = "bfloat16"
    (other / "sftlab_qlora.json").write_text(json.dumps(record))
    for key, directory in (("plain", plain), ("other", other)):
        with pytest.raises(SftlabError, match=rf"^--adapter {key}: the served model run runs on a 4-bit \(NF4\) base, "
                                              rf"and this adapter was not trained on it \(sftlab_qlora.json missing "
                                              rf"or different\)$"):
            load_served(run, adapters={key: str(directory)})
    with pytest.raises(SftlabError, match=rf"^--dtype bfloat16: run is a QLoRA adapter, served on its base loaded in "
                                          rf"4-bit as it trained \(computing in {record['compute_dtype']}\); "
                                          r"leave --dtype out$"):
        load_served(run, dtype="bfloat16")
    served = load_served(run, adapters={"same": str(same)})
    assert served.names == ["run", "same"] and served.model.is_loaded_in_4bit
    capsys.readouterr()
    on_full = load_served(plain, adapters={"qlora": str(run / "model")})
    assert not any(type(p).__name__ == "Params4bit" for p in on_full.model.parameters())
    assert "note: adapter qlora was trained on a 4-bit (NF4) base and runs here on the full-precision base" in \
        capsys.readouterr().err


def test_load_as_trained_uses_the_recorded_dtypes_and_keeps_the_training_layout(qlora_run):
    """A base quantised from bfloat16 weights computing in float32: the weights that are not 4-bit come back in
    float32 (as peft's prepare_model_for_kbit_training left them), every 4-bit layer computes in the recorded
    dtype and none repacks its weights for CPU inference."""
    from sftlab.models.nf4 import load_as_trained

    record = {"quant_type": "nf4", "weights_dtype": "bfloat16", "compute_dtype": "float32"}
    model = load_as_trained(qlora_run["base"], record)
    layers = [m for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    assert len(layers) == 7 and all(m.compute_dtype == torch.float32 and not m.support_avx512bf16_for_cpu
                                    for m in layers)
    assert {p.dtype for p in model.parameters() if type(p).__name__ != "Params4bit"} == {torch.float32}
    assert {p.quant_state.dtype for p in model.parameters() if type(p).__name__ == "Params4bit"} == {torch.bfloat16}


def test_a_served_qlora_run_needs_bitsandbytes(qlora_run, monkeypatch):
    import importlib.util

    from sftlab.infer.loading import load_served

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else find_spec(name, *a))
    with pytest.raises(SftlabError, match=r"^strategy.lora.quantize_4bit \(QLoRA\) needs bitsandbytes: "
                                          r"`pip install bitsandbytes`$"):
        load_served(qlora_run["result"].out_dir)


def test_zero3_still_refuses_4bit_weights(monkeypatch):
    """On CUDA with DeepSpeed (faked here: this project has no GPU), zero3 cannot shard QLoRA's 4-bit weights."""
    import importlib.util
    from types import SimpleNamespace

    from sftlab.config.checks import check_distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: name == "deepspeed" or find_spec(name, *a))
    train_cfg = SimpleNamespace(distributed="zero3", grad_accum=1)
    strategy = SimpleNamespace(kind="lora", lora=SimpleNamespace(quantize_4bit=True))
    with pytest.raises(ValueError, match=r"zero3 cannot shard 4-bit \(QLoRA\) weights; use zero2 or ddp"):
        check_distributed(SimpleNamespace(train=train_cfg, strategy=strategy))
    check_distributed(SimpleNamespace(train=SimpleNamespace(distributed="zero2", grad_accum=1), strategy=strategy))


def test_vision_language_models_are_refused_in_4bit(tmp_path):
    """sftlab loads vision-language models through its own loader, without 4-bit: QLoRA says so instead of
    silently training plain LoRA."""
    from sftlab.config.schema import ModelConfig
    from sftlab.models.load import load_model
    from sftlab.models.tiny_vlm import save_tiny_vlm

    directory = save_tiny_vlm("qwen2_vl", tmp_path / "vlm")
    with pytest.raises(SftlabError, match=r"^strategy.lora.quantize_4bit: vision-language models are not loaded in "
                                          r"4-bit \(QLoRA\) by sftlab; set strategy.lora.quantize_4bit=false$"):
        load_model(ModelConfig(path=str(directory)), "sft", quantize_4bit=True)


def test_the_compiled_kernels_turn_on_over_4bit_weights(tmp_path, capsys):
    # the warm-up made its input in the dtype of the module's first parameter: the MLP's packed uint8 4-bit weight,
    # so QLoRA runs logged "compiled kernels: off (RuntimeError: only Tensors of floating point dtype ...)"
    from sftlab.models import kernels

    on_at_each_step = []
    raw = tiny_run(tmp_path, "qwen2", strategy=QLORA, model={"compiled_kernels": True},
                   train={"max_steps": 2, "batch_size": 2})
    train(raw, callbacks=[lambda step, loss: on_at_each_step.append(kernels._state["on"])])
    assert "compiled kernels: RMSNorm and gated MLP, ready in " in capsys.readouterr().err
    assert on_at_each_step == [True, True]
