"""Benchmark `sftlab serve`: throughput and latency under concurrency vs one-at-a-time `model.generate`.

    .venv/bin/python bench/serve.py                          # tiny random qwen2 model built in a temp dir
    .venv/bin/python bench/serve.py --model gemma-3-270m     # any local model dir / embedded name

Both sides answer the same chat prompts greedily with the same stop tokens and max tokens, in this
one run: each prompt alone through `model.generate` (in this process), and all of them through
`sftlab serve` (its own process on 127.0.0.1, same torch thread count) from `--clients` concurrent
clients over loopback HTTP. The prompts are split into `--rounds` rounds and the two sides alternate
round by round, so both see the same background load on a shared machine. Prints generated tokens/s, p50/p99 latency per request, the
speed-up, and how many server answers are identical to the one-at-a-time answers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = ["What is the capital of France?", "Summarise: tax relief for small firms.", "hello",
           "Name three kinds of export support.", "Explain fine-tuning in one sentence.",
           "关于高新技术企业认定的通知有哪些要点？", "Write a haiku about a lazy dog.", "What does a subsidy do?"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def one_at_a_time(served, prompts: list[list[int]], stops: set[int], max_tokens: int):
    """Each prompt alone through model.generate; returns (texts, generated tokens, latencies, wall seconds)."""
    import torch

    texts, tokens, latencies = [], 0, []
    started = time.perf_counter()
    for ids in prompts:
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = served.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                        max_new_tokens=max_tokens, do_sample=False, eos_token_id=sorted(stops),
                                        pad_token_id=served.tokenizer.pad_token_id)
        new = [t for t in out[0, len(ids):].tolist() if t not in stops]
        latencies.append(time.perf_counter() - t0)
        tokens += len(new)
        texts.append(served.tokenizer.decode(new, skip_special_tokens=True))
    return texts, tokens, latencies, time.perf_counter() - started


async def concurrent_clients(url: str, requests: list[dict], clients: int):
    """Send `requests` from `clients` concurrent clients; returns (responses in order, latencies, wall seconds)."""
    import httpx

    results: list = [None] * len(requests)
    latencies: list[float] = [0.0] * len(requests)
    queue = list(range(len(requests)))
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=clients)) as http:
        async def client():
            while queue:
                index = queue.pop(0)
                t0 = time.perf_counter()
                results[index] = (await http.post("/v1/chat/completions", json=requests[index])).json()
                latencies[index] = time.perf_counter() - t0
        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
    return results, latencies, time.perf_counter() - started


def row(label: str, count: int, tokens: int, wall: float, latencies: list[float]) -> str:
    return (f"| {label:<35} | {count:>8} | {tokens:>10} | {wall:>7.2f} | {tokens / wall:>9.1f} | "
            f"{percentile(latencies, 50) * 1000:>7.0f} | {percentile(latencies, 99) * 1000:>7.0f} |")


def start_server(model_path: str, args, log_dir: Path):
    """`sftlab serve` in a child process on a free loopback port; returns (process, url) once /health answers."""
    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    command = [sys.executable, "-m", "sftlab", "serve", model_path, "--port", str(port), "--max-batch", str(args.max_batch),
               "--max-queue", str(max(64, args.requests)), "--access-log", str(log_dir / "access.jsonl"),
               "--template", args.template]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=open(log_dir / "server.err", "w"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited; see {log_dir / 'server.err'}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    process.terminate()
    raise SystemExit("the server did not start within 300 s")


def run_rounds(served, url: str, prompt_ids, bodies, stops, args) -> tuple[dict, dict]:
    """Alternate one-at-a-time and concurrent-server rounds; returns totals of each side."""
    base = {"texts": [], "tokens": 0, "latencies": [], "wall": 0.0}
    server = {"answers": [], "latencies": [], "wall": 0.0}
    one_at_a_time(served, prompt_ids[:1], stops, 4)  # warm-ups
    asyncio.run(concurrent_clients(url, bodies[:1], 1))
    size = -(-len(prompt_ids) // args.rounds)
    for start in range(0, len(prompt_ids), size):
        texts, tokens, latencies, wall = one_at_a_time(served, prompt_ids[start:start + size], stops, args.max_tokens)
        base["texts"] += texts
        base["tokens"] += tokens
        base["latencies"] += latencies
        base["wall"] += wall
        answers, latencies, wall = asyncio.run(concurrent_clients(url, bodies[start:start + size], args.clients))
        server["answers"] += answers
        server["latencies"] += latencies
        server["wall"] += wall
    server["tokens"] = sum(answer["usage"]["completion_tokens"] for answer in server["answers"])
    return base, server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model dir or embedded name (default: a tiny random qwen2)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=64, help="total requests (prompts repeat)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="alternate the two sides this many times")
    parser.add_argument("--template", default="auto", help="chat template, e.g. gemma for an imported GGUF")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both sides (default 1)")
    args = parser.parse_args(argv)

    import torch

    from sftlab.infer.loading import load_served
    from sftlab.infer.prompts import render_chat, stop_token_ids
    from sftlab.models.tiny import save_tiny

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="sftlab-bench-"))
    model_path = args.model or str(save_tiny("qwen2", work / "tiny"))
    served = load_served(model_path)
    stops = stop_token_ids(served.tokenizer, served.model, args.template)
    chats = [[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}] for i in range(args.requests)]
    prompt_ids = [render_chat(served.tokenizer, chat, args.template) for chat in chats]
    bodies = [{"model": served.default_name, "messages": chat, "max_tokens": args.max_tokens, "temperature": 0}
              for chat in chats]
    process, url = start_server(model_path, args, work)
    try:
        base, server = run_rounds(served, url, prompt_ids, bodies, stops, args)
    finally:
        process.terminate()
        process.wait(60)
    same = sum(a["choices"][0]["message"]["content"] == t for a, t in zip(server["answers"], base["texts"]))
    print(f"model: {args.model or 'tiny random qwen2'}; {args.requests} requests in {args.rounds} alternating rounds, "
          f"max_tokens {args.max_tokens}, greedy; torch threads {args.threads}; server max_batch {args.max_batch}")
    print("| mode                                | requests | gen tokens |  wall s |  tokens/s |  p50 ms |  p99 ms |")
    print("|-------------------------------------|---------:|-----------:|--------:|----------:|--------:|--------:|")
    print(row("model.generate, one at a time", args.requests, base["tokens"], base["wall"], base["latencies"]))
    print(row(f"sftlab serve, {args.clients} concurrent clients", args.requests, server["tokens"], server["wall"],
              server["latencies"]))
    speedup = (server["tokens"] / server["wall"]) / (base["tokens"] / base["wall"])
    print(f"throughput speed-up: {speedup:.1f}x; server answers identical to one-at-a-time: {same}/{args.requests}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
