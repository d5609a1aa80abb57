"""`sftlab model tiny-vlm FAMILY OUT`: write a tiny random vision-language model (Qwen2-VL, Qwen2.5-VL, LLaVA, Gemma 3)."""

from __future__ import annotations


def _tiny_vlm(args) -> int:
    from sftlab.io import atomic_dir
    from sftlab.models.tiny_vlm import save_tiny_vlm

    with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
        save_tiny_vlm(args.family, tmp, seed=args.seed)
    print(f"wrote tiny random {args.family} vision-language model to {args.out}")
    return 0


def register(registry) -> None:
    """Add `model tiny-vlm`."""
    parser = registry.group("model").add_parser(
        "tiny-vlm", help="write a tiny random vision-language model (2-layer vision tower and language model)")
    parser.add_argument("family", choices=["qwen2_vl", "qwen2_5_vl", "llava", "gemma3"])
    parser.add_argument("out", help="output directory (written atomically)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.set_defaults(func=_tiny_vlm)
