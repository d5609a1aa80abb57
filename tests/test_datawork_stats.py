"""sftlab data stats: counts, lengths, supervised-token ratio, truncation share, labels, duplicates, languages, plots."""

from __future__ import annotations

import json

from sftlab.cli import main
from sftlab.datawork.stats import compute_stats, summarize


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def sft(user, assistant, src="s:1"):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}], "_src": src}


def test_summarize_known_values():
    assert summarize([1, 2, 3, 4, 10]) == {"count": 5, "mean": 4.0, "min": 1, "p50": 3, "p90": 4, "p99": 4, "max": 10}
    assert summarize([])["count"] == 0


def test_stats_in_characters_without_tokenizer():
    examples = [sft("abc", "de", "s:1"), sft("abc", "de", "s:2"), sft("你好吗", "很好，谢谢你", "s:3"),
                sft("question?", "yes", "s:4")]
    stats, lengths = compute_stats(examples, label_task=True)
    assert stats["unit"] == "chars" and lengths["prompt"] == [3, 3, 3, 9] and lengths["response"] == [2, 2, 6, 3]
    assert stats["labels"] == {"de": 2, "yes": 1, "很好，谢谢你": 1}
    assert stats["duplicates"]["exact"] == 1 and stats["duplicates"]["examples"][0]["src"] == "s:2"
    assert stats["languages"] == {"en": 3, "zh": 1}
    assert "supervised_token_ratio" not in stats and "truncated" not in stats


def test_stats_with_tokenizer_matches_template_encoding():
    from sftlab.data.templates import encode_conversation
    from sftlab.models.tiny import make_tokenizer

    tok = make_tokenizer("chatml")
    examples = [sft("short", "ok", "s:1"), sft("a much longer question " * 5, "and a long answer " * 5, "s:2")]
    encoded = [encode_conversation(tok, e["messages"]) for e in examples]
    total = sum(len(ids) for ids, _ in encoded)
    supervised = sum(sum(1 for x in labels if x != -100) for _, labels in encoded)
    max_length = len(encoded[0][0]) + 1
    stats, _ = compute_stats(examples, tok, max_length=max_length)
    assert stats["supervised_token_ratio"] == round(supervised / total, 4)
    assert stats["truncated"] == {"count": 1, "share": 0.5}
    assert stats["sequence_length"]["max"] == len(encoded[1][0])


def test_stats_cli_writes_json_markdown_and_plots_identically(tmp_path, capsys):
    rows = [{"text": f"text number {i}", "label": "a" if i < 6 else "b"} for i in range(8)]
    data = write_jsonl(tmp_path / "cls.jsonl", rows)
    outputs = []
    for name in ("s1", "s2"):
        assert main(["data", "stats", str(data), "--out", str(tmp_path / name)]) == 0
        outputs.append({p.name: p.read_bytes() for p in sorted((tmp_path / name).iterdir())})
    assert outputs[0] == outputs[1]
    assert set(outputs[0]) == {"stats.json", "stats.md", "prompt_lengths.png", "labels.png"}
    assert outputs[0]["labels.png"][:8] == b"\x89PNG\r\n\x1a\n"
    stats = json.loads(outputs[0]["stats.json"])
    assert stats["labels"] == {"a": 6, "b": 2} and stats["examples"] == 8
    assert main(["data", "stats", str(data), "--out", str(tmp_path / "s1")]) == 2  # exists, no --overwrite
    capsys.readouterr()
    assert main(["data", "stats", str(data)]) == 0
    assert json.loads(capsys.readouterr().out)["stages"] == {"cls": 8}


def test_stats_cli_takes_tokenizer_and_max_length_from_a_run_config(tmp_path, capsys):
    from sftlab.models.tiny import make_tokenizer

    make_tokenizer("chatml").save_pretrained(tmp_path / "tok")
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": "hi " * 30}, {"role": "assistant", "content": "ok"}]},
                                             {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}])
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {{path: {tmp_path / 'tok'}}}\ndata: {{train: {data}}}\ntrain: {{max_length: 20}}\n", encoding="utf-8")
    assert main(["data", "stats", str(data), "--config", str(config)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["unit"] == "tokens" and stats["max_length"] == 20 and stats["truncated"] == {"count": 1, "share": 0.5}


def test_stats_under_each_assistant_counts_one_sequence_per_assistant_turn(tmp_path, capsys):
    # a run config with data.mask each_assistant made `data stats` fail ("unknown mask"); training makes one sample
    # per assistant turn, each supervising that turn
    from sftlab.data.messages import mask_samples
    from sftlab.data.templates import encode_conversation
    from sftlab.models.tiny import make_tokenizer

    tok = make_tokenizer("chatml")
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"},
             {"role": "user", "content": "and then?"}, {"role": "assistant", "content": "then this"}]
    examples = [{"messages": turns, "_src": "s:1"}]
    stats, _ = compute_stats(examples, tok, mask="each_assistant")
    encoded = [encode_conversation(tok, sample, mask=mask) for sample, mask in mask_samples(turns, "each_assistant")]
    assert len(encoded) == 2 and stats["sequence_length"]["count"] == 2
    assert stats["sequence_length"]["max"] == max(len(ids) for ids, _ in encoded)
    supervised = sum(sum(1 for x in labels if x != -100) for _, labels in encoded)
    assert stats["supervised_token_ratio"] == round(supervised / sum(len(ids) for ids, _ in encoded), 4)
    tok.save_pretrained(tmp_path / "tok")
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": turns}])
    capsys.readouterr()
    assert main(["data", "stats", str(data), "--tokenizer", str(tmp_path / "tok"), "--mask", "each_assistant"]) == 0
    assert json.loads(capsys.readouterr().out)["sequence_length"]["count"] == 2


def test_an_unknown_template_is_named_as_the_commands_option(tmp_path, capsys):
    data = write_jsonl(tmp_path / "chat.jsonl", [sft("hi", "hello")])
    assert main(["data", "stats", str(data), "--template", "chatlm"]) == 2
    assert capsys.readouterr().err.startswith("error: --template: unknown chat template 'chatlm'; did you mean 'chatml'?")
