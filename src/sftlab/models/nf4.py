"""QLoRA's 4-bit base (`strategy.lora.quantize_4bit`): how bitsandbytes loads it, which weights it quantises, what
they take in memory, and the record a QLoRA adapter carries.

    kwargs = four_bit_kwargs()            # from_pretrained arguments: NF4, double quantisation, compute dtype, device
    keep_training_layout(model)           # no CPU inference repacking of the 4-bit weights (see below)
    quantized_weights(model)              # {module: elements} of a loaded 4-bit model's quantised weights
    quantizable_weights(meta_model)       # the same, predicted for an unquantised model (the planner's what-if)
    keep_classifier_head(kwargs, auto, directory, trust)   # a classifier's head stays out of the 4-bit weights
    storage_bytes(model)                  # bytes the 4-bit weights and their quantisation constants hold
    write_record(adapter_dir, model); read_record(adapter_dir)   # sftlab_qlora.json next to a QLoRA adapter
    dequantize(model)                     # the 4-bit layers back to nn.Linear (export's merge base)
    load_as_trained(base_dir, record)     # a QLoRA adapter's base as it trained (generate, chat, serve, eval)
    as_trained(model, record)             # the same for a base already loaded in 4-bit (export, any task)

The format is bitsandbytes' NF4 with double quantisation: every linear weight except those transformers keeps in
full precision (the output head, tied weights, the last module; `quantizable_weights` asks transformers' own rule)
and a classifier's head (`kept_in_full`) becomes 4-bit codes packed two to a byte, with one absmax constant per block of 64 values, itself quantised to 8
bits in blocks of 256 (`sftlab.plan.memory.nf4_bytes` counts the bytes). Embeddings, norms, biases and the head stay
in `model.dtype`; peft's `prepare_model_for_kbit_training` (sftlab.strategy.lora) then casts them to float32.

Compute dtype (what the 4-bit weights are dequantised to for each matmul): bfloat16 on CUDA GPUs with bf16
matmul units (compute capability 8 and newer), float16 on older ones (T4, V100, which only emulate bf16), and
bfloat16 on CPUs with bf16 instructions (`sftlab.train.precision.cpu_runs_in_hardware`), float32 on other CPUs, where a bf16
matmul runs in software (on this project's 2-core AVX-512 Xeon without BF16, a QLoRA step of a 4-layer, 512-wide
llama took about 2.8x as long with bf16 compute as with fp32). On CUDA the model goes to the current GPU; on a CPU it
uses bitsandbytes' CPU backend (bitsandbytes >= 0.50, checked at config time by
`sftlab.config.checks.require_qlora_backend`; tested with 0.50.2).

`keep_training_layout`: on a CPU with AVX-512 BF16, bitsandbytes' `Linear4bit` repacks its weights into an
inference layout the first time it runs in eval mode without gradients (an evaluation during training), and
after that its forward runs a kernel without autograd support, so the gradients that flow through the 4-bit
layers to the adapters below them come out wrong (torch warns "silently incorrect"). sftlab turns that repacking
off on every 4-bit layer it loads, so the stored 4-bit weights never change (tests/test_qlora.py).
"""

from __future__ import annotations

from pathlib import Path

RECORD = "sftlab_qlora.json"


def compute_dtype_name() -> str:
    """'bfloat16' on GPUs and CPUs with bf16 matmul units, 'float16' on other CUDA GPUs (T4, V100), 'float32' on
    other CPUs (see the module docstring)."""
    import torch

    from sftlab.train.precision import machine_precision

    if machine_precision() == "bf16":  # the same test as train.precision: auto
        return "bfloat16"
    return "float16" if torch.cuda.is_available() else "float32"


def four_bit_kwargs() -> dict:
    """from_pretrained arguments for an NF4 base: on the current GPU under CUDA, else on the CPU."""
    import torch
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=getattr(torch, compute_dtype_name()))
    kwargs = {"quantization_config": quant}
    if torch.cuda.is_available():
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    return kwargs


def _four_bit_params(model):
    """(module name, Params4bit) of every 4-bit weight of `model`; a peft model's names as in its base model."""
    for name, param in model.named_parameters():
        if type(param).__name__ == "Params4bit" and getattr(param, "quant_state", None) is not None:
            yield name.removeprefix("base_model.model.").removesuffix(".weight").removesuffix(".base_layer"), param


def _four_bit_layers(model):
    """bitsandbytes' own `Linear4bit` modules of `model` (not peft's wrapper of the same name)."""
    return (module for module in model.modules() if hasattr(module, "support_avx512bf16_for_cpu"))


def keep_training_layout(model) -> None:
    """Turn off bitsandbytes' CPU inference repacking on every 4-bit layer of `model` (module docstring)."""
    for module in _four_bit_layers(model):
        module.support_avx512bf16_for_cpu = False


def quantized_weights(model) -> dict[str, int]:
    """{module name: values} of the 4-bit weights of a loaded model (their logical size, not the packed one)."""
    return {name: int(param.quant_state.shape.numel()) for name, param in _four_bit_params(model)}


def quantizable_weights(model) -> dict[str, int]:
    """{module name: values} of the weights bitsandbytes would quantise when `model` (built from its config, not yet
    wrapped by sftlab or peft; the meta device will do) is loaded in 4-bit by sftlab: transformers' own rule, and
    a classifier's head kept in full (`kept_in_full`)."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D
    from transformers.quantizers.quantizers_utils import should_convert_module

    skip = kept_in_full(model)
    return {name: int(module.weight.numel()) for name, module in model.named_modules()
            if (type(module) is nn.Linear or isinstance(module, Conv1D)) and should_convert_module(name, skip)}


def kept_in_full(model) -> list[str]:
    """The module names a 4-bit load of `model` (built from its config; the meta device will do) leaves unquantised:
    transformers' own rule, plus a classifier's head, which trains in full (its modules_to_save). transformers keeps
    only "the last module", found by its last parameter's name less `.weight`, so a head with a bias (BERT's
    `classifier`) came out 4-bit, and re-initialising it for the data's labels failed on its packed codes."""
    from transformers.quantizers.base import HfQuantizer

    from sftlab.strategy.structure import head_module_names, is_classifier

    skip = HfQuantizer.get_modules_to_not_convert(model, None, getattr(model, "_keep_in_fp32_modules", None))
    return sorted({*skip, *(head_module_names(model) if is_classifier(model) else [])})


def keep_classifier_head(kwargs: dict, auto, directory: Path, trust_remote_code: bool) -> None:
    """Set the `quantization_config` in from_pretrained `kwargs` (`four_bit_kwargs`) to keep the head of the
    classifier `auto` builds from `directory` unquantised (`kept_in_full`)."""
    import torch
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(directory, local_files_only=True, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = auto.from_config(config, trust_remote_code=trust_remote_code)
    kwargs["quantization_config"].llm_int8_skip_modules = kept_in_full(model)


def storage_bytes(model) -> int:
    """Bytes held by the 4-bit weights of `model` and their quantisation constants (absmax, code tables, offset)."""
    total = 0
    for _, param in _four_bit_params(model):
        state = param.quant_state
        tensors = [param.data, state.absmax, state.code]
        if state.nested:
            tensors += [state.offset, state.state2.absmax, state.state2.code]
        total += sum(tensor.numel() * tensor.element_size() for tensor in tensors)
    return total


def is_four_bit(model) -> bool:
    """Whether `model` (or the model inside a peft wrapper) holds 4-bit weights."""
    return next(_four_bit_params(model), None) is not None


def layer_compute_dtype(model) -> str:
    """The dtype a 4-bit model's weights are dequantised to for their matmuls, e.g. 'float32'."""
    return str(next(_four_bit_layers(model)).compute_dtype).removeprefix("torch.")


def write_record(directory: Path, model) -> None:
    """Write `sftlab_qlora.json` into a QLoRA adapter directory: how its base was quantised (what export needs to
    rebuild the base the adapter trained against)."""
    state = next(_four_bit_layers(model)).weight.quant_state
    record = {"quant_type": state.quant_type, "double_quant": bool(state.nested), "blocksize": state.blocksize,
              "weights_dtype": str(state.dtype).removeprefix("torch."), "compute_dtype": layer_compute_dtype(model)}
    from sftlab.io import atomic_write_json

    atomic_write_json(Path(directory) / RECORD, record)


def read_record(directory: Path) -> dict | None:
    """The `sftlab_qlora.json` of an adapter directory, or None when it has none (not a QLoRA adapter)."""
    from sftlab.errors import SftlabError
    from sftlab.io import read_json

    path = Path(directory) / RECORD
    if not path.is_file():
        return None
    record = read_json(path)
    if not isinstance(record, dict) or record.get("quant_type") != "nf4":
        raise SftlabError(f"{path}: expected an NF4 record (quant_type nf4) as sftlab writes it")
    return record


def dequantize(model):
    """`model` (a loaded 4-bit model) with every 4-bit layer replaced by an `nn.Linear` holding its dequantised
    weight, in the dtype the weights were loaded in (transformers' `dequantize`)."""
    model = model.dequantize()
    model.is_loaded_in_4bit = False
    return model


def load_as_trained(base_dir: Path, record: dict, stage: str = "sft", trust_remote_code: bool = False,
                    **load_kwargs):
    """The base of a QLoRA adapter as training held it, for inference: quantised to NF4 from the recorded
    `weights_dtype` (`sftlab.models.load.load_model`, which also applies `keep_training_layout`, so the 4-bit
    layers run the kernel they trained with), then `as_trained`. `stage` 'cls' loads it as a classifier
    (`load_kwargs`: label_names, tokenizer, key, trust_key, as for `load_model`); code shipped with a base of its
    own code (config.json's auto_map) runs only with `trust_remote_code`, as in training."""
    from sftlab.config.schema import ModelConfig
    from sftlab.models.load import load_model

    cfg = ModelConfig(path=str(base_dir), dtype=record["weights_dtype"], trust_remote_code=trust_remote_code)
    return as_trained(load_model(cfg, stage, quantize_4bit=True, **load_kwargs), record)


def as_trained(model, record: dict):
    """`model`, a base loaded in 4-bit from `record`'s `weights_dtype`, with the recorded compute dtype on every 4-bit
    layer and the other floating-point weights in float32, as peft's `prepare_model_for_kbit_training` left them
    in training."""
    import torch

    compute = getattr(torch, record["compute_dtype"])
    for module in _four_bit_layers(model):
        module.compute_dtype = compute
    for param in model.parameters():
        if param.dtype in (torch.float16, torch.bfloat16) and type(param).__name__ != "Params4bit":
            param.data = param.data.to(torch.float32)
    return model
