"""Two CPU processes over gloo (torchrun): same losses as one process with twice the batch, resume, dead or hung rank.

Each test launches real worker processes, so all are marked slow (about a minute each on 2 shared cores).
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from test_train_loop import tiny_run, train

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
WORKER = textwrap.dedent('''
    """Run a config in 2 processes (torchrun) with an action at a step: interrupt, kill rank 1, or hang rank 1."""
    import os, signal, sys, time
    from pathlib import Path
    from sftlab.config import load_config
    from sftlab.errors import SftlabError

    config, action, at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if "WORLD_SIZE" not in os.environ:  # the launcher
        from sftlab.train.distributed import launch
        try:
            launch([__file__, *sys.argv[1:]], 2)
        except SftlabError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        sys.exit(0)

    from sftlab.train import TrainingInterrupted, run_training
    from sftlab.train.distributed import lost_contact_message
    from sftlab.worker_errors import LostContact, record

    rank = int(os.environ["RANK"])
    cfg = load_config(config, [])

    def act(step, loss):
        if step != at:
            return
        if action == "interrupt":
            raise KeyboardInterrupt
        if action == "kill" and rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        if action == "hang" and rank == 1:
            Path(cfg.output.dir, "hang_started").write_text(str(time.time()))
            time.sleep(3600)

    try:
        run_training(cfg, overwrite=True, callbacks=[act], show_progress=False)
    except TrainingInterrupted:
        sys.exit(0)
    except Exception as exc:
        message = lost_contact_message(exc, cfg.train.dist_timeout_s)
        if message is None:
            raise
        if not record(LostContact(message)):  # as `sftlab train` does: the launcher prints one line
            print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
''')
ROWS = [{"messages": [{"role": "user", "content": f"question {i}"},
                      {"role": "assistant", "content": "answer " + "word " * (1 + (i * 5) % 11)}]} for i in range(11)]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}


def _config(tmp_path: Path, name: str, **train_settings) -> Path:
    raw = tiny_run(tmp_path, rows=ROWS, name=name,
                   train={"batch_size": 2, "grad_accum": 2, "max_steps": 4, "save_every_n_steps": 1, **train_settings},
                   data={"validation": str(tmp_path / "train.jsonl")}, eval={"every_n_steps": 2, "batch_size": 3},
                   output={"dir": str(tmp_path / name), "tensorboard": False, "keep_checkpoints": 4})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sftlab", "train", *args, "--no-progress"], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _worker(tmp_path: Path, config: Path, action: str, at: int, timeout: int = 300) -> subprocess.CompletedProcess:
    script = tmp_path / "worker.py"
    script.write_text(WORKER, encoding="utf-8")
    return subprocess.run([sys.executable, str(script), str(config), action, str(at)], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _rows(run_dir: Path) -> tuple[list[float], list[float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if not r.get("eval")], [r["loss"] for r in rows if r.get("eval")]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("gloo")
    done = _cli(str(_config(tmp_path, "two")), "--nproc", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp_path, done


def test_two_processes_batch_b_equal_one_process_batch_2b(two_process_run):
    tmp_path, done = two_process_run
    assert "trained with 2 processes" in done.stdout
    raw = tiny_run(tmp_path, rows=ROWS, name="one", train={"batch_size": 4, "grad_accum": 2, "max_steps": 4},
                   data={"validation": str(tmp_path / "train.jsonl")}, eval={"every_n_steps": 2, "batch_size": 6})
    single = train(raw)
    losses, evals = _rows(tmp_path / "two")
    assert len(losses) == 4  # 11 rows, global micro-batch 4: the last micro-batch of each epoch leaves a rank idle
    assert losses == pytest.approx(single.losses, rel=1e-5)
    assert evals == pytest.approx(_rows(single.out_dir)[1], rel=1e-5)  # gathered over both ranks
    supervised = [json.loads(line)["supervised_tokens"] for line in (tmp_path / "two" / "metrics.jsonl").open()
                  if "eval" not in line]
    assert supervised == [json.loads(line)["supervised_tokens"] for line in (single.out_dir / "metrics.jsonl").open()
                          if "eval" not in line]
    assert (tmp_path / "two" / "model" / "model.safetensors").is_file()
    assert (tmp_path / "two" / "checkpoints" / "step-4" / "rng_state_ranks.pt").is_file()


def _interrupt_then_resume(tmp_path, config):
    """Stop a 2-process run of `config` (output dir "resumed") after step 2, then resume it with 2 processes."""
    stopped = _worker(tmp_path, config, "interrupt", 2)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == ["step-1", "step-2"]
    resumed = _cli(str(config), "--nproc", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return resumed


def test_resume_with_two_processes_continues_exactly(two_process_run):
    tmp_path, _ = two_process_run
    config = _config(tmp_path, "resumed")
    _interrupt_then_resume(tmp_path, config)
    assert _rows(tmp_path / "resumed")[0] == pytest.approx(_rows(tmp_path / "two")[0], rel=1e-6)
    single = _cli(str(config), "--resume")  # one process may not continue a two-process checkpoint
    assert single.returncode == 2 and "written by 2 process(es) and this run has 1" in single.stderr


def test_killed_rank_stops_the_run_with_an_error(tmp_path):
    started = time.monotonic()
    done = _worker(tmp_path, _config(tmp_path, "killed", dist_timeout_s=30), "kill", 2)
    assert done.returncode == 2
    assert "error: training process rank 1 was killed by SIGKILL; the other processes were stopped" in done.stderr
    assert time.monotonic() - started < 240


def test_hung_rank_makes_the_others_stop_within_the_timeout(tmp_path):
    done = _worker(tmp_path, _config(tmp_path, "hung", dist_timeout_s=15), "hang", 2)
    ended = time.time()
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-3000:]  # rank 0's report only: no launcher line, no second copy
    assert errors[0].startswith("error: rank 0: another training process stopped answering or died "
                                "(train.dist_timeout_s=15)")
    hang_started = float((tmp_path / "hung" / "hang_started").read_text())
    assert 15 <= ended - hang_started < 15 + 45


def test_a_bad_data_line_is_one_error_line_from_the_launcher(tmp_path):
    config = _config(tmp_path, "bad")
    with (tmp_path / "train.jsonl").open("a", encoding="utf-8") as rows:
        rows.write('{"messages": [oops\n')
    done = _cli(str(config), "--nproc", "2")
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {tmp_path / 'train.jsonl'}:{len(ROWS) + 1}: malformed JSON line " \
                                  "(Expecting value at column 15)"
    assert not (tmp_path / "bad").exists()


def test_ctrl_c_of_the_launcher_checkpoints_every_rank_at_the_same_step(tmp_path):
    config = _config(tmp_path, "ctrl_c", max_steps=400, save_every_n_steps=1000)
    launcher = subprocess.Popen([sys.executable, "-m", "sftlab", "train", str(config), "--nproc", "2", "--no-progress"],
                                cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "ctrl_c" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.5)
    launcher.send_signal(signal.SIGINT)
    _, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode == 130, stderr[-3000:]
    checkpoints = list((tmp_path / "ctrl_c" / "checkpoints").iterdir())
    assert len(checkpoints) == 1
    step = json.loads((checkpoints[0] / "sftlab_state.json").read_text())["step"]
    assert 2 <= step < 400
    assert f"interrupted; latest checkpoint: {checkpoints[0]}; resume with: sftlab train {config} --nproc 2 --resume" in stderr
    import torch

    assert len(torch.load(checkpoints[0] / "rng_state_ranks.pt", weights_only=True)) == 2  # one RNG state per rank


def test_streaming_pt_with_two_processes_equals_one_process_double_batch(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": " ".join(f"w{i}x{j}" for j in range(i % 7 + 1))}) + "\n"
                              for i in range(30)), encoding="utf-8")

    def raw(name, batch_size):
        return tiny_run(tmp_path, name=name, data={"train": str(corpus), "streaming": True, "shuffle_buffer": 8},
                        train={"stage": "pt", "max_steps": 3, "batch_size": batch_size, "grad_accum": 2,
                               "max_length": 16}, output={"dir": str(tmp_path / name), "tensorboard": False})

    config = tmp_path / "stream.yaml"
    config.write_text(yaml.safe_dump(raw("two", 2)), encoding="utf-8")
    done = _cli(str(config), "--nproc", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    single = train(raw("one", 4))
    assert _rows(tmp_path / "two")[0] == pytest.approx(single.losses, rel=1e-5)
