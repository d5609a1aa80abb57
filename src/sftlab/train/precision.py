"""Whether a run's 16-bit matmuls have hardware behind them on this machine: `train.precision: auto` and the
warning for 16-bit settings on a CPU without it.

    cfg, line = resolve_precision(cfg)               # auto -> bf16 or fp32 (model.dtype auto follows), the log line
    line = precision_line(cfg, accelerator.device)   # None, or a one-line warning for the run log

bf16 or fp16 autocast (`train.precision: bf16 | fp16`) and 16-bit weights (`model.dtype: bfloat16 | float16`)
are fast on CPUs with 16-bit matmul instructions (AMX, AVX-512 BF16/FP16). Elsewhere they are slower than fp32:
on AVX2-only CPUs (AMD Zen 3) a 1024 x 1024 bf16 matmul ran at 1.0 GFLOP/s and a 512 x 512 fp16 one at 1.3,
against 124 in fp32 (docs/speed-work.md, tenth round). On AVX-512 CPUs without BF16 (Skylake to Ice Lake, or a VM that hides
AMX) oneDNN still calls bf16 supported and converts in software: 2 cores of such an Intel Xeon ran a
2048 x 2048 bf16 matmul at 61 GFLOP/s against 308 in fp32 (twelfth round). So the check below asks for the
instructions themselves.
A run that asks for bf16 or fp16 still goes ahead (the user asked for it); the log says why it is slow and what
to set instead. `auto` picks bf16 only where the machine has it: a CUDA GPU with bf16, or such a CPU; elsewhere
fp32, never fp16 (on a GPU without bf16 its log line points at `train.precision: fp16`).
"""

from __future__ import annotations

_SUPPORTED = {"bf16": "_is_mkldnn_bf16_supported", "fp16": "_is_mkldnn_fp16_supported"}
_INSTRUCTIONS = {"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("avx512_fp16", "amx_fp16")}


def cpu_runs_in_hardware(kind: str) -> bool:
    """Whether this CPU runs `kind` ('bf16' or 'fp16') matmuls in hardware: oneDNN supports the type and the CPU
    has its instructions (AVX-512 BF16/FP16 or AMX), as `torch.cpu.get_capabilities()` reports them."""
    import torch

    check = getattr(torch.ops.mkldnn, _SUPPORTED[kind], None)
    if check is not None and not check():
        return False
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is None:
        return check is not None  # an older torch build: oneDNN's own check is all there is
    found = capabilities()
    return any(found.get(name, False) for name in _INSTRUCTIONS[kind])


def low_precision_settings(cfg) -> dict[str, str]:
    """The 16-bit settings of `cfg` that make CPU matmuls bf16 or fp16: {'train.precision: bf16': 'bf16', ...}."""
    settings = {}
    if cfg.train.precision in ("bf16", "fp16"):
        settings[f"train.precision: {cfg.train.precision}"] = cfg.train.precision
    if cfg.model.dtype in ("bfloat16", "float16"):
        settings[f"model.dtype: {cfg.model.dtype}"] = "bf16" if cfg.model.dtype == "bfloat16" else "fp16"
    return settings


def precision_line(cfg, device) -> str | None:
    """A warning when `cfg` trains with 16-bit matmuls on a CPU that has no hardware for them, else None.

    `device` is the training device (a `torch.device` or its name)."""
    if str(device).split(":")[0] != "cpu":
        return None
    slow = [name for name, kind in low_precision_settings(cfg).items() if not cpu_runs_in_hardware(kind)]
    if not slow:
        return None
    return (f"warning: {' and '.join(slow)} on a CPU without 16-bit matmul instructions (no AMX or AVX-512 "
            "BF16/FP16): its matmuls run in software (5x slower than fp32 on AVX-512 without BF16, 100x on AVX2); "
            "train.precision: auto or fp32 and model.dtype: float32 are faster here")


def machine_precision() -> str:
    """'bf16' where this machine trains in it in hardware (a CUDA GPU with bf16, else a CPU with AMX or AVX-512
    BF16), else 'fp32': what `train.precision: auto` becomes."""
    import torch

    if torch.cuda.is_available():
        return "bf16" if gpu_runs_bf16_in_hardware() else "fp32"
    return "bf16" if cpu_runs_in_hardware("bf16") else "fp32"


def gpu_runs_bf16_in_hardware() -> bool:
    """True where the current CUDA GPU has bf16 matmul units (compute capability 8 and newer, or ROCm).
    `torch.cuda.is_bf16_supported()` with its default `including_emulation=True` also says True on a T4 or V100,
    which only emulate bf16."""
    import torch

    return torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_setting(setting: str) -> tuple[str, str | None]:
    """A precision setting made concrete for this machine: 'auto' becomes bf16 or fp32 (`machine_precision`),
    with its log line; 'fp32', 'bf16' and 'fp16' stay as they are, with None."""
    if setting != "auto":
        return setting, None
    import torch

    chosen, gpu = machine_precision(), torch.cuda.is_available()
    where = "this GPU" if gpu else "this CPU"
    how = "runs bf16 matmuls in hardware" if chosen == "bf16" else "has no bf16 matmul instructions"
    hint = "; train.precision: fp16 trains with fp16 autocast and loss scaling" if gpu and chosen == "fp32" else ""
    return chosen, f"precision: auto -> {chosen} ({where} {how}{hint})"


def resolve_precision(cfg):
    """`cfg` with `train.precision: auto` made bf16 or fp32 for this machine and `model.dtype: auto` bfloat16 where
    the precision is bf16 (else float32), and the log line; other settings are returned unchanged, with None."""
    chosen, line = resolve_setting(cfg.train.precision)
    updates = {} if line is None else {"train": cfg.train.model_copy(update={"precision": chosen})}
    if cfg.model.dtype == "auto":
        dtype = "bfloat16" if chosen == "bf16" else "float32"
        updates["model"] = cfg.model.model_copy(update={"dtype": dtype})
        line = "; ".join(part for part in (line, f"model.dtype: auto -> {dtype} (train.precision {chosen})") if part)
    return (cfg.model_copy(update=updates), line) if updates else (cfg, None)
