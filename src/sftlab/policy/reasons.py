"""Human-readable reasons for a push, in Chinese, from the enterprise's own recent behaviour and the
policy's scope: "近30天查看了5条科技创新类政策", "面向软件和信息技术服务业企业", "浙江省本地政策"...

Behaviour comes first (it is what the ranking learns from); scope facts fill in when there is little
behaviour; at most two reasons are joined with "；".
"""

from __future__ import annotations

from sftlab.policy import catalog


def reason_text(summary: dict, enterprise: dict, policy: dict) -> str:
    """The reason line for pushing `policy` to `enterprise`, given its `BehaviourIndex.summary`."""
    category = policy["category"]
    reasons = []
    recent = summary.get("recent_by_category", {}).get(category, 0)
    window = summary.get("by_category", {}).get(category, 0)
    if recent:
        reasons.append(f"近30天查看了{recent}条{category}类政策")
    elif window:
        reasons.append(f"近90天查看了{window}条{category}类政策")
    if enterprise["industry"] in (policy.get("industry_scope") or []):
        reasons.append(f"面向{enterprise['industry']}企业")
    regions = policy.get("region_scope") or [catalog.NATIONAL]
    if catalog.NATIONAL not in regions and enterprise["region"] in regions:
        reasons.append(f"{enterprise['region']}本地政策")
    if policy.get("size_scope") and enterprise["size_band"] in policy["size_scope"]:
        reasons.append(f"适用于{enterprise['size_band']}企业")
    if not reasons:
        reasons.append(f"新发布的{category}类政策，贵企业符合申报条件")
    return "；".join(reasons[:2])
