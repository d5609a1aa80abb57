"""Run the board under uvicorn in a background thread (tests, the screenshot script).

    with BoardThread(BoardSettings(runs_dir=tmp / "runs", workdir=tmp)) as url:   # "http://127.0.0.1:PORT"
        ...

Port 0 picks a free port; leaving the block shuts uvicorn down, which runs the app's shutdown (training
jobs it started get SIGINT and are waited for).
"""

from __future__ import annotations

from sftlab.board.app import BoardSettings, create_app
from sftlab.serve.server import UvicornThread


class BoardThread(UvicornThread):
    """A uvicorn server for the board in a daemon thread."""

    def __init__(self, settings: BoardSettings, host: str = "127.0.0.1", port: int = 0, start_timeout_s: float = 30.0):
        import uvicorn

        self.app = create_app(settings)
        config = uvicorn.Config(self.app, host=host, port=port, log_level="warning", access_log=False, lifespan="on")
        super().__init__(uvicorn.Server(config), "sftlab-board", start_timeout_s, stop_timeout_s=90.0)
