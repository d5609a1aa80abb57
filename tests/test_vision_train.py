"""Training tiny VLMs: freezing vision tower / projector / language model independently, LoRA on the language
model, importance-based selection across all three, and `sftlab train` end to end (PNG fixtures and, when
present, the six-image caption set in ../shared/data/image_captions)."""

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from sftlab.cli import main
from sftlab.config.schema import ModelConfig, StrategyConfig
from sftlab.models.tiny_vlm import save_tiny_vlm
from sftlab.strategy import select_trainable
from sftlab.train.loss import loss_sum
from sftlab.vision.collate import make_vision_collator
from sftlab.vision.data import to_multimodal
from sftlab.vision.encode import encode_vision_example
from sftlab.vision.load import load_processor, load_vision_model
from sftlab.vision.parts import part_groups

CAPTIONS = Path(__file__).resolve().parents[2] / "shared" / "data" / "image_captions" / "skimage_clip_captions"
COLOURS = {"red": (220, 20, 20), "green": (20, 200, 40), "blue": (30, 40, 220), "grey": (128, 128, 128)}


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return save_tiny_vlm("qwen2_vl", tmp_path_factory.mktemp("vlm") / "qwen2_vl")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "images").mkdir()
    rows = []
    for name, rgb in COLOURS.items():
        Image.new("RGB", (56, 48), rgb).save(root / "images" / f"{name}.png")
        rows.append({"messages": [{"role": "user", "content": "<image>What colour is this?"},
                                  {"role": "assistant", "content": f"It is {name}."}], "images": [f"images/{name}.png"]})
    (root / "colours.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return root


def _batch(model_dir, data_dir, count: int | None = None):
    """A collated batch of the first `count` colour records (all by default) for the VLM in `model_dir`."""
    processor = load_processor(ModelConfig(path=str(model_dir)))
    rows = [json.loads(line) | {"_src": f"colours.jsonl:{i}"}
            for i, line in enumerate((data_dir / "colours.jsonl").read_text().splitlines(), 1)]
    encoded = [encode_vision_example(to_multimodal(row, data_dir), processor, 256) for row in rows[:count]]
    return make_vision_collator(processor)(encoded)


def _train_steps(model, batch, steps=2):
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(steps):
        total, count = loss_sum(model, batch, "sft")
        (total / count).backward()
        optimizer.step()
        optimizer.zero_grad()


def _changed(before: dict, model) -> set[str]:
    after = dict(model.named_parameters(remove_duplicate=False))
    return {name for name, value in before.items() if not torch.equal(value, after[name].detach())}


@pytest.mark.parametrize("parts", [["vision"], ["projector"], ["language"], ["vision", "projector"]])
def test_freeze_trains_exactly_the_chosen_parts(qwen_dir, data_dir, parts):
    model = load_vision_model(ModelConfig(path=str(qwen_dir)))
    groups = part_groups(model)
    before = {name: p.detach().clone() for name, p in model.named_parameters(remove_duplicate=False)}
    strategy = StrategyConfig(kind="freeze", freeze={"modules": [f"{part}:*" for part in parts]})
    model, trainable = select_trainable(model, strategy)
    assert set(trainable.names) == {name for part in parts for name in groups[part]}
    _train_steps(model, _batch(qwen_dir, data_dir))
    changed = _changed(before, model)
    for part, names in groups.items():
        moved = changed & set(names)
        assert (len(moved) > len(names) // 2) if part in parts else not moved, (part, len(moved), len(names))


def test_lora_adapts_the_language_model_only(qwen_dir, data_dir):
    model = load_vision_model(ModelConfig(path=str(qwen_dir)))
    strategy = StrategyConfig(kind="lora", lora={"target_modules": ["model.language_model.*_proj"], "rank": 4})
    peft_model, trainable = select_trainable(model, strategy)
    assert trainable.names and all(".language_model." in n and ".lora_" in n for n in trainable.names)
    before = {name: p.detach().clone() for name, p in peft_model.named_parameters()}
    _train_steps(peft_model, _batch(qwen_dir, data_dir))
    changed = _changed(before, peft_model)
    assert changed and all(".lora_B." in name or ".lora_A." in name for name in changed)


def test_auto_scores_units_of_all_three_parts(qwen_dir, data_dir):
    model = load_vision_model(ModelConfig(path=str(qwen_dir)))
    groups = part_groups(model)
    batch = _batch(qwen_dir, data_dir)
    strategy = StrategyConfig(kind="auto", auto={"budget": 0.2, "granularity": "linear", "batches": 1})
    model, trainable = select_trainable(model, strategy, [batch],
                                        lambda m, b: (lambda t, c: t / max(c, 1))(*loss_sum(m, b, "sft")))
    units = trainable.details["units"]
    for part, names in groups.items():
        prefixes = {name.rsplit(".", 1)[0] for name in names}
        scored = [unit for unit in units if unit["name"] in prefixes]
        assert scored and all(unit["score"] > 0 for unit in scored), part
    assert 0 < trainable.trainable <= 0.2 * trainable.total + 1


def _write_config(tmp_path, raw) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return str(path)


def _run_config(tmp_path, model_dir, train_file, **groups):
    raw = {"model": {"path": str(model_dir)}, "data": {"train": str(train_file), "cache_dir": str(tmp_path / "cache")},
           "train": {"stage": "sft", "max_steps": 2, "batch_size": 2, "lr": 1e-2, "max_length": 128},
           "output": {"dir": str(tmp_path / "run"), "tensorboard": False}}
    for group, values in groups.items():
        raw.setdefault(group, {}).update(values)
    return _write_config(tmp_path, raw)


def test_cli_train_freezes_the_vision_tower_and_saves_a_loadable_vlm(tmp_path, qwen_dir, data_dir, capsys):
    config = _run_config(tmp_path, qwen_dir, data_dir / "colours.jsonl",
                         strategy={"kind": "freeze", "freeze": {"modules": ["projector:*", "language:*"]}})
    assert main(["train", config, "--no-progress"]) == 0
    out = tmp_path / "run"
    stats = json.loads((out / "data_stats.json").read_text())
    assert stats["train"]["images"] == 4 and stats["train"]["image_tokens"] == 16
    reloaded = ModelConfig(path=str(out / "model"))
    processor = load_processor(reloaded)  # the processor files travel with the trained model
    assert processor.image_token == "<|image_pad|>"
    start = dict(load_vision_model(ModelConfig(path=str(qwen_dir))).named_parameters())
    trained_model = load_vision_model(reloaded)
    trained = dict(trained_model.named_parameters())
    groups = part_groups(trained_model)
    assert all(torch.equal(start[name], trained[name]) for name in groups["vision"])
    for part in ("projector", "language"):
        assert any(not torch.equal(start[name], trained[name]) for name in groups[part]), part


def test_cli_placeholder_mismatch_is_a_clear_error_before_training(tmp_path, qwen_dir, data_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    rows = [{"messages": [{"role": "user", "content": "<image>Colour?"}, {"role": "assistant", "content": "Red."}],
             "images": [str(data_dir / "images" / "red.png")]},
            {"messages": [{"role": "user", "content": "<image> and <image>?"}, {"role": "assistant", "content": "Two."}],
             "images": [str(data_dir / "images" / "red.png")]}]
    bad.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    assert main(["train", _run_config(tmp_path, qwen_dir, bad), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {bad}:2: 2 <image> placeholder(s) but 1 image(s); every image needs exactly one <image> "
                   "in the text"]
    assert not (tmp_path / "run" / "model").exists()


@pytest.mark.skipif(not (CAPTIONS / "mllm_caption_sharegpt.json").is_file(), reason="../shared/data/image_captions absent")
def test_cli_lora_run_on_the_six_image_caption_set(tmp_path, qwen_dir, capsys):
    config = _run_config(tmp_path, qwen_dir, CAPTIONS / "mllm_caption_sharegpt.json",
                         data={"val_ratio": 0.34}, eval={"every_n_steps": 2},
                         strategy={"kind": "lora", "lora": {"target_modules": ["model.language_model.*_proj"], "rank": 4}})
    assert main(["train", config, "--no-progress"]) == 0
    out = tmp_path / "run"
    stats = json.loads((out / "data_stats.json").read_text())
    assert stats["train"]["images"] + stats["validation"]["images"] == 6
    assert stats["train"]["dropped_too_long"] == 0 and stats["train"]["supervised_tokens"] > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["step"] == 2 and metrics["eval_loss"] > 0
    assert (out / "model" / "adapter_model.safetensors").is_file() and (out / "model" / "processor_config.json").is_file()


def test_vision_generation_and_label_metrics_use_the_images(qwen_dir, data_dir):
    from sftlab.eval.tasks import EvalOptions
    from sftlab.vision.evaluate import run_vision_task

    model = load_vision_model(ModelConfig(path=str(qwen_dir)))
    processor = load_processor(ModelConfig(path=str(qwen_dir)))
    examples = [to_multimodal(json.loads(line) | {"_src": f"colours.jsonl:{i}"}, data_dir)
                for i, line in enumerate((data_dir / "colours.jsonl").read_text().splitlines(), 1)]
    seen = []
    generate = model.generate
    model.generate = lambda **kwargs: seen.append(kwargs) or generate(**kwargs)
    result, rows = run_vision_task("generation", model, processor, examples, EvalOptions(max_new_tokens=4))
    assert {"exact_match", "bleu", "rouge_l"} <= set(result) and len(rows) == 4
    assert all("pixel_values" in kwargs and "image_grid_thw" in kwargs for kwargs in seen)
    prompt = processor.tokenizer.decode(seen[0]["input_ids"][0])
    assert "It is red." not in prompt and prompt.endswith("<|im_start|>assistant\n")
    result, rows = run_vision_task("labels", model, processor, examples, EvalOptions(max_new_tokens=4))
    assert result["n"] == 4 and result["labels"] == sorted(f"It is {c}." for c in COLOURS) and "macro_f1" in result


def test_cli_train_reports_caption_metrics_at_validation(tmp_path, qwen_dir, data_dir, capsys, monkeypatch):
    import sftlab.vision.evaluate as vision_evaluate

    seen = []
    original = vision_evaluate.run_vision_task
    monkeypatch.setattr(vision_evaluate, "run_vision_task",
                        lambda task, model, processor, examples, opts: seen.append(examples) or original(
                            task, model, processor, examples, opts))
    config = _run_config(tmp_path, qwen_dir, data_dir / "colours.jsonl", data={"validation": str(data_dir / "colours.jsonl")},
                         eval={"every_n_steps": 2, "metric": "rouge_l", "mode": "max", "max_new_tokens": 4,
                               "max_samples": 2, "data": str(data_dir / "colours.jsonl")})
    assert main(["train", config, "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "eval_rouge_l" in metrics and "eval_bleu" in metrics and metrics["best_step"] == 2
    assert seen and all(len(examples) == 2 and all(e["images"] for e in examples) for examples in seen)  # eval.data


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava", "gemma3"])
def test_other_families_train_only_their_projector(tmp_path, data_dir, family):
    directory = save_tiny_vlm(family, tmp_path / family)
    batch = _batch(directory, data_dir, 2)
    model = load_vision_model(ModelConfig(path=str(directory)))
    groups = part_groups(model)
    before = {name: p.detach().clone() for name, p in model.named_parameters(remove_duplicate=False)}
    model, trainable = select_trainable(model, StrategyConfig(kind="freeze", freeze={"modules": ["projector:*"]}))
    assert set(trainable.names) == set(groups["projector"])
    _train_steps(model, batch, steps=1)
    changed = _changed(before, model)
    assert changed <= set(groups["projector"]) and len(changed) >= len(groups["projector"]) // 2


@pytest.mark.skipif(not (CAPTIONS / "mllm_caption_sharegpt.json").is_file(), reason="../shared/data/image_captions absent")
def test_example_config_runs_as_documented(tmp_path, qwen_dir, capsys):
    example = Path(__file__).resolve().parents[1] / "examples" / "vision" / "captions_freeze.yaml"
    overrides = [f"model.path={qwen_dir}", f"output.dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'cache'}",
                 "train.max_steps=1", "eval.max_new_tokens=2"]
    assert main(["train", str(example), *overrides, "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["step"] == 1 and "eval_rouge_l" in metrics


def test_data_preview_shows_image_tokens_unsupervised(tmp_path, qwen_dir, data_dir, capsys):
    assert main(["data", "preview", _run_config(tmp_path, qwen_dir, data_dir / "colours.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "<|vision_start|><|image_pad|><|image_pad|><|image_pad|><|image_pad|><|vision_end|>What colour" in out
    assert re.search(r"<\|im_start\|>assistant\n\[\[It is (red|green|blue|grey)\.<\|im_end\|>\]\]", out)


def test_cli_eval_scores_a_trained_vlm_with_its_images(tmp_path, qwen_dir, data_dir, capsys):
    config = _run_config(tmp_path, qwen_dir, data_dir / "colours.jsonl", train={"max_steps": 1})
    assert main(["train", config, "--no-progress"]) == 0
    out = tmp_path / "eval"
    assert main(["eval", str(tmp_path / "run"), "--data", str(data_dir / "colours.jsonl"), "--task", "labels",
                 "--label-method", "generate", "--max-new-tokens", "4", "--out", str(out)]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["metrics"]["n"] == 4 and summary["metrics"]["method"] == "generate"
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [row["reference"] for row in rows] == [f"It is {c}." for c in COLOURS] and "generated" in rows[0]


def test_encoded_rows_are_cached_until_an_image_changes(tmp_path, qwen_dir, data_dir):
    import os
    import shutil

    from sftlab.config.load import load_config
    from sftlab.vision.pipeline import prepare_vision_data

    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    cfg = load_config(_run_config(tmp_path, qwen_dir, data / "colours.jsonl", data={"cache_dir": "cache"}))  # relative
    first = prepare_vision_data(cfg, tmp_path)
    again = prepare_vision_data(cfg, tmp_path)
    assert not first.stats["train"]["cache_hit"] and again.stats["train"]["cache_hit"]
    assert again.stats["train"]["cache_path"].startswith(str(tmp_path / "cache"))
    assert again.train.to_dict() == first.train.to_dict()
    os.utime(data / "images" / "red.png", ns=(1, 1))
    assert not prepare_vision_data(cfg, tmp_path).stats["train"]["cache_hit"]


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "llava", "gemma3"])
def test_matmul_attention_gives_sdpa_loss_and_gradients(tmp_path, data_dir, family):
    """model.attn_implementation: matmul on a VLM: the language model's calls run it, vision towers' fall back."""
    from sftlab.models.attention import MatmulAttention

    directory = save_tiny_vlm(family, tmp_path / family)
    batch = _batch(directory, data_dir, 2)
    results, calls = {}, []
    original = MatmulAttention.apply
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MatmulAttention, "apply", lambda *args: calls.append(1) or original(*args))
        for attention in ("sdpa", "matmul"):
            model = load_vision_model(ModelConfig(path=str(directory), attn_implementation=attention))
            model.train()
            total, count = loss_sum(model, batch, "sft")
            (total / count).backward()
            results[attention] = (total.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert calls
    (loss_sdpa, grads_sdpa), (loss_matmul, grads_matmul) = results["sdpa"], results["matmul"]
    assert torch.allclose(loss_matmul, loss_sdpa, rtol=1e-5)
    scale = max(grad.abs().max().item() for grad in grads_sdpa.values())  # key biases' gradients are ~0 by nature
    for name, grad in grads_sdpa.items():
        difference = (grads_matmul[name] - grad).abs().max().item()
        assert difference <= 1e-4 * grad.abs().max().item() + 1e-6 * scale, (name, difference, scale)
