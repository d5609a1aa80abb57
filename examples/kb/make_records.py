"""Build examples/kb/policies.jsonl: a small knowledge base of real ministry rules from
../shared/data/policy_texts_zh/dept_rules.jsonl (public-domain legislative texts, PRC Copyright Law art. 5).

Each record keeps id, title, issuer, category and date as they are, and takes two fields from the text
verbatim: `purpose` (article 1, why the rule exists) and `scope` (article 2, whom or what it covers).

    python examples/kb/make_records.py [SOURCE_JSONL] [OUT_JSONL]
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parents[1] / ".." / "shared" / "data" / "policy_texts_zh" / "dept_rules.jsonl"
TITLES = ["企业职工带薪年休假实施办法", "市场主体登记管理条例实施细则", "明码标价和禁止价格欺诈规定",
          "侵害消费者权益行为处罚办法", "家用汽车产品修理更换退货责任规定", "食品生产经营监督检查管理办法"]


def article(text: str, number: str) -> str:
    """The paragraph of article `number` (e.g. 一), without the article heading."""
    match = re.search(rf"^第{number}条\s*(.+)$", text, re.MULTILINE)
    return " ".join(match.group(1).split()) if match else ""


def main(source: Path = SOURCE, out: Path = HERE / "policies.jsonl") -> None:
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    by_title = {row["title"]: row for row in rows}
    records = []
    for number, title in enumerate(TITLES, start=1):
        row = by_title[title]
        records.append({"id": f"P{number:03d}", "title": title, "issuer": row["issuer"], "category": row["category"],
                        "date": row["date"], "purpose": article(row["text"], "一"), "scope": article(row["text"], "二"),
                        "source": row["id"]})
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    print(f"wrote {len(records)} records to {out}")


if __name__ == "__main__":
    main(*(Path(arg) for arg in sys.argv[1:3]))
