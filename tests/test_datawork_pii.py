"""sftlab data clean --redact-pii: each kind in English and Chinese, checksum/Luhn-invalid numbers and ordinary
numbers left alone, kind selection, report counts, leakage after redaction, and an end-to-end CLI run."""

from __future__ import annotations

import json

import pytest

from sftlab.cli import main
from sftlab.datawork.clean import CleanOptions, clean_examples
from sftlab.datawork.normalize import NormalizeOptions
from sftlab.datawork.pii import KINDS, Redactor, cn_id_valid, luhn_valid, parse_kinds
from sftlab.errors import SftlabError

VALID_ID = "11010519491231002X"          # check character X (ISO 7064 MOD 11-2)
VALID_ID_2 = "440304199003071002"
BAD_CHECK_ID = "440304199003071003"      # last character wrong (and not Luhn-valid)
BAD_DATE_ID = "110105194913310021"       # month 13, check character right (and not Luhn-valid)
ID_AND_LUHN = "110105199003071108"       # a valid ID that also passes the Luhn check


def redact(text: str, kinds: str | None = None) -> str:
    return Redactor(parse_kinds(kinds))(text)


def sft(user: str, assistant: str, src: str = "f:1") -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}], "_src": src}


@pytest.mark.parametrize("text, expected", [
    ("Mail zhang.san@corp-mail.com.cn now.", "Mail [EMAIL] now."),
    ("请发邮件至li_si+hr@example.cn，谢谢", "请发邮件至[EMAIL]，谢谢"),
    ("Call (415) 555-2671, 415-555-2671, 415.555.2671 or 1-415-555-2671.", "Call [PHONE], [PHONE], [PHONE] or [PHONE]."),
    ("UK office: +44 20 7946 0958 or +44 (0)20 7946 0958", "UK office: [PHONE] or [PHONE]"),
    ("手机13812345678，或 138 1234 5678、138-1234-5678", "手机[PHONE]，或 [PHONE]、[PHONE]"),
    ("客服 +86 138-1234-5678，0086 13912345678，座机+86-10-8765-4321", "客服 [PHONE]，[PHONE]，座机[PHONE]"),
    (f"身份证号{VALID_ID}，另一位{VALID_ID_2}。", "身份证号[ID]，另一位[ID]。"),
    (f"Her ID number is {VALID_ID.lower()}.", "Her ID number is [ID]."),
    ("Card 4111 1111 1111 1111 or 4111111111111111, Amex 3782 822463 10005, Diners 3056 930902 5904.",
     "Card [CARD] or [CARD], Amex [CARD], Diners [CARD]."),
    ("请向卡号6222-0212-3456-7890-128转账", "请向卡号[CARD]转账"),
    ("Server 192.168.1.10 and 10.0.0.1:8080, then 8.8.8.8.", "Server [IP] and [IP]:8080, then [IP]."),
    ("服务器地址10.0.0.1，备用 1.2.3.4 版", "服务器地址[IP]，备用 [IP] 版"),
])
def test_each_kind_is_redacted_in_english_and_chinese(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize("text", [
    f"身份证号{BAD_CHECK_ID}，出生日期不对的{BAD_DATE_ID}",                      # ID checksum / date wrong
    "Card 4111 1111 1111 1112 and 4111111111111112",                           # Luhn-invalid
    "会议于2024-01-15召开，2024/01/15 或 2024.01.15，20240115",                # dates
    "In 2024 revenue was 1,234,567.89 yuan; 营业额 12,345,678,901,234 元",     # years, amounts
    "根据第十二条和第12条的规定",                                              # law article numbers
    "Release 1.2.3 and 2.10.300.4, v1.2.3.4, version 1.2.3.4, ver. 10.0.0.1, 版本号：10.0.0.1",  # versions
    "1.2.3.4.5 and 01.02.03.04 and 256.1.1.1 and 2001:db8::1",                  # not IPv4 / IPv6
    "order 12345678901234567890, ref 138123456789, SN13812345678, 4155552671",  # inside longer runs, bare NANP
    "座机010-12345678，0755-1234567，+3.14 and 5+44, (115) 555-2671",         # landlines, short '+', area code 1xx
    "zhang at corp dot cn, 张三@公司.中国, 110105491231002, 1101051949 1231 002X",  # spelled-out, non-ASCII, 15-digit, spaced
    "张三住在北京市朝阳区建国路88号, John Smith lives at 221B Baker Street",   # names and addresses
])
def test_invalid_and_ordinary_numbers_are_left_alone(text):
    assert redact(text) == text


def test_checksums_and_known_limits():
    assert cn_id_valid(VALID_ID) and cn_id_valid(VALID_ID_2) and not cn_id_valid(BAD_CHECK_ID) and not cn_id_valid(BAD_DATE_ID)
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert redact(f"编号 {ID_AND_LUHN}") == "编号 [ID]"                  # id is tried before card
    assert redact(f"编号 {ID_AND_LUHN}", "card") == "编号 [CARD]"
    assert redact("ts 1705305600002") == "ts [CARD]"                      # a Luhn-valid long number: documented limit
    assert redact("Call 415-555-2671 ext. 12") == "Call [PHONE] ext. 12"
    assert redact("+44 20 7946 0958 2024") == "[PHONE] 2024"              # digits after 15 are not swallowed
    assert redact("电话１３８１２３４５６７８") == "电话１３８１２３４５６７８"  # full-width digits: only after NFKC


@pytest.mark.parametrize("text", [
    "客服热线400-800-8888，400 820 8888，4008208888，800-820-8888，800.820.8888",  # China 400/800 hotlines
    "境外拨打 +86 400 820 8888、+86-800-820-8888 或 0086 400 820 8888",
    "Toll-free (800) 555-0199, 1-888-555-0199, +1 877 555 0199, 866.555.0199",    # North American toll-free
    "Also 833-555-0199, 844 555 0199 and +1-855-555-0199",
    "银行客服95588，95555；投诉96110；政务服务热线12345，纳税服务热线12366",       # short service numbers
])
def test_business_hotlines_are_not_personal_data(text):
    assert redact(text) == text


def test_personal_numbers_beside_hotlines_are_still_redacted():
    assert redact("热线400-820-8888，经办人手机138 1234 5678") == "热线400-820-8888，经办人手机[PHONE]"
    assert redact("Call 1-800-555-0199 or my cell 415-555-2671") == "Call 1-800-555-0199 or my cell [PHONE]"
    assert redact("+86 10 8765 4321, +1-400-820-8888, (401) 820-8888") == "[PHONE], [PHONE], [PHONE]"
    assert redact("+8613812345678") == "[PHONE]"   # a Luhn-valid run after '+' is a phone number, not a card


@pytest.mark.parametrize("mobile", ["18881234567", "18001234567", "188 8123 4567", "185-5123-4567", "18331234567",
                                    "0086 18661234567"])
def test_china_mobiles_that_start_like_a_toll_free_code_are_personal(mobile):
    """1 + 800/833/.../888 + 7 digits is a North American toll-free number, but 1[3-9]... is a mainland mobile."""
    assert redact(f"手机{mobile}。") == "手机[PHONE]。"


def test_kind_selection_and_bad_kind():
    text = f"a@b.com 13812345678 {VALID_ID} 4111111111111111 10.0.0.1"
    assert redact(text, "email,ip") == f"[EMAIL] 13812345678 {VALID_ID} 4111111111111111 [IP]"
    assert redact(text, " Phone , card") == f"a@b.com [PHONE] {VALID_ID} [CARD] 10.0.0.1"
    assert redact(text, "all") == redact(text) == "[EMAIL] [PHONE] [ID] [CARD] [IP]"
    assert parse_kinds("ip,email") == ["email", "ip"] and parse_kinds(None) == list(KINDS)
    for bad in ("email,fax", ""):
        with pytest.raises(SftlabError) as error:
            parse_kinds(bad)
        message = str(error.value)
        assert message.startswith("--redact-pii: ") and "\n" not in message
        assert "valid kinds: email, id, card, phone, ip" in message
    assert "'fax'" in str(pytest.raises(SftlabError, parse_kinds, "fax").value)


def test_clean_counts_every_text_field_and_keeps_labels():
    examples = [
        {"messages": [{"role": "system", "content": "Escalate to ops@corp.com"},
                      {"role": "user", "content": "我的手机是13812345678"},
                      {"role": "assistant", "content": "已记录 13812345678，卡 4111 1111 1111 1111"}], "_src": "f:1"},
        {"text": "客户IP 10.0.0.1", "label": "13812345678", "_src": "f:2"},
        sft("我的手机是13812345678", "卡 4111 1111 1111 1111", "f:3"),
        sft("我的手机是13912345678", "卡 5555 5555 5555 4444", "f:4"),  # a duplicate of f:3 once redacted
        sft("nothing here", "2024-01-15", "f:5"),
    ]
    kept, report = clean_examples(examples, CleanOptions(redact_pii=list(KINDS)))
    section = report.data["sections"]["pii_redaction"]
    assert section == {"kinds": list(KINDS), "changed_examples": 4,
                       "redacted": {"email": 1, "id": 0, "card": 3, "phone": 4, "ip": 1},
                       "redacted_in": {"contents": 9, "tool_arguments": 0, "tool_results": 0}}
    assert [m["content"] for m in kept[0]["messages"]] == ["Escalate to [EMAIL]", "我的手机是[PHONE]", "已记录 [PHONE]，卡 [CARD]"]
    assert kept[1] == {"text": "客户IP [IP]", "label": "13812345678", "_src": "f:2"}
    assert [e["_src"] for e in kept] == ["f:1", "f:2", "f:3", "f:5"] and examples[1]["text"] == "客户IP 10.0.0.1"
    assert report.data["removed"]["exact duplicate"]["count"] == 1
    assert "139" not in json.dumps(report.data, ensure_ascii=False)  # the removed example is shown redacted
    assert "redacted PII in 4 examples: email 1, id 0, card 3, phone 4, ip 1" in report.summary()
    kept, report = clean_examples(examples, CleanOptions())
    assert "pii_redaction" not in report.data["sections"] and kept[1]["text"] == "客户IP 10.0.0.1"
    full_width = [{"text": "电话１３８１２３４５６７８", "_src": "w:1"}]
    assert clean_examples(full_width, CleanOptions(redact_pii=["phone"]))[0][0]["text"] == "电话[PHONE]"
    assert clean_examples(full_width, CleanOptions(normalize=None, redact_pii=["phone"]))[0][0]["text"] == full_width[0]["text"]
    no_nfkc = CleanOptions(normalize=NormalizeOptions(nfkc=False), redact_pii=["phone"])
    assert clean_examples(full_width, no_nfkc)[0][0]["text"] == full_width[0]["text"]
    pt = [{"text": "mail a@b.com", "_src": "p:1"}]
    assert clean_examples(pt, CleanOptions(redact_pii=["email"]))[0] == [{"text": "mail [EMAIL]", "_src": "p:1"}]


def test_eval_sets_are_redacted_before_the_leak_check():
    train = [sft("我的电话是13812345678", "好的", "t:1"), sft("other", "answer", "t:2")]
    test = [sft("我的电话是13912345678", "好的", "e:1")]  # another number: equal once both are redacted
    kept, report = clean_examples(train, CleanOptions(redact_pii=["phone"]), eval_sets={"test": test})
    assert [e["_src"] for e in kept] == ["t:2"] and report.data["sections"]["leakage"]["leaking_train_examples"] == 1
    assert report.data["sections"]["pii_redaction"]["redacted"] == {"phone": 1}
    assert test[0]["messages"][0]["content"] == "我的电话是13912345678"


def test_clean_cli_redacts_and_writes_the_report(tmp_path, capsys):
    rows = [{"instruction": "请联系张三，电话１３８１２３４５６７８，邮箱 zhang＠corp.cn", "input": f"身份证{VALID_ID}", "output": "好的。"},
            {"instruction": "What is on file?", "output": "Card 4111 1111 1111 1111 from 10.0.0.1, call (415) 555-2671."},
            {"instruction": "第十二条 2024-01-15", "output": "金额1,234,567.89元，版本 1.2.3.4"}]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    outputs = []
    for name in ("a.jsonl", "b.jsonl"):
        assert main(["data", "clean", str(train), str(tmp_path / name), "--to", "alpaca", "--redact-pii"]) == 0
        outputs.append((tmp_path / name).read_bytes())
    assert outputs[0] == outputs[1]
    written = [json.loads(line) for line in outputs[0].decode("utf-8").splitlines()]
    assert written[0]["instruction"] == "请联系张三，电话[PHONE]，邮箱 [EMAIL]\n身份证[ID]"
    assert written[1]["output"] == "Card [CARD] from [IP], call [PHONE]."
    assert written[2] == {"instruction": "第十二条 2024-01-15", "input": "", "output": "金额1,234,567.89元，版本 1.2.3.4"}
    report = json.loads((tmp_path / "a.report.json").read_text(encoding="utf-8"))
    assert report["sections"]["pii_redaction"]["redacted"] == {"email": 1, "id": 1, "card": 1, "phone": 2, "ip": 1}
    assert "redacted PII in 2 examples: email 1, id 1, card 1, phone 2, ip 1" in capsys.readouterr().out
    assert main(["data", "clean", "--redact-pii", "card", str(train), str(tmp_path / "c.jsonl")]) == 0
    assert json.loads((tmp_path / "c.report.json").read_text(encoding="utf-8"))["sections"]["pii_redaction"]["redacted"] == {"card": 1}
    capsys.readouterr()
    with pytest.raises(SystemExit):  # without a value before IN, the option would take IN as its kinds
        main(["data", "clean", "--redact-pii", str(train), str(tmp_path / "d.jsonl")])
    assert f"argument --redact-pii: {str(train)!r} looks like a file, not PII kinds; put --redact-pii after IN and " \
        "OUT" in capsys.readouterr().err


def test_clean_cli_bad_kind_is_a_one_line_error(tmp_path, capsys):
    train = tmp_path / "t.jsonl"
    train.write_text(json.dumps({"text": "a@b.com"}) + "\n", encoding="utf-8")
    assert main(["data", "clean", str(train), str(tmp_path / "o.jsonl"), "--redact-pii", "email,fax"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --redact-pii: unknown kind 'fax'; valid kinds: email, id, card, phone, ip (or all)\n"
    assert not (tmp_path / "o.jsonl").exists()
