"""Policy application: the time split leaks nothing from the future; examples, baselines and evaluation."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta

import pytest

from sftlab.policy.baselines import standard_baselines
from sftlab.policy.db import open_db
from sftlab.policy.evaluate import evaluate_scorers, format_table, write_report
from sftlab.policy.examples import NO, YES, behaviour_text, build_data
from sftlab.policy.features import FEATURE_NAMES, BehaviourIndex, load_frames
from sftlab.policy.simulate import WorldSpec, simulate, write_world

SPEC = WorldSpec(n_enterprises=40, n_policies=60, days=240, seed=5)
CUTOFF = "2025-07-01"


def _read(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def world():
    return simulate(SPEC)


@pytest.fixture(scope="module")
def built(world, tmp_path_factory):
    root = tmp_path_factory.mktemp("policy_data")
    engine = open_db(f"sqlite:///{root}/db.sqlite")
    write_world(engine, world)
    manifest = build_data(engine, root / "data", cutoff=CUTOFF, max_train=300, seed=0)
    return engine, root / "data", manifest


def test_future_events_change_nothing_but_evaluation_labels(world, built, tmp_path):
    _, data, _ = built
    cut = datetime.fromisoformat(CUTOFF)
    other = simulate(WorldSpec(n_enterprises=40, n_policies=60, days=240, seed=99))
    future = [e for e in other.events if e[3] >= cut]  # a different future, same past
    world_b = type(world)(spec=world.spec, enterprises=world.enterprises, policies=world.policies,
                          events=[e for e in world.events if e[3] < cut] + future, interest=world.interest)
    engine_b = open_db(f"sqlite:///{tmp_path}/b.sqlite")
    write_world(engine_b, world_b)
    build_data(engine_b, tmp_path / "data", cutoff=CUTOFF, max_train=300, seed=0)
    for name in ("yesno_train.jsonl", "yesno_valid.jsonl", "category_train.jsonl", "train_features.jsonl"):
        assert (data / name).read_text() == (tmp_path / "data" / name).read_text(), name
    eval_a, eval_b = _read(data / "eval_candidates.jsonl"), _read(tmp_path / "data" / "eval_candidates.jsonl")
    strip = lambda rows: {(r["enterprise_id"], r["policy_id"]): (r["prompt"], r["features"], r["cold"]) for r in rows}
    a, b = strip(eval_a), strip(eval_b)
    assert all(a[key] == b[key] for key in a.keys() & b.keys()) and a.keys() & b.keys()
    assert [r["label"] for r in eval_a] != [r["label"] for r in eval_b[: len(eval_a)]]


def test_training_rows_live_before_the_cutoff_and_candidates_after(built):
    engine, data, manifest = built
    ents, pols, events = load_frames(engine)
    cut = datetime.fromisoformat(CUTOFF)
    for row in _read(data / "train_features.jsonl"):
        assert datetime.fromisoformat(row["as_of"]) < cut
        assert pols.at[row["policy_id"], "publish_date"] < cut.date()
    index = BehaviourIndex(events, pols)
    for row in _read(data / "eval_candidates.jsonl"):
        assert row["as_of"] == cut.isoformat() and pols.at[row["policy_id"], "publish_date"] >= cut.date()
        assert behaviour_text(index.summary(row["enterprise_id"], cut)) in row["prompt"].split("\n")  # history as of the cut-off
    assert manifest["cutoff"] == cut.isoformat() and manifest["eval_positives"] > 0


def test_summary_reads_only_events_strictly_before(built):
    engine, _, _ = built
    _, pols, events = load_frames(engine)
    click = events[events["type"] == "click"].iloc[0]
    index = BehaviourIndex(events, pols)
    at = click["ts"].to_pydatetime()
    before = index.summary(click["enterprise_id"], at)
    after = index.summary(click["enterprise_id"], at + timedelta(seconds=1))
    assert after["actions_total"] == before["actions_total"] + 1 and click["policy_id"] not in before["seen"]


def test_examples_are_chinese_balanced_messages(built):
    _, data, manifest = built
    train = _read(data / "yesno_train.jsonl") + _read(data / "yesno_valid.jsonl")
    answers = [row["messages"][-1]["content"] for row in train]
    assert set(answers) == {YES, NO} and abs(answers.count(YES) - answers.count(NO)) <= 1
    prompt = train[0]["messages"][0]["content"]
    assert prompt.startswith("企业：") and "候选：《" in prompt and prompt.endswith("答是或否。")
    assert [m["role"] for m in train[0]["messages"]] == ["user", "assistant"]
    categories = _read(data / "category_train.jsonl")
    assert categories and all(row["messages"][-1]["content"] in row["messages"][0]["content"] for row in categories)
    assert manifest["balance"]["after"][YES] == manifest["balance"]["after"][NO]


def test_baselines_and_oracle_ceiling(built, tmp_path):
    engine, data, manifest = built
    rows, train = _read(data / "eval_candidates.jsonl"), _read(data / "train_features.jsonl")
    scorers = standard_baselines(train, engine)
    assert [s.name for s in scorers] == ["popularity", "category_frequency", "logistic_regression", "oracle"]
    perfect = [float(r["label"]) for r in rows]
    results = evaluate_scorers(rows, scorers, manifest["train_positive_rate"], ks=(5,), extra_scores={"perfect": (perfect, 0.5)})
    assert results["perfect"]["overall"]["ndcg@5"] == pytest.approx(1.0) and results["perfect"]["overall"]["f1"] == 1.0
    assert results["oracle"]["overall"]["ndcg@5"] > results["popularity"]["overall"]["ndcg@5"]
    assert results["oracle"]["overall"]["auc"] > 0.6
    for group in ("overall", "cold", "active"):
        assert results["popularity"][group]["candidates"] == sum(
            1 for r in rows if group == "overall" or r["cold"] == (group == "cold"))
    table = format_table(results)
    assert "| oracle | cold |" in table and "ndcg@5" in table
    report = write_report(tmp_path, results, manifest, model="perfect")
    text = report.read_text(encoding="utf-8")
    assert "perfect wins against popularity on ndcg@5" in text
    assert json.loads((tmp_path / "metrics.json").read_text())["results"]["oracle"]["threshold"] > 0


def test_prompt_match_line_states_the_pairs_signals(built):
    engine, data, _ = built
    ents, pols, _ = load_frames(engine)
    rows = _read(data / "eval_candidates.jsonl")
    levels = set()
    for row in rows[:200]:
        enterprise, policy = ents.loc[row["enterprise_id"]], pols.loc[row["policy_id"]]
        lines = row["prompt"].split("\n")
        candidate = next(part for part in lines if part.startswith("候选："))
        targeted = enterprise["industry"] in (policy["industry_scope"] or [])
        assert ("点名本行业" in candidate) == targeted and f"，{policy['category']}类，" in candidate
        line = next(part for part in lines if part.startswith("匹配："))
        own = round(math.expm1(row["features"][FEATURE_NAMES.index("own_recent")]))  # 30-day count: at most the 90-day one
        assert int(line.split("点击该类")[1].split("次")[0]) >= own
        assert f"（{row['features'][FEATURE_NAMES.index('industry_rate')]:.0%}）" in line
        levels.add(line.split("同行业对该类兴趣")[1][0])
    assert levels <= {"高", "中", "低"} and len(levels) >= 2  # the industry's interest is said as a level


def test_interest_levels_in_words():
    from sftlab.policy.examples import _own_level, _peer_level

    assert _own_level(0, 0) == "无点击记录" and _own_level(0, 5) == "未点击" and _own_level(1, 20) == "偶尔"
    assert _own_level(2, 10) == "有兴趣" and _own_level(3, 10) == "主要偏好"
    assert [_peer_level(r, 0.1) for r in (0.2, 0.1, 0.05)] == ["高", "中", "低"]


def test_paired_bootstrap_interval_of_ndcg_differences():
    from sftlab.policy.evaluate import comparisons, enterprise_ndcg, evaluate_scorers, paired_bootstrap

    rows = [{"enterprise_id": f"E{e}", "policy_id": f"P{p}", "label": int(p == e % 4), "cold": e < 10}
            for e in range(40) for p in range(4)]
    good = [1.0 if row["label"] else 0.0 for row in rows]
    bad = [0.0 if row["label"] else 1.0 for row in rows]
    assert set(enterprise_ndcg(rows, good, 5).values()) == {1.0} and len(enterprise_ndcg(rows, good, 5, "cold")) == 10
    diff, low, high = paired_bootstrap(enterprise_ndcg(rows, good, 5), enterprise_ndcg(rows, bad, 5))
    assert 0 < low <= diff <= high <= 1
    assert paired_bootstrap(enterprise_ndcg(rows, good, 5), enterprise_ndcg(rows, good, 5)) == [0.0, 0.0, 0.0]
    mixed = [g if i % 8 < 4 else b for i, (g, b) in enumerate(zip(good, bad))]  # right for half the enterprises
    low, high = paired_bootstrap(enterprise_ndcg(rows, mixed, 5), enterprise_ndcg(rows, bad, 5))[1:]
    assert 0 < low < high < 1
    results = evaluate_scorers(rows, [], 0.25, ks=(5,), extra_scores={"fine_tuned": (good, 0.5), "worse": (bad, None)},
                               bootstrap_for="fine_tuned")
    assert results["fine_tuned"]["bootstrap"]["worse"]["overall"][0] > 0
    assert "95% bootstrap interval [+" in "\n".join(comparisons(results, "fine_tuned", 5))


def test_eval_group_keeps_only_that_groups_enterprises(built, tmp_path):
    engine, data, _ = built
    everyone = _read(data / "eval_candidates.jsonl")
    for group in ("cold", "active"):
        manifest = build_data(engine, tmp_path / group, cutoff=CUTOFF, max_train=300, seed=0, eval_group=group)
        rows = _read(tmp_path / group / "eval_candidates.jsonl")
        expected = [r for r in everyone if r["cold"] == (group == "cold")]
        assert rows == expected and rows and manifest["eval_group"] == group
        assert (tmp_path / group / "yesno_train.jsonl").read_text() == (data / "yesno_train.jsonl").read_text()


def test_report_of_one_group_neither_repeats_overall_nor_lists_empty_groups():
    from sftlab.policy.evaluate import comparisons, evaluate_scorers

    rows = [{"enterprise_id": f"E{e}", "policy_id": f"P{p}", "label": int(p == e % 4), "cold": True}
            for e in range(12) for p in range(4)]
    good = [1.0 if row["label"] else 0.0 for row in rows]
    results = evaluate_scorers(rows, [], 0.25, ks=(5,), extra_scores={"fine_tuned": (good, 0.5), "flat": ([0.0] * len(rows), None)})
    table = format_table(results)
    assert "| fine_tuned | cold |" in table and "| fine_tuned | overall |" in table and "| active |" not in table
    lines = comparisons(results, "fine_tuned", 5)
    assert len(lines) == 1 and lines[0].startswith("- cold: fine_tuned wins against flat")


@pytest.mark.parametrize("option, value, message", [
    ("category_limit", -1, "--category-limit must be at least 0, got -1"),
    ("max_train", 4, "--max-train must be at least 12 (6 per answer"),
    ("max_eval_enterprises", 0, "--max-eval-enterprises must be at least 1, got 0"),
])
def test_bad_sizes_are_one_line_errors_and_leave_an_earlier_build_as_it_was(built, tmp_path, option, value, message):
    import shutil

    from sftlab.errors import SftlabError

    engine, data, _ = built
    out = tmp_path / "data"
    shutil.copytree(data, out)
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    with pytest.raises(SftlabError, match="^" + message.replace("(", r"\(")):
        build_data(engine, out, cutoff=CUTOFF, **{"max_train": 300, option: value})
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before


def test_evaluation_refuses_bad_k_and_names_a_broken_line(built, tmp_path):
    import shutil

    from sftlab.errors import SftlabError
    from sftlab.policy.evaluate import run_evaluation

    engine, data, _ = built
    with pytest.raises(SftlabError, match=r"^--k must be at least 1, got 0$"):
        run_evaluation(engine, data, tmp_path / "report", k=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(SftlabError, match=r"^--out .*file is a file; expected a report directory$"):
        run_evaluation(engine, data, tmp_path / "file")
    broken = tmp_path / "data"
    shutil.copytree(data, broken)
    with (broken / "eval_candidates.jsonl").open("a", encoding="utf-8") as handle:
        handle.write('{"enterprise_id": "E1", \n')
    lines = len((broken / "eval_candidates.jsonl").read_text(encoding="utf-8").splitlines())
    with pytest.raises(SftlabError, match=rf"eval_candidates.jsonl:{lines}: not valid JSON"):
        run_evaluation(engine, broken, tmp_path / "report")
    assert not (tmp_path / "report").exists()
