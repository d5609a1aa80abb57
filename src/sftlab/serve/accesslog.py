"""Structured access log: one JSON line per HTTP request, written when its response has been sent.

    {"ts": "2026-11-22T03:01:02.345Z", "id": "chatcmpl-…", "method": "POST", "path": "/v1/chat/completions",
     "model": "tiny", "status": 200, "stream": false, "prompt_tokens": 12, "completion_tokens": 30,
     "latency_ms": 85.1}

Handlers put `id`, `model`, token counts and `stream` into `request.state.access`; this middleware
adds status and latency (time to the last byte, so streamed requests count their whole stream).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import datetime, timezone


def make_access_logger(path: str | None) -> logging.Logger:
    """A logger that writes bare JSON lines to `path` (appending) or to stderr."""
    logger = logging.getLogger(f"sftlab.access.{path or 'stderr'}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not logger.handlers:
        handler = logging.FileHandler(path, encoding="utf-8") if path else logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    return logger


class AccessLogMiddleware:
    """Pure ASGI middleware (so streamed bodies are timed to their end)."""

    def __init__(self, app, logger: logging.Logger):
        self.app = app
        self.logger = logger

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        status = {"code": 500}

        async def send_and_watch(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            self._write(scope, state.get("access") or {}, status["code"], started)

    def _write(self, scope, access: dict, status: int, started: float) -> None:
        record = {"ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                  "id": access.get("id"), "method": scope.get("method"), "path": scope.get("path"),
                  "model": access.get("model"), "status": status, "stream": access.get("stream", False),
                  "prompt_tokens": access.get("prompt_tokens"), "completion_tokens": access.get("completion_tokens"),
                  "latency_ms": round((time.perf_counter() - started) * 1000, 1)}
        if access.get("finish_reason"):
            record["finish_reason"] = access["finish_reason"]
        self.logger.info(json.dumps(record, ensure_ascii=False))
