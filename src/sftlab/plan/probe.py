"""Measured optimizer steps: real time per step and real peak memory, in a separate Python process.

    [result] = run_probe([cfg], steps=3, base_dir=Path("configs"))
    result["step_seconds"], result["peak_bytes"], result["trainable"], result["workload"]

`run_probe` starts `python -m sftlab.plan.probe` (a new interpreter, so the caller's memory is not
counted) which, for each configuration in turn, builds the training session exactly as `sftlab train`
does (`build_session`: data, model, strategy, gradient checkpointing, accelerator, AdamW) and runs
`steps` optimizer steps of `train.grad_accum` micro-batches made of the `train.batch_size` longest
training rows (the worst-case step, which is what the estimate describes).

Memory is measured from a baseline taken after a warm-up (`warm_up`): the session is built once and
one step is run (so libraries, kernels and lazily imported modules are in memory), everything is
released (`malloc_trim`; under jemalloc, `purge_jemalloc`), the baseline is read, and the session is built
again. The probe process runs on jemalloc where `sftlab train` would (`probe_environment`, `train.allocator`). On CPU the peak is the
process's resident high-water mark (`VmHWM` in /proc/self/status, reset through
/proc/self/clear_refs after the session is built) minus the baseline; on CUDA it is
`torch.cuda.max_memory_allocated()` minus the memory allocated at the baseline. Where neither is
available (non-Linux CPU) `peak_bytes` is None.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from sftlab.errors import SftlabError

_MARK = "SFTLAB_PROBE "
_PROGRESS = "SFTLAB_PROBE_PROGRESS "


def run_probe(configs: list, steps: int = 3, base_dir: str | Path | None = None,
              timeout: float | None = None, progress: Callable[[str], None] | None = None) -> list[dict]:
    """Measure `steps` optimizer steps of each RunConfig in one fresh Python process; return their results.

    Each configuration gets its own warm-up, baseline and peak, so the runs do not count each other's memory.
    `progress(line)` hears, while the process runs, which strategy it probes, auto's scoring batches, and each result.
    """
    request = {"configs": [cfg.model_dump(mode="json") for cfg in configs], "steps": steps,
               "base_dir": str(base_dir) if base_dir is not None else None, "progress": progress is not None}
    env = probe_environment(configs[0].train.allocator, os.environ)
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([src, env["PYTHONPATH"]]) if env.get("PYTHONPATH") else src
    kinds = ",".join(cfg.strategy.kind for cfg in configs)
    with tempfile.TemporaryFile("w+", encoding="utf-8") as errors:
        process = subprocess.Popen([sys.executable, "-m", "sftlab.plan.probe"], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=errors, text=True, env=env)
        expired = threading.Event()
        timer = threading.Timer(timeout, lambda: (expired.set(), process.kill())) if timeout else None
        try:
            if timer:
                timer.start()
            results = _read_results(process, json.dumps(request), progress)
            process.wait()
        finally:
            if timer:
                timer.cancel()
            if process.poll() is None:  # interrupted here: the probe process does not outlive the plan
                process.kill()
                process.wait()
        if expired.is_set() and len(results) != len(configs):
            raise SftlabError(f"--probe ({kinds}) took longer than {timeout:g} s")
        errors.seek(0)
        tail = (errors.read().strip().splitlines() or ["no output"])[-1]
    for result in results:
        if "error" in result:
            raise SftlabError(f"--probe strategy.kind={result['kind']}: {result['error']}")
    if len(results) != len(configs):
        raise SftlabError(f"--probe ({kinds}): the probe process failed ({tail})")
    return results


def _read_results(process, request: str, progress: Callable[[str], None] | None) -> list[dict]:
    """Send the request, then read the probe process's lines as they come: results, and progress for `progress`."""
    from statistics import median

    with contextlib.suppress(BrokenPipeError):  # a process that died at once: its stderr says why
        process.stdin.write(request)
        process.stdin.close()
    results = []
    for line in process.stdout:
        if line.startswith(_PROGRESS) and progress:
            progress(line[len(_PROGRESS):].rstrip("\n"))
        elif line.startswith(_MARK):
            results.append(json.loads(line[len(_MARK):]))
            result = results[-1]
            if progress and "error" not in result:
                progress(f"plan: probed {result['kind']}: {median(result['step_seconds']):.3g} s/step")
    return results


def probe_environment(allocator: str, environ) -> dict[str, str]:
    """The probe process's environment: on jemalloc exactly where `sftlab train` would run on it (`train.allocator`)."""
    from sftlab.jemalloc import exec_environment, resolve_allocator

    library = resolve_allocator(allocator)
    return exec_environment(library, environ) if library else dict(environ)


def _proc_status() -> dict[str, int]:
    values: dict[str, int] = {}
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values


def purge_jemalloc() -> bool:
    """Under jemalloc (preloaded, as `sftlab train` runs), hand its freed pages back to the kernel; else False.

    sftlab runs jemalloc with decay off (`sftlab.jemalloc.MALLOC_CONF`), so it never returns freed pages by
    itself: without this, the warm-up's pages would stay resident and the measured step would reuse them."""
    from sftlab.jemalloc import loaded_jemalloc
    from sftlab.heap_slack import jemalloc_mallctl, purge_unused_pages

    mallctl = jemalloc_mallctl() if loaded_jemalloc() else None  # the preloaded library's, through the global symbols
    if mallctl is None:
        return False
    purge_unused_pages(mallctl)
    return True


class PeakMeter:
    """Baseline and high-water mark of the process (CPU: resident set; CUDA: allocated tensors)."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.available = cuda or (os.path.exists("/proc/self/clear_refs") and os.path.exists("/proc/self/status"))
        self.baseline = 0

    def release(self) -> None:
        """Free what Python, the allocator and CUDA's cache still hold."""
        gc.collect()
        if self.cuda:
            import torch

            torch.cuda.empty_cache()
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        purge_jemalloc()

    def set_baseline(self) -> None:
        self.release()
        if self.cuda:
            import torch

            self.baseline = torch.cuda.memory_allocated()
        elif self.available:
            self.baseline = _proc_status()["VmRSS"]

    def reset_peak(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        elif self.available:
            try:
                with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
                    handle.write("5")
            except OSError:
                self.available = False

    def peak(self) -> int | None:
        if self.cuda:
            import torch

            return int(torch.cuda.max_memory_allocated() - self.baseline)
        return int(_proc_status()["VmHWM"] - self.baseline) if self.available else None


def worst_case_group(prepared, train_cfg) -> list[list[int]]:
    """`grad_accum` micro-batches, each the `batch_size` longest training rows."""
    lengths = [len(ids) for ids in prepared.train["input_ids"]]
    longest = sorted(range(len(lengths)), key=lambda i: -lengths[i])[:train_cfg.batch_size]
    return [list(longest) for _ in range(train_cfg.grad_accum)]


def worst_case_workload(prepared, collate, train_cfg) -> dict:
    """The worst-case micro-batch as the estimate needs it: rows, padded length, supervised positions."""
    from sftlab.train.loss import count_supervised_tokens

    batch = collate([prepared.train[i] for i in worst_case_group(prepared, train_cfg)[0]])
    rows, seq = batch["input_ids"].shape
    supervised = rows if train_cfg.stage == "cls" else count_supervised_tokens(batch["labels"])
    return {"batch": int(rows), "seq": int(seq), "supervised": int(supervised)}


def warm_up(cfg, base_dir: Path | None, out_dir: Path) -> None:
    """Build `cfg`'s session in `out_dir` and run one worst-case step, so that everything a run loads once
    (modules, kernels, caches) is loaded; then release the session."""
    from sftlab.train.loop import cleanup, optimizer_step
    from sftlab.train.setup import build_session

    warm, _ = build_session(cfg, out_dir, None, base_dir)
    optimizer_step(warm, worst_case_group(warm.prepared, cfg.train))
    cleanup(warm)


def measure(cfg, steps: int, base_dir: Path | None) -> dict:
    """Warm up, take the baseline, build the session again and time `steps` worst-case optimizer steps."""
    import torch

    from sftlab.jemalloc import loaded_jemalloc
    from sftlab.plan.memory import ModelShape, backprop_depth
    from sftlab.train.loop import cleanup, optimizer_step
    from sftlab.train.setup import build_session

    meter = PeakMeter(torch.cuda.is_available())
    with tempfile.TemporaryDirectory(prefix="sftlab-probe-") as tmp:
        warm_up(cfg, base_dir, Path(tmp) / "warm")
        meter.set_baseline()
        session, _ = build_session(cfg, Path(tmp) / "run", None, base_dir)
        group = worst_case_group(session.prepared, cfg.train)
        meter.reset_peak()
        seconds = []
        for _ in range(steps):
            start = time.perf_counter()
            optimizer_step(session, group)
            if meter.cuda:
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
        peak = meter.peak()
        model = session.model
        result = {"kind": cfg.strategy.kind, "trainable": session.trainable.trainable,
                  "total": session.trainable.total, "names": session.trainable.names,
                  "shape": asdict(ModelShape.from_model(model)), "depth": backprop_depth(model, session.trainable.names),
                  "param_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
                  "step_seconds": seconds, "peak_bytes": peak, "device": "cuda" if meter.cuda else "cpu",
                  "allocator": "jemalloc" if loaded_jemalloc() else "system malloc",
                  "workload": worst_case_workload(session.prepared, session.collate, cfg.train)}
        cleanup(session)
    return result


def _say(line: str) -> None:
    """A progress line for the parent (`run_probe` relays it)."""
    print(_PROGRESS + line.replace("\n", " "), flush=True)


def main() -> int:
    """Entry point of `python -m sftlab.plan.probe`: a JSON request on stdin, one marked JSON line per config."""
    from sftlab.config import validate_config
    from sftlab.strategy.importance import scoring_progress

    request = json.loads(sys.stdin.read())
    base_dir = Path(request["base_dir"]) if request.get("base_dir") else None
    say = _say if request.get("progress") else None
    for index, raw in enumerate(request["configs"], 1):
        kind = raw.get("strategy", {}).get("kind")
        if say:
            steps = int(request["steps"])
            say(f"plan: probing {kind} ({index}/{len(request['configs'])}): a warm-up step, then "
                f"{steps} measured step{'s' if steps != 1 else ''}")
        try:
            with scoring_progress(say and (lambda line: say(f"plan: probe {line}"))):
                result = measure(validate_config(raw, "probe request"), int(request["steps"]), base_dir)
        except SftlabError as exc:
            result = {"kind": kind, "error": str(exc)}
        print(_MARK + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
