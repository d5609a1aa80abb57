"""Chat with a run's model from the board: the serving engine, the training chat template, streamed pieces.

    pool = ChatPool()
    async for event in pool.stream(run_dir, messages, max_tokens=64):   # {"delta": "..."} ..., {"done": {...}}
        ...

Models load on first use with `sftlab.infer.loading.load_served` (which reuses the run's `data.template`)
and generate on a `sftlab.infer.engine.Engine`, exactly as `sftlab serve` does. Only the most recently
used `max_loaded` models stay in memory. A model with its own code (config.json's `auto_map`) loads only with
`trust_remote_code` (`sftlab board --trust-remote-code`); without it the chat answers the one-line refusal naming that.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from pathlib import Path

from sftlab.errors import SftlabError

TRUST_KEY = "`sftlab board --trust-remote-code`"  # what the refusal of custom code names


class LoadedModel:
    """A served model with its running engine and the stop ids of its template."""

    def __init__(self, run_dir: Path, trust_remote_code: bool = False):
        from sftlab.infer.engine import Engine
        from sftlab.infer.loading import load_served
        from sftlab.infer.prompts import stop_token_ids

        self.served = load_served(run_dir, trust_remote_code=trust_remote_code, trust_key=TRUST_KEY)
        self.template = self.served.template
        self.engine = Engine(self.served, stop_token_ids(self.served.tokenizer, self.served.model, self.template),
                             max_batch=4, max_queue=16).start()

    def close(self) -> None:
        self.engine.stop(10.0)


class ChatPool:
    """Loaded models by run dir, least recently used dropped first."""

    def __init__(self, max_loaded: int = 2, trust_remote_code: bool = False):
        self.max_loaded = max_loaded
        self.trust_remote_code = trust_remote_code
        self._models: OrderedDict[Path, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, run_dir: Path) -> LoadedModel:
        key = Path(run_dir).resolve()
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            if not (key / "model").is_dir():
                raise SftlabError(f"{key.name}: the run has no model/ yet; chat once training has finished")
            loaded = LoadedModel(key, self.trust_remote_code)
            self._models[key] = loaded
            while len(self._models) > self.max_loaded:
                self._models.popitem(last=False)[1].close()
            return loaded

    def forget(self, run_dir: Path) -> None:
        """Drop a run's loaded model (its weights changed, e.g. after a resumed run finished)."""
        with self._lock:
            loaded = self._models.pop(Path(run_dir).resolve(), None)
        if loaded is not None:
            loaded.close()

    def close(self) -> None:
        with self._lock:
            for loaded in self._models.values():
                loaded.close()
            self._models.clear()

    async def stream(self, run_dir: Path, messages: list[dict], max_tokens: int = 128, temperature: float = 0.0):
        """Yield `{"delta": text}` as the answer grows, then `{"done": {...}}` or `{"error": message}`."""
        from sftlab.infer.engine import Request
        from sftlab.infer.prompts import render_chat
        from sftlab.infer.sampling import SamplingParams

        loaded = await asyncio.to_thread(self.get, run_dir)
        prompt = render_chat(loaded.served.tokenizer, messages, loaded.template, src="chat")
        room = loaded.served.max_context - len(prompt)
        if room < 1:
            raise SftlabError(f"chat: the conversation has {len(prompt)} tokens, more than the model's context")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def emit(event: dict) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the page went away and its loop closed
                pass

        params = SamplingParams(max_new_tokens=min(max_tokens, room), temperature=temperature)
        adapter = loaded.served.adapters[loaded.served.default_name]
        job = loaded.engine.submit(Request(prompt, params, emit, adapter=adapter, deadline=time.monotonic() + 300))
        try:
            while True:
                event = await events.get()
                if event["type"] == "delta":
                    yield {"delta": event["text"]}
                elif event["type"] == "error":
                    yield {"error": event["message"]}
                    return
                else:
                    yield {"done": {key: event.get(key) for key in ("finish_reason", "prompt_tokens", "completion_tokens")}
                           | {"template": loaded.template}}
                    return
        finally:
            if not job.finished:
                loaded.engine.cancel(job)
