"""Policy application, bad input found by an acceptance walk: every case is one `error:` line naming the file and line,
the option or the record at fault, and nothing is written or half-done."""

from __future__ import annotations

import json
import re
import shutil
import socket
import threading

import pytest
from sqlalchemy import func, select, update

from sftlab.cli import main
from sftlab.errors import SftlabError
from sftlab.policy.db import Enterprise, open_db
from sftlab.policy.examples import build_data
from sftlab.policy.simulate import WorldSpec, simulate, write_world

SPEC = WorldSpec(n_enterprises=20, n_policies=40, days=200, seed=4)
CUTOFF = "2025-06-01"


@pytest.fixture(scope="module")
def world():
    return simulate(SPEC)


@pytest.fixture(scope="module")
def built(world, tmp_path_factory):
    root = tmp_path_factory.mktemp("walk")
    url = f"sqlite:///{root}/db.sqlite"
    write_world(open_db(url), world)
    build_data(open_db(url), root / "data", cutoff=CUTOFF, max_train=40)
    return url, root / "data"


def _error(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: "), captured.err
    return captured.err.strip()


def _rewrite_line(path, number: int, text: bytes) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    lines[number - 1] = text + b"\n"
    path.write_bytes(b"".join(lines))


@pytest.mark.parametrize("file, line, message", [
    ("eval_candidates.jsonl", b'[1, 2]', "expected a JSON object, got list"),
    ("eval_candidates.jsonl", b'{"enterprise_id": "E000001"}', "missing field 'policy_id'"),
    ("eval_candidates.jsonl", "BAD-LABEL", "field 'label': expected 0 or 1, got 2"),
    ("eval_candidates.jsonl", "SHORT-FEATURES", "field 'features': expected 11 numbers"),
    ("eval_candidates.jsonl", b'{"enterprise_id": "\xb9\xab"}', "not UTF-8 text"),
    ("train_features.jsonl", b'{"label": 1}', "missing field 'features'"),
    ("train_features.jsonl", "TEXT-LABEL", "field 'label': expected int, got str"),
])
def test_evaluation_names_a_line_that_is_not_a_candidate(built, tmp_path, capsys, file, line, message):
    url, data = built
    broken = tmp_path / "data"
    shutil.copytree(data, broken)
    row = json.loads((broken / file).read_text(encoding="utf-8").splitlines()[1])
    if line == "BAD-LABEL":
        line = json.dumps(row | {"label": 2}).encode()
    elif line == "SHORT-FEATURES":
        line = json.dumps(row | {"features": row["features"][:5]}).encode()
    elif line == "TEXT-LABEL":
        line = json.dumps(row | {"label": "1"}).encode()
    _rewrite_line(broken / file, 2, line)
    assert main(["policy", "baselines", "--db", url, "--data", str(broken), "--out", str(tmp_path / "report")]) == 2
    assert _error(capsys).startswith(f"error: {broken / file}:2: {message}")
    assert not (tmp_path / "report").exists()


def test_evaluation_refuses_no_candidates_and_a_manifest_that_is_not_an_object(built, tmp_path, capsys):
    url, data = built
    broken = tmp_path / "data"
    shutil.copytree(data, broken)
    (broken / "manifest.json").write_text("[]", encoding="utf-8")
    assert main(["policy", "baselines", "--db", url, "--data", str(broken)]) == 2
    assert _error(capsys) == f"error: {broken / 'manifest.json'}: expected a JSON object; rebuild it with `sftlab policy build-data`"
    shutil.copy(data / "manifest.json", broken / "manifest.json")
    (broken / "eval_candidates.jsonl").write_text("", encoding="utf-8")
    assert main(["policy", "baselines", "--db", url, "--data", str(broken)]) == 2
    assert _error(capsys).startswith(f"error: {broken / 'eval_candidates.jsonl'}: no held-out candidates to evaluate")
    assert not (broken / "baselines").exists()


ENTERPRISES = "id,name,industry,region,size_band,founded_year,tags,registered_on\n"


def test_import_refuses_size_bands_the_features_do_not_know(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/db.sqlite"
    (tmp_path / "enterprises.csv").write_text(ENTERPRISES + "E1,甲,制造业,北京市,巨型,2010,,2025-01-01\n"
                                              "E2,乙,制造业,北京市,小型,2010,,2025-01-01\n", encoding="utf-8")
    (tmp_path / "policies.csv").write_text(
        "id,title,issuer,category,region_scope,industry_scope,size_scope,publish_date,expiry_date,summary\n"
        "P1,通知,局,资金补贴,全国,,小型|小微,2025-02-01,2025-05-01,摘要\n", encoding="utf-8")
    assert main(["policy", "import", "--db", url, str(tmp_path), "--rejects-dir", str(tmp_path / "rejects")]) == 0
    assert "enterprises: 2 rows, 1 imported, 1 rejected" in capsys.readouterr().out
    enterprise_reasons = (tmp_path / "rejects" / "enterprises.rejects.csv").read_text(encoding="utf-8")
    policy_reasons = (tmp_path / "rejects" / "policies.rejects.csv").read_text(encoding="utf-8")
    assert "size_band: '巨型' is not a size band; expected one of 微型, 小型, 中型, 大型" in enterprise_reasons
    assert "size_scope: '小微' is not a size band" in policy_reasons


def test_an_unknown_size_band_in_the_database_is_named_not_a_traceback(world, tmp_path, capsys):
    copy = tmp_path / "db.sqlite"
    engine = open_db(f"sqlite:///{copy}")
    write_world(engine, world)
    with engine.begin() as conn:
        conn.execute(update(Enterprise).values(size_band="巨型"))  # written some other way than `sftlab policy import`
    with pytest.raises(SftlabError, match=r"^enterprise 'E\d{6}': size_band '巨型' is not one of 微型, 小型, 中型, 大型"):
        build_data(engine, tmp_path / "data", cutoff=CUTOFF, max_train=40)
    assert main(["policy", "push", "--db", f"sqlite:///{copy}", "--baseline", "popularity", "--since", "2025-06-01",
                 "--now", "2025-07-01"]) == 2
    assert re.match(r"error: enterprise 'E\d{6}': size_band '巨型' is not one of", _error(capsys))


@pytest.mark.parametrize("header, message", [
    ("id,name,name,industry,region,size_band,founded_year,tags,registered_on", "column 'name' is given twice"),
    ("id,name,industry,region,size_band,founded_year,tag,registered_on", "unknown column 'tag' for table enterprises; did you mean 'tags'?"),
    ("", "empty file; expected a header row with the columns of table enterprises"),
])
def test_import_refuses_a_header_with_a_repeated_or_unknown_column(tmp_path, capsys, header, message):
    url = f"sqlite:///{tmp_path}/db.sqlite"
    source = tmp_path / "enterprises.csv"
    source.write_text(header + "\n" + ("E1,甲,甲,制造业,北京市,小型,2010,,2025-01-01\n" if header else ""), encoding="utf-8")
    assert main(["policy", "import", "--db", url, str(source), "--rejects-dir", str(tmp_path / "rejects")]) == 2
    assert _error(capsys) == f"error: {source}:1: {message}"
    with open_db(url).connect() as conn:
        assert conn.execute(select(func.count()).select_from(Enterprise)).scalar() == 0


def test_import_table_option_and_file_names(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/db.sqlite"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "enterprises.csv").write_text(ENTERPRISES, encoding="utf-8")
    assert main(["policy", "import", "--db", url, str(tmp_path / "in"), "--table", "events"]) == 2
    assert _error(capsys).startswith(f"error: --table events: {tmp_path / 'in'} is a directory")
    (tmp_path / "companies.csv").write_text(ENTERPRISES, encoding="utf-8")
    assert main(["policy", "import", "--db", url, str(tmp_path / "companies.csv")]) == 2
    assert _error(capsys) == (f"error: {tmp_path / 'companies.csv'}: its name does not say its table; "
                              "pass --table enterprises|policies|events|pushes")
    assert main(["policy", "import", "--db", url, str(tmp_path / "companies.csv"), "--table", "enterprises",
                 "--rejects-dir", str(tmp_path / "rejects")]) == 0
    assert "enterprises: 0 rows" in capsys.readouterr().out


@pytest.mark.parametrize("options, message", [
    (["--seed", "-1"], "--seed must be at least 0, got -1"),
    (["--csv-dir", "FILE"], "--csv-dir FILE: FILE is a file, not a directory"),
    (["--csv-dir", "FILE/csv"], "--csv-dir FILE/csv: FILE is a file, not a directory"),
])
def test_bad_simulate_options_are_refused_before_the_database_is_written(tmp_path, capsys, monkeypatch, options, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "FILE").write_text("x")
    assert main(["policy", "simulate", "--db", "sqlite:///sub/w.db", "--events", "300", *options]) == 2
    assert _error(capsys) == f"error: {message}"
    assert not (tmp_path / "sub").exists()


def test_push_into_an_empty_database_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SFTLAB_DB_URL", raising=False)
    assert main(["policy", "push", "--baseline", "popularity", "--since", "2025-06-01", "--now", "2025-07-01"]) == 2
    assert _error(capsys) == ("error: database sqlite:///sftlab_policy.db has no enterprises; give --db, or run "
                              "`sftlab policy simulate` or `sftlab policy import` first")


def test_api_port_errors_are_one_line_and_come_before_the_scorer(built, capsys, monkeypatch):
    from sftlab.commands import policy as command

    url, _ = built
    monkeypatch.setattr(command, "_score_fn", lambda args: pytest.fail("the scorer loaded before the port was bound"))
    assert main(["policy", "api", "--db", url, "--baseline", "popularity", "--port", "99999"]) == 2
    assert _error(capsys) == "error: --port must be between 0 and 65535, got 99999"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["policy", "api", "--db", url, "--baseline", "popularity", "--port", str(port)]) == 2
    assert _error(capsys).startswith(f"error: cannot listen on 127.0.0.1:{port}")


def test_a_postgresql_port_that_never_answers_times_out_in_one_line(monkeypatch):
    pytest.importorskip("psycopg")
    from sftlab.policy import db

    monkeypatch.setattr(db, "CONNECT_TIMEOUT_S", 2)
    outcome = []

    def connect():
        try:
            db.open_db(url)
        except Exception as exc:  # noqa: BLE001 - the test looks at what it was
            outcome.append(exc)

    with socket.socket() as silent:  # accepts connections (the kernel does) and never speaks, like Redis to libpq
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"postgresql+psycopg://postgres@127.0.0.1:{silent.getsockname()[1]}/test"
        worker = threading.Thread(target=connect, daemon=True)
        worker.start()
        worker.join(20)
        assert not worker.is_alive(), "open_db still waits on a port that never answers"
    assert len(outcome) == 1 and isinstance(outcome[0], SftlabError)
    assert re.match(r"database postgresql\+psycopg://postgres@127.0.0.1:\d+/test: .*timeout", str(outcome[0]))
    assert db._connect_args(url + "?connect_timeout=5") == {} and db._connect_args("sqlite:///x.db") == {}


def test_the_demo_fits_its_plan_to_a_model_that_is_not_gemma(tmp_path):
    from dataclasses import replace

    from sftlab.models.tiny import save_tiny
    from sftlab.policy.demo import FULL, QUICK, plan_for_model

    tiny = save_tiny("qwen2", tmp_path / "tiny")
    layers = json.loads((tiny / "config.json").read_text())["num_hidden_layers"]
    assert layers < 4
    assert plan_for_model(QUICK, str(tiny)) == replace(QUICK, max_length=1024, train_layers=f"last:{layers}")
    assert plan_for_model(QUICK, "gemma-3-270m") == QUICK and plan_for_model(FULL, "gemma-3-270m") == FULL

