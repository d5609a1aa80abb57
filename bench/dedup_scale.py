"""Near-duplicate detection at scale: a synthetic alpaca corpus with planted duplicates, and the time and memory
of deduplicating it, split by what the index holds (`sftlab.datawork.dedup.NearIndex`).

    python bench/dedup_scale.py make 100000 /tmp/a100k.jsonl     # rows of 30-400 characters, a fifth Chinese,
                                                                 # 5% copies with 1-4 characters changed, 2% exact
    python bench/dedup_scale.py run /tmp/a100k.jsonl             # dedup_examples: CPU s, RSS, index components
    /usr/bin/time -v sftlab data clean /tmp/a100k.jsonl /tmp/out.jsonl   # the whole command's peak RSS

Sizes are deep sizes (`sys.getsizeof` of every object reached, numpy arrays with their data), so an object shared
by two components counts once, in the first.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import resource
import sys
import time

import numpy as np


def make(rows: int, path: str) -> None:
    rng = random.Random(42)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(5000)]
    han = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]

    def text(low: int, high: int, chinese: bool) -> str:
        length = rng.randint(low, high)
        if chinese:
            return "".join(rng.choice(han) for _ in range(length // 2))
        out, total = [], 0
        while total < length:
            out.append(rng.choice(words))
            total += len(out[-1]) + 1
        return " ".join(out).capitalize() + "."

    def mutate(value: str) -> str:
        chars = list(value)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(chars))
            chars[at] = rng.choice("xyzq中")
        return "".join(chars)

    seen: list[dict] = []
    with open(path, "w", encoding="utf-8") as out:
        for _ in range(rows):
            draw = rng.random()
            if seen and draw < 0.05:
                row = {k: mutate(v) if k == "output" and v else v for k, v in rng.choice(seen).items()}
            elif seen and draw < 0.07:
                row = dict(rng.choice(seen))
            else:
                chinese = rng.random() < 0.2
                row = {"instruction": text(20, 120, chinese), "input": text(0, 60, chinese) if rng.random() < 0.4
                       else "", "output": text(30, 400, chinese)}
            if len(seen) < 200_000:
                seen.append(row)
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


def deep_size(obj, seen: set) -> int:
    total, stack = 0, [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        total += sys.getsizeof(item)
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        elif hasattr(item, "__dict__") and not isinstance(item, (type, np.ndarray)):
            stack.append(vars(item))
    return total


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 1e6


def run(path: str, threshold: float) -> None:
    from sftlab.datawork import dedup
    from sftlab.datawork.records import load_examples

    examples = load_examples(path)
    gc.collect()
    before = _rss_mb()
    indexes = []
    init = dedup.NearIndex.__init__
    dedup.NearIndex.__init__ = lambda self, options: init(self, options) or indexes.append(self)
    start = time.process_time()
    kept, removed = dedup.dedup_examples(examples, dedup.DedupOptions(near_threshold=threshold))
    cpu = time.process_time() - start
    gc.collect()
    print(f"{len(examples)} rows, {len(kept)} kept, {len(removed)} removed: {cpu:.1f} s CPU, "
          f"RSS +{_rss_mb() - before:.0f} MB after loading ({before:.0f} MB)")
    index, seen = indexes[0], set()
    parts = {"signatures (values)": index.values, "band table": index.table,
             "texts and roles": (index.texts, index.roles), "keys and groups": (index.keys, index.groups)}
    for name, part in parts.items():
        print(f"  {name}: {deep_size(part, seen) / 1e6:.0f} MB")
    print(f"  (signatures filled: {len(index.keys) * index.values.shape[1] * 4 / 1e6:.0f} MB; the rest of the "
          "array is allocated, not touched)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    make_parser = sub.add_parser("make")
    make_parser.add_argument("rows", type=int)
    make_parser.add_argument("path")
    run_parser = sub.add_parser("run")
    run_parser.add_argument("path")
    run_parser.add_argument("--near", type=float, default=0.8)
    args = parser.parse_args()
    if args.command == "make":
        make(args.rows, args.path)
    else:
        run(args.path, args.near)


if __name__ == "__main__":
    main()
