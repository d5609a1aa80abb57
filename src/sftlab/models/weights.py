"""What is wrong with a model directory's weights or vocabulary, said in one line (`sftlab.models.load` asks).

    files = check_weights(directory)                 # the weight files, or a SftlabError naming what is missing
    with load_errors(directory, "causal LM"):        # from_pretrained's errors on unreadable weights: one line
        model = AutoModelForCausalLM.from_pretrained(directory)
    guard_vocabulary(model, tokenizer, cfg.model)    # token ids beyond the embedding rows: one line, not IndexError
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from sftlab.errors import SftlabError
from sftlab.io import read_json


WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def check_weights(directory: Path, key: str = "model.path") -> list[Path]:
    """The weight files transformers reads from `directory` (model.safetensors, else pytorch_model.bin, else the
    shards an index names); a one-line SftlabError when there are none, a shard is missing, or a safetensors file is
    not complete (cut short by a copy, say). `load_model` asks when transformers fails to read the weights (and
    before loading a vision-language model), so that the error says what is wrong with which file."""
    single = [directory / name for name in ("model.safetensors", "pytorch_model.bin") if (directory / name).is_file()]
    index = next((directory / name for name in WEIGHT_INDEXES if (directory / name).is_file()), None)
    if single:
        files = single[:1]
    elif index is not None:
        raw = read_json(index)
        weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise SftlabError(f"{index}: weight_map: expected a mapping of weight names to shard files")
        files = [directory / str(name) for name in sorted(set(weight_map.values()))]
    else:
        raise SftlabError(f"{key} {str(directory)!r} has no weights (model.safetensors, {WEIGHT_INDEXES[0]} with its "
                          "shards, or pytorch_model.bin); the model was not saved or copied completely")
    for file in files:
        if not file.is_file():
            raise SftlabError(f"{index}: names shard {file.name}, which is not in {str(directory)!r}; the model was "
                              "not copied completely")
        if file.suffix == ".safetensors" and not safetensors_complete(file):
            raise SftlabError(f"{file}: not a complete safetensors file ({file.stat().st_size} bytes); the model was "
                              "not saved or copied completely")
    return files


def safetensors_complete(file: Path) -> bool:
    """Whether `file` is a safetensors file whose header is readable and whose data ends exactly at its end."""
    import json
    import struct

    size = file.stat().st_size
    try:
        with file.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if 8 + length > size:
                return False
            header = json.loads(handle.read(length))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError):
        return False
    return 8 + length + end == size


@contextmanager
def load_errors(directory: Path, what: str):
    """Turn what from_pretrained raises on weights it cannot read into one line naming model.path."""
    import pickle

    from safetensors import SafetensorError

    where = f"model.path {str(directory)!r}: cannot load as a {what}"
    try:
        yield
    except pickle.UnpicklingError:  # torch.load(weights_only=True) refused an object that is not a tensor
        raise SftlabError(f"{where} (its pytorch_model.bin holds objects other than tensors, which sftlab does not "
                          "unpickle; save it as safetensors where it was made)") from None
    except ValueError as exc:  # an architecture without such a class, say
        raise SftlabError(f"{where} ({first_line(exc)})") from None
    except (OSError, SafetensorError) as exc:
        check_weights(directory)  # no weights, a missing shard, a cut-short file: said in its own words
        raise SftlabError(f"{where} ({first_line(exc)})") from None
    except RuntimeError as exc:  # torch's zip reader on a cut-short .bin, transformers' state-dict errors
        text = str(exc)
        if not any(mark in text for mark in ("PytorchStreamReader", "loading state_dict", "conversion")):
            raise
        check_weights(directory)
        if "PytorchStreamReader" in text:
            raise SftlabError(f"{where} (its pytorch_model.bin is not a readable PyTorch file; the model was not saved "
                              "or copied completely)") from None
        line = next((part.strip() for part in text.splitlines() if part.strip().startswith("size mismatch")),
                    first_line(exc))
        raise SftlabError(f"{where} ({line})") from None


def first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def guard_vocabulary(model, tokenizer, model_cfg) -> None:
    """Where the tokenizer has more tokens than the model has embedding rows (tokens added without resizing the
    model): a one-line SftlabError now when its pad, EOS or BOS token is beyond them, else one at the first input
    that holds such a token (a forward pre-hook on the input embeddings) instead of an IndexError mid-run. Tokens
    that never occur (an unused image token, say) do no harm."""
    embeddings = model.get_input_embeddings()
    rows = getattr(embeddings, "num_embeddings", None)
    if not rows or len(tokenizer) <= rows:
        return
    key = "model.tokenizer" if model_cfg.tokenizer else "model.path"
    source = model_cfg.tokenizer or model_cfg.path
    fix = ("use the tokenizer saved with the model, or resize the model's embeddings "
           "(resize_token_embeddings(len(tokenizer)), then save_pretrained)")

    def message(token_id: int) -> str:
        return (f"{key} {source!r}: token {tokenizer.convert_ids_to_tokens(token_id)!r} (id {token_id}) is beyond "
                f"the model's {rows} embedding rows (the tokenizer has {len(tokenizer)} tokens); {fix}")

    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        token_id = getattr(tokenizer, name, None)
        if isinstance(token_id, int) and token_id >= rows:
            raise SftlabError(message(token_id))

    def check(_module, args):
        ids = args[0] if args else None
        if ids is not None and ids.numel() and not ids.is_floating_point():
            top = int(ids.max())
            if top >= rows:
                raise SftlabError(message(top))

    embeddings.register_forward_pre_hook(check)
