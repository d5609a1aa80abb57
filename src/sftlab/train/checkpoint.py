"""Step checkpoints that a run can resume from exactly, plus the `best/` copy and pruning.

    OUT/checkpoints/step-N/
        model.safetensors + config.json (or adapter_model.safetensors for peft) + tokenizer files
        sftlab_labels.json  a classification adapter's label names (a full model has them in config.json)
        optimizer.pt  scheduler.pt  rng_state.pt (python, numpy, torch, cuda)
        scaler.pt           under train.precision fp16: the gradient scaler (loss scale, growth tracker)
        optimizer/          instead of optimizer.pt under train.distributed=fsdp: every rank's optimizer
                            shards (torch.distributed.checkpoint), read back with the same process count
        rng_state_ranks.pt   with several processes: every rank's RNG states, in rank order
        sftlab_state.json   resolved config, step, data position, the training rows' counts (`data_fingerprint`),
                            losses and eval history, and the environment (library versions, device:
                            sftlab.train.environment)

Every checkpoint directory is written through `sftlab.io.atomic_dir`, so a directory that exists
is complete; `sftlab.checkpoints.latest_checkpoint` only trusts directories that carry the sidecar.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from sftlab.checkpoints import CHECKPOINTS, SIDECAR, list_checkpoints
from sftlab.errors import SftlabError
from sftlab.io import atomic_dir, atomic_write_json

SCALER = "scaler.pt"


def capture_rng() -> dict:
    """The python, numpy, torch (and CUDA) random states, as tensors and plain values (weights_only-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": list(random.getstate()[1]), "python_version": random.getstate()[0],
             "python_gauss": random.getstate()[2], "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos,
                                                              has_gauss, cached], "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Put back the random states saved by `capture_rng`."""
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_model_dir(model, tokenizer, directory: Path, state_dict: dict | None = None, config=None) -> None:
    """`save_pretrained` of the model (a peft model writes its adapter) and of the tokenizer, without progress bars.

    `state_dict` replaces the model's own tensors (a sharded model's weights gathered by the accelerator).
    The chat template the run `config` (a RunConfig or its dict) trained with (`sftlab.models.chat_files`) is carried
    into the saved files: stop ids in generation_config.json, the template's Jinja as chat_template,
    sftlab_template.json. A QLoRA adapter also gets `sftlab_qlora.json` (how its base was quantised,
    `sftlab.models.nf4`). A classification adapter gets `sftlab_labels.json`, its label names (`sftlab.models.trained`)."""
    from transformers.utils import logging as hf_logging

    from sftlab.models.chat_files import carry_chat_template, trained_template, write_template_record
    from sftlab.models.nf4 import is_four_bit, write_record
    from sftlab.models.trained import write_labels_record

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with carry_chat_template(model, tokenizer, trained_template(config)) as record:
            model.save_pretrained(directory, **({"state_dict": state_dict} if state_dict is not None else {}))
            tokenizer.save_pretrained(directory)
        write_template_record(directory, record)
        write_labels_record(directory, model)
        if hasattr(model, "peft_config") and is_four_bit(model):
            write_record(directory, model)
        from sftlab.vision.load import copy_processor_files

        copy_processor_files(model, directory)  # a vision-language model's image processor and chat template
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, optimizer, scheduler, rng: dict, state: dict,
                    state_dict: dict | None = None, rank_rngs: list[dict] | None = None,
                    write_optimizer: Callable[[Path], None] | None = None, scaler=None) -> Path:
    """Write `run_dir/checkpoints/step-<step>/` atomically and return it (`rank_rngs`: every rank's RNG states).

    `write_optimizer(tmp)` replaces optimizer.pt (a sharded optimizer written by every rank into the directory);
    `scaler` (fp16's GradScaler) is written to scaler.pt."""
    final = Path(run_dir) / CHECKPOINTS / f"step-{step}"
    with atomic_dir(final, overwrite=True) as tmp:
        save_model_dir(model, tokenizer, tmp, state_dict, config=state.get("config"))
        if write_optimizer is not None:
            write_optimizer(tmp)
        else:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        if scaler is not None:
            torch.save(scaler.state_dict(), tmp / SCALER)
        torch.save(rng, tmp / "rng_state.pt")
        if rank_rngs is not None:
            torch.save(rank_rngs, tmp / "rng_state_ranks.pt")
        atomic_write_json(tmp / SIDECAR, state)
    return final


def save_best(run_dir: Path, model, tokenizer, state: dict, state_dict: dict | None = None) -> Path:
    """Replace `run_dir/best/` with the current weights, tokenizer and a sidecar (step, metrics)."""
    with atomic_dir(Path(run_dir) / "best", overwrite=True) as tmp:
        save_model_dir(model, tokenizer, tmp, state_dict, config=state.get("config"))
        atomic_write_json(tmp / SIDECAR, state)
    return Path(run_dir) / "best"


# What `sftlab.io.atomic_dir` / `atomic_file` leave of a run's entries when the process is killed while writing them:
# the temporary sibling (`.step-3.k2j4x9qa.tmp`) and, killed between its two renames, the previous entry (`.best.old`).
_LEFTOVER = re.compile(r"^\.(step-\d+|best|model|metrics\.jsonl?|config\.yaml|data_stats\.json|trainable\.json)"
                       r"\.(?:[^.]+\.tmp|old)$")


def clear_interrupted_writes(run_dir: Path) -> list[str]:
    """Remove what a killed run left half-written in `run_dir` and its checkpoints/ (`_LEFTOVER`), so partial
    checkpoints do not pile up on disk; an entry whose `.old` copy is all that is left (killed between the two renames
    that replace it) is put back from it. Returns a line for each entry put back. Call it only while no run writes
    there."""
    restored = []
    for folder in (Path(run_dir), Path(run_dir) / CHECKPOINTS):
        for child in sorted(folder.iterdir()) if folder.is_dir() else []:
            match = _LEFTOVER.match(child.name)
            if not match:
                continue
            final = folder / match.group(1)
            if child.name.endswith(".old") and not final.exists():
                child.replace(final)
                restored.append(f"put back {final} from {child.name} (a run was killed while replacing it)")
            elif child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
    return restored


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the `keep` newest step checkpoints (`best/` lives elsewhere and is never pruned)."""
    for _, path in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


# What a step checkpoint's sidecar must hold for a run to continue from it, and the JSON type of each.
SIDECAR_FIELDS = {"step": int, "position": dict, "losses": list, "eval_history": list, "best": dict,
                  "bad_evals": int, "config": dict}


def read_sidecar(directory: Path) -> dict:
    """The `sftlab_state.json` of a step checkpoint; a one-line SftlabError (`damaged`) naming it when it is not JSON or
    lacks a field the resume needs (`SIDECAR_FIELDS`)."""
    path = Path(directory) / SIDECAR
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise damaged(path, f"cannot read the checkpoint state ({_first_line(exc)})") from None
    if not isinstance(state, dict):
        raise damaged(path, f"expected a JSON object, got {type(state).__name__}")
    for key, kind in SIDECAR_FIELDS.items():
        value = state.get(key)
        if key not in state:
            raise damaged(path, f"no field {key!r}")
        if not isinstance(value, kind) or isinstance(value, bool):
            raise damaged(path, f"field {key!r} is {json.dumps(value)[:40]}, expected a JSON {_JSON_NAMES[kind]}")
    return state


_JSON_NAMES = {int: "whole number", dict: "object", list: "array"}


def data_fingerprint(prepared) -> dict | None:
    """What a resumed run checks of its training rows: their count, tokens and supervised tokens (None when the
    preparation has no such statistics, as a stream)."""
    train = (getattr(prepared, "stats", None) or {}).get("train") or {}
    if "rows" not in train:
        return None
    return {key: train.get(key) for key in ("rows", "tokens", "supervised_tokens")}


def check_resume_data(saved: dict, prepared) -> None:
    """Refuse to resume on training rows that differ from the checkpoint's run (its data position would point into
    other rows); a checkpoint from before sftlab recorded them is not checked."""
    before, now = saved.get("data"), data_fingerprint(prepared)
    if not before or not now or before == now:
        return
    changes = ", ".join(f"{key} {before.get(key)!r} -> {now.get(key)!r}"
                        for key in now if before.get(key) != now.get(key))
    raise SftlabError(f"--resume: the training data differs from the checkpoint's run ({changes}); the files of "
                      "data.train changed since: resume with the data it trained on, or start a new run (model.path "
                      "may point at the trained weights)")


def load_weights(model, directory: Path, trainable_names: list[str]) -> None:
    """Load a checkpoint's weights into `model` (built as for a fresh run); every trainable tensor must be there."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        adapter = directory / "adapter_model.safetensors"
        if not adapter.is_file():
            raise SftlabError(f"{directory}: no adapter_model.safetensors; the checkpoint is not from a LoRA run")
        set_peft_model_state_dict(model, _read(adapter, load_file))
        return
    shards = sorted(directory.glob("*.safetensors"))
    if not shards:
        raise damaged(directory / "model.safetensors", "missing")
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(_read(shard, load_file))
    missing, _ = model.load_state_dict(state, strict=False)
    lost = sorted(set(missing) & set(trainable_names))
    if lost:
        raise SftlabError(f"{directory}: checkpoint lacks trainable weights {', '.join(lost[:3])}"
                          f"{' ...' if len(lost) > 3 else ''}; it does not belong to this run")


def load_training_state(directory: Path, optimizer, scheduler, rank: int = 0, model=None, scaler=None) -> dict:
    """Restore optimizer, scheduler and (fp16) gradient scaler state; return the RNG states saved for process `rank`.

    A sharded optimizer (`optimizer/`, fsdp) is read by every rank into the optimizer of the sharded `model`. A
    checkpoint without scaler.pt leaves `scaler` as it was built (a fresh one)."""
    directory = Path(directory)
    if (directory / "optimizer").is_dir():
        from sftlab.train.distributed import load_sharded_optimizer

        if model is None:
            raise SftlabError(f"{directory}: the optimizer state is sharded (train.distributed=fsdp); resume with "
                              "the same train.distributed and process count")
        load_sharded_optimizer(model, optimizer, directory / "optimizer")
    else:
        _restore(optimizer, directory / "optimizer.pt")
    states = {name: _read(directory / name, _torch_load) for name in ("scheduler.pt", "rng_state.pt")}
    scheduler.load_state_dict(states["scheduler.pt"])
    if scaler is not None and (directory / SCALER).is_file():
        _restore(scaler, directory / SCALER)
    ranks = directory / "rng_state_ranks.pt"
    if ranks.is_file():
        return _read(ranks, _torch_load)[rank]
    return states["rng_state.pt"]


def _torch_load(path: Path):
    return torch.load(path, weights_only=True)


def _restore(holder, path: Path) -> None:
    """`holder.load_state_dict` from a checkpoint file; a file that does not fit it is damaged, not a traceback."""
    try:
        holder.load_state_dict(_read(path, _torch_load))
    except (ValueError, KeyError, RuntimeError) as exc:
        raise damaged(path, f"it does not fit this run's {type(holder).__name__} ({_first_line(exc)})") from None


def _read(path: Path, reader):
    """`reader(path)`, with a missing or unreadable checkpoint file reported as one line (`damaged`)."""
    if not path.is_file():
        raise damaged(path, "missing")
    try:
        return reader(path)
    except Exception as exc:  # torch.load, safetensors: zip, unpickling, header errors of a cut-short file
        raise damaged(path, f"cannot be read ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception's message (torch's go on with advice that does not apply here)."""
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return line.split(". ")[0].rstrip(".")


def damaged(path: Path, what: str) -> SftlabError:
    """One line for a checkpoint file that is missing or cut short (a full disk, a partial copy): which file, and
    the earlier checkpoint to resume from once this one is moved aside."""
    step_dir = Path(path).parent
    earlier = [found for _, found in list_checkpoints(step_dir.parent.parent) if found != step_dir]
    instead = (f"move {step_dir} aside to resume from {earlier[-1]}, or start again with --overwrite" if earlier
               else "start again with --overwrite")
    return SftlabError(f"--resume: {path}: {what}; the checkpoint is damaged: {instead}")
