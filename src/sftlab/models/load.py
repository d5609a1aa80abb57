"""Local-only model and tokenizer loading: this machine never talks to a model hub.

    path = resolve_model_path(cfg.model.path)        # directory, embedded name, or .gguf file
    tok = load_tokenizer(cfg.model)
    model = load_model(cfg.model, "cls", num_labels=3, label_names=["a", "b", "c"])

`model.path` may be a local directory written by `save_pretrained`, an embedded default name
(`gemma-3-270m`, `minilm`; see `sftlab.models.pull`), or a `.gguf` file (imported once into the cache,
see `sftlab.models.gguf`). Anything that looks like a hub id (`org/name`) and is not on disk fails at
once with a one-line `SftlabError`; no network request is ever attempted (HF_HUB_OFFLINE=1 and
`local_files_only=True`).

For cls, `sftlab.models.head` fits the checkpoint's classification head to the data's labels: a head the
checkpoint lacks is initialised, one saved for the same labels in another order has its rows reordered, one saved
for other labels (another count or other names) is re-initialised; the model's `sftlab_head_line` says so in one
line (`sftlab train` logs it) in place of transformers' LOAD REPORT, which still comes through for missing or unused
base-model weights (a base-model weight of another shape is a one-line SftlabError, for every stage).

Weights: model.safetensors, shards with their index, or pytorch_model.bin (read with weights_only=True: a .bin holding
more than tensors is refused, never unpickled). No weights, a missing shard, a cut-short file, a config.json without a
known model_type, custom code (`auto_map` in config.json or tokenizer_config.json) without `model.trust_remote_code`
(the deployment commands' `--trust-remote-code`: `trust_key` names the setting or flag), and no tokenizer files
(transformers would build an empty tokenizer) are one-line SftlabErrors; so is a token id beyond the embedding rows
(`sftlab.models.weights.guard_vocabulary`: a tokenizer grown without resizing the model), at load or at the
first input holding one.

Errors about the model directory name `model.path` (the tokenizer's: `model.tokenizer`); the commands that load a
saved model pass `key=` (`MODEL`, `--model`, or an adapter_config.json's base_model_name_or_path) to name theirs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path

from sftlab.errors import SftlabError
from sftlab.io import read_json
from sftlab.models.weights import check_weights, guard_vocabulary, load_errors

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# model.dtype -> torch dtype name; auto is resolved with train.precision when a run starts (float32 elsewhere)
_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16", "auto": "float32"}


def sftlab_home() -> Path:
    """Root of sftlab's caches: `$SFTLAB_HOME`, default `~/.cache/sftlab`."""
    return Path(os.environ.get("SFTLAB_HOME") or Path.home() / ".cache" / "sftlab").expanduser()


def offline_message(path: str, key: str = "model.path") -> str:
    """The one-line error for a model path that is neither on disk nor embedded (`key`: the setting that named it)."""
    return (f"{key} {path!r} not found locally; this machine is offline (no model hub): point {key} at a "
            "local directory (e.g. one written by `sftlab model import-gguf` or `save_pretrained`)")


def resolve_model_path(path: str, key: str = "model.path") -> Path:
    """Turn `model.path` into a local model directory, or raise a one-line SftlabError naming `key`.

    A directory is returned as an absolute path (PEFT records it as the adapter's base_model_name_or_path, which
    must load from any working directory); `gemma-3-270m` / `minilm` resolve to their cached converted
    directory (converted on first use when the wheel is installed); a `.gguf` file is imported once
    into `$SFTLAB_HOME/models/gguf/`. Nothing is downloaded.
    """
    text = str(path)
    local = Path(text).expanduser()
    if local.is_dir():
        return local.absolute()
    from sftlab.models import pull

    if text in pull.EMBEDDED:
        return pull.ensure_embedded(text, install=False)
    if local.suffix.lower() == ".gguf":
        if not local.is_file():
            raise SftlabError(f"{key} {text!r}: GGUF file not found")
        return import_gguf_cached(local)
    if local.exists():
        raise SftlabError(f"{key} {text!r} is a file; expected a model directory, a .gguf file, "
                          f"or one of {', '.join(pull.EMBEDDED)}")
    if _HUB_ID.match(text):  # a hub id, or a relative path that is not there: both are said
        where = "" if local.is_absolute() else f"; as a path it is taken from the working directory {os.getcwd()}"
        raise SftlabError(offline_message(text, key) + where)
    raise SftlabError(f"{key} {text!r}: no such directory{_embedded_hint(text)}")


def _embedded_hint(text: str) -> str:
    """'; did you mean 'gemma-3-270m'? ...' for a near miss of an embedded default's name, else nothing."""
    import difflib

    from sftlab.models import pull

    close = difflib.get_close_matches(text.lower(), list(pull.EMBEDDED), n=1, cutoff=0.75)
    return f"; did you mean {close[0]!r}? (an embedded default: sftlab model pull {close[0]})" if close else ""


def import_gguf_cached(gguf_file: Path) -> Path:
    """Import `gguf_file` once into the cache (keyed by name, size and mtime) and return the directory."""
    from sftlab.models.gguf import import_gguf

    stat = gguf_file.stat()
    key = hashlib.sha256(f"{gguf_file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    out = sftlab_home() / "models" / "gguf" / f"{gguf_file.stem}-{key}"
    if (out / "config.json").is_file():
        return out
    return import_gguf(gguf_file, out, overwrite=True)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model", "sentencepiece.bpe.model")


def has_tokenizer_files(directory: Path) -> bool:
    """Whether `directory` holds a saved tokenizer (an adapter directory sftlab wrote does)."""
    return any((Path(directory) / name).is_file() for name in TOKENIZER_FILES)


def adapter_base(adapter_config: Path, missing: str = "cannot find the base model") -> str:
    """The base_model_name_or_path of a PEFT `adapter_config.json`; a one-line SftlabError when the file is not
    JSON or names no base (`missing`: the rest of that message, what to do)."""
    raw = read_json(adapter_config)
    base = raw.get("base_model_name_or_path") if isinstance(raw, dict) else None
    if not base:
        raise SftlabError(f"{adapter_config}: base_model_name_or_path is missing; {missing}")
    return base


TRUST_KEY = "model.trust_remote_code"  # the run config's setting; the deployment commands pass their flag


def remote_code_refusal(what: str, directory: Path, trust_key: str = TRUST_KEY) -> str:
    """The one-line error for custom code (`what`: which code) that runs only with `trust_key` (the run config's
    model.trust_remote_code, or a command's --trust-remote-code)."""
    how = (f"where a run config sets {trust_key}=true" if trust_key == TRUST_KEY else f"with {trust_key}")
    return (f"{what} is custom code shipped in {str(directory)!r} (auto_map), which sftlab runs only {how} "
            "(only for a directory you trust)")


def check_model_dir(directory: Path, key: str = "model.path", trust_remote_code: bool = False,
                    trust_key: str = TRUST_KEY) -> dict:
    """Read `config.json` of a model directory; fail clearly when missing or of an unknown architecture.

    With `trust_remote_code`, a model type transformers lacks is accepted when the config maps it to
    code shipped in the directory (`auto_map`); without it, the error names `trust_key`.
    """
    config_file = directory / "config.json"
    if not config_file.is_file():
        run_model = directory / "model"
        hint = (f"; it looks like a run directory: use {str(run_model)!r}" if (run_model / "config.json").is_file()
                or (run_model / "adapter_config.json").is_file() else "")
        raise SftlabError(f"{key} {str(directory)!r} has no config.json; it is not a Hugging Face model directory "
                          f"(write one with save_pretrained or `sftlab model import-gguf`){hint}")
    raw = read_json(config_file)
    if not isinstance(raw, dict):
        raise SftlabError(f"{config_file}: expected a JSON object (a model config), got {type(raw).__name__}")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = raw.get("model_type")
    if model_type in CONFIG_MAPPING_NAMES or (trust_remote_code and raw.get("auto_map")):
        return raw
    if not model_type:
        raise SftlabError(f"{config_file}: no model_type; it is not a config.json written by save_pretrained")
    if raw.get("auto_map"):
        raise SftlabError(f"{config_file}: " + remote_code_refusal(f"model_type {model_type!r}", directory, trust_key))
    raise SftlabError(f"{config_file}: model_type {model_type!r} is not an architecture this transformers "
                      "version knows; upgrade transformers or convert the model")


def load_tokenizer(model_cfg, key: str | None = None, trust_key: str = TRUST_KEY):
    """Load the tokenizer of `model.tokenizer` (else `model.path`) from disk; errors name `key` (default: that
    setting) and, for custom code without `model_cfg.trust_remote_code`, `trust_key`.

    When the tokenizer has no pad token but has an EOS token, EOS is used for padding (the collator
    masks padded positions out of the loss, so this never teaches the model to stop early).
    """
    from transformers import AutoTokenizer

    own = model_cfg.tokenizer is None  # the tokenizer of the model directory itself
    key = key or ("model.path" if own else "model.tokenizer")
    trust = model_cfg.trust_remote_code
    directory = resolve_model_path(model_cfg.tokenizer or model_cfg.path, key)
    if own and (directory / "config.json").is_file():  # before transformers reads it and warns
        check_model_dir(directory, key, trust, trust_key)
    if not has_tokenizer_files(directory):
        if own and not (directory / "config.json").is_file():
            check_model_dir(directory, key)  # not a model directory at all (a run directory, say): say that
        where = ", or set model.tokenizer to its directory" if key == "model.path" else ""
        raise SftlabError(f"{key} {str(directory)!r} has no tokenizer (none of {', '.join(TOKENIZER_FILES[:3])}); "
                          f"copy the tokenizer saved with the model into it{where}")
    custom = None if trust else _custom_tokenizer(directory)
    if custom:  # transformers would quietly use another tokenizer class
        raise SftlabError(f"{directory / 'tokenizer_config.json'}: "
                          + remote_code_refusal(custom, directory, trust_key))
    try:
        tok = AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=trust)
    except (OSError, ValueError) as exc:
        if own:  # not a model directory at all (a run directory, say): say that
            check_model_dir(directory, key, trust, trust_key)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SftlabError(f"{key} {str(directory)!r}: cannot load a tokenizer ({first})") from None
    if not tok("a b", add_special_tokens=False)["input_ids"]:  # a tokenizer built from a config alone: no vocabulary
        raise SftlabError(f"{key} {str(directory)!r}: the tokenizer it holds is empty (it encodes text to no "
                          "tokens); copy the tokenizer saved with the model into it")
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def _custom_tokenizer(directory: Path) -> str | None:
    """"tokenizer_class 'X'" when the tokenizer_config.json in `directory` maps AutoTokenizer to code shipped beside it
    (`auto_map`) for a tokenizer class transformers lacks (ChatGLMTokenizer, say), which transformers would replace,
    without a word, by the tokenizer of the config's model_type; else None."""
    config = directory / "tokenizer_config.json"
    raw = read_json(config) if config.is_file() else None
    if not isinstance(raw, dict) or not isinstance(raw.get("auto_map"), dict) or "AutoTokenizer" not in raw["auto_map"]:
        return None
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    name = raw.get("tokenizer_class")
    if isinstance(name, str) and tokenizer_class_from_name(name) is not None:
        return None
    return f"tokenizer_class {name!r}" if isinstance(name, str) else "its tokenizer"


def load_model(model_cfg, stage: str, num_labels: int | None = None, label_names: list[str] | None = None,
               tokenizer=None, quantize_4bit: bool = False, keep_adapter: bool = False, key: str = "model.path",
               trust_key: str = TRUST_KEY, adapters=()):
    """Load weights for `stage`: a causal LM for pt/sft, a sequence classifier for cls.

    For cls, `num_labels` (or `len(label_names)`) sets the head size and `label_names` the
    id2label/label2id maps (unnamed: LABEL_0, LABEL_1, ...), to which a head saved in `model.path` is fitted
    (`sftlab.models.head`); a decoder classifier gets `pad_token_id` from the tokenizer (it needs it to
    find the last real token). dtype and attention implementation come from `model.dtype` and
    `model.attn_implementation`. `quantize_4bit` (QLoRA, `strategy.lora.quantize_4bit`) loads the
    weights NF4-quantised with bitsandbytes (`sftlab.models.nf4`: on the current CUDA device computing in bfloat16,
    else on the CPU computing in bfloat16 where it has bf16 instructions and in float32 elsewhere).
    With `model.adapter`, the adapter is attached to the base: as a trainable peft `PeftModel` when
    `keep_adapter` (strategy lora trains it further), else merged into the base weights. The token embeddings are
    first resized to those `model.adapter` and the adapter directories `adapters` (attached by the caller) saved,
    where an adapter trained with added tokens saved them larger (`sftlab.models.adapter_vocab.fit_vocabulary`).
    Errors about the directory name `key`, custom code without `model.trust_remote_code` names `trust_key`.
    """
    directory = resolve_model_path(model_cfg.path, key)  # fails at once, before the heavy imports
    raw = check_model_dir(directory, key, model_cfg.trust_remote_code, trust_key)
    if isinstance(raw.get("vision_config"), dict):  # a vision-language model: see sftlab.vision.load
        from sftlab.vision.load import load_vision_model

        check_weights(directory, key)
        if quantize_4bit:
            raise SftlabError("strategy.lora.quantize_4bit: vision-language models are not loaded in 4-bit (QLoRA) "
                              "by sftlab; set strategy.lora.quantize_4bit=false")

        return load_vision_model(model_cfg.model_copy(update={"path": str(directory)}), stage)
    from sftlab.models.attention import settle_attention
    from sftlab.models.head import load_checked, load_classifier

    auto, kwargs = _auto_and_kwargs(model_cfg, stage, directory, raw, quantize_4bit,
                                    lambda: _classifier_kwargs(model_cfg, raw, num_labels, label_names, tokenizer, key))
    what = "sequence classifier" if stage == "cls" else "causal language model"
    with _named(directory, key), load_errors(directory, what):
        model = (load_classifier(auto, directory, raw, kwargs) if stage == "cls"
                 else load_checked(auto, directory, kwargs))
    fit = [*adapters, *([model_cfg.adapter] if model_cfg.adapter else [])]
    if fit:
        from sftlab.models.adapter_vocab import fit_vocabulary, settle_added_pad

        base_rows = model.get_input_embeddings().num_embeddings
        if fit_vocabulary(model, fit, tokenizer) and stage == "cls":
            settle_added_pad(model, tokenizer, base_rows)
    if tokenizer is not None:
        guard_vocabulary(model, tokenizer, model_cfg)
    settle_attention(model, model_cfg.attn_implementation)
    if quantize_4bit:
        from sftlab.models.nf4 import keep_training_layout

        keep_training_layout(model)
    return _attach_adapter(model, model_cfg.adapter, keep_adapter) if model_cfg.adapter else model


def _auto_and_kwargs(model_cfg, stage: str, directory: Path, raw: dict, quantize_4bit: bool, classifier_kwargs):
    """(the transformers Auto class for `stage`, its from_pretrained kwargs): dtype, attention, 4-bit settings, and
    for cls `classifier_kwargs()` (head size and labels) with the head kept out of the 4-bit weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from sftlab.models.attention import attention_to_load

    kwargs = dict(local_files_only=True, trust_remote_code=model_cfg.trust_remote_code,
                  dtype=getattr(torch, _DTYPES[model_cfg.dtype]),
                  attn_implementation=attention_to_load(model_cfg.attn_implementation),
                  use_kernels=False)  # hub kernels are downloaded code; kernelize() also resets module forwards
    if quantize_4bit:
        kwargs.update(_four_bit_kwargs())
    if stage in ("pt", "sft"):
        return AutoModelForCausalLM, kwargs
    if stage != "cls":
        raise SftlabError(f"train.stage {stage!r}: expected pt, sft or cls")
    kwargs.update(classifier_kwargs())
    if quantize_4bit:
        from sftlab.models.nf4 import keep_classifier_head

        keep_classifier_head(kwargs, AutoModelForSequenceClassification, directory, model_cfg.trust_remote_code)
    return AutoModelForSequenceClassification, kwargs


@contextlib.contextmanager
def _named(directory: Path, key: str):
    """Errors of `sftlab.models.weights.load_errors` and `sftlab.models.head` (which name model.path) naming `key`."""
    said = f"model.path {str(directory)!r}"
    try:
        yield
    except SftlabError as exc:
        if key == "model.path" or not str(exc).startswith(said):
            raise
        raise SftlabError(key + str(exc)[len("model.path"):]) from None


def _attach_adapter(model, adapter: str, keep: bool):
    """`model` with the PEFT adapter in `adapter`: trainable (`keep`) or merged into its weights."""
    from peft import PeftModel

    from sftlab.models.adapter_vocab import quiet_saved_copies

    directory = Path(adapter).expanduser()
    if not (directory / "adapter_config.json").is_file():
        raise SftlabError(f"model.adapter {adapter!r}: not a PEFT adapter directory (no adapter_config.json)")
    try:
        with quiet_saved_copies():
            peft_model = PeftModel.from_pretrained(model, str(directory), is_trainable=keep)
    except (OSError, ValueError, RuntimeError) as exc:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]  # torch heads its size mismatches with a title
        first = next((line.strip() for line in lines if line.strip().startswith("size mismatch")), lines[0])
        raise SftlabError(f"model.adapter {adapter!r}: cannot attach it to model.path ({first})") from None
    if not keep:
        return peft_model.merge_and_unload()
    peft_model.sftlab_adapter_dir = str(directory)
    return peft_model


def _four_bit_kwargs() -> dict:
    """from_pretrained arguments for an NF4 (QLoRA) base (`sftlab.models.nf4`); SftlabError without bitsandbytes
    (or, on a CPU, with one older than its CPU backend)."""
    from sftlab.config.checks import require_qlora_backend
    from sftlab.models.nf4 import four_bit_kwargs

    try:
        require_qlora_backend()
    except ValueError as exc:
        raise SftlabError(str(exc)) from None
    return four_bit_kwargs()


def _classifier_kwargs(model_cfg, raw: dict, num_labels, label_names, tokenizer, key: str = "model.path") -> dict:
    """id2label/label2id (which set the number of labels) and (for decoders) pad_token_id for a classification head."""
    if label_names is not None:
        if num_labels is not None and num_labels != len(label_names):
            raise SftlabError(f"data.labels: {len(label_names)} names given but num_labels={num_labels}")
        num_labels = len(label_names)
    if not num_labels or num_labels < 2:
        only = f" (the label set is only {label_names[0]!r})" if label_names else ""
        raise SftlabError(f"a classifier needs at least 2 labels{only}; give examples of another label, or name the "
                          "whole label set in data.labels")
    names = list(label_names) if label_names is not None else [f"LABEL_{i}" for i in range(num_labels)]
    # no num_labels: beside a checkpoint's own id2label of another length, transformers warns that they disagree
    kwargs = dict(id2label=dict(enumerate(names)), label2id={name: i for i, name in enumerate(names)})
    if raw.get("pad_token_id") is None and not raw.get("is_encoder_decoder"):
        tokenizer = tokenizer or load_tokenizer(model_cfg, None if model_cfg.tokenizer else key)
        if tokenizer.pad_token_id is None:
            raise SftlabError(f"{key} {model_cfg.path!r}: the tokenizer has neither a pad nor an EOS token; "
                              "a decoder classifier needs one to find the last token")
        if tokenizer.pad_token_id < int(raw.get("vocab_size") or tokenizer.pad_token_id + 1):
            kwargs["pad_token_id"] = tokenizer.pad_token_id  # an added pad token: set once the rows are there
    return kwargs
