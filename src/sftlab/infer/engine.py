"""Scheduling generation requests onto the continuous batch, synchronously or in a background thread.

`Scheduler.tick()` admits waiting requests at a step boundary (oldest first, only while they use the
batch's adapter, up to `max_batch` rows), drops cancelled or timed-out rows, runs one decode step and
tells each request's owner through its `emit` callback: `{"type": "delta", "text"}` pieces as text
becomes final (decoded every step only for `stream` requests and ones with stop strings; the others
get their text once, at the end), then one `{"type": "done", "finish_reason", "text",
"prompt_tokens", "completion_tokens"}` or `{"type": "error", "message"}`. `Engine` runs ticks in a
thread for the server."""

from __future__ import annotations

import collections
import copy
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from sftlab.infer.batch import DecodeBatch, Row
from sftlab.infer.sampling import SamplingParams
from sftlab.infer.text import IncrementalText


log = logging.getLogger("sftlab.infer")


class QueueFull(Exception):
    """The waiting queue is at its bound; the caller should retry later."""


_ids = itertools.count(1)


@dataclass(eq=False)
class Request:
    """One generation request and how to tell its owner about progress."""

    prompt_ids: list[int]
    params: SamplingParams
    emit: Callable[[dict], None]
    adapter: str | None = None
    deadline: float | None = None
    stream: bool = True
    id: int = field(default_factory=lambda: next(_ids))
    row: Row | None = None
    text: IncrementalText | None = None
    cancelled: bool = False
    finished: bool = False


class Scheduler:
    """Waiting requests plus the running batch; to be driven from one thread (Engine's own, fed through an inbox)."""

    def __init__(self, served, stop_ids: set[int], max_batch: int = 16, own_decoder: bool = True):
        self.served = served
        self.max_batch = max_batch
        self.batch = DecodeBatch(served.model, served.tokenizer.pad_token_id, stop_ids, served.max_context,
                                 activate=served.activate)
        self.waiting: collections.deque[Request] = collections.deque()
        self.running: list[Request] = []
        # Its own copy when callers may tokenize in other threads (the Engine's thread; 2 s for Gemma's tokenizer).
        self.decoder = copy.deepcopy(served.tokenizer) if own_decoder else served.tokenizer

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running

    def add(self, request: Request) -> None:
        request.text = IncrementalText(self.decoder, request.params.stop)
        self.waiting.append(request)

    def tick(self) -> None:
        """Admit what may join, retire cancelled/expired rows, decode one step, report progress."""
        self._expire_waiting()
        joining = self._take_joining()
        if joining:
            rows = [Row(r.prompt_ids, r.params, adapter=r.adapter) for r in joining]
            for request, row in zip(joining, rows):
                request.row = row
            self.running.extend(joining)
            self._guarded(lambda: self.batch.admit(rows), joining)
        else:
            self._retire_cancelled()
            self._guarded(self.batch.step, list(self.running))
        self._report()

    def fail_all(self, message: str) -> None:
        """End every waiting and running request with an error and start from an empty batch."""
        for request in [*self.running, *self.waiting]:
            if not request.finished:
                request.finished = True
                request.emit({"type": "error", "message": message})
        self.running, self.waiting = [], collections.deque()
        self.batch.rows, self.batch.cache, self.batch.mask = [], None, None

    def _take_joining(self) -> list[Request]:
        room = self.max_batch - len(self.running)
        adapter = self.running[0].adapter if self.running else (self.waiting[0].adapter if self.waiting else None)
        joining = []
        while self.waiting and room > len(joining) and self.waiting[0].adapter == adapter:
            request = self.waiting.popleft()
            if not request.cancelled:
                joining.append(request)
        return joining

    def _expire_waiting(self) -> None:
        now = time.monotonic()
        for request in list(self.waiting):
            if request.cancelled:
                self.waiting.remove(request)
            elif request.deadline is not None and now > request.deadline:
                self.waiting.remove(request)
                self._finish(request, "timeout")

    def _retire_cancelled(self) -> None:
        now = time.monotonic()
        for request in self.running:
            if request.cancelled:
                request.row.finish("cancelled")
            elif request.deadline is not None and now > request.deadline:
                request.row.finish("timeout")

    def _guarded(self, work: Callable, requests: list[Request]) -> None:
        try:
            work()
        except Exception as exc:  # a failed forward pass ends the affected requests, not the server
            for request in requests:
                request.row.finish("error")
                request.emit({"type": "error", "message": f"generation failed: {type(exc).__name__}"})
                request.finished = True
            self.batch.drop_finished()

    def _report(self) -> None:
        still = []
        for request in self.running:
            if request.finished:
                continue
            row = request.row
            fresh = row.generated[len(request.text.ids):]
            if request.stream or request.params.stop:
                delta = request.text.push(fresh)
            else:  # read whole at the end: decode once then
                request.text.add(fresh)
                delta = ""
            if request.text.stopped:
                row.finish("stop")
            if delta:
                request.emit({"type": "delta", "text": delta})
            if row.finish_reason is not None:
                self._finish(request, row.finish_reason)
            else:
                still.append(request)
        self.running = still
        self.batch.drop_finished()

    def _finish(self, request: Request, reason: str) -> None:
        tail = request.text.finish() if reason in ("stop", "length") else ""
        if tail:
            request.emit({"type": "delta", "text": tail})
        request.finished = True
        completion = len(request.row.generated) if request.row else 0
        request.emit({"type": "done", "finish_reason": reason, "text": request.text.text,
                      "prompt_tokens": len(request.prompt_ids), "completion_tokens": completion})


def generate_all(served, prompts: list[list[int]], params: SamplingParams | list[SamplingParams], stop_ids: set[int],
                 max_batch: int = 16, adapter: str | None = None) -> list[dict]:
    """Generate an answer for every prompt (continuous batching, at most `max_batch` rows); returns done events."""
    return [event for _, event in answers_in_order(served, prompts, params, stop_ids, max_batch, adapter)]


def answers_in_order(served, prompts: list[list[int]], params: SamplingParams | list[SamplingParams],
                     stop_ids: set[int], max_batch: int = 16, adapter: str | None = None) -> Iterator[tuple[int, dict]]:
    """`generate_all` as it goes: yields (index, done or error event) in input order, each as soon as its row and every
    row before it have finished, so a caller can write answers while later rows still decode. Rows that finish early
    wait in memory for the ones before them (they joined the batch in input order, so few do)."""
    finished: dict[int, dict] = {}
    scheduler = Scheduler(served, stop_ids, max_batch, own_decoder=False)  # one thread: the tokenizer is ours
    per_prompt = params if isinstance(params, list) else [params] * len(prompts)

    def collector(index: int) -> Callable[[dict], None]:
        def emit(event: dict) -> None:
            if event["type"] in ("done", "error"):
                finished[index] = event
        return emit

    for index, (prompt, setting) in enumerate(zip(prompts, per_prompt)):
        scheduler.add(Request(prompt, setting, collector(index), adapter=adapter, stream=False))
    ready = 0
    while not scheduler.idle:
        scheduler.tick()
        while ready in finished:
            yield ready, finished.pop(ready)
            ready += 1


class Engine:
    """Runs a Scheduler in a background thread; `submit` and `cancel` are safe to call from any thread.

    Submitted requests wait in an inbox (bounded by `max_queue` together with the scheduler's own
    waiting list) that the thread drains between steps, so submitting never waits for a forward pass.
    """

    def __init__(self, served, stop_ids: set[int], max_batch: int = 16, max_queue: int = 64,
                 batch_window_s: float = 0.005):
        self.scheduler = Scheduler(served, stop_ids, max_batch)
        self.max_queue = max_queue
        self.batch_window_s = batch_window_s
        self._inbox: collections.deque[Request] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> "Engine":
        self._thread = threading.Thread(target=self._loop, name="sftlab-engine", daemon=True)
        self._thread.start()
        return self

    def submit(self, request: Request) -> Request:
        """Queue `request`; raises QueueFull when `max_queue` requests are already waiting."""
        with self._cond:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self._inbox) + len(self.scheduler.waiting) >= self.max_queue:
                raise QueueFull(f"{self.max_queue} requests are already waiting")
            self._inbox.append(request)
            self._cond.notify()
        return request

    def cancel(self, request: Request) -> None:
        """Stop generating for `request` at the next step boundary (e.g. its client went away)."""
        request.cancelled = True

    def stop(self, timeout_s: float = 60.0) -> None:
        """Refuse new requests, finish the accepted ones (within `timeout_s`), then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._inbox and self.scheduler.idle and not self._stopping:
                    self._cond.wait(0.5)
                if not self._inbox and self.scheduler.idle and self._stopping:
                    return
                fresh_start = self.scheduler.idle
            if fresh_start and self.batch_window_s:
                time.sleep(self.batch_window_s)  # let requests that arrive together share the first prefill
            with self._cond:
                while self._inbox:
                    self.scheduler.add(self._inbox.popleft())
            try:
                self.scheduler.tick()
            except Exception:  # a bug must not leave requests hanging: fail them and keep serving
                log.exception("scheduler step failed")
                self.scheduler.fail_all("internal error during generation")
