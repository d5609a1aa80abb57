"""Config-time checks across fields, some of them depending on the machine (raised before any model is loaded)."""


QLORA_CPU_MIN_BITSANDBYTES = "0.50"  # the CPU backend QLoRA was tested on (0.50.2)


def require_qlora_backend() -> None:
    """QLoRA needs bitsandbytes: any version on CUDA, 0.50 or later (its CPU backend) on a CPU. Checked from the
    installed package's metadata, without importing it (importing bitsandbytes takes seconds)."""
    import importlib.metadata
    import importlib.util

    import torch

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError("strategy.lora.quantize_4bit (QLoRA) needs bitsandbytes: `pip install bitsandbytes`")
    if torch.cuda.is_available():
        return
    from packaging.version import InvalidVersion, Version

    try:
        found = importlib.metadata.version("bitsandbytes")
        recent = Version(found) >= Version(QLORA_CPU_MIN_BITSANDBYTES)
    except (importlib.metadata.PackageNotFoundError, InvalidVersion):
        found, recent = "a version without package metadata", False
    if not recent:
        raise ValueError(f"strategy.lora.quantize_4bit (QLoRA) on a CPU needs bitsandbytes >= "
                         f"{QLORA_CPU_MIN_BITSANDBYTES} (its CPU backend); this machine has {found}: "
                         f"`pip install -U 'bitsandbytes>={QLORA_CPU_MIN_BITSANDBYTES}'`")


def check_distributed(cfg) -> None:
    """train.distributed presets the machine cannot run fail here: DeepSpeed ZeRO needs CUDA GPUs.

    fsdp (sftlab's own FSDP2 `fully_shard`) runs on CPU (gloo) and CUDA; 4-bit QLoRA weights cannot be sharded."""
    kind = cfg.train.distributed
    if kind == "ddp":
        return
    qlora = cfg.strategy.kind == "lora" and cfg.strategy.lora.quantize_4bit
    if kind == "fsdp":
        if qlora:
            raise ValueError("train.distributed=fsdp cannot shard 4-bit (QLoRA) weights; use ddp")
        return
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        raise ValueError(f"train.distributed={kind} (DeepSpeed ZeRO) needs CUDA GPUs; this machine has none. "
                         "On CPU use train.distributed=ddp")
    if importlib.util.find_spec("deepspeed") is None:
        raise ValueError(f"train.distributed={kind} needs `pip install deepspeed`")
    if cfg.train.grad_accum != 1:
        raise ValueError(f"train.distributed={kind} takes train.grad_accum=1 (DeepSpeed steps at every backward "
                         "here); raise train.batch_size or the process count instead")
    if qlora and kind == "zero3":
        raise ValueError("train.distributed=zero3 cannot shard 4-bit (QLoRA) weights; use zero2 or ddp")


def check_fp16(cfg) -> None:
    """train.precision=fp16 (sftlab's fp16 autocast and gradient scaler, sftlab.train.scaling) trains fp32 weights in
    one process or under ddp."""
    if cfg.train.precision != "fp16":
        return
    if cfg.model.dtype in ("bfloat16", "float16"):
        raise ValueError(f"train.precision=fp16 needs model.dtype float32 (or auto), not {cfg.model.dtype}: fp16 "
                         "autocast with loss scaling trains fp32 weights only (the gradient scaler refuses fp16 "
                         "gradients); bfloat16 weights train with train.precision bf16")
    if cfg.train.distributed != "ddp":
        raise ValueError(f"train.precision=fp16 runs in one process or under train.distributed=ddp, not "
                         f"{cfg.train.distributed} (its gradient scaler is sftlab's own); use ddp, or train.precision "
                         f"bf16 or fp32 with {cfg.train.distributed}")


def check_group_by_length(cfg) -> None:
    """data.group_by_length orders padded micro-batches; packed rows are already full."""
    if cfg.data.group_by_length and cfg.data.packing:
        raise ValueError("data.group_by_length groups padded rows by length; with data.packing=true every row is "
                         "already filled to train.max_length: set one of them false")


def check_streaming(cfg) -> None:
    """data.streaming reads a pt corpus as a stream: settings that need the whole corpus in memory fail here."""
    data = cfg.data
    if not data.streaming:
        return
    if cfg.train.stage != "pt":
        raise ValueError(f"data.streaming reads pt corpora; train.stage is {cfg.train.stage}")
    if cfg.train.max_steps is None:
        raise ValueError("data.streaming needs train.max_steps: a stream has no length to count train.epochs in")
    if data.val_ratio:
        raise ValueError("data.streaming cannot hold out data.val_ratio from a stream; set data.validation to a file")
    if data.packing:
        raise ValueError("data.streaming already cuts data.pt_mode=concat blocks; set data.packing=false")
    if data.group_by_length:
        raise ValueError("data.streaming reads rows in corpus order; data.group_by_length needs every length first")
    if cfg.strategy.kind == "auto":
        raise ValueError("data.streaming cannot score strategy.kind=auto on calibration batches; use full, freeze or lora")


def split_adapter_path(model_cfg):
    """A model.path that is a PEFT adapter directory (no config.json, an adapter_config.json) becomes
    model.adapter, with model.path the adapter's base and model.tokenizer the adapter's own tokenizer when
    it saved one; any other model config is returned as it is."""
    from pathlib import Path

    from sftlab.errors import SftlabError
    from sftlab.models.load import adapter_base, has_tokenizer_files

    directory = Path(model_cfg.path).expanduser()
    adapter_config = directory / "adapter_config.json"
    if model_cfg.adapter or not adapter_config.is_file() or (directory / "config.json").is_file():
        return model_cfg
    try:
        base = adapter_base(adapter_config, f"set model.path to the base model and model.adapter to {str(directory)!r}")
    except SftlabError as exc:
        raise ValueError(str(exc)) from None
    from sftlab.models.pull import EMBEDDED

    if not Path(base).expanduser().exists() and base not in EMBEDDED:
        raise ValueError(f"model.path {str(directory)!r} is an adapter whose base {base!r} (its adapter_config.json's "
                         f"base_model_name_or_path) is not on this machine (offline: no model hub); set "
                         f"model.path=<local base directory> model.adapter={directory}")
    if (Path(base).expanduser() / "adapter_config.json").is_file():
        raise ValueError(f"{adapter_config}: its base {base!r} is itself an adapter; merge that one first "
                         "(sftlab export --merge)")
    has_tokenizer = has_tokenizer_files(directory)
    model_cfg.adapter, model_cfg.path = str(directory), base
    if model_cfg.tokenizer is None and has_tokenizer:
        model_cfg.tokenizer = str(directory)
    return model_cfg


def check_balance_stage(balance: str, stage: str) -> None:
    """Fail (ValueError, for config validation) when `data.balance` cannot act on `stage`'s data or loss."""
    if balance in ("oversample", "undersample") and stage == "pt":
        raise ValueError(f"data.balance={balance} needs labels; stage pt has none")
    if balance == "class_weight" and stage != "cls":
        other = ("; use data.balance=oversample or undersample, which resample sft examples by their last answer"
                 if stage == "sft" else "")
        raise ValueError(f"data.balance=class_weight weights the loss of a classification head (train.stage cls); "
                         f"stage {stage}'s token loss would ignore it{other}")
