"""Checkpoints record the library versions and device; --resume warns when torch/transformers/peft changed."""

import importlib.metadata
import json
import platform

import pytest

from sftlab.train.environment import PACKAGES, collect_environment, package_version, version_warning
from test_train_loop import tiny_run, train

WARNING = "warning: the checkpoint was written with"


def _interrupted_run(tmp_path):
    """A tiny run stopped after step 1 of 3, with its checkpoint's sidecar path."""
    from sftlab.train import TrainingInterrupted

    def stop(step, loss):
        if step == 1:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as err:
        train(tiny_run(tmp_path, train={"max_steps": 3}), callbacks=[stop])
    return err.value.checkpoint / "sftlab_state.json"


def _installed(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def test_sidecar_and_card_record_the_versions_of_this_process(tmp_path):
    result = train(tiny_run(tmp_path, train={"max_steps": 2, "save_every_n_steps": 1}, output={"keep_checkpoints": 2}))
    for step in (1, 2):
        sidecar = json.loads((result.out_dir / "checkpoints" / f"step-{step}" / "sftlab_state.json").read_text())
        env = sidecar["environment"]
        assert env["packages"] == {name: _installed(name) for name in
                                   ("sftlab", "torch", "transformers", "peft", "accelerate", "tokenizers")}
        assert env["python"] == platform.python_version()
        assert env["device"]["kind"] == "cpu" and env["allocator"].startswith("allocator: ")
    card = (result.out_dir / "model" / "README.md").read_text()
    assert "## Environment" in card and f"transformers {importlib.metadata.version('transformers')}" in card


def test_a_package_that_is_not_installed_is_null():
    assert package_version("sftlab-no-such-distribution") is None
    env = collect_environment()
    assert set(env["packages"]) == set(PACKAGES) and env["device"] is None


def test_resume_after_a_transformers_change_warns_once_and_goes_on(tmp_path, capsys):
    path = _interrupted_run(tmp_path)
    state = json.loads(path.read_text())
    now = state["environment"]["packages"]["transformers"]
    state["environment"]["packages"]["transformers"] = "4.0.0"
    path.write_text(json.dumps(state))
    capsys.readouterr()
    resumed = train(tiny_run(tmp_path, train={"max_steps": 3}), resume=True)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith(WARNING)]
    assert warnings == [f"{WARNING} transformers 4.0.0 (now {now}); resuming anyway, but the losses may differ "
                        "from an uninterrupted run"]
    assert len(resumed.losses) == 3


@pytest.mark.parametrize("edit", ["drop the field", "unchanged"])
def test_resume_from_an_old_or_same_version_checkpoint_says_nothing(tmp_path, capsys, edit):
    path = _interrupted_run(tmp_path)
    if edit == "drop the field":  # a checkpoint written before environments were recorded
        state = json.loads(path.read_text())
        del state["environment"]
        path.write_text(json.dumps(state))
    capsys.readouterr()
    resumed = train(tiny_run(tmp_path, train={"max_steps": 3}), resume=True)
    err = capsys.readouterr().err
    assert "resuming from" in err and WARNING not in err
    assert len(resumed.losses) == 3


def test_version_warning_names_each_changed_package_and_ignores_the_rest():
    saved = {"packages": {"torch": "2.0.0", "transformers": "4.40.0", "peft": None, "accelerate": "0.1"}}
    now = {"torch": "2.0.0", "transformers": "4.46.0", "peft": "0.13.0"}
    assert version_warning(saved, now) == (f"{WARNING} transformers 4.40.0 (now 4.46.0), peft not installed "
                                           "(now 0.13.0); resuming anyway, but the losses may differ from an "
                                           "uninterrupted run")
    assert version_warning(None, now) is None and version_warning({"python": "3.11"}, now) is None
    assert version_warning({"packages": dict(now, accelerate="9")}, now) is None


def test_a_gpu_is_named_by_torch(monkeypatch):
    import torch

    from sftlab.train.environment import device_info

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert device_info(torch.device("cuda")) == {"kind": "cuda", "name": "NVIDIA H100 80GB HBM3"}
    assert device_info(torch.device("cpu"))["kind"] == "cpu"
