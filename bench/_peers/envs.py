"""The peers' own virtual environments, created on first use: bench/.venv-trl and bench/.venv-lf.

TRL and LLaMA-Factory are benchmark-only: they never enter sftlab's dependencies. Each venv gets the
CPU build of torch first and pinned (`torch==2.13.0`), then the peer. LLaMA-Factory pins its own
versions of transformers/peft/trl/datasets, so it is installed with a constraints file holding
`torch==2.13.0+cpu`; PyPI's torchvision/torchaudio wheels next to it are CUDA builds that fail to load
beside CPU torch, so they are removed, and `bench/_peers/stub_torchaudio` stands in for torchaudio
(llamafactory imports it unconditionally; the stand-in raises on use). A `.ready` file marks a
finished install, so an interrupted one is redone.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent
TORCH_PIN = "torch==2.13.0"
PEERS = {
    "trl": {"venv": ".venv-trl", "packages": ["trl"], "constraints": None, "remove": []},
    "lf": {"venv": ".venv-lf", "packages": ["llamafactory==0.9.5"], "constraints": "torch==2.13.0+cpu\n",
           "remove": ["torchvision", "torchaudio"]},
}


def venv_python(peer: str) -> Path:
    return BENCH_DIR / PEERS[peer]["venv"] / "bin" / "python"


def _run(command: list[str], log) -> None:
    log("$ " + " ".join(command))
    subprocess.run(command, check=True)


def ensure_peer_env(peer: str, log=print) -> Path:
    """The Python of `peer`'s venv (trl or lf), installing it first when it is not ready yet."""
    recipe = PEERS[peer]
    venv = BENCH_DIR / recipe["venv"]
    python = venv_python(peer)
    if (venv / ".ready").exists():
        return python
    log(f"installing {peer} into {venv} (first use; a few minutes)")
    if not python.exists():
        _run([sys.executable, "-m", "venv", str(venv)], log)
    pip = [str(python), "-m", "pip", "install", "-q"]
    _run(pip + [TORCH_PIN], log)
    if recipe["constraints"]:
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
            handle.write(recipe["constraints"])
        _run(pip + recipe["packages"] + ["-c", handle.name], log)
        Path(handle.name).unlink()
    else:
        _run(pip + recipe["packages"], log)
    if recipe["remove"]:
        _run([str(python), "-m", "pip", "uninstall", "-y", "-q"] + recipe["remove"], log)
    (venv / ".ready").write_text(TORCH_PIN + " " + " ".join(recipe["packages"]) + "\n", encoding="utf-8")
    return python
