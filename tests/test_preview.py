"""`sftlab data preview` end to end on a tiny saved model, and the highlighting / mask checks behind it."""

from __future__ import annotations

import json
import re

import pytest

from sftlab.cli import main
from sftlab.data.preview import check_supervision, format_row, runs
from sftlab.data.templates import encode_conversation
from sftlab.errors import SftlabError
from sftlab.models.tiny import make_tokenizer, save_tiny

CONVERSATIONS = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"},
     {"role": "assistant", "content": "Paris."}],
    [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"},
     {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
    [{"role": "user", "content": "Colour of the sky?"}, {"role": "assistant", "content": "Blue."}],
]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny("qwen2", tmp_path_factory.mktemp("tiny") / "model")


def _write_run(tmp_path, tiny_dir, rows, data_extra="", stage="sft", tokenizer_dir=None):
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tokenizer_line = f", tokenizer: {tokenizer_dir}" if tokenizer_dir else ""
    (tmp_path / "run.yaml").write_text(
        f"model: {{path: {tiny_dir}{tokenizer_line}}}\n"
        f"data: {{train: train.jsonl, cache_dir: cache{data_extra}}}\n"
        f"train: {{stage: {stage}, max_length: 128}}\n", encoding="utf-8")
    return str(tmp_path / "run.yaml")


def _chat_rows():
    return [{"messages": messages} for messages in CONVERSATIONS]


def test_preview_brackets_supervised_tokens_and_reports_ratios(tmp_path, tiny_dir, capsys):
    config = _write_run(tmp_path, tiny_dir, _chat_rows())
    assert main(["data", "preview", config]) == 0  # default -n 3; the mixture is shuffled (seeded)
    out = capsys.readouterr().out
    assert not ANSI.search(out)  # not a terminal: brackets, no colour codes
    assert "[[Paris.<|im_end|>]]" in out and "[[你好！<|im_end|>]]" in out and "[[4<|im_end|>]]" in out
    assert "<|im_start|>user\nCapital of France?<|im_end|>" in out  # the prompt is shown, unbracketed
    assert "[[Blue.<|im_end|>]]" in out
    assert re.search(r"--- sample \d \S*train.jsonl:1: \d+ tokens, 4 supervised \(\d+\.\d%\)\n", out)
    tok = make_tokenizer("chatml")
    ids = [encode_conversation(tok, messages) for messages in CONVERSATIONS]
    tokens = sum(len(i) for i, _ in ids)
    supervised = sum(sum(1 for label in labels if label != -100) for _, labels in ids)
    assert f"train: 3 rows from 3 examples, {tokens} tokens, {supervised} supervised ({supervised / tokens:.1%})" in out
    assert "template: auto -> the tokenizer's own chat template; stop tokens: <|im_end|>" in out


def test_preview_colours_on_request_and_honours_overrides(tmp_path, tiny_dir, capsys):
    config = _write_run(tmp_path, tiny_dir, _chat_rows())
    assert main(["data", "preview", config, "-n", "1", "--color", "always", "data.template=plain"]) == 0
    out = capsys.readouterr().out
    assert "[[" not in out and out.count("--- sample") == 1
    assert re.search(r"\nAssistant:\x1b\[1;32m [^\n]+<\|im_end\|>\x1b\[0m\n", out)
    assert "built-in plain" in out


def test_preview_overrides_are_optional_and_mix_with_options(tmp_path, tiny_dir, capsys):
    with pytest.raises(SystemExit):
        main(["data", "preview", "--help"])
    usage = " ".join(capsys.readouterr().out.split("\n\n")[0].split())
    assert usage.endswith("config [key.sub=value ...]")  # optional, shown in brackets
    config = _write_run(tmp_path, tiny_dir, _chat_rows())
    assert main(["data", "preview", config, "data.template=plain", "-n", "1", "data.mask=all", "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "; mask: all; " in out and "built-in plain" in out and out.count("--- sample") == 1


def test_preview_fails_when_the_template_supervises_every_token(tmp_path, tiny_dir, capsys):
    tok = make_tokenizer("chatml")  # a broken template that renders only the answers
    tok.chat_template = "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ m['content'] }}<|im_end|>{% endif %}{% endfor %}"
    tok.save_pretrained(tmp_path / "answers_only_tok")
    config = _write_run(tmp_path, tiny_dir, _chat_rows(), tokenizer_dir=tmp_path / "answers_only_tok")
    assert main(["data", "preview", config]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert errors[0].startswith("error: data.mask=assistant: every token of every sample is supervised")
    assert main(["data", "preview", config, "data.mask=all"]) == 0  # on purpose: no error


def test_preview_names_the_record_with_an_empty_answer(tmp_path, tiny_dir, capsys):
    rows = _chat_rows() + [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]}]
    config = _write_run(tmp_path, tiny_dir, rows)
    assert main(["data", "preview", config]) == 2
    assert re.search(r"error: \S*train.jsonl:4: message 1 is an assistant turn with empty content", capsys.readouterr().err)


def test_preview_unknown_template_lists_the_known_ones(tmp_path, tiny_dir, capsys):
    config = _write_run(tmp_path, tiny_dir, _chat_rows(), data_extra=", template: vicuna")
    assert main(["data", "preview", config]) == 2
    assert "unknown chat template 'vicuna'; known: auto, chatml (alias qwen), gemma" in capsys.readouterr().err


def test_preview_classification_rows_show_their_label(tmp_path, tiny_dir, capsys):
    rows = [{"text": "great product", "label": "pos"}, {"text": "awful", "label": "neg"}]
    config = _write_run(tmp_path, tiny_dir, rows, stage="cls")
    assert main(["data", "preview", config]) == 0
    out = capsys.readouterr().out
    assert "label 'pos'" in out and "great product" in out and "labels neg=1, pos=1" in out


def test_runs_and_format_row_keep_multibyte_characters_whole():
    tok = make_tokenizer("chatml")
    messages = [{"role": "user", "content": "问"}, {"role": "assistant", "content": "企业所得税优惠政策"}]
    ids, labels = encode_conversation(tok, messages, "chatml")
    assert [supervised for _, _, supervised in runs(labels)] == [False, True, False]
    assert format_row(tok, ids, labels, colour=False) == \
        "<|im_start|>user\n问<|im_end|>\n<|im_start|>assistant\n[[企业所得税优惠政策<|im_end|>]]\n"


def test_check_supervision_rules():
    stats = {"examples": 5, "tokens": 100, "supervised_tokens": 30, "dropped_no_supervised": 0}
    check_supervision("sft", "assistant", stats)
    with pytest.raises(SftlabError, match=r"data \(validation\): 2 of 5 samples have no supervised token"):
        check_supervision("sft", "assistant", stats | {"dropped_no_supervised": 2}, "validation")
    with pytest.raises(SftlabError, match="data.mask=last_assistant: every token of every sample is supervised"):
        check_supervision("sft", "last_assistant", stats | {"supervised_tokens": 100})
    check_supervision("sft", "all", stats | {"supervised_tokens": 100})
    check_supervision("pt", "assistant", stats | {"supervised_tokens": 100})


def test_preview_pt_blocks_are_fully_supervised_and_validation_must_exist(tmp_path, tiny_dir, capsys):
    rows = [{"text": "The quick brown fox jumps over the lazy dog."}, {"text": "企业所得税优惠政策。"}]
    config = _write_run(tmp_path, tiny_dir, rows, stage="pt")
    assert main(["data", "preview", config, "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"--- sample 0: (\d+) tokens, \1 supervised \(100\.0%\)\n\[\[", out)
    assert main(["data", "preview", config, "--split", "validation"]) == 2
    assert "error: data.validation: this run has no validation data" in capsys.readouterr().err
