"""Image+text data, encoding, batches and model parts on tiny random VLMs (Qwen2-VL, LLaVA) built in code."""

import base64
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from sftlab.errors import SftlabError
from sftlab.models.tiny_vlm import save_tiny_vlm
from sftlab.vision.collate import make_vision_collator
from sftlab.vision.data import to_multimodal
from sftlab.vision.encode import encode_vision_example, image_token_id, to_content_parts
from sftlab.vision.load import is_vision_model, load_processor, load_vision_model
from sftlab.vision.parts import expand_part_globs, part_groups

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 40), "blue": (30, 40, 220)}


def model_cfg(path):
    return SimpleNamespace(path=str(path), trust_remote_code=False, dtype="float32", attn_implementation="sdpa")


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm")
    return {family: save_tiny_vlm(family, root / family) for family in ("qwen2_vl", "qwen2_5_vl", "llava", "gemma3")}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    for name, rgb in COLOURS.items():
        Image.new("RGB", (56, 48), rgb).save(root / f"{name}.png")
    (root / "broken.png").write_bytes(b"not a png at all")
    (root / "huge.png").write_bytes(huge_png_header())
    return root


def huge_png_header(side: int = 30000) -> bytes:
    """A PNG that says it is side x side pixels (PIL refuses it on open as a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def record(text="<image>What colour is this?", answer="It is red.", images=("red.png",), src="d.json:3"):
    return {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": answer}],
            "images": list(images), "_src": src}


def test_tiny_vlms_load_offline_as_image_text_models(tiny_dirs):
    from sftlab.config.schema import ModelConfig
    from sftlab.models.load import load_model

    for family, directory in tiny_dirs.items():
        cfg = ModelConfig(path=str(directory))
        assert is_vision_model(cfg) and (directory / "processor_config.json").is_file()
        processor = load_processor(cfg)
        assert processor.image_token in processor.tokenizer.get_vocab()
        assert type(load_model(cfg, "sft")).__name__.endswith("ForConditionalGeneration")
        with pytest.raises(SftlabError, match="classification heads on vision-language models"):
            load_model(cfg, "cls", num_labels=2)
    assert not is_vision_model(model_cfg(tiny_dirs["llava"] / "missing"))


def test_records_resolve_images_relative_to_the_file_and_from_parts(images):
    sharegpt = {"conversations": [{"from": "human", "value": "<image>Hi"}, {"from": "gpt", "value": "Red."}],
                "images": ["red.png"], "_src": "a.json:1"}
    example = to_multimodal(sharegpt, images)
    assert example["images"] == [str((images / "red.png").resolve())]
    assert example["messages"][0] == {"role": "user", "content": "<image>Hi"}
    data_url = "data:image/png;base64," + base64.b64encode((images / "blue.png").read_bytes()).decode()
    openai = {"messages": [
        {"role": "user", "content": [{"type": "text", "text": "Compare "},
                                     {"type": "image_url", "image_url": {"url": "green.png"}},
                                     {"type": "image_url", "image_url": {"url": data_url}}]},
        {"role": "assistant", "content": "Green, then blue."}], "_src": "b.jsonl:2"}
    example = to_multimodal(openai, images)
    assert example["messages"][0]["content"] == "Compare <image><image>"
    assert example["images"] == [str((images / "green.png").resolve()), data_url]


@pytest.mark.parametrize("row, message", [
    (record(text="<image><image>Two?"), "d.json:3: 2 <image> placeholder(s) but 1 image(s)"),
    (record(images=("red.png", "blue.png")), "d.json:3: 1 <image> placeholder(s) but 2 image(s)"),
    (record(images=("gone.png",)), "d.json:3: image file not found"),
    (record(images=("broken.png",)), "d.json:3: cannot read image"),
    (record(images=("huge.png",)), "d.json:3: cannot read image"),  # a decompression bomb: an error, not a crash
    (record(answer="<image>"), "d.json:3: messages[1] is an assistant turn with an image"),
    (record(images=("https://example.org/a.png",)), "d.json:3: image 'https://example.org/a.png' is a web URL"),
])
def test_bad_records_fail_with_their_line(images, row, message):
    with pytest.raises(SftlabError, match=re.escape(message)):
        to_multimodal(row, images)


def _supervised_text(processor, row):
    return processor.tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != -100])


@pytest.mark.parametrize("family, end", [("qwen2_vl", "<|im_end|>"), ("qwen2_5_vl", "<|im_end|>"), ("llava", "<|im_end|>"),
                                         ("gemma3", "<end_of_turn>")])
def test_labels_cover_assistant_text_only_never_image_tokens(tiny_dirs, images, family, end):
    processor = load_processor(model_cfg(tiny_dirs[family]))
    example = to_multimodal({"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "<image>Colour?"},
        {"role": "assistant", "content": "Red."}, {"role": "user", "content": "And this one <image>?"},
        {"role": "assistant", "content": "Blue."}], "images": ["red.png", "blue.png"], "_src": "c.json:1"}, images)
    row = encode_vision_example(example, processor, max_length=512)
    assert row["status"] == "ok" and _supervised_text(processor, row) == f"Red.{end}Blue.{end}"
    image_positions = [i for i, t in enumerate(row["input_ids"]) if t == image_token_id(processor)]
    assert len(image_positions) == row["image_tokens"] > 2  # expanded: more tokens than images
    assert all(row["labels"][i] == -100 for i in image_positions)
    last = encode_vision_example(example, processor, max_length=512, mask="last_assistant")
    assert _supervised_text(processor, last) == f"Blue.{end}"
    everything = encode_vision_example(example, processor, max_length=512, mask="all")
    unsupervised = {i for i, label in enumerate(everything["labels"]) if label == -100}
    assert set(image_positions) <= unsupervised  # with mask=all too; at most the image markers the processor
    assert len(unsupervised) <= len(image_positions) + 6 * len(example["images"])  # wraps around them join them


def test_image_tokens_match_what_the_processor_gives(tiny_dirs, images):
    processor = load_processor(model_cfg(tiny_dirs["qwen2_vl"]))
    example = to_multimodal(record(), images)
    row = encode_vision_example(example, processor, max_length=512)
    text = processor.apply_chat_template(to_content_parts(example["messages"]), tokenize=False)
    direct = processor(text=[text], images=[Image.open(images / "red.png").convert("RGB")], add_special_tokens=False)
    assert row["input_ids"] == list(direct["input_ids"][0])


def test_long_samples_are_dropped_or_cut_but_never_inside_an_image(tiny_dirs, images):
    processor = load_processor(model_cfg(tiny_dirs["qwen2_vl"]))
    early = to_multimodal({"messages": [
        {"role": "user", "content": "<image>What colour is it?"}, {"role": "assistant", "content": "Red, a bright red."},
        {"role": "user", "content": "Sure?"}, {"role": "assistant", "content": "Yes."}], "images": ["red.png"],
        "_src": "e.json:1"}, images)
    late = to_multimodal({"messages": [
        {"role": "user", "content": "Hello there, how are you today?"}, {"role": "assistant", "content": "Fine, thanks."},
        {"role": "user", "content": "<image>Colour?"}, {"role": "assistant", "content": "Red."}], "images": ["red.png"],
        "_src": "e.json:2"}, images)
    full = encode_vision_example(late, processor, max_length=512)
    limit = len(full["input_ids"]) - 5
    assert encode_vision_example(late, processor, limit, truncation="drop")["status"] == "dropped_too_long"
    cut = encode_vision_example(late, processor, limit, truncation="left")
    assert cut["status"] == "cut_left" and len(cut["input_ids"]) == limit
    assert cut["input_ids"] == full["input_ids"][-limit:] and cut["image_tokens"] == full["image_tokens"]
    early_full = encode_vision_example(early, processor, max_length=512)
    dropped = encode_vision_example(early, processor, len(early_full["input_ids"]) - 3, truncation="left")
    assert dropped["status"] == "dropped_image_span"


def test_collate_gives_the_processor_inputs_for_the_batch(tiny_dirs, images):
    processor = load_processor(model_cfg(tiny_dirs["qwen2_vl"]))
    rows = [encode_vision_example(to_multimodal(record(images=(f"{c}.png",)), images), processor, 512)
            for c in ("red", "green")]
    rows.append(encode_vision_example(to_multimodal(record(text="No image here.", images=()), images), processor, 512))
    batch = make_vision_collator(processor)(rows)
    direct = processor.image_processor([Image.open(images / f"{c}.png").convert("RGB") for c in ("red", "green")],
                                       return_tensors="pt")
    assert torch.equal(batch["pixel_values"], direct["pixel_values"])
    assert torch.equal(batch["image_grid_thw"], direct["image_grid_thw"])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["mm_token_type_ids"].shape
    assert int(batch["mm_token_type_ids"].sum()) == sum(row["image_tokens"] for row in rows)
    model = load_vision_model(model_cfg(tiny_dirs["qwen2_vl"]))
    from sftlab.train.loss import causal_lm_loss_sum

    total, count = causal_lm_loss_sum(model, batch)
    assert count == int((batch["labels"][:, 1:] != -100).sum()) and torch.isfinite(total)


@pytest.mark.parametrize("family, vision, projector", [("qwen2_vl", "model.visual", "model.visual.merger"),
                                                       ("qwen2_5_vl", "model.visual", "model.visual.merger"),
                                                       ("llava", "model.vision_tower", "model.multi_modal_projector"),
                                                       ("gemma3", "model.vision_tower", "model.multi_modal_projector")])
def test_part_groups_split_every_parameter_once(tiny_dirs, family, vision, projector):
    model = load_vision_model(model_cfg(tiny_dirs[family]))
    groups = part_groups(model)
    names = [name for name, _ in model.named_parameters(remove_duplicate=False)]
    assert sorted(sum(groups.values(), [])) == sorted(names)
    assert groups["projector"] and all(n.startswith(projector + ".") for n in groups["projector"])
    assert groups["vision"] and all(n.startswith(vision + ".") for n in groups["vision"])
    assert "lm_head.weight" in groups["language"] and not any(n.startswith(vision) for n in groups["language"])
    assert expand_part_globs(model, ["vision:*.bias", "lm_head"], "k")[-1] == "lm_head"
    with pytest.raises(SftlabError, match="k: 'projector:nothing' matches no parameter of the projector part"):
        expand_part_globs(model, ["projector:nothing"], "k")


def test_part_globs_on_a_text_model_fail_clearly():
    from sftlab.models.tiny import make_tiny_model

    with pytest.raises(SftlabError, match="has no vision tower"):
        expand_part_globs(make_tiny_model("qwen2"), ["vision:*"], "strategy.freeze.modules")


def test_layer_list_of_a_vlm_is_the_language_model(tiny_dirs):
    from sftlab.strategy.structure import find_layer_list

    name, blocks = find_layer_list(load_vision_model(model_cfg(tiny_dirs["qwen2_vl"])))
    assert name == "model.language_model.layers" and len(blocks) == 2


def test_saved_dir_names_the_upstream_processor_class(tiny_dirs):
    saved = json.loads((tiny_dirs["qwen2_vl"] / "processor_config.json").read_text())
    assert saved["processor_class"] == "Qwen2VLProcessor"


def test_registry_entries_and_file_urls(tmp_path, images):
    from sftlab.config.schema import DataConfig
    from sftlab.vision.data import load_vision_examples

    rows = [{"messages": [{"role": "user", "content": "<image>Colour?"}, {"role": "assistant", "content": f"{c}."}],
             "images": [f"file://{images / (c + '.png')}"]} for c in COLOURS]
    (tmp_path / "demo.json").write_text(json.dumps(rows), encoding="utf-8")
    registry = {"demo": {"file_name": "demo.json", "formatting": "sharegpt",
                         "columns": {"messages": "messages", "images": "images"},
                         "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}}
    (tmp_path / "dataset_info.json").write_text(json.dumps(registry), encoding="utf-8")
    cfg = DataConfig(train="demo", registry="dataset_info.json", val_ratio=0.3)
    train, val = load_vision_examples(cfg, tmp_path)
    assert len(train) == 2 and len(val) == 1
    assert sorted(e["images"][0] for e in train + val) == sorted(str(images / f"{c}.png") for c in COLOURS)
    with pytest.raises(SftlabError, match="data.columns: not supported for image"):
        load_vision_examples(cfg.model_copy(update={"columns": {"messages": "turns"}}), tmp_path)
    with pytest.raises(SftlabError, match="data.format 'alpaca': image"):
        load_vision_examples(cfg.model_copy(update={"format": "alpaca"}), tmp_path)


def test_a_directory_of_data_files_reads_each_as_for_text(tmp_path, images):
    # docs/train.md: "a file or a directory of data files"; for image+text data a directory was "data file not found"
    from sftlab.config.schema import DataConfig
    from sftlab.vision.data import load_vision_examples

    folder = tmp_path / "captions"
    folder.mkdir()
    for index, colour in enumerate(COLOURS):
        row = {"messages": [{"role": "user", "content": "<image>Colour?"}, {"role": "assistant", "content": colour}],
               "images": [str(images / f"{colour}.png")]}
        (folder / f"part-{index}.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    (folder / "notes.md").write_text("not data", encoding="utf-8")
    train, _ = load_vision_examples(DataConfig(train="captions"), tmp_path)
    assert sorted(example["images"][0] for example in train) == sorted(str(images / f"{c}.png") for c in COLOURS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SftlabError, match=r"^data: 'empty': directory .*empty holds no data files"):
        load_vision_examples(DataConfig(train="empty"), tmp_path)


def test_system_field_and_tiny_vlm_command(tmp_path, images):
    from sftlab.cli import main

    example = to_multimodal({"system": "Be brief.", **record()}, images)
    assert example["messages"][0] == {"role": "system", "content": "Be brief."}
    assert main(["model", "tiny-vlm", "llava", str(tmp_path / "llava")]) == 0
    assert is_vision_model(model_cfg(tmp_path / "llava")) and (tmp_path / "llava" / "chat_template.jinja").is_file()


SFT_DEMO = Path(__file__).resolve().parents[2] / "shared" / "data" / "sft_demo"


@pytest.mark.skipif(not (SFT_DEMO / "mllm_demo.json").is_file(), reason="../shared/data/sft_demo absent")
def test_llama_factory_mllm_demo_through_its_registry(tiny_dirs):
    from sftlab.config.schema import DataConfig
    from sftlab.vision.data import load_vision_examples

    train, _ = load_vision_examples(DataConfig(train="mllm_demo", registry=str(SFT_DEMO / "dataset_info.json")))
    assert len(train) == 6 and all(Path(image).is_file() for e in train for image in e["images"])
    processor = load_processor(model_cfg(tiny_dirs["qwen2_vl"]))
    rows = [encode_vision_example(example, processor, 1024) for example in train]
    assert all(row["status"] == "ok" and row["image_tokens"] >= len(e["images"]) for row, e in zip(rows, train))


def test_image_token_count_the_model_does_not_expect_is_refused(tiny_dirs, images, monkeypatch):
    from transformers.processing_utils import MultiModalData

    processor = load_processor(model_cfg(tiny_dirs["qwen2_vl"]))
    monkeypatch.setattr(processor, "_get_num_multimodal_tokens",
                        lambda image_sizes, **kwargs: MultiModalData(num_image_tokens=[9] * len(image_sizes)))
    with pytest.raises(SftlabError, match=r"d.json:3: 4 image tokens after processing but the model expects 9 "):
        encode_vision_example(to_multimodal(record(), images), processor, 512)


@pytest.mark.parametrize("family, key, value, message", [
    ("qwen2_vl", ("vision_config", "patch_size"), 16, "image_processor.patch_size is 14 but config.json "
                                                      "vision_config.patch_size is 16"),
    ("gemma3", ("mm_tokens_per_image",), 16, "image_seq_length is 4 but config.json mm_tokens_per_image is 16"),
])
def test_processor_settings_that_disagree_with_the_model_are_refused(tiny_dirs, tmp_path, family, key, value, message):
    import shutil

    from sftlab.vision.load import check_processor_matches_model

    check_processor_matches_model(load_processor(model_cfg(tiny_dirs[family])), tiny_dirs[family])
    copy = tmp_path / family
    shutil.copytree(tiny_dirs[family], copy)
    config = json.loads((copy / "config.json").read_text())
    (config[key[0]] if len(key) == 2 else config)[key[-1]] = value
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(SftlabError, match=re.escape(message)):
        check_processor_matches_model(load_processor(model_cfg(copy)), copy)
