"""`sftlab model import-gguf FILE OUT`: turn a GGUF file into a Hugging Face safetensors directory.

transformers reads the GGUF (architecture, dequantised weights, tokenizer and chat template) with
`from_pretrained(dir, gguf_file=name)`. The loaded model carries a GGUF quantisation marker that
`save_pretrained` refuses, so the model is rebuilt from its config without `quantization_config`, the
dequantised state dict is loaded into it, and the result is saved (safetensors, float32) with its
tokenizer into a temporary directory that is renamed into place. An output directory that is not empty (without
`overwrite`), or that is or holds the GGUF file itself, is refused before anything is read. `sftlab_import.json`
records where the weights came from, which quantisation types the file held and where the chat template came from.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

from sftlab.errors import SftlabError
from sftlab.io import atomic_dir, atomic_write_json, check_output_dir

IMPORT_RECORD = "sftlab_import.json"


def gguf_summary(gguf_file: Path) -> dict:
    """Architecture, tensor count, quantisation types and whether a chat template is stored."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(gguf_file))
    except (ValueError, OSError, KeyError) as exc:
        raise SftlabError(f"{gguf_file}: not a readable GGUF file ({exc})") from None
    field = reader.fields.get("general.architecture")
    architecture = field.contents() if field is not None else None
    types: dict[str, int] = {}
    for tensor in reader.tensors:
        types[tensor.tensor_type.name] = types.get(tensor.tensor_type.name, 0) + 1
    return {"architecture": architecture, "tensors": len(reader.tensors), "tensor_types": types,
            "gguf_has_chat_template": "tokenizer.chat_template" in reader.fields}


def _load_dequantised(gguf_file: Path):
    """(model, tokenizer) read from the GGUF by transformers, weights dequantised to float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where, name = str(gguf_file.parent), gguf_file.name
    try:
        model = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, local_files_only=True, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name, local_files_only=True)
    except (ValueError, KeyError, NotImplementedError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SftlabError(f"{gguf_file}: transformers cannot import this GGUF ({first})") from None
    return model, tokenizer


def _without_quantization_marker(model):
    """A plain copy of `model` rebuilt from its config minus `quantization_config`, same weights."""
    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.generation_config = model.generation_config
    return plain


def import_gguf(gguf_file: str | Path, out_dir: str | Path, overwrite: bool = False,
                fallback_chat_template: str | None = None, source: str | None = None) -> Path:
    """Write a from_pretrained-loadable directory (config, safetensors, tokenizer) for `gguf_file`.

    `fallback_chat_template` is given to the tokenizer only when the GGUF stores none (the record's
    `chat_template` says which was used); `source` overrides the provenance written to the record.
    """
    gguf_file = Path(gguf_file)
    if not gguf_file.is_file():
        raise SftlabError(f"GGUF file not found: {gguf_file}")
    check_output_dir(out_dir, overwrite, inputs=(gguf_file,))  # before minutes of conversion; never over the input
    started = time.perf_counter()
    summary = gguf_summary(gguf_file)
    model, tokenizer = _load_dequantised(gguf_file)
    plain = _without_quantization_marker(model)
    del model
    template_origin = "gguf" if getattr(tokenizer, "chat_template", None) else None
    if template_origin is None and fallback_chat_template:
        tokenizer.chat_template = fallback_chat_template
        template_origin = "sftlab fallback (the GGUF has none)"
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        record = {"source": source or str(gguf_file.resolve()), "source_bytes": gguf_file.stat().st_size,
                  "model_type": plain.config.model_type, "dtype": "float32", **summary,
                  "chat_template": template_origin, "seconds": round(time.perf_counter() - started, 2)}
        atomic_write_json(Path(tmp) / IMPORT_RECORD, record)
    return Path(out_dir)


def read_import_record(model_dir: Path) -> dict | None:
    """The `sftlab_import.json` of an imported directory, if any."""
    path = Path(model_dir) / IMPORT_RECORD
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
