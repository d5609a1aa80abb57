"""Fit a base model's vocabulary to the PEFT adapters about to be attached to it.

An adapter trained with added tokens (TRL's `setup_chat_format`, LLaMA-Factory's `new_special_tokens` /
`resize_vocab`) was trained on a base whose token embeddings were resized to its tokenizer, and saved its
`embed_tokens` / `lm_head` (modules_to_save, or PEFT's `save_embedding_layers`) at that larger size. Attached to the
base as it is on disk, PEFT fails with "size mismatch". `fit_vocabulary` resizes the loaded base's token embeddings
to the adapter's saved row count first (the new rows are then overwritten by the adapter's), so `sftlab generate`,
`chat`, `eval` (a SEQ_CLS adapter too), `serve`, `export --merge` and training on top of the adapter
(`model.adapter`) load it, from adapter_model.safetensors or .bin; `sftlab.models.load.load_model` calls it for the
adapters given to it.

Fewer rows than the base is a shrink, and is done too: TRL's `setup_chat_format` and LLaMA-Factory call
`resize_token_embeddings(len(tokenizer))` (TRL optionally rounded up by `resize_to_multiple_of`), which shrinks a base
padded beyond its tokenizer (Qwen2.5's, say), so the model the adapter trained on had exactly the rows it saved; the
base's spare rows were never reachable from its tokenizer. A classifier whose pad token is an added one gets it as
its pad_token_id (`settle_added_pad`): setup_chat_format sets the model's to the tokenizer's.

PEFT saves a resized embedding's trained copy twice and warns on load that the second key
(`...modules_to_save.weight`) is unexpected; it is the same tensor, so the loads wrap PEFT in `quiet_saved_copies`,
which silences that warning alone.

Refused in one line (SftlabError naming the adapter): adapters on one base that saved different sizes, and a
tokenizer that does not fit the saved rows: one with more tokens than the rows, or, where the rows outnumber the
base's, one no larger than the base (the base's own tokenizer, used because the adapter directory holds none: the
added tokens would be missing).
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

from sftlab.errors import SftlabError

_LORA_PARTS = (".lora_A.", ".lora_B.", ".lora_embedding_A", ".lora_embedding_B", ".lora_magnitude_vector")


def _embedding_names(model) -> list[str]:
    """Module names (as PEFT's saved keys spell them) of `model`'s input and output token embeddings."""
    wanted = {id(module) for module in (model.get_input_embeddings(), _output_embeddings(model)) if module is not None}
    return [name for name, module in model.named_modules() if id(module) in wanted and name]


def _output_embeddings(model):
    getter = getattr(model, "get_output_embeddings", None)
    return getter() if getter else None


def saved_shapes(adapter_dir: Path) -> dict[str, list[int]]:
    """The shape of every tensor an adapter directory saved, by key, from adapter_model.safetensors (its header alone)
    or adapter_model.bin (loaded on the meta device, tensors only); SftlabError when it has neither."""
    from sftlab.infer.loading import check_adapter_weights

    weights = check_adapter_weights(Path(adapter_dir))
    if weights.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as handle:
            return {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}
    import torch

    state = torch.load(weights, map_location="meta", weights_only=True)
    return {key: list(value.shape) for key, value in state.items()}


def saved_embedding_rows(adapter_dir: Path, names: list[str]) -> int | None:
    """The row count of the token embeddings `adapter_dir` saved for the modules `names` (its modules_to_save
    copies, or full embedding layers); None when it saved none. SftlabError when they disagree."""
    from sftlab.infer.loading import check_adapter_weights

    weights = check_adapter_weights(Path(adapter_dir))
    prefixes = tuple(f"base_model.model.{name}." for name in names)
    shapes = {key: shape for key, shape in saved_shapes(Path(adapter_dir)).items() if key.startswith(prefixes)}
    rows = {int(shape[0]) for key, shape in shapes.items()
            if len(shape) == 2 and key.endswith(".weight") and not any(part in key for part in _LORA_PARTS)}
    if len(rows) > 1:
        raise SftlabError(f"{weights}: its token embeddings were saved with different row counts "
                          f"({', '.join(map(str, sorted(rows)))}); the adapter is inconsistent")
    return rows.pop() if rows else None


def fit_vocabulary(model, adapter_dirs, tokenizer=None) -> int | None:
    """Resize `model`'s token embeddings to the rows `adapter_dirs` saved theirs with, where that is more than the
    model has (see the module docstring); return the new row count, None when nothing changed. `tokenizer`, the one
    that will feed the model, is checked against the saved rows."""
    embeddings = model.get_input_embeddings()
    base_rows = getattr(embeddings, "num_embeddings", None)
    adapter_dirs = [Path(directory).expanduser() for directory in adapter_dirs if directory]
    adapter_dirs = [directory for directory in adapter_dirs if (directory / "adapter_config.json").is_file()]
    if not base_rows or not adapter_dirs:
        return None
    names = _embedding_names(model)
    wanted: dict[int, Path] = {}
    for directory in adapter_dirs:
        rows = saved_embedding_rows(directory, names)
        if rows is None or rows == base_rows:
            continue
        wanted.setdefault(rows, directory)
    if not wanted:
        return None
    if len(wanted) > 1:
        said = ", ".join(f"{path} {rows}" for rows, path in sorted(wanted.items()))
        raise SftlabError(f"adapters trained with different added tokens cannot share one base ({said} embedding "
                          "rows); serve them separately")
    (rows, directory), = wanted.items()
    if tokenizer is not None:
        _check_tokenizer(len(tokenizer), rows, base_rows, directory)
    model.resize_token_embeddings(rows, mean_resizing=False)  # every new row is the adapter's own
    model.sftlab_vocabulary = (directory, base_rows)  # for check_fitted_tokenizer
    return rows


def vocabulary_adapter(model) -> Path | None:
    """The adapter directory `fit_vocabulary` resized `model`'s token embeddings to; None when it resized nothing."""
    fitted = getattr(model, "sftlab_vocabulary", None)
    return fitted[0] if fitted else None


def check_fitted_tokenizer(model, tokenizer) -> None:
    """`fit_vocabulary`'s tokenizer check, for a model it resized without one (the tokenizer chosen afterwards, by
    which adapter the vocabulary came from: `sftlab.infer.loading.load_served`)."""
    fitted = getattr(model, "sftlab_vocabulary", None)
    if fitted:
        directory, base_rows = fitted
        _check_tokenizer(len(tokenizer), model.get_input_embeddings().num_embeddings, base_rows, directory)


def _check_tokenizer(tokens: int, rows: int, base_rows: int, directory: Path) -> None:
    """SftlabError when a tokenizer of `tokens` tokens does not fit embeddings the adapter saved with `rows` rows."""
    if tokens > rows:
        raise SftlabError(f"{directory}: the tokenizer has {tokens} tokens, more than the {rows} token embeddings the "
                          "adapter saved; save the tokenizer it was trained with into the adapter directory")
    if rows > base_rows >= tokens:
        raise SftlabError(f"{directory}: the adapter was trained with added tokens ({rows} token embeddings, its base "
                          f"has {base_rows}) but the tokenizer has only {tokens} tokens; save the tokenizer it was "
                          "trained with into the adapter directory")


def settle_added_pad(model, tokenizer, base_rows: int) -> None:
    """A classifier's pad token, by which it finds each row's last token, set to `tokenizer`'s where that is one of
    the added tokens (an id at or beyond the base's `base_rows`): TRL's `setup_chat_format` sets the model's
    pad_token_id to the tokenizer's, so the adapter trained with it, not with the base config's."""
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is not None and pad >= base_rows:
        model.config.pad_token_id = pad


# PEFT saves a resized embedding's trained copy twice (as `NAME.weight` and, from the save_embedding_layers sweep, as
# `NAME.modules_to_save.weight`, the same tensor) and warns on load that the second is unexpected: nothing is lost
_COPIES_ONLY = r"Found unexpected adapter keys: \[('[^']*\.modules_to_save\.weight'(, )?)+\] while loading"


@contextlib.contextmanager
def quiet_saved_copies():
    """Within it, PEFT's "Found unexpected adapter keys" warning is silenced where every key it names is such a
    duplicate `modules_to_save.weight`; any other unexpected or missing key still warns."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_COPIES_ONLY, category=UserWarning)
        yield
