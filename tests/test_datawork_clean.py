"""sftlab data clean: normalisation, filters, exact and MinHash near-duplicate removal (Chinese included; near
duplicates only under the same system prompt, which the near comparison leaves out of the text), leakage against
evaluation sets, reports, and identical output on a second run."""

from __future__ import annotations

import json
import random

import pytest

from sftlab.cli import main
from sftlab.datawork.dedup import DedupOptions, dedup_examples, find_leaks
from sftlab.datawork.filters import FilterOptions, detect_language, filter_examples, load_refusal_patterns
from sftlab.datawork.normalize import NormalizeOptions, Normalizer
from sftlab.datawork.records import load_examples
from sftlab.datawork.stats import compute_stats
from sftlab.errors import SftlabError


def sft(user: str, assistant: str, src: str = "f:1") -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}], "_src": src}


def test_normalizer_cases():
    norm = Normalizer()
    assert norm("<p>ＡＢＣ　１２３&amp;</p>") == "ABC 123&"
    assert norm("你好，世界！\x07  \t ok\r\n\r\n\r\n\r\nend\u200b") == "你好，世界！ ok\n\nend"
    assert Normalizer(NormalizeOptions(keep_cjk_punct=False))("你好，世界！") == "你好,世界!"
    assert Normalizer(NormalizeOptions(t2s=True))("這個說明書與資料") == "这个说明书与资料"
    assert Normalizer(NormalizeOptions(strip_html=False))("a <b>x</b>") == "a <b>x</b>"


def test_language_detection():
    assert detect_language("企业所得税优惠政策") == "zh"
    assert detect_language("The quick brown fox") == "en"
    assert detect_language("以下是代码：```python\nprint('hello world from python code')\n```") == "zh"
    assert detect_language("これは日本語の文です") == "ja"
    assert detect_language("12345 !!!") == "unknown"


def test_filters_each_reason(tmp_path):
    from sftlab.models.tiny import make_tokenizer

    examples = [
        sft("Say something", "", "f:1"),
        sft("Say something long", "word " * 150, "f:2"),
        sft("用中文回答", "This answer is in English only", "f:3"),
        sft("请把这句话原样重复一遍：今天的天气非常好", "把这句话原样重复一遍：今天的天气非常好。", "f:4"),
        sft("讲个笑话", "抱歉，我无法回答这个问题。", "f:5"),
        sft("讲个故事", "作为一个人工智能语言模型，我没有故事。", "f:6"),
        sft("讲个故事", "从前有座山，山上有座庙。", "f:7"),
    ]
    options = FilterOptions(min_tokens=2, max_tokens=120, languages=["zh"], refusal_patterns=load_refusal_patterns())
    kept, removed = filter_examples(examples, options, make_tokenizer("chatml"))
    assert [e["_src"] for e in kept] == ["f:7"]
    reasons = {e["_src"]: why for e, why in removed}
    assert reasons["f:1"] == "empty response"
    assert reasons["f:2"].startswith("too long")
    assert reasons["f:3"] == "language en not in zh"
    assert reasons["f:4"] == "response repeats the prompt"
    assert reasons["f:5"].startswith("refusal") and reasons["f:6"].startswith("refusal")
    kept, removed = filter_examples([sft("Tell me a secret", "I'm sorry, but I cannot help with that.")],
                                    FilterOptions(refusal_patterns=load_refusal_patterns()))
    assert not kept and removed[0][1].startswith("refusal/boilerplate")
    with pytest.raises(SftlabError, match="--tokenizer"):
        filter_examples(examples, FilterOptions(min_tokens=2))


def test_bad_refusal_pattern_names_its_line(tmp_path):
    path = tmp_path / "refusals.txt"
    path.write_text("# comment\nok pattern\n(unclosed\n", encoding="utf-8")
    with pytest.raises(SftlabError, match=r"refusals\.txt:3: not a valid regular expression"):
        load_refusal_patterns(path)


PLANTED = [
    {"text": "关于开展2026年度高新技术企业认定工作的通知，请各单位认真执行。", "label": "a"},   # 0 keep
    {"text": "关于开展2026年度高新技术企业认定工作的通知,请各单位认真执行", "label": "a"},      # 1 exact of 0 (punctuation)
    {"text": "关于开展2026年度高新技术企业认定工作的通知，请各单位认真落实。", "label": "a"},   # 2 near of 0
    {"text": "The quick brown fox jumps over the lazy dog near the river bank.", "label": "b"},  # 3 keep
    {"text": "the QUICK brown fox jumps over the lazy dog near the river bank", "label": "b"},   # 4 exact of 3
    {"text": "The quick brown fox jumped over the lazy dog near the river bank.", "label": "b"},  # 5 near of 3
    {"text": "中小企业融资支持与绿色低碳转型专项资金申报指南", "label": "c"},                    # 6 keep
    {"text": "Completely unrelated sentence about weather in spring.", "label": "c"},           # 7 keep
]


def planted() -> list[dict]:
    return [dict(row, _src=f"p.jsonl:{i + 1}") for i, row in enumerate(PLANTED)]


def test_exact_and_near_duplicates_known_answer():
    kept, removed = dedup_examples(planted(), DedupOptions(near_threshold=0.7))
    assert [e["_src"] for e in kept] == ["p.jsonl:1", "p.jsonl:4", "p.jsonl:7", "p.jsonl:8"]
    reasons = {e["_src"]: why for e, why in removed}
    assert reasons["p.jsonl:2"] == "exact duplicate of p.jsonl:1"
    assert reasons["p.jsonl:5"] == "exact duplicate of p.jsonl:4"
    assert reasons["p.jsonl:3"].startswith("near duplicate of p.jsonl:1 (jaccard")
    assert reasons["p.jsonl:6"].startswith("near duplicate of p.jsonl:4 (jaccard")
    kept, removed = dedup_examples(planted(), DedupOptions(near_threshold=None))
    assert len(kept) == 6 and len(removed) == 2


def test_leakage_between_train_and_test():
    test_set = [{"text": "中小企业融资支持与绿色低碳转型专项资金申报指南。", "label": "c", "_src": "test.jsonl:1"},
                {"text": "Completely unrelated sentence about weather in the spring.", "label": "c", "_src": "test.jsonl:2"}]
    leaks = find_leaks(planted(), {"test": test_set}, DedupOptions(near_threshold=0.7))
    assert [(l["train_src"], l["eval_src"], l["kind"]) for l in leaks] == [
        ("p.jsonl:7", "test.jsonl:1", "exact"), ("p.jsonl:8", "test.jsonl:2", "near")]


def test_clean_cli_report_and_same_output_twice(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in PLANTED), encoding="utf-8")
    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps({"text": "Completely unrelated sentence about weather in spring!", "label": "c"}) + "\n", encoding="utf-8")
    before = train.read_bytes()
    outputs = []
    for name in ("c1.jsonl", "c2.jsonl"):
        assert main(["data", "clean", str(train), str(tmp_path / name), "--near", "0.7", "--eval", str(test)]) == 0
        outputs.append((tmp_path / name).read_bytes())
    assert outputs[0] == outputs[1] and train.read_bytes() == before
    cleaned = load_examples(tmp_path / "c1.jsonl")
    assert [e["label"] for e in cleaned] == ["a", "b", "c"]
    report = json.loads((tmp_path / "c1.report.json").read_text(encoding="utf-8"))
    assert report["before"] == 8 and report["after"] == 3
    assert {k: v["count"] for k, v in report["removed"].items()} == {
        "exact duplicate": 2, "near duplicate": 2, f"leaks into {test}": 1}
    assert report["sections"]["leakage"]["leaking_train_examples"] == 1
    assert "near duplicate" in (tmp_path / "c1.report.md").read_text(encoding="utf-8")


def test_clean_min_tokens_needs_tokenizer(tmp_path, capsys):
    train = tmp_path / "t.jsonl"
    train.write_text(json.dumps({"text": "hello"}) + "\n", encoding="utf-8")
    assert main(["data", "clean", str(train), str(tmp_path / "o.jsonl"), "--min-tokens", "3"]) == 2
    assert "--tokenizer" in capsys.readouterr().err


def test_normalizer_keeps_code_indentation():
    assert Normalizer()("def f(x):\n    return  x   \n\n\n\n\treturn 2") == "def f(x):\n    return x\n\n\treturn 2"


def test_filters_check_the_text_of_cls_examples_not_the_label():
    examples = [{"text": "我的银行卡还没到", "label": "card_arrival", "_src": "c:1"},
                {"text": "Where is my card?", "label": "card_arrival", "_src": "c:2"}]
    kept, removed = filter_examples(examples, FilterOptions(languages=["zh"]))
    assert [e["_src"] for e in kept] == ["c:1"] and removed[0][1] == "language en not in zh"


POLICY_VOCABULARY = """customers accounts verification identity documents passports residence permits statements
transfers international domestic limits thresholds approvals supervisors escalation complaints refunds disputes
chargebacks merchants overdrafts interest mortgages deposits withdrawals savings currencies exchange commissions
privacy consent retention archives recordings security passwords devices notifications authentication fraud
suspicious sanctions screening regulators compliance audits branches agents callbacks appointments weekends
holidays confidentiality disclosure vulnerable elderly guardians beneficiaries inheritance probate insurance
premiums claims policies exclusions""".split()
POLICY = " ".join(random.Random(0).choices(POLICY_VOCABULARY, k=300))  # a shared 300-word system prompt

QA = [("How do I reset my online banking password?", "Use Forgot password on the login page."),
      ("What is the daily ATM withdrawal limit?", "It is 500 euros per day."),
      ("Can I open an account for my child?", "Yes, from the age of seven with a parent."),
      ("Where can I find my IBAN?", "It is printed on your monthly statement."),
      ("Why was my card declined abroad?", "Travel blocks apply; enable it in the app."),
      ("How long does a SEPA transfer take?", "Usually one business day."),
      ("Do you charge for paper statements?", "Two euros per statement by post."),
      ("Can I change my registered address online?", "Yes, under Profile and then Address."),
      ("What time does the city branch open?", "Nine in the morning on weekdays."),
      ("How do I report a stolen card?", "Call the hotline and we block it at once."),
      ("Is there a fee for instant payments?", "No, instant payments are free."),
      ("Can I increase my credit limit?", "Apply in the app; we reply within a week."),
      ("What documents do I need for a mortgage?", "Payslips, ID and the purchase contract."),
      ("How can I close my savings account?", "Sign the closure form at any branch."),
      ("Do you offer student accounts?", "Yes, free until the age of twenty-six."),
      ("How do I set up a standing order?", "Choose Payments, then Standing order."),
      ("Why is there a pending transaction?", "Merchants reserve funds until settlement."),
      ("Can I get a replacement PIN?", "We post a new PIN letter within five days."),
      ("What is the interest on fixed deposits?", "Three percent for a twelve month term."),
      ("How do I dispute a card payment?", "Open the payment and tap Dispute."),
      ("Can someone else deposit cash for me?", "Yes, with your account number."),
      ("Is mobile check deposit available?", "Not yet; bring cheques to a branch."),
      ("How do I add a joint account holder?", "Both of you visit a branch with ID."),
      ("What happens if I go overdrawn?", "A fee of ten euros applies each month."),
      ("Can I freeze my card temporarily?", "Toggle Freeze card in the app."),
      ("How do I get a bank reference letter?", "Request it by email; it costs fifteen euros."),
      ("Are my deposits insured?", "Up to one hundred thousand euros."),
      ("Can I pay bills by phone?", "Yes, through telephone banking at any hour."),
      ("How do I update my tax residency?", "Fill in the self-certification form."),
      ("What is your SWIFT code?", "It is ACMEDEFFXXX for all branches.")]

ASK = "How long does an international transfer to Germany usually take to arrive at the other bank?"
ANSWER = "International transfers to Germany usually arrive within two business days after we approve them."


def chat(question: str, answer: str, system: str | None = POLICY, src: str = "p:1") -> dict:
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": ([{"role": "system", "content": system}] if system else []) + messages, "_src": src}


def test_a_long_shared_system_prompt_does_not_make_short_conversations_near_duplicates(tmp_path):
    assert len(POLICY.split()) == 300 and len(QA) == 30
    examples = [chat(question, answer, src=f"p:{i + 1}") for i, (question, answer) in enumerate(QA)]
    assert dedup_examples(examples, DedupOptions()) == (examples, [])
    assert find_leaks(examples[:15], {"test": examples[15:]}, DedupOptions()) == []
    stats, _ = compute_stats(examples)
    assert stats["duplicates"]["exact"] == 0 and stats["duplicates"]["near"] == 0
    rows = [{"messages": example["messages"]} for example in examples]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    assert main(["data", "clean", str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl")]) == 0
    assert json.loads((tmp_path / "out.report.json").read_text(encoding="utf-8"))["after"] == 30


def test_near_duplicates_need_the_same_system_prompt():
    first = chat(ASK, ANSWER)
    one_word = chat(ASK.replace("Germany", "France"), ANSWER, src="p:2")  # same prompt: still a near duplicate
    shouted = chat(ASK.replace("Germany", "Spain"), ANSWER, system=POLICY.upper().replace(" ", "  \n"), src="p:3")
    kept, removed = dedup_examples([first, one_word, shouted], DedupOptions())
    assert kept == [first] and [why.split(" (")[0] for _, why in removed] == ["near duplicate of p:1"] * 2
    bank, insurer = "You are the assistant of Acme Bank.", "You are the assistant of Acme Insurance."
    under_bank, under_insurer = chat(ASK, ANSWER, bank, "q:1"), chat(ASK, ANSWER, insurer, "q:2")
    without = chat(ASK, ANSWER, None, "q:3")
    for options in (DedupOptions(), DedupOptions(exact=False)):  # exact + near, near only
        assert dedup_examples([under_bank, under_insurer, without], options) == ([under_bank, under_insurer, without], [])
    copy = chat(ASK, ANSWER, bank.upper(), "q:4")  # exact duplicates compare the whole text, system prompt included
    assert dedup_examples([under_bank, copy], DedupOptions(near_threshold=None))[1] == [(copy, "exact duplicate of q:1")]


def test_leakage_needs_the_same_system_prompt():
    bank, insurer = "You are the assistant of Acme Bank.", "You are the assistant of Acme Insurance."
    test_set = [chat(ASK, ANSWER, bank, "test:1")]
    train = [chat(ASK, ANSWER, insurer, "t:1"),                                   # other system prompt: no leak
             chat(ASK, ANSWER, None, "t:2"),                                      # no system prompt: no leak
             chat(ASK.replace("Germany", "France"), ANSWER, bank, "t:3"),         # near
             chat(ASK, ANSWER, bank, "t:4")]                                      # exact
    leaks = find_leaks(train, {"test": test_set}, DedupOptions())
    assert [(leak["train_src"], leak["kind"]) for leak in leaks] == [("t:3", "near"), ("t:4", "exact")]
