"""Image+text rows in `sftlab data ...`: images survive every command and the outputs read back through the vision
reader of `sftlab train` as the inputs did (relative paths rewritten for another directory), `<image>` placeholders
never move, vanish or appear, duplicates need the same image contents, bad images are dropped (clean) or listed
(validate) with their file:line, and what cannot apply refuses in one line."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from sftlab.cli import main
from sftlab.config.schema import DataConfig
from sftlab.datawork.augment import paraphrase_examples, paraphrase_instruction
from sftlab.datawork.dedup import example_hash
from sftlab.datawork.images import image_key, keep_placeholders
from sftlab.datawork.imagewrite import written_reference
from sftlab.datawork.records import load_examples
from sftlab.vision.data import load_vision_examples, read_vision_file

COLOURS = {"red": (220, 20, 20), "blue": (30, 40, 220), "green": (20, 200, 40)}


def png_bytes(rgb) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 10), rgb).save(buffer, "PNG")
    return buffer.getvalue()


def data_url(rgb) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(rgb)).decode()


def bomb_png(side: int = 30000) -> bytes:
    """A PNG header claiming side x side pixels: PIL refuses it as a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """data/ with images/red.png, images/blue.png, images/green.png and images/red_copy.png (red's bytes)."""
    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    for name, rgb in COLOURS.items():
        (images / f"{name}.png").write_bytes(png_bytes(rgb))
    (images / "red_copy.png").write_bytes(png_bytes(COLOURS["red"]))
    return tmp_path / "data"


def chat(text: str, answer: str, images=(), **fields) -> dict:
    return {**fields, "messages": [{"role": "user", "content": text}, {"role": "assistant", "content": answer}],
            **({"images": list(images)} if images else {})}


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def trained(path: Path) -> list[tuple]:
    """What `sftlab train` reads of a file for a vision-language model: (messages, resolved images) per row."""
    return [(e["messages"], e["images"]) for e in read_vision_file(path)]


def every_layout(data_dir: Path) -> Path:
    """One row of each layout and kind of image entry, with ids and metadata."""
    absolute = str(data_dir / "images" / "blue.png")
    return write(data_dir / "train.jsonl", [
        chat("<image>What colour is this?", "Red.", ["images/red.png"], id=1, source="a"),
        {"id": 2, "conversations": [{"from": "human", "value": "Look: <image> and <image>, which is darker?"},
                                    {"from": "gpt", "value": "The second."}],
         "images": ["images/green.png", absolute], "system": "Answer briefly.", "tags": ["pair"]},
        {"id": 3, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "images/blue.png"}},
                                                             {"type": "text", "text": "And this?"}]},
                               {"role": "assistant", "content": "Blue."}]},
        chat("<image>Name the colour.", "Green.", [data_url(COLOURS["green"])], id=4),
        chat("<image>A file URL.", "Red.", [(data_dir / "images" / "red.png").as_uri()], id=5),
        chat("Text only here.", "Fine.", id=6),
    ])


def test_clean_into_another_directory_rewrites_relative_paths_and_trains_as_the_input(data_dir, tmp_path):
    data = every_layout(data_dir)
    out = tmp_path / "elsewhere" / "deep" / "clean.jsonl"
    assert main(["data", "clean", str(data), str(out), "--no-near"]) == 0
    rows = read(out)
    assert [row["id"] for row in rows] == [1, 2, 3, 4, 5, 6] and rows[0]["source"] == "a" and rows[1]["tags"] == ["pair"]
    assert rows[0]["images"] == ["../../data/images/red.png"] and rows[2]["images"] == ["../../data/images/blue.png"]
    assert rows[1]["images"][1] == str(data_dir / "images" / "blue.png")          # absolute: as given
    assert rows[3]["images"] == [data_url(COLOURS["green"])]                       # data URL: unchanged
    assert rows[4]["images"] == [(data_dir / "images" / "red.png").as_uri()]       # file:// URL: unchanged
    assert "images" not in rows[5]
    assert trained(out) == trained(data)
    train, _ = load_vision_examples(DataConfig(train=str(out)))  # the run's reader (it mixes the rows)
    assert sorted(e["images"] for e in train) == sorted(e["images"] for e in read_vision_file(data))


def test_rewritten_paths_resolve_through_symbolic_links_and_other_entries_stay(data_dir, tmp_path):
    (tmp_path / "real" / "nested").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real" / "nested")
    entry = written_reference("images/red.png", data_dir, tmp_path / "link")
    assert entry == "../../data/images/red.png" and (tmp_path / "link" / entry).resolve() == (data_dir / "images" / "red.png")
    for kept in ("~/pics/a.png", "/abs/a.png", "file:///abs/a.png", "https://example.com/a.png", data_url(COLOURS["red"])):
        assert written_reference(kept, data_dir, tmp_path / "link") == kept


def test_validate_accepts_every_layout_and_kind_of_entry_mixed_in_one_file(data_dir, capsys):
    data = every_layout(data_dir)
    assert main(["data", "build", "validate", str(data)]) == 0
    assert capsys.readouterr().out == f"{data}: 6 rows, 0 problem(s)\n"


def test_an_output_beside_the_input_keeps_each_path_as_written(data_dir):
    data = write(data_dir / "in.jsonl", [chat("<image>Hi.", "Red.", ["./images/red.png"])])
    assert main(["data", "build", "convert", str(data), str(data_dir / "out.jsonl")]) == 0
    assert read(data_dir / "out.jsonl")[0]["images"] == ["./images/red.png"]


@pytest.mark.parametrize("layout", ["messages", "sharegpt", "openai", "jsonl"])
def test_convert_between_image_layouts_reads_back_the_same(data_dir, tmp_path, layout):
    data = every_layout(data_dir)
    out = tmp_path / "converted" / f"{layout}.json"
    assert main(["data", "build", "convert", str(data), str(out), "--to", layout]) == 0
    assert trained(out) == trained(data)
    back = tmp_path / "back" / "messages.jsonl"
    assert main(["data", "build", "convert", str(out), str(back), "--to", "messages"]) == 0
    assert trained(back) == trained(data) and [row["id"] for row in read(back)] == [1, 2, 3, 4, 5, 6]
    if layout == "openai":
        parts = json.loads(out.read_text(encoding="utf-8"))[1]["messages"][1]["content"]
        assert [part["type"] for part in parts] == ["text", "image_url", "text", "image_url", "text"]


@pytest.mark.parametrize("layout", ["alpaca", "csv"])
def test_layouts_without_images_are_refused_in_one_line(data_dir, capsys, layout):
    data = every_layout(data_dir)
    out = data_dir / ("out.json" if layout == "alpaca" else "out.csv")
    assert main(["data", "build", "convert", str(data), str(out), "--to", layout]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {data}:1: an image+text row; --to {layout} has no place for images") and err.count("\n") == 1
    assert sorted(p.name for p in data_dir.iterdir()) == ["images", "train.jsonl"]  # nothing written, not even a temp


def test_exact_duplicates_need_the_same_image_contents_not_the_same_paths(data_dir):
    data = write(data_dir / "d.jsonl", [
        chat("<image>What colour is this?", "Red.", ["images/red.png"]),
        chat("<image>What colour is this?", "Red.", ["images/red_copy.png"]),          # same bytes, other path
        chat("<image>what colour is this", "Red.", [data_url(COLOURS["red"])]),       # same bytes as a data URL
        chat("<image>What colour is this?", "Red.", ["images/blue.png"]),             # same text, other image
    ])
    out = data_dir / "clean.jsonl"
    assert main(["data", "clean", str(data), str(out)]) == 0
    assert [row["images"] for row in read(out)] == [["images/red.png"], ["images/blue.png"]]
    removed = json.loads((data_dir / "clean.report.json").read_text())["removed"]
    assert removed["exact duplicate"]["count"] == 2
    assert [item["why"] for item in removed["exact duplicate"]["examples"]] == [f"exact duplicate of {data}:1"] * 2
    examples = load_examples(data)
    assert example_hash(examples[0]) == example_hash(examples[1]) != example_hash(examples[3])
    missing = load_examples(write(data_dir / "m.jsonl", [chat("<image>Hi.", "Red.", [f"images/gone{n}.png"])
                                                         for n in (1, 1, 2)]))
    assert example_hash(missing[0]) == example_hash(missing[1]) != example_hash(missing[2])  # compared by path


def test_near_duplicates_of_the_text_with_other_images_are_kept(data_dir):
    long = "<image>Describe the colour of the square in this picture in a few words, please."
    data = write(data_dir / "d.jsonl", [
        chat(long, "A red square.", ["images/red.png"]),
        chat(long.replace("please", "thanks"), "A red square.", ["images/blue.png"]),   # near text, other image
        chat(long.replace("please", "thanks"), "A red square.", ["images/red_copy.png"]),  # near text, same image
    ])
    out = data_dir / "clean.jsonl"
    assert main(["data", "clean", str(data), str(out), "--near", "0.7"]) == 0
    assert [row["images"] for row in read(out)] == [["images/red.png"], ["images/blue.png"]]
    removed = json.loads((data_dir / "clean.report.json").read_text())["removed"]
    assert removed["near duplicate"]["examples"][0]["src"] == f"{data}:3"


def test_image_hashes_are_computed_once_per_file(data_dir, monkeypatch):
    calls = []
    real = hashlib.file_digest
    monkeypatch.setattr(hashlib, "file_digest", lambda handle, name: calls.append(handle.name) or real(handle, name))
    data = write(data_dir / "d.jsonl", [chat(f"<image>Question {i}?", "Red.", ["images/red.png"]) for i in range(5)])
    examples = load_examples(data)
    keys = {tuple(image_key(example)) for example in examples for _ in range(3)}
    assert len(keys) == 1 and len(calls) == 1
    (data_dir / "images" / "red.png").write_bytes(png_bytes(COLOURS["blue"]))  # a changed file is hashed again
    assert image_key(examples[0]) != list(keys.pop()) and len(calls) == 2


def test_normalisation_and_pii_redaction_keep_every_placeholder(data_dir):
    data = write(data_dir / "d.jsonl", [
        chat("<p><image>Hello&nbsp;&nbsp;<b>world</b>, mail a.b@corp.com</p>", "Ｒｅｄ.", ["images/red.png"]),
        chat("<image>Is &lt;image&gt; a tag?", "No.", ["images/blue.png"]),           # unescaping would add one
        chat("<image>Full-width ＜ｉｍａｇｅ＞?", "No.", ["images/green.png"]),         # NFKC would add one
        chat("Look  at <image>   and\u200b <image> here.", "Two.", ["images/red.png", "images/blue.png"]),
    ])
    out = data_dir / "clean.jsonl"
    assert main(["data", "clean", str(data), str(out), "--redact-pii", "--no-refusals"]) == 0
    users = [row["messages"][0]["content"] for row in read(out)]
    assert users == ["<image>Hello world, mail [EMAIL]", "<image>Is &lt;image&gt; a tag?",
                     "<image>Full-width ＜ｉｍａｇｅ＞?", "Look at <image> and <image> here."]
    assert [len(images) for _, images in trained(out)] == [1, 1, 1, 2]


def test_keep_placeholders_refuses_an_edit_that_loses_or_adds_one():
    assert keep_placeholders("a <image> b", str.upper) == "A <image> B"
    assert keep_placeholders("a <image> b", lambda text: "") == "a <image> b"
    assert keep_placeholders("a <image> b", lambda text: text + text) == "a <image> b"
    assert keep_placeholders("a <image> b", lambda text: text + "<image>") == "a <image> b"


def test_augment_never_moves_removes_or_duplicates_placeholders(data_dir, tmp_path):
    synonyms = tmp_path / "syn.txt"
    synonyms.write_text("colour,color,hue\nlook,see,view\n颜色,色彩\n", encoding="utf-8")
    data = write(data_dir / "d.jsonl", [
        chat("<image>What colour is this square?", "Red.", ["images/red.png"], id=7),
        chat("Look at <image> and tell me the colour.", "Blue.", ["images/blue.png"]),
        chat("<image>这张图片是什么颜色？<image>和这张呢？", "红色和绿色。", ["images/red.png", "images/green.png"]),
        chat("<image>Colour?", "Red.", ["images/red.png"]),
    ])
    out = tmp_path / "aug" / "aug.jsonl"
    assert main(["data", "augment", str(data), str(out), "--methods", "synonym,swap,delete,insert", "--rate", "1.0",
                 "--copies", "4", "--synonyms", str(synonyms)]) == 0
    rows = read(out)
    copies = rows[4:]
    assert len(copies) > 12 and trained(out)[:4] == trained(data)
    for row in copies:
        source = read(data)[int(row["augmented"]["source"].rsplit(":", 1)[1]) - 1]
        text, original = row["messages"][0]["content"], source["messages"][0]["content"]
        assert text.count("<image>") == original.count("<image>") and text.replace("<image>", "").strip()
        assert row["images"] == ["../data/" + path for path in source["images"]]
        if row["augmented"]["method"] in ("synonym", "swap", "delete") and original.startswith("<image>"):
            assert text.startswith("<image>")
        if row["augmented"]["method"] in ("synonym", "swap") and original.startswith("Look"):
            assert len(text.split("<image>")[0].split()) == 2  # still two words before the image
    assert {row["augmented"].get("source_id") for row in copies} >= {7}
    assert len(trained(out)) == len(rows)


def test_a_paraphrase_with_other_placeholders_is_dropped(data_dir):
    examples = load_examples(write(data_dir / "d.jsonl", [chat("<image>What colour is this?", "Red.", ["images/red.png"]),
                                                          chat("<image>Which colour?", "Blue.", ["images/blue.png"])]))
    rejected: list = []
    prompts: list = []
    new = paraphrase_examples(examples, lambda given: prompts.extend(given) or ["Which hue is shown? <image>",
                                                                                "Tell me the colour."], rejected)
    assert prompts[0] == paraphrase_instruction("<image>What colour is this?") and "Keep every <image>" in prompts[0]
    assert [(e["messages"][0]["content"], e["images"]) for e in new] == [("Which hue is shown? <image>", ["images/red.png"])]
    assert rejected[0][0] is examples[1] and rejected[0][1].startswith("the rewrite has 0 <image> placeholder(s)")


def test_a_placeholder_count_that_differs_from_the_images_names_file_line(data_dir, capsys):
    data = write(data_dir / "d.jsonl", [chat("<image>Fine.", "Red.", ["images/red.png"]),
                                        chat("<image><image>Two?", "One.", ["images/red.png"])])
    assert main(["data", "clean", str(data), str(data_dir / "o.jsonl")]) == 2
    assert capsys.readouterr().err == (f"error: {data}:2: 2 <image> placeholder(s) but 1 image(s); every image needs "
                                       "exactly one <image> in the text\n")
    assert main(["data", "build", "validate", str(data)]) == 1
    assert f"{data}:2: schema: 2 <image> placeholder(s) but 1 image(s)" in capsys.readouterr().out


@pytest.mark.parametrize("row, message", [
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<image>"}], "images": ["images/red.png"]},
     "messages[1] is an assistant turn with an image"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "image": "images/red.png"}]},
                   {"role": "assistant", "content": "Red."}], "images": ["images/red.png"]},
     "images given both as content parts and in an 'images' list"),
])
def test_the_vision_readers_other_checks_name_file_line(data_dir, capsys, row, message):
    data = write(data_dir / "d.jsonl", [row])
    assert main(["data", "build", "convert", str(data), str(data_dir / "o.jsonl")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {data}:1: {message}")


@pytest.fixture
def bad_images(data_dir) -> Path:
    (data_dir / "images" / "broken.png").write_bytes(b"not a png at all")
    (data_dir / "images" / "bomb.png").write_bytes(bomb_png())
    return write(data_dir / "d.jsonl", [
        chat("<image>Good.", "Red.", ["images/red.png"]),
        chat("<image>Missing.", "Red.", ["images/missing.png"]),
        chat("<image>Broken.", "Red.", ["images/broken.png"]),
        chat("<image>Bomb.", "Red.", ["images/bomb.png"]),
        chat("<image>Web.", "Red.", ["https://example.com/a.png"]),
        chat("<image>Bad data URL.", "Red.", ["data:image/png;base64,AAAA"]),
    ])


def test_clean_drops_rows_whose_images_training_cannot_open_with_counted_reasons(bad_images, data_dir):
    out = data_dir / "clean.jsonl"
    assert main(["data", "clean", str(bad_images), str(out)]) == 0
    assert [row["messages"][0]["content"] for row in read(out)] == ["<image>Good."]
    report = json.loads((data_dir / "clean.report.json").read_text())
    removed = {kind: (group["count"], [item["src"] for item in group["examples"]])
               for kind, group in report["removed"].items()}
    assert removed == {"image not found": (1, [f"{bad_images}:2"]),
                       "image unreadable": (3, [f"{bad_images}:3", f"{bad_images}:4", f"{bad_images}:6"]),
                       "image not a local file": (1, [f"{bad_images}:5"])}
    assert "DecompressionBombError" in report["removed"]["image unreadable"]["examples"][1]["why"]
    assert report["sections"]["images"] == {"rows_with_images": 6, "images": 6, "removed_examples": 5}


def test_validate_lists_every_bad_image_with_file_line(bad_images, capsys):
    assert main(["data", "build", "validate", str(bad_images)]) == 1
    lines = [line for line in capsys.readouterr().out.splitlines() if ": image: " in line]
    assert [line.split(": image: ")[0] for line in lines] == [f"{bad_images}:{n}" for n in (2, 3, 4, 5, 6)]
    assert "file not found" in lines[0] and "DecompressionBombError" in lines[2] and "web URL" in lines[3]


def test_stats_counts_images_and_leaves_placeholders_out_of_the_language_mix(data_dir, capsys):
    data = write(data_dir / "d.jsonl", [
        chat("<image>这是什么颜色？", "红色。", ["images/red.png"]),
        chat("<image>这个呢？", "红色。", ["images/red_copy.png"]),
        chat("<image><image>两张图？", "蓝色和绿色。", ["images/blue.png", "images/missing.png"]),
        chat("没有图片。", "好的。"),
    ])
    assert main(["data", "stats", str(data)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["images"] == {"rows_with_images": 3, "images": 4, "rows_by_image_count": {"0": 1, "1": 2, "2": 1},
                               "distinct_images": 3, "missing_files": 1}
    assert stats["languages"] == {"zh": 4}
    assert stats["prompt_length"]["max"] == len("<image><image>两张图？")  # placeholders count as characters


@pytest.mark.parametrize("args, what", [
    (["stats", "{data}", "--tokenizer", "tok"], "--tokenizer/--config count tokens"),
    (["balance", "{data}", "{out}.npz", "--method", "smote", "--encoder", "enc"], "--method smote embeds the texts"),
    (["features", "{data}", "{out}.csv", "--spec", "spec.yaml"], "data features builds a feature table"),
    (["clean", "{data}", "{out}.jsonl", "--columns", "messages=conversation"], "--columns is not supported"),
    (["clean", "{data}", "{out}.jsonl", "--format", "alpaca"], "not as --format alpaca"),
    (["augment", "{data}", "{out}.jsonl", "--stage", "cls"], "an image+text row is sft data; --stage cls"),
])
def test_what_cannot_apply_to_image_rows_refuses_in_one_line(data_dir, capsys, args, what):
    data = every_layout(data_dir)
    out = data_dir / "out"
    assert main(["data", *[a.format(data=data, out=out) for a in args]]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {data}:1: an image+text row") and what in err and err.count("\n") == 1
    assert not list(data_dir.glob("out*"))


def test_tool_data_in_an_image_row_is_refused_rather_than_dropped(data_dir, capsys):
    data = write(data_dir / "d.jsonl", [chat("<image>Hi.", "Red.", ["images/red.png"]),
                                        chat("<image>Hi.", "Red.", ["images/red.png"], tools=[{"type": "function"}])])
    assert main(["data", "clean", str(data), str(data_dir / "o.jsonl")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {data}:2: an image+text row with tools or tool calls")


def test_balance_resamples_image_rows_with_their_images(data_dir, tmp_path):
    rows = [chat(f"<image>Is it red? ({i})", "yes" if i < 6 else "no", [f"images/{'red' if i < 6 else 'blue'}.png"], id=i)
            for i in range(8)]
    data = write(data_dir / "d.jsonl", rows)
    out, val = tmp_path / "bal" / "train.jsonl", tmp_path / "val" / "val.jsonl"
    assert main(["data", "balance", str(data), str(out), "--method", "oversample", "--val-ratio", "0.5",
                 "--val-out", str(val)]) == 0
    balanced, held = read(out), read(val)
    answers = [row["messages"][1]["content"] for row in balanced]
    assert answers.count("yes") == answers.count("no") == 3  # 3 yes + 1 no before, after the split
    assert len(held) == 4 and all(row["images"][0].startswith("../data/images/") for row in balanced + held)
    by_id = {row["id"]: row for row in rows}
    assert all(row["images"] == ["../data/" + by_id[row["id"]]["images"][0]] for row in balanced + held)
    assert len(trained(out)) == 6 and len(trained(val)) == 4


def test_leakage_into_an_eval_set_needs_the_same_images(data_dir, tmp_path):
    data = write(data_dir / "d.jsonl", [chat("<image>What colour is this?", "Red.", ["images/red.png"]),
                                        chat("<image>What colour is that?", "Blue.", ["images/blue.png"])])
    evals = tmp_path / "eval"
    (evals / "pics").mkdir(parents=True)
    (evals / "pics" / "same_red.png").write_bytes(png_bytes(COLOURS["red"]))
    (evals / "pics" / "green.png").write_bytes(png_bytes(COLOURS["green"]))
    test = write(evals / "test.jsonl", [chat("<image>What colour is this?", "Red.", ["pics/same_red.png"]),
                                        chat("<image>What colour is that?", "Blue.", ["pics/green.png"])])
    out = data_dir / "clean.jsonl"
    assert main(["data", "clean", str(data), str(out), "--eval", str(test)]) == 0
    assert [row["messages"][1]["content"] for row in read(out)] == ["Blue."]
    leaks = json.loads((data_dir / "clean.report.json").read_text())["sections"]["leakage"]["leaks"]
    assert [(leak["train_src"], leak["eval_src"], leak["kind"]) for leak in leaks] == [(f"{data}:1", f"{test}:1", "exact")]


def test_an_output_that_is_the_input_is_refused_and_the_input_is_unchanged(data_dir, capsys):
    data = every_layout(data_dir)
    before = data.read_bytes()
    assert main(["data", "clean", str(data), str(data)]) == 2
    assert "would overwrite the input file" in capsys.readouterr().err and data.read_bytes() == before
