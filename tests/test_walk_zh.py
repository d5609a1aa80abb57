"""Acceptance walk with Chinese data: near-duplicates in Chinese without spaces, rule augmentation that leaves
Chinese punctuation where it stands, PII in Chinese sentences, `data stats` counting a tokenizer's unknown token
(Chinese through an English-only vocabulary) and noting label characters its plot cannot draw."""

from __future__ import annotations

import json
import random
from importlib import resources

import pytest

from sftlab.cli import main
from sftlab.datawork.augment import RuleAugmenter, augment_examples, is_word, load_synonyms, split_words
from sftlab.datawork.dedup import DedupOptions, dedup_examples, jaccard, shingles
from sftlab.datawork.pii import Redactor
from sftlab.datawork.stats import compute_stats, missing_glyphs

PUNCT = set("，。！？：；、（）《》“”")


def law_articles() -> list[str]:
    """The articles (第…条 paragraphs of 40+ characters) of the bundled Chinese laws, each once."""
    text = resources.files("sftlab.resources").joinpath("demo/policy_laws_zh.jsonl").read_text(encoding="utf-8")
    paragraphs = [p.strip() for row in text.splitlines() for p in json.loads(row)["text"].split("\n")]
    return list(dict.fromkeys(p for p in paragraphs if p.startswith("第") and len(p) >= 40))


def edited(text: str, rng: random.Random, edits: int) -> str:
    """`text` with `edits` characters after its article number replaced by other Chinese characters."""
    chars = list(text)
    for at in rng.sample(range(8, len(chars)), edits):
        chars[at] = "曰" if chars[at] != "曰" else "甲"
    return "".join(chars)


def test_near_duplicates_of_chinese_articles_are_found_by_character_ngrams():
    articles = law_articles()
    assert len(articles) >= 40
    rng = random.Random(0)
    copies = [edited(a, rng, 1) for a in articles[:20]]
    examples = [{"text": t, "_src": f"laws:{i + 1}"} for i, t in enumerate(articles + copies)]
    kept, removed = dedup_examples(examples, DedupOptions(near_threshold=0.8))
    # the truth, by brute force over the same 3-gram sets: what is at or above 0.8 of an earlier kept text
    grams = [shingles(e["text"], 3) for e in examples]
    truth = []
    for i in range(len(examples)):
        if any(jaccard(grams[i], grams[j]) >= 0.8 for j in truth if j < i):
            continue
        truth.append(i)
    assert [e["_src"] for e in kept] == [examples[i]["_src"] for i in truth]
    removed_copies = [e for e, why in removed if int(e["_src"].split(":")[1]) > len(articles)]
    assert len(removed_copies) == 20  # one changed character in 40+ leaves Jaccard above 0.8: every copy goes
    assert all("near duplicate" in why for e, why in removed if e in removed_copies)


def test_chinese_punctuation_is_not_a_word_for_rule_augmentation():
    assert not is_word("，") and not is_word("。") and not is_word("……") and not is_word(" ")
    assert is_word("企业") and is_word("Big,") and is_word("2")
    prompt = "小微企业如何申请税收补贴？请说明条件、材料和流程：谢谢。"
    example = {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": "见通知。"}],
               "_src": "zh:1"}
    synonyms = load_synonyms(None, "zh")
    copies = augment_examples([example], RuleAugmenter(synonyms, rate=1.0, seed=3),
                              ["swap", "delete", "insert", "synonym"], copies=3)
    assert {c["augmented"]["method"] for c in copies} >= {"swap", "delete"}
    tokens = split_words(prompt)[0]
    for copy in copies:
        text = copy["messages"][0]["content"]
        # punctuation marks stay in order, and a sentence never starts with one
        assert [c for c in text if c in PUNCT] == [c for c in prompt if c in PUNCT], (copy["augmented"], text)
        assert text[0] not in PUNCT
    words = [t for t in tokens if is_word(t)]
    deleted = [c["messages"][0]["content"] for c in copies if c["augmented"]["method"] == "delete"]
    assert all(any(w in text for w in words) for text in deleted)  # at least one word kept


def test_pii_in_chinese_sentences():
    redact = Redactor()
    text = ("张三，身份证号11010519491231002X，手机138-1234-5678，邮箱zhang.san@corp.cn；"
            "根据第十二条，2024年1月15日起罚款1,000,000元。")
    assert redact(text) == ("张三，身份证号[ID]，手机[PHONE]，邮箱[EMAIL]；"
                            "根据第十二条，2024年1月15日起罚款1,000,000元。")
    assert redact("身份证11010519491231002x。") == "身份证[ID]。"
    # an ID number with a wrong check character is not detected (documented), and not taken for a phone either
    assert redact("身份证110105194912310021") == "身份证110105194912310021"


def unk_tokenizer_dir(tmp_path):
    """A WordPiece tokenizer with an English-only vocabulary: every Chinese character becomes [UNK]."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[PAD]": 1}
    for word in "the law of a company".split():
        vocab[word] = len(vocab)
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(tmp_path)
    return tmp_path


def test_stats_counts_unknown_tokens_of_chinese_text(tmp_path, capsys):
    from transformers import AutoTokenizer

    tok_dir = unk_tokenizer_dir(tmp_path / "tok")
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    examples = [{"text": "the law of a company", "_src": "t:1"}, {"text": "中华人民共和国 law", "_src": "t:2"}]
    stats, _ = compute_stats(examples, tokenizer)
    assert stats["unknown_tokens"]["count"] == len(tokenizer("中华人民共和国")["input_ids"]) > 0
    assert stats["unknown_tokens"]["examples"] == 1 and stats["unknown_tokens"]["first"] == "t:2"
    clean, _ = compute_stats(examples[:1], tokenizer)
    assert clean["unknown_tokens"]["count"] == 0
    data = tmp_path / "pt.jsonl"
    data.write_text("".join(json.dumps({"text": e["text"]}, ensure_ascii=False) + "\n" for e in examples),
                    encoding="utf-8")
    assert main(["data", "stats", str(data), "--tokenizer", str(tok_dir), "--out", str(tmp_path / "st")]) == 0
    out = capsys.readouterr().out
    assert "unknown tokens" in out and "pt.jsonl:2" in out
    assert "- unknown tokens:" in (tmp_path / "st" / "stats.md").read_text(encoding="utf-8")


def test_stats_notes_label_characters_the_plot_cannot_draw(tmp_path, capsys):
    # a private-use character is in no font: the note must name it, whatever fonts this machine has
    assert missing_glyphs({"card": 1, "x\ue123": 2}) == "\ue123"
    assert missing_glyphs({"card": 1}) == ""
    data = tmp_path / "cls.jsonl"
    rows = [{"text": "服务很好", "label": "正面\ue123"}, {"text": "太差了", "label": "负面"}]
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert main(["data", "stats", str(data), "--out", str(tmp_path / "st")]) == 0
    out = capsys.readouterr().out
    missing = missing_glyphs({"正面\ue123": 1, "负面": 1})
    assert "\ue123" in missing
    assert f"labels.png shows {len(missing)} label character(s) as boxes" in out
    assert "as boxes" in (tmp_path / "st" / "stats.md").read_text(encoding="utf-8")


def test_spaces_between_chinese_characters_go_only_when_asked():
    from sftlab.datawork.normalize import NormalizeOptions, Normalizer

    text = "中 国 人 民 银 行 ， 使用 Python 3 模型\n第一条　为了"
    assert Normalizer()(text) == "中 国 人 民 银 行 ， 使用 Python 3 模型\n第一条 为了"  # off by default
    joined = Normalizer(NormalizeOptions(cjk_spaces=True))
    assert joined(text) == "中国人民银行，使用 Python 3 模型\n第一条为了"
    assert joined(joined(text)) == joined(text)


def test_data_clean_cjk_spaces_option(tmp_path):
    import json

    from sftlab.cli import main

    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"text": "中 国 人 民 银 行", "label": "a"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert main(["data", "clean", str(source), str(tmp_path / "out.jsonl"), "--cjk-spaces"]) == 0
    row = json.loads((tmp_path / "out.jsonl").read_text(encoding="utf-8"))
    assert row["text"] == "中国人民银行"
