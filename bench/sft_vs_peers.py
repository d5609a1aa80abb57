"""Speed and memory of sftlab against TRL and LLaMA-Factory on fixed SFT workloads, in one invocation.

    python bench/sft_vs_peers.py --data ../shared/data/sft_demo/alpaca_en_demo.json            # W1, full
    python bench/sft_vs_peers.py --data .../alpaca_en_demo.json --quick                        # < 5 minutes
    python bench/sft_vs_peers.py --data .../alpaca_en_demo.json --workload w2 --gemma DIR      # W2

Every tool trains in its own process, one after another, from the same initial weights (saved once),
the same tokenizer, data, hyperparameters and seed. TRL and LLaMA-Factory are benchmark-only extras in
their own venvs (bench/.venv-trl, bench/.venv-lf; installed on first use by bench/_peers/envs.py).
Prints a table (tool, setting, precision, optimizer steps, non-padding tokens/s, supervised tokens/s,
peak RSS, final train loss, eval loss, MFU against the matmul peak of its precision, measured before and
after the runs, the better kept), the peaks, the fastest peer's MFU (which bounds any speed-up: at 100%
MFU a tool is 1 / MFU times as fast as that peer), and as the last line
`tokens_per_s_ratio=X peak_rss_ratio=Y eval_loss_delta=Z`: sftlab's fastest configuration against the
fastest peer configuration (Z is relative: (sftlab - peer) / peer, eval losses of the two).

Workloads (copied from the project's shared WORKLOAD.md so the benchmark stands alone):

W1 -- tiny Qwen2, alpaca, full fine-tuning
  Data: alpaca_en_demo.json; first 400 records train, last 100 eval. Prompt = instruction + ("\\n" + input
  if input); response = output. Single-turn chat (user, assistant) through the tokenizer's ChatML
  template; loss on the assistant turn only (content + end-of-turn token).
  Tokenizer: byte-level BPE trained with `tokenizers` on the whole file, vocab 16,000, special tokens
  <|endoftext|> (pad), <|im_start|>, <|im_end|> (eos), ChatML chat template.
  Model: Qwen2ForCausalLM from config, seed 0: hidden 512, 8 layers, 8 heads, 2 KV heads, intermediate
  1408, tie_word_embeddings false, max positions 2048 (about 39M parameters).
  Training: max length 512, batch 8, no accumulation, AdamW lr 1e-4, weight decay 0, no warmup, linear
  decay, 1 epoch, seed 0; fp32, and bf16 autocast as a second variant.
  Report: wall time of the training loop, non-padding tokens processed and per second, supervised tokens
  per second, peak RSS, final train loss, eval loss on the 100 eval records (assistant tokens only, fp32).
  Peers: TRL SFTTrainer with default padding; TRL with packing (BFD) and padding-free; LLaMA-Factory
  `stage: sft, finetuning_type: full, template: qwen` with neat_packing.

W2 -- Gemma 3 270M, partial fine-tuning
  Model: Gemma 3 270M (the `gemma-3-270m` of `sftlab model pull`, dequantised to fp32; vocab 262,144:
  the output head is most of the compute). Data: 200 records of W1's data, max length 256, batch 8.
  Strategy: train the last 4 decoder layers and the final norm; everything else frozen. Same optimizer
  and schedule as W1.

Packed runs take fewer optimizer steps per epoch than padded ones, so compare packed with packed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR / "_peers"))
sys.path.insert(0, str(BENCH_DIR))

import envs  # noqa: E402  (bench/_peers)
import workloads  # noqa: E402  (bench/_peers)
from matmul_peak import measure_peak, training_flops  # noqa: E402

# setting -> (runner, tool label, packing, extra spec keys)
SETTINGS = {
    "sftlab-packed": ("sftlab", "sftlab", True, {}),
    "sftlab-padded": ("sftlab", "sftlab", False, {}),
    "sftlab-packed-autocast": ("sftlab", "sftlab", True, {"sftlab_weights": "float32"}),
    "sftlab-packed-selective": ("sftlab", "sftlab", True, {"sftlab_checkpointing": "selective"}),
    "sftlab-padded-grouped": ("sftlab", "sftlab", False, {"sftlab_group_by_length": True}),
    "sftlab-padded-grouped-selective": ("sftlab", "sftlab", False, {"sftlab_group_by_length": True,
                                                                    "sftlab_checkpointing": "selective"}),
    "sftlab-packed-sdpa": ("sftlab", "sftlab", True, {"sftlab_attention": "sdpa"}),
    "sftlab-packed-system": ("sftlab", "sftlab", True, {"sftlab_allocator": "system"}),
    "sftlab-padded-grouped-sdpa": ("sftlab", "sftlab", False, {"sftlab_group_by_length": True,
                                                               "sftlab_attention": "sdpa"}),
    "trl-default": ("trl", "TRL SFTTrainer", False, {}),
    "trl-packed": ("trl", "TRL SFTTrainer", True, {}),
    "lf-neat": ("lf", "LLaMA-Factory", True, {}),
    "lf-neat-nogc": ("lf", "LLaMA-Factory", True, {"lf_disable_gradient_checkpointing": True}),
}
SETTING_NOTES = {"sftlab-packed": "packed (data.packing; bf16: model.dtype bfloat16)", "sftlab-padded": "padded",
                 "sftlab-packed-autocast": "packed, fp32 weights (bf16: autocast only)",
                 "sftlab-packed-selective": "packed, selective activation checkpointing",
                 "sftlab-padded-grouped": "padded, grouped by length (data.group_by_length)",
                 "sftlab-padded-grouped-selective": "padded, grouped by length, selective activation checkpointing",
                 "sftlab-packed-sdpa": "packed, sdpa attention (model.attn_implementation)",
                 "sftlab-packed-system": "packed, system malloc (train.allocator)",
                 "sftlab-padded-grouped-sdpa": "padded, grouped by length, sdpa attention",
                 "trl-default": "default (padded)", "trl-packed": "packing BFD + padding-free", "lf-neat": "neat_packing (its default gradient checkpointing)",
                 "lf-neat-nogc": "neat_packing, gradient checkpointing off"}
FULL_SETTINGS = ["sftlab-packed", "sftlab-packed-sdpa", "sftlab-packed-selective", "sftlab-padded-grouped",
                 "sftlab-padded-grouped-sdpa", "sftlab-padded-grouped-selective",
                 "trl-default", "trl-packed", "lf-neat", "lf-neat-nogc"]
QUICK_SETTINGS = ["sftlab-packed", "sftlab-packed-sdpa", "trl-packed", "lf-neat"]


def run_setting(setting: str, precision: str, spec: dict, timeout: int, log) -> dict:
    """Train one tool configuration in its own process; return its result (or an 'error' entry)."""
    runner, label, packing, extra = SETTINGS[setting]
    python = Path(sys.executable) if runner == "sftlab" else envs.ensure_peer_env(runner, log)
    name = f"{setting}-{precision}"
    spec = {**spec, **extra, "name": name, "precision": precision, "packing": packing,
            "result": str(Path(spec["work"]) / f"result-{name}.json")}
    spec_path = Path(spec["work"]) / f"spec-{name}.json"
    spec_path.write_text(json.dumps(spec, indent=1), encoding="utf-8")
    Path(spec["result"]).unlink(missing_ok=True)
    log(f"running {name} ...")
    started = time.perf_counter()
    try:
        proc = subprocess.run([str(python), str(BENCH_DIR / "_peers" / f"run_{runner}.py"), str(spec_path)],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"setting": setting, "tool": label, "precision": precision, "error": f"timed out after {timeout}s"}
    (Path(spec["work"]) / f"log-{name}.txt").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    if proc.returncode != 0 or not Path(spec["result"]).exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"setting": setting, "tool": label, "precision": precision, "error": tail[0][:200]}
    result = json.loads(Path(spec["result"]).read_text(encoding="utf-8"))
    result.update({"setting": setting, "tool": label, "process_seconds": time.perf_counter() - started})
    log(f"  {name}: {result['tokens'] / result['train_seconds']:.0f} tokens/s, eval loss {result['eval_loss']:.4f}")
    return result


def tokens_per_s(result: dict) -> float:
    return result["tokens"] / result["train_seconds"]


def add_mfu(results: list[dict], peaks: dict, model_config: dict, trainable_last_layers: int | None) -> None:
    """Model FLOPs utilisation of every row against the measured matmul peak of its precision.

    One formula for every tool (`training_flops`: the head on supervised tokens only), so a peer that
    builds logits everywhere is not credited for them: its MFU is the useful work it gets done."""
    for result in results:
        if result.get("error"):
            continue
        flops = training_flops(model_config, result["tokens"], result["supervised_tokens"], trainable_last_layers)
        result["mfu"] = flops / result["train_seconds"] / 1e9 / peaks[result["precision"]]


def format_table(results: list[dict]) -> str:
    """A markdown table, one row per tool configuration."""
    lines = ["| tool | setting | precision | steps | non-pad tokens/s | supervised tokens/s | peak RSS | "
             "final train loss | eval loss | MFU |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        head = f"| {r['tool']} | {SETTING_NOTES[r['setting']]} | {r['precision']} "
        if r.get("error"):
            lines.append(head + f"| failed: {r['error']} | | | | | | |")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else ""
        lines.append(head + f"| {r['optimizer_steps']} | {tokens_per_s(r):.0f} | "
                     f"{r['supervised_tokens'] / r['train_seconds']:.0f} | {r['peak_rss_bytes'] / 2**30:.2f} GiB | "
                     f"{r['train_loss']:.4f} | {r['eval_loss']:.4f} | {mfu} |")
    return "\n".join(lines)


def ceiling_line(results: list[dict]) -> str:
    """How fast any tool could be at all: the fastest peer row's MFU, and 1 / MFU (the ratio at 100% of peak)."""
    peers = [r for r in results if not r.get("error") and r["tool"] != "sftlab" and "mfu" in r]
    if not peers:
        return "fastest peer's MFU: not measured"
    peer = max(peers, key=tokens_per_s)
    return (f"fastest peer's MFU: {100 * peer['mfu']:.1f}% ({peer['setting']}, {peer['precision']}); a tool running "
            f"every useful matmul at the measured peak would be at most {1 / peer['mfu']:.2f}x as fast")


def ratio_line(results: list[dict]) -> str:
    """sftlab's fastest configuration against the fastest peer configuration."""
    done = [r for r in results if not r.get("error")]
    ours = [r for r in done if r["tool"] == "sftlab"]
    peers = [r for r in done if r["tool"] != "sftlab"]
    if not ours or not peers:
        return "tokens_per_s_ratio=nan peak_rss_ratio=nan eval_loss_delta=nan"
    best, peer = max(ours, key=tokens_per_s), max(peers, key=tokens_per_s)
    delta = (best["eval_loss"] - peer["eval_loss"]) / peer["eval_loss"]
    return (f"tokens_per_s_ratio={tokens_per_s(best) / tokens_per_s(peer):.2f} "
            f"peak_rss_ratio={best['peak_rss_bytes'] / peer['peak_rss_bytes']:.2f} eval_loss_delta={delta:+.4f}")


def native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU runs bf16 matmuls in hardware (AMX or AVX-512 bf16 instructions). The matmul peak
    and LLaMA-Factory (`use_cpu`) run on the CPU whatever GPU the machine has, so only the CPU counts;
    elsewhere bf16 is emulated and slower than fp32, and its matmul peak alone takes minutes to time."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    return any(flag in cpuinfo.split() for flag in ("amx_bf16", "avx512_bf16"))


def default_precisions(quick: bool, bf16_native: bool) -> str:
    """--precisions when not given: bf16 (quick) or fp32,bf16 where bf16 is native, else fp32."""
    if not bf16_native:
        return "fp32"
    return "bf16" if quick else "fp32,bf16"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="alpaca_en_demo.json of the shared sft_demo data")
    parser.add_argument("--workload", choices=["w1", "w2"], default="w1")
    parser.add_argument("--quick", action="store_true",
                        help="reduced run: fewer records, packed settings only, bf16 (fp32 where bf16 is not native)")
    parser.add_argument("--settings", help=f"comma-separated subset of {','.join(SETTINGS)}")
    parser.add_argument("--precisions", help="comma-separated: fp32,bf16 (default both, --quick bf16; fp32 only "
                        "on machines without native bf16)")
    parser.add_argument("--gemma", help="W2: local Gemma 3 270M directory (default: sftlab model pull gemma-3-270m)")
    parser.add_argument("--work", help="scratch directory (default bench/results/<workload>[-quick])")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds allowed per training run")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    work = Path(args.work or BENCH_DIR / "results" / (args.workload + ("-quick" if args.quick else "")))
    spec = workloads.build(args.workload, Path(args.data), work, args.quick, args.gemma, log)
    settings = (args.settings or ",".join(QUICK_SETTINGS if args.quick else FULL_SETTINGS)).split(",")
    precisions = (args.precisions or default_precisions(args.quick, native_bf16())).split(",")
    unknown = [s for s in settings if s not in SETTINGS] + [p for p in precisions if p not in ("fp32", "bf16")]
    if unknown:
        sys.exit(f"error: unknown setting/precision {', '.join(unknown)}")
    peaks = {p: measure_peak(p) for p in precisions}  # only those run: bf16 without AMX/AVX-512 takes minutes
    results = [run_setting(s, p, spec, args.timeout, log) for p in precisions for s in settings]
    peaks = {p: max(rate, measure_peak(p)) for p, rate in peaks.items()}  # best of before and after the runs
    add_mfu(results, peaks, spec["model_config"], spec.get("trainable_last_layers"))
    (work / "results.json").write_text(json.dumps({"peaks_gflops": peaks, "results": results}, indent=1), encoding="utf-8")
    print(f"workload {args.workload}{' (quick)' if args.quick else ''}: {spec['summary']}")
    rates = ", ".join(f"{p} {rate:.0f} GFLOP/s" for p, rate in peaks.items())
    print(f"matmul peak: {rates} (torch threads {__import__('torch').get_num_threads()})")
    print(format_table(results))
    print(ceiling_line(results))
    print(ratio_line(results))


if __name__ == "__main__":
    main()
