"""Run the board under uvicorn in a background thread (tests, the screenshot script).

    with BoardThread(BoardSettings(runs_dir=tmp / "runs", workdir=tmp)) as url:   # "http://127.0.0.1:PORT"
        ...

Port 0 picks a free port; leaving the block shuts uvicorn down, which runs the app's shutdown (training
jobs it started get SIGINT and are waited for).
"""

from __future__ import annotations

import threading
import time

from sftlab.board.app import BoardSettings, create_app


class BoardThread:
    """A uvicorn server for the board in a daemon thread."""

    def __init__(self, settings: BoardSettings, host: str = "127.0.0.1", port: int = 0, start_timeout_s: float = 30.0):
        import uvicorn

        self.app = create_app(settings)
        config = uvicorn.Config(self.app, host=host, port=port, log_level="warning", access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="sftlab-board", daemon=True)
        self.start_timeout_s = start_timeout_s
        self.url = ""

    def start(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the board server did not start")
            time.sleep(0.05)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self.url

    def stop(self, timeout_s: float = 90.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
