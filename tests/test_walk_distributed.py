"""Launch options and run-directory states that `sftlab train --nproc` refuses in one line before any worker starts,
torchrun's own log lines kept out, and streaming inputs a stream cannot honour (no second process is started)."""

import json
import logging
import socket

import pytest
import yaml

from sftlab.errors import SftlabError
from sftlab.train.launch_checks import check_launch, quiet_torchrun


@pytest.fixture
def no_launch(monkeypatch):
    """sftlab.train.distributed.launch replaced by a recorder: the tests check it is never reached."""
    calls = []
    monkeypatch.setattr("sftlab.train.distributed.launch", lambda *args, **kwargs: calls.append(args))
    return calls


def _train(tmp_path, *options: str) -> int:
    from sftlab.cli import main

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": {"path": str(tmp_path / "m")}, "data": {"train": "t.jsonl"},
                                      "train": {"allocator": "system"},
                                      "output": {"dir": str(tmp_path / "out")}}), encoding="utf-8")
    return main(["train", str(config), *options])


def test_nproc_zero_is_refused_not_run_as_one_process(tmp_path, no_launch, capsys):
    assert _train(tmp_path, "--nproc", "0") == 2
    assert capsys.readouterr().err.strip() == "error: --nproc must be at least 1, got 0"
    assert no_launch == []


def test_more_processes_than_cores_or_gpus_are_refused(monkeypatch):
    monkeypatch.setattr("sftlab.train.launch_checks.local_slots", lambda: (2, "CPU core(s)"))
    check_launch(2)
    with pytest.raises(SftlabError, match=r"^--nproc 3: this machine has 2 CPU core\(s\); use --nproc 2 or fewer$"):
        check_launch(3)


@pytest.mark.parametrize("nnodes, node_rank", [(2, 2), (2, -1), (0, 0)])
def test_a_node_rank_outside_nnodes_is_refused(nnodes, node_rank):
    with pytest.raises(SftlabError, match="--node-rank must be 0 .. --nnodes - 1"):
        check_launch(1, nnodes, node_rank, "127.0.0.1:29400")


def test_a_rendezvous_port_in_use_is_refused_instead_of_waited_on():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(SftlabError, match=rf"^--rdzv-endpoint 127.0.0.1:{port}: port {port} is in use on this "):
            check_launch(1, rdzv_endpoint=f"127.0.0.1:{port}")
        check_launch(1, nnodes=2, node_rank=1, rdzv_endpoint=f"127.0.0.1:{port}")  # node 0 hosts it, not this one
    with pytest.raises(SftlabError, match="--rdzv-endpoint 127.0.0.1:abc: "):
        check_launch(1, rdzv_endpoint="127.0.0.1:abc")


def _checkpoint(tmp_path, processes: int) -> None:
    step = tmp_path / "out" / "checkpoints" / "step-3"
    step.mkdir(parents=True)
    (step / "sftlab_state.json").write_text(json.dumps({"step": 3, "processes": processes, "position": {}, "losses": [],
                                                           "eval_history": [], "best": {}, "bad_evals": 0, "config": {}}))


def test_resume_with_another_process_count_is_refused_before_the_workers_start(tmp_path, no_launch, capsys):
    _checkpoint(tmp_path, 1)
    assert _train(tmp_path, "--nproc", "2", "--resume") == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: --resume: the checkpoint was written by 1 process(es) and this run has 2; resume with --nproc 1 "
        "(the global batch and data order depend on it)"]
    assert no_launch == []


@pytest.mark.parametrize("setup, options, message", [
    ("occupied", [], "already exists and is not empty; pass --overwrite"),
    ("empty", ["--resume"], "--resume: no checkpoint in"),
])
def test_output_dir_states_the_workers_would_refuse_fail_before_they_start(tmp_path, no_launch, capsys, setup,
                                                                          options, message):
    (tmp_path / "out").mkdir()
    if setup == "occupied":
        (tmp_path / "out" / "metrics.jsonl").write_text("")
    assert _train(tmp_path, "--nproc", "1", *options) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and message in err[0]
    assert no_launch == [] and sorted(p.name for p in (tmp_path / "out").iterdir()) == (
        ["metrics.jsonl"] if setup == "occupied" else [])  # nothing created or moved


def test_matching_resume_and_overwrite_reach_the_launcher(tmp_path, no_launch):
    _checkpoint(tmp_path, 2)
    assert _train(tmp_path, "--nproc", "2", "--resume") == 0
    assert _train(tmp_path, "--nproc", "2", "--overwrite") == 0
    assert len(no_launch) == 2 and (tmp_path / "out" / "checkpoints" / "step-3").is_dir()


def test_torchrun_log_lines_are_left_out_unless_loglevel_is_set(monkeypatch):
    import torch.distributed.run  # noqa: F401 (creates torchrun's loggers)

    api = logging.getLogger("torch.distributed.elastic.multiprocessing.api")
    before = api.level
    monkeypatch.delenv("LOGLEVEL", raising=False)
    with quiet_torchrun():
        assert not api.isEnabledFor(logging.ERROR)
    assert api.level == before
    monkeypatch.setenv("LOGLEVEL", "INFO")
    with quiet_torchrun():
        assert api.level == before


def test_a_csv_stream_without_the_text_column_names_the_setting(tmp_path):
    from sftlab.data.streaming import StreamPosition, TokenStream
    from sftlab.models.tiny import make_tokenizer

    path = tmp_path / "c.csv"
    path.write_text("body,other\nhello,1\n", encoding="utf-8")
    stream = TokenStream([str(path)], "csv", "text", make_tokenizer(), 8, "concat", 2)
    with pytest.raises(SftlabError, match=r"no column 'text' \(columns: body, other\); set data.columns.text"):
        next(stream.rows(StreamPosition()))


@pytest.mark.parametrize("balance", ["oversample", "undersample"])
def test_streaming_refuses_label_balancing_as_in_memory_pt_does(tmp_path, balance):
    from sftlab.config import load_config
    from sftlab.data.streaming import prepare_streaming

    (tmp_path / "c.txt").write_text("one two\n", encoding="utf-8")
    overrides = ["data.streaming=true", "train.stage=pt", "train.max_steps=2"]
    with pytest.raises(SftlabError, match=f"^config: data.balance={balance} needs labels; stage pt has none"):
        load_config(None, [*overrides, f"data.balance={balance}"], base={"model": {"path": "m"}, "data": {"train": "c.txt"}})
    cfg = load_config(None, overrides, base={"model": {"path": "m"}, "data": {"train": "c.txt"}})
    unchecked = cfg.model_copy(update={"data": cfg.data.model_copy(update={"balance": balance})})
    with pytest.raises(SftlabError, match=f"^data.balance={balance} needs labels; stage pt has none"):
        prepare_streaming(unchecked, None, tmp_path)
