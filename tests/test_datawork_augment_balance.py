"""sftlab data augment / balance / features: seeded rule augmentation and paraphrase, over/undersampling,
class weights, stratified split, SMOTE on embeddings, tabular features with a reusable mapping."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from sftlab.cli import main
from sftlab.datawork.augment import RuleAugmenter, augment_examples, load_synonyms, paraphrase_examples
from sftlab.datawork.balance import balance_examples, class_weights, smote_vectors, stratified_split
from sftlab.datawork.features import apply_features, fit_features, FeatureSpec, load_spec
from sftlab.datawork.records import load_examples
from sftlab.errors import SftlabError


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


SKEWED = [{"text": f"card question {i}", "label": "card"} for i in range(8)] + \
         [{"text": f"refund question {i}", "label": "refund"} for i in range(3)] + \
         [{"text": f"atm question {i}", "label": "atm"} for i in range(2)]


def skewed() -> list[dict]:
    return [dict(r, _src=f"s.jsonl:{i + 1}") for i, r in enumerate(SKEWED)]


def test_rule_augmentation_chinese_and_english_is_seeded_and_marked():
    synonyms = {**load_synonyms(None, "zh"), **load_synonyms(None, "en")}
    examples = [
        {"messages": [{"role": "user", "content": "小微企业如何申请税收补贴？"}, {"role": "assistant", "content": "请看通知。"}], "_src": "a:1"},
        {"text": "How can a company apply for a tax subsidy", "label": "tax", "_src": "a:2"},
    ]
    first = augment_examples(examples, RuleAugmenter(synonyms, rate=0.3, seed=1), ["synonym", "swap", "delete", "insert"])
    second = augment_examples(examples, RuleAugmenter(synonyms, rate=0.3, seed=1), ["synonym", "swap", "delete", "insert"])
    assert first == second and len(first) == 8
    assert all(e["augmented"]["source"] in ("a:1", "a:2") for e in first)
    for new in first:
        if "messages" in new:
            assert new["messages"][1]["content"] == "请看通知。" and new["messages"][0]["content"] != "小微企业如何申请税收补贴？"
        else:
            assert new["label"] == "tax" and new["text"] != examples[1]["text"]
    synonym_zh = next(e for e in first if e["augmented"]["method"] == "synonym" and "messages" in e)
    assert len(synonym_zh["messages"][0]["content"]) >= len("小微企业如何申请税收补贴？") - 1
    assert examples[0]["messages"][0]["content"] == "小微企业如何申请税收补贴？"  # originals untouched


def test_paraphrase_with_a_generator_marks_copies():
    examples = [{"text": "hello there", "label": "x", "_src": "a:1"}, {"text": "keep me", "label": "y", "_src": "a:2"}]
    new = paraphrase_examples(examples, lambda prompts: ["hi there", "keep me"])
    assert new == [{"text": "hi there", "label": "x", "_src": "a:1", "augmented": {"method": "paraphrase", "source": "a:1"}}]
    chat = {"messages": [{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
                         {"role": "user", "content": "second"}, {"role": "assistant", "content": "fine"}], "_src": "c:1"}
    rewritten = paraphrase_examples([chat], lambda prompts: ["the second one"])[0]
    assert [m["content"] for m in rewritten["messages"]] == ["first", "ok", "the second one", "fine"]


def test_augment_cli_keeps_originals_drops_eval_matches_and_repeats(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", SKEWED[:4])
    base = ["data", "augment", str(train), "--methods", "swap,delete", "--rate", "0.5"]
    assert main(base[:3] + [str(tmp_path / "plain.jsonl")] + base[3:]) == 0
    plain = [json.loads(line) for line in (tmp_path / "plain.jsonl").read_text(encoding="utf-8").splitlines()]
    assert plain[:4] == SKEWED[:4] and len(plain) > 5
    assert all(r["augmented"]["method"] in ("swap", "delete") for r in plain[4:])
    leaked = plain[5]["text"]
    test = write_jsonl(tmp_path / "test.jsonl", [{"text": leaked, "label": plain[5]["label"]}])
    outs = []
    for name in ("a1.jsonl", "a2.jsonl"):
        assert main(base[:3] + [str(tmp_path / name)] + base[3:] + ["--eval", str(test)]) == 0
        outs.append((tmp_path / name).read_text(encoding="utf-8"))
    assert outs[0] == outs[1]
    rows = [json.loads(line) for line in outs[0].splitlines()]
    assert leaked not in [r["text"] for r in rows] and len(rows) == len(plain) - 1
    report = json.loads((tmp_path / "a1.report.json").read_text(encoding="utf-8"))
    assert report["removed"]["augmented copy matches an evaluation example"]["count"] == 1
    assert load_examples(tmp_path / "a1.jsonl")[4]["label"] == "card"  # the trainer reads it back


def test_oversample_undersample_and_class_weight_known_counts():
    over, report = balance_examples(skewed(), "oversample", seed=0)
    assert Counter(e["label"] for e in over) == {"card": 8, "refund": 8, "atm": 8}
    assert report["before"] == {"card": 8, "refund": 3, "atm": 2}
    under, _ = balance_examples(skewed(), "undersample", seed=0)
    assert Counter(e["label"] for e in under) == {"card": 2, "refund": 2, "atm": 2}
    assert balance_examples(skewed(), "oversample", seed=0)[0] == over
    same, report = balance_examples(skewed(), "class_weight")
    assert len(same) == 13 and report["class_weights"] == {"atm": round(13 / 6, 6), "card": round(13 / 24, 6), "refund": round(13 / 9, 6)}
    assert class_weights(["a", "a", "b"], ["a", "b", "c"]) == [0.75, 1.5, 1.0]
    with pytest.raises(SftlabError, match="not in the label set"):
        class_weights(["a", "z"], ["a", "b"])


def test_sft_answers_as_labels_and_stratified_split():
    sft = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "yes" if i % 4 else "no"}],
            "_src": f"x:{i}"} for i in range(20)]
    train, val = stratified_split(sft, 0.25, seed=0)
    assert len(val) == 5
    assert Counter(e["messages"][1]["content"] for e in val) == {"yes": 4, "no": 1}
    with pytest.raises(SftlabError, match="at least 2 examples per label"):
        stratified_split(sft[:2], 0.5)


def test_balance_cli_split_then_oversample(tmp_path):
    table = tmp_path / "intents.csv"
    table.write_text("sentence,intent\n" + "".join(f"{r['text']},{r['label']}\n" for r in SKEWED * 2), encoding="utf-8")
    out, val = tmp_path / "bal.jsonl", tmp_path / "val.jsonl"
    args = ["data", "balance", str(table), str(out), "--columns", "text=sentence", "label=intent", "--method", "oversample",
            "--val-ratio", "0.25", "--val-out", str(val)]
    assert main(args) == 0
    first = out.read_bytes(), val.read_bytes()
    assert main(args) == 0 and (out.read_bytes(), val.read_bytes()) == first  # seeded: same files again
    validation = load_examples(val)
    assert Counter(e["label"] for e in validation) == {"card": 4, "refund": 2, "atm": 1}
    balanced = load_examples(out)
    assert Counter(e["label"] for e in balanced) == {"card": 12, "refund": 12, "atm": 12}
    val_texts = {e["text"] for e in validation}
    train_texts = {e["text"] for e in balanced}
    assert val_texts - train_texts  # some validation-only texts exist; split happened before oversampling


def test_smote_on_embeddings_writes_npz(tmp_path):
    from sftlab.models.tiny import save_tiny

    encoder = save_tiny("bert", tmp_path / "bert", hidden=32, layers=1)
    data = write_jsonl(tmp_path / "s.jsonl", SKEWED)
    out = tmp_path / "vectors.npz"
    assert main(["data", "balance", str(data), str(out), "--method", "smote", "--encoder", str(encoder)]) == 0
    arrays = np.load(out)
    names = arrays["label_names"].tolist()
    assert Counter(names[i] for i in arrays["y"]) == {"card": 8, "refund": 8, "atm": 8}
    assert arrays["X"].shape == (24, 32) and int(arrays["synthetic"].sum()) == 11
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(13, 4))
    assert np.array_equal(smote_vectors(vectors, [r["label"] for r in SKEWED], seed=3)["X"],
                          smote_vectors(vectors, [r["label"] for r in SKEWED], seed=3)["X"])


def test_features_impute_encode_derive_and_reuse(tmp_path):
    table = tmp_path / "users.csv"
    table.write_text("id,revenue,employees,region,clicked\n1,100,10,north,yes\n2,,5,south,no\n3,300,0,,yes\n4,50,5,north,no\n",
                     encoding="utf-8")
    spec = tmp_path / "features.yaml"
    spec.write_text("keep: [id]\nnumeric: [revenue, employees]\ncategorical: [region]\nlabel: clicked\n"
                    "impute: {numeric: median}\nderived:\n  - {name: rev_per_emp, op: ratio, a: revenue, b: employees}\n"
                    "  - {name: size, op: product, a: employees, b: region}\n", encoding="utf-8")
    out = tmp_path / "features.csv"
    assert main(["data", "features", str(table), str(out), "--spec", str(spec)]) == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "id,revenue,employees,region,rev_per_emp,size,clicked"
    assert lines[2] == "2,100.0,5.0,1,20.0,5.0,0"      # revenue imputed with the median 100
    assert lines[3] == "3,300.0,0.0,0,0.0,0.0,1"       # region imputed north=0, ratio by zero -> 0
    mapping = json.loads((tmp_path / "features.mapping.json").read_text(encoding="utf-8"))
    assert mapping["categories"] == {"region": ["north", "south"], "clicked": ["no", "yes"]}
    report = json.loads((tmp_path / "features.report.json").read_text(encoding="utf-8"))
    assert report["sections"]["features"]["missing_counts"] == {"revenue": 1, "employees": 0, "region": 1, "clicked": 0}
    new = tmp_path / "new.csv"
    new.write_text("id,revenue,employees,region,clicked\n9,,2,east,yes\n", encoding="utf-8")
    assert main(["data", "features", str(new), str(tmp_path / "new_f.csv"), "--mapping", str(tmp_path / "features.mapping.json")]) == 0
    assert (tmp_path / "new_f.csv").read_text(encoding="utf-8").splitlines()[1] == "9,100.0,2.0,-1,50.0,-2.0,1"
    unlabelled = apply_features([{"id": "7", "revenue": "10", "employees": "2", "region": "south", "_src": "p.csv:2"}], mapping)
    assert unlabelled == [{"_src": "p.csv:2", "id": "7", "revenue": 10.0, "employees": 2.0, "region": 1, "rev_per_emp": 5.0, "size": 2.0}]


def test_feature_errors_name_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("numeric: [a]\nderived:\n  - {name: x, op: power, a: a, b: a}\n", encoding="utf-8")
    with pytest.raises(SftlabError, match=r"bad\.yaml: derived\.0\.op"):
        load_spec(bad)
    rows = [{"a": "1", "_src": "t.csv:2"}, {"a": "oops", "_src": "t.csv:3"}]
    with pytest.raises(SftlabError, match=r"t\.csv:3: column 'a' should be a number"):
        fit_features(rows, FeatureSpec(numeric=["a"]))
    with pytest.raises(SftlabError, match=r"t\.csv:2: column 'b' not found"):
        fit_features(rows, FeatureSpec(numeric=["b"]))
    table, mapping = fit_features([{"a": "1", "c": "x", "_src": "t.csv:2"}], FeatureSpec(numeric=["a"], label="c"))
    with pytest.raises(SftlabError, match=r"u\.csv:2: label 'q' is not in the saved mapping"):
        apply_features([{"a": "1", "c": "q", "_src": "u.csv:2"}], mapping)


def test_rule_operations_keep_line_breaks_and_spacing():
    synonyms = load_synonyms(None, "en")
    text = "How can a company apply\nfor a tax subsidy quickly?"
    for method in ("synonym", "swap", "delete", "insert"):
        for seed in range(5):
            out = RuleAugmenter(synonyms, rate=0.3, seed=seed).apply(method, text, RuleAugmenter(synonyms).rng(seed))
            assert out.count("\n") == 1 and "  " not in out and out == out.strip()
    mixed = "小微企业如何用 Python 申请补贴？"
    assert RuleAugmenter({"企业": ["公司"]}, rate=1.0).apply("synonym", mixed, RuleAugmenter({}).rng(0)) == "小微公司如何用 Python 申请补贴？"


def test_a_synonym_keeps_the_punctuation_and_capital_of_the_word_it_replaces():
    augmenter = RuleAugmenter({"big": ["large"], "(ok)": ["fine"]}, rate=1.0)
    text = "Big house, big? (ok)"
    assert augmenter.apply("synonym", text, augmenter.rng(0)) == "Large house, large? fine"  # "(ok)" listed whole


def test_a_paraphrase_that_loses_a_word_of_the_tool_call_arguments_is_rejected():
    call = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris", "days": 3}'}}
    chat = {"messages": [{"role": "user", "content": "Weather in Paris for 3 days?"},
                         {"role": "assistant", "content": None, "tool_calls": [call]}], "_src": "t:1"}
    chinese = {"messages": [{"role": "user", "content": "北京明天天气"},
                            {"role": "assistant", "content": None, "tool_calls": [
                                {**call, "function": {"name": "weather", "arguments": {"city": "北京"}}}]}], "_src": "t:2"}
    rewrites = iter([["What's the forecast in paris over 3 days"], ["Forecast for the French capital, 3 days?"],
                     ["请问北京市明天的天气"], ["请问首都明天的天气"]])
    kept, rejected = [], []
    for example in (chat, chat, chinese, chinese):
        kept += paraphrase_examples([example], lambda prompts: next(rewrites), rejected)
    assert [new["messages"][0]["content"] for new in kept] == ["What's the forecast in paris over 3 days", "请问北京市明天的天气"]
    assert [(example["_src"], why.split(" (")[0]) for example, why in rejected] == [
        ("t:1", "the rewrite lost paris"), ("t:2", "the rewrite lost 北京")]


def test_augment_cli_reports_the_paraphrases_it_rejects(tmp_path, monkeypatch):
    import sftlab.datawork.generate as generate

    class Rewriter:  # stands in for the local model: loses "Paris" in the first rewrite only
        def __init__(self, *args):
            pass

        def __call__(self, prompts):
            return ["Weather in the French capital?", "Any news in Paris today?"]

    monkeypatch.setattr(generate, "LocalGenerator", Rewriter)
    call = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
    rows = [{"messages": [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": None,
                                                                          "tool_calls": [call]}]},
            {"messages": [{"role": "user", "content": "News in Paris?"}, {"role": "assistant", "content": "None."}]}]
    data, out = tmp_path / "d.jsonl", tmp_path / "aug.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    assert main(["data", "augment", str(data), str(out), "--methods", "paraphrase", "--model", "m"]) == 0
    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [row["messages"][0]["content"] for row in written] == ["Weather in Paris?", "News in Paris?",
                                                                  "Any news in Paris today?"]
    report = json.loads((tmp_path / "aug.report.json").read_text(encoding="utf-8"))
    rejected = report["removed"]["paraphrase lost a word of the tool-call arguments"]
    assert rejected["count"] == 1 and rejected["examples"][0]["src"].endswith("d.jsonl:1")
