"""Loading vision-language models (VLMs) and their processors from local directories, offline.

    if is_vision_model(cfg.model):                    # config.json has a vision_config
        processor = load_processor(cfg.model)          # AutoProcessor (image-only fallback without torchvision)
        model = load_vision_model(cfg.model)           # AutoModelForImageTextToText

A model directory is a VLM when its `config.json` carries a `vision_config` (Qwen2-VL / Qwen2.5-VL, LLaVA,
Gemma 3 with vision, ...). transformers 5 builds the video processor of Qwen-VL-style processors with
torchvision; on a machine without torchvision `AutoProcessor` fails for them even for images only, so
`load_processor` then builds the same processor class without its video processor
(`image_only_processor`): images and text behave exactly as with the full processor.
`copy_processor_files` carries the processor's files (image processor, chat template) into a saved model
directory so the trained model loads like the one it started from.
"""

from __future__ import annotations

import functools
import inspect
import json
import shutil
from pathlib import Path

from sftlab.errors import SftlabError

PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "chat_template.json", "chat_template.jinja")
_DTYPES = ("float32", "bfloat16", "float16")


@functools.lru_cache(maxsize=32)
def _vision_config_at(directory: str, mtime_ns: int) -> bool:
    try:
        raw = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(raw, dict) and isinstance(raw.get("vision_config"), dict)


def is_vision_model_dir(directory: str | Path) -> bool:
    """True when `directory/config.json` describes a vision-language model (it has a `vision_config`)."""
    config_file = Path(directory) / "config.json"
    if not config_file.is_file():
        return False
    return _vision_config_at(str(Path(directory).resolve()), config_file.stat().st_mtime_ns)


def is_vision_model(model_cfg) -> bool:
    """True when `model.path` is a local directory holding a vision-language model (never raises for bad paths)."""
    directory = Path(str(model_cfg.path)).expanduser()
    return directory.is_dir() and is_vision_model_dir(directory)


def image_only_processor(processor_class):
    """`processor_class` without its video processor (same name, same image and text behaviour)."""
    attributes = processor_class.get_attributes()
    if "video_processor" not in attributes:
        return processor_class

    def get_attributes(cls):
        return [name for name in attributes if name != "video_processor"]

    return type(processor_class.__name__, (processor_class,), {"get_attributes": classmethod(get_attributes),
                                                               "__module__": processor_class.__module__})


def _processor_class_name(directory: Path) -> str | None:
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        path = directory / name
        if path.is_file():
            try:
                value = json.loads(path.read_text(encoding="utf-8")).get("processor_class")
            except (OSError, json.JSONDecodeError):
                continue
            if value:
                return value
    raw = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    return PROCESSOR_MAPPING_NAMES.get(raw.get("model_type"))


def _image_only_from_parts(directory: Path, trust_remote_code: bool):
    """Build the directory's processor class from its image processor, tokenizer and chat template."""
    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer

    class_name = _processor_class_name(directory)
    base = getattr(transformers, class_name, None) if class_name else None
    if base is None:
        raise SftlabError(f"model.path {str(directory)!r}: no processor class found for this model "
                          f"(processor_class {class_name!r})")
    kwargs = dict(local_files_only=True, trust_remote_code=trust_remote_code)
    image_processor = AutoImageProcessor.from_pretrained(directory, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(directory, **kwargs)
    extra = {}
    config_file = directory / "processor_config.json"
    if config_file.is_file():
        saved = json.loads(config_file.read_text(encoding="utf-8"))
        accepted = set(inspect.signature(base.__init__).parameters)
        extra = {key: value for key, value in saved.items() if key in accepted and key not in
                 ("image_processor", "tokenizer", "video_processor", "chat_template")}
    return image_only_processor(base)(image_processor=image_processor, tokenizer=tokenizer,
                                      chat_template=tokenizer.chat_template, **extra)


def load_processor(model_cfg):
    """The model directory's processor (tokenizer + image processor + chat template), loaded from disk only.

    Loaded once per directory state (cached while no file in the directory changes): data preparation, batching,
    evaluation and serving share it."""
    directory = Path(str(model_cfg.path)).expanduser().resolve()
    if not directory.is_dir():
        raise SftlabError(f"model.path {str(model_cfg.path)!r}: no such directory")
    stamp = max((path.stat().st_mtime_ns for path in directory.iterdir() if path.is_file()), default=0)
    return _load_processor(str(directory), bool(getattr(model_cfg, "trust_remote_code", False)), stamp)


@functools.lru_cache(maxsize=8)
def _load_processor(directory_text: str, trust: bool, stamp: int):
    from transformers import AutoProcessor

    directory = Path(directory_text)
    try:
        processor = AutoProcessor.from_pretrained(directory, local_files_only=True, trust_remote_code=trust)
    except (ImportError, AttributeError, TypeError, ValueError, OSError):
        processor = None  # typically: the video processor needs torchvision; images do not
    if processor is None or not hasattr(processor, "image_processor"):
        try:
            processor = _image_only_from_parts(directory, trust)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SftlabError(f"model.path {str(directory)!r}: cannot load an image processor ({first})") from None
    if getattr(processor, "image_token", None) is None:
        raise SftlabError(f"model.path {str(directory)!r}: the processor {type(processor).__name__} has no image token")
    tokenizer = processor.tokenizer
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if not processor.chat_template:
        if not tokenizer.chat_template:
            raise SftlabError(f"model.path {str(directory)!r}: the processor has no chat template; "
                              "add chat_template.jinja to the model directory")
        processor.chat_template = tokenizer.chat_template  # some checkpoints keep it with the tokenizer only
    return processor


def load_vision_model(model_cfg, stage: str = "sft"):
    """The image-text-to-text model of a VLM directory (AutoModelForImageTextToText), on CPU, from disk only."""
    import torch
    from transformers import AutoModelForImageTextToText

    from sftlab.models.attention import attention_to_load, settle_attention

    if stage == "cls":
        raise SftlabError("train.stage cls: classification heads on vision-language models are not supported; "
                          "use stage sft with the label as the answer")
    directory = Path(str(model_cfg.path)).expanduser()
    dtype = getattr(torch, model_cfg.dtype if model_cfg.dtype in _DTYPES else "float32")
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            directory, local_files_only=True, trust_remote_code=model_cfg.trust_remote_code, dtype=dtype,
            attn_implementation=attention_to_load(model_cfg.attn_implementation), use_kernels=False)  # as models.load
    except (ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise SftlabError(f"model.path {str(directory)!r}: cannot load as an image-text-to-text model ({first})") from None
    settle_attention(model, model_cfg.attn_implementation)
    return model


def source_directory(model) -> Path | None:
    """The local directory a (possibly peft-wrapped) model was loaded from, if it is one."""
    base = model.get_base_model() if hasattr(model, "peft_config") and hasattr(model, "get_base_model") else model
    name = getattr(getattr(base, "config", None), "_name_or_path", "") or ""
    path = Path(name).expanduser() if name else None
    return path if path is not None and path.is_dir() else None


def copy_processor_files(model, directory: Path) -> list[str]:
    """Copy the processor files of the VLM's source directory into `directory` (those not written already)."""
    source = source_directory(model)
    if source is None or not is_vision_model_dir(source) or source.resolve() == Path(directory).resolve():
        return []
    copied = []
    for name in PROCESSOR_FILES:
        if (source / name).is_file() and not (Path(directory) / name).exists():
            shutil.copy2(source / name, Path(directory) / name)
            copied.append(name)
    return copied


# (name in config.json, where) -> the processor attribute that must agree with it
_AGREEMENT = ((("vision_config", "patch_size"), ("image_processor", "patch_size")),
              (("vision_config", "spatial_merge_size"), ("image_processor", "merge_size")),
              (("vision_config", "temporal_patch_size"), ("image_processor", "temporal_patch_size")),
              (("mm_tokens_per_image",), ("image_seq_length",)))


def check_processor_matches_model(processor, directory: str | Path) -> None:
    """Fail before training when the processor's image settings disagree with the model's config.json.

    Compares patch size, merge size and temporal patch size (Qwen-VL image processors against vision_config)
    and Gemma 3's image tokens per image (`mm_tokens_per_image` against the processor's `image_seq_length`):
    a mismatch would give image token counts the model cannot use."""
    config = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
    for config_path, processor_path in _AGREEMENT:
        expected = config
        for key in config_path:
            expected = expected.get(key) if isinstance(expected, dict) else None
        actual = processor
        for name in processor_path:
            actual = getattr(actual, name, None)
        if expected is not None and actual is not None and expected != actual:
            raise SftlabError(f"model.path {str(directory)!r}: the processor's {'.'.join(processor_path)} is {actual!r} "
                              f"but config.json {'.'.join(config_path)} is {expected!r}; fix the processor files")
