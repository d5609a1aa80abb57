"""Config-time checks that depend on the machine (raised before any model is loaded)."""


def require_cuda_for_qlora() -> None:
    """QLoRA needs a CUDA GPU and bitsandbytes; fail at config time otherwise."""
    import torch

    if not torch.cuda.is_available():
        raise ValueError(
            "strategy.lora.quantize_4bit (QLoRA) needs a CUDA GPU with bitsandbytes; this machine has none. "
            "Use strategy.lora.quantize_4bit=false (plain LoRA) on CPU"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise ValueError("strategy.lora.quantize_4bit needs `pip install bitsandbytes`") from exc
