"""A served model behind a real HTTP server that writes an access log, and a reader that waits for its records:
shared by the serve, tool-calling and vision serve tests."""

from __future__ import annotations

import json
import time
from typing import Callable

from sftlab.serve.config import ServeSettings
from sftlab.serve.server import ServerThread


def start_logged_server(served, tmp_path_factory, **settings) -> ServerThread:
    """A started ServerThread on a free port whose access log is `thread.log` (a new temporary file)."""
    log = tmp_path_factory.mktemp("log") / "access.jsonl"
    thread = ServerThread(served, ServeSettings(port=0, access_log=str(log), **settings))
    thread.start()
    thread.log = log
    return thread


def access_log_records(server: ServerThread, done: Callable[[list[dict]], bool], timeout: float = 10) -> list[dict]:
    """Every record of the access log once `done(records)` holds, or when `timeout` seconds have passed (a line is
    written just after its response has ended)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = server.log.read_text(encoding="utf-8").splitlines() if server.log.exists() else []
        records = [json.loads(line) for line in lines]
        if done(records) or time.monotonic() > deadline:
            return records
        time.sleep(0.02)
