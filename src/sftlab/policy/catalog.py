"""Vocabulary of the simulated policy world: categories, issuers, title patterns, industries, regions.

Everything here is fixed data, so a seeded simulation is reproducible. `load_reference_titles`
optionally reads real law/regulation titles (the LawRefBook JSONL files under
`shared/data/policy_texts_zh`) and files them under the categories by keyword, so generated policy
summaries cite real regulations ("依据《企业所得税法实施条例》等规定").
"""

from __future__ import annotations

from pathlib import Path

CATEGORIES = ["税收优惠", "资金补贴", "人才引进", "融资支持", "外贸出口", "绿色低碳", "数字化转型", "就业扶持", "知识产权", "科技创新"]

ISSUERS = {
    "税收优惠": ["税务局", "财政局"],
    "资金补贴": ["财政局", "工业和信息化局", "发展和改革委员会"],
    "人才引进": ["人力资源和社会保障局", "科学技术局"],
    "融资支持": ["地方金融监督管理局", "财政局", "中小企业服务中心"],
    "外贸出口": ["商务局", "海关"],
    "绿色低碳": ["生态环境局", "发展和改革委员会"],
    "数字化转型": ["工业和信息化局", "大数据管理局"],
    "就业扶持": ["人力资源和社会保障局"],
    "知识产权": ["市场监督管理局（知识产权局）"],
    "科技创新": ["科学技术局", "工业和信息化局"],
}

# {year} and {region} are filled in; every title reads like a real notice (通知/公告).
TITLE_PATTERNS = {
    "税收优惠": ["关于{year}年度小型微利企业所得税优惠政策的公告", "关于进一步落实研发费用加计扣除政策的通知",
             "关于增值税留抵退税政策执行有关事项的公告"],
    "资金补贴": ["关于申报{year}年度{region}中小企业发展专项资金的通知", "关于开展{year}年工业企业技术改造补助申报工作的通知",
             "关于发放{year}年度稳岗返还资金的通知"],
    "人才引进": ["关于开展{year}年度高层次人才引进计划申报工作的通知", "关于{region}青年人才安居补贴申领的通知",
             "关于组织申报{year}年度博士后科研工作站的通知"],
    "融资支持": ["关于开展{year}年度中小微企业贷款贴息申报的通知", "关于设立{region}科技型企业风险补偿资金池的通知",
             "关于推进应收账款融资服务平台应用的通知"],
    "外贸出口": ["关于组织企业参加{year}年境外重点展会的通知", "关于{year}年度出口信用保险保费补助申报的通知",
             "关于支持跨境电商企业开拓国际市场的若干措施"],
    "绿色低碳": ["关于开展{year}年度绿色工厂评价工作的通知", "关于申报{region}节能减排技术改造项目的通知",
             "关于组织实施清洁生产审核奖励的通知"],
    "数字化转型": ["关于开展{year}年中小企业数字化转型试点申报的通知", "关于遴选{region}智能制造示范工厂的通知",
              "关于发放{year}年度工业互联网平台应用补贴的通知"],
    "就业扶持": ["关于发放{year}年度吸纳高校毕业生就业补贴的通知", "关于开展以工代训职业技能培训补贴申领工作的通知",
             "关于{region}阶段性降低失业保险费率的通知"],
    "知识产权": ["关于开展{year}年度知识产权优势企业认定工作的通知", "关于申报专利转化专项资助的通知",
             "关于组织开展商标品牌培育指导站建设的通知"],
    "科技创新": ["关于开展{year}年度高新技术企业认定工作的通知", "关于组织申报{year}年度科技型中小企业评价的通知",
             "关于申报{region}重点研发计划项目的通知"],
}

INDUSTRIES = ["制造业", "软件和信息技术服务业", "批发和零售业", "建筑业", "生物医药", "新能源", "农业", "文化创意", "交通运输", "餐饮住宿"]
INDUSTRY_WEIGHTS = [0.22, 0.14, 0.14, 0.08, 0.07, 0.07, 0.07, 0.07, 0.07, 0.07]
REGIONS = ["北京市", "上海市", "广东省", "浙江省", "江苏省", "四川省", "湖北省", "山东省"]
SIZE_BANDS = ["微型", "小型", "中型", "大型"]
SIZE_WEIGHTS = [0.35, 0.35, 0.22, 0.08]
SME_BANDS = ["微型", "小型", "中型"]
NATIONAL = "全国"  # region scope of a national policy
TAGS = ["高新技术企业", "专精特新", "科技型中小企业", "出口企业", "外资企业", "小微企业"]

# Industry -> category affinity (0..1): the shared part of taste.
INDUSTRY_AFFINITY = {
    "制造业": {"绿色低碳": 1.0, "数字化转型": 0.8, "资金补贴": 0.6, "外贸出口": 0.5},
    "软件和信息技术服务业": {"科技创新": 1.0, "知识产权": 0.8, "人才引进": 0.8, "税收优惠": 0.4},
    "批发和零售业": {"融资支持": 0.8, "就业扶持": 0.6, "外贸出口": 0.6, "数字化转型": 0.4},
    "建筑业": {"融资支持": 0.7, "绿色低碳": 0.6, "就业扶持": 0.5},
    "生物医药": {"科技创新": 1.0, "知识产权": 0.9, "人才引进": 0.6, "资金补贴": 0.4},
    "新能源": {"绿色低碳": 1.0, "科技创新": 0.7, "资金补贴": 0.6},
    "农业": {"资金补贴": 0.9, "融资支持": 0.6, "就业扶持": 0.5},
    "文化创意": {"知识产权": 0.9, "资金补贴": 0.5, "数字化转型": 0.5},
    "交通运输": {"绿色低碳": 0.7, "数字化转型": 0.6, "融资支持": 0.5},
    "餐饮住宿": {"就业扶持": 0.9, "融资支持": 0.7, "税收优惠": 0.6},
}

# Size band -> category shift: small firms want money and tax relief, large ones talent and exports.
SIZE_AFFINITY = {
    "微型": {"融资支持": 0.6, "税收优惠": 0.5, "就业扶持": 0.3},
    "小型": {"融资支持": 0.4, "税收优惠": 0.4, "资金补贴": 0.2},
    "中型": {"数字化转型": 0.3, "科技创新": 0.2},
    "大型": {"人才引进": 0.5, "外贸出口": 0.4, "绿色低碳": 0.3},
}

# Region -> category shift.
REGION_AFFINITY = {
    "广东省": {"外贸出口": 0.5}, "浙江省": {"外贸出口": 0.4, "数字化转型": 0.2}, "江苏省": {"外贸出口": 0.3},
    "北京市": {"科技创新": 0.4, "人才引进": 0.3}, "上海市": {"人才引进": 0.4, "科技创新": 0.3},
}

REFERENCE_KEYWORDS = {
    "税收优惠": ["税"], "融资支持": ["债券", "外汇", "信贷", "担保"], "外贸出口": ["海关", "进出口", "外商", "外资", "保税"],
    "就业扶持": ["劳动", "就业", "工资", "失业", "社会保险"], "知识产权": ["专利", "商标", "著作权", "集成电路"],
    "科技创新": ["科学技术", "科技", "技术"], "绿色低碳": ["节约能源", "环境", "清洁生产", "循环经济"],
    "资金补贴": ["中小企业", "个体工商户", "营商环境"],
}

FALLBACK_REFERENCES = {
    "税收优惠": ["企业所得税法实施条例"], "资金补贴": ["保障中小企业款项支付条例"], "人才引进": ["人力资源市场暂行条例"],
    "融资支持": ["企业债券管理条例"], "外贸出口": ["对外贸易法"], "绿色低碳": ["节约能源法"], "数字化转型": ["优化营商环境条例"],
    "就业扶持": ["就业促进法"], "知识产权": ["专利法实施细则"], "科技创新": ["科学技术进步法"],
}


def load_reference_titles(directory: str | Path | None) -> dict[str, list[str]]:
    """Category -> sorted real regulation titles from the LawRefBook JSONL files in `directory`.

    Titles are filed under a category when they contain one of its keywords. Categories with no
    match, or no directory at all, fall back to a short built-in list, so the result is never empty.
    """
    found: dict[str, set[str]] = {category: set() for category in CATEGORIES}
    for path, title in _reference_titles(directory) if directory is not None else ():
        for category, keywords in REFERENCE_KEYWORDS.items():
            if any(word in title for word in keywords):
                found[category].add(title)
    return {category: sorted(titles) or FALLBACK_REFERENCES[category] for category, titles in found.items()}


def reference_files(directory: str | Path) -> list[Path]:
    """The *.jsonl files of `directory`; none (or no such directory) is a one-line SftlabError naming --reference-dir."""
    from sftlab.errors import SftlabError

    files = sorted(Path(directory).glob("*.jsonl")) if Path(directory).is_dir() else []
    if not files:
        raise SftlabError(f"--reference-dir {directory}: no such directory, or no .jsonl files in it")
    return files


def _reference_titles(directory: str | Path):
    """(file, title) of every record of the *.jsonl files in `directory`, read by `sftlab.data.readers` (a missing
    directory, a file with no records, a broken line or bytes that are not UTF-8: a one-line SftlabError naming
    the file and line; a typo never falls back silently)."""
    from sftlab.data.readers import read_rows

    for path in reference_files(directory):
        for record in read_rows(path):
            yield path, str(record.get("title") or "")
