"""Run the app under uvicorn: in the foreground for `sftlab serve`, or in a thread for tests and benchmarks.

On SIGINT/SIGTERM uvicorn stops accepting connections and waits (up to `shutdown_timeout_s`) for
requests in flight; only then does the app's lifespan stop the engine, so accepted requests finish.
"""

from __future__ import annotations

import threading
import time

from sftlab.serve.config import ServeSettings


def build_server(served, settings: ServeSettings):
    """A uvicorn.Server for `served` configured from `settings` (not started)."""
    import uvicorn

    from sftlab.serve.app import create_app

    config = uvicorn.Config(create_app(served, settings), host=settings.host, port=settings.port, log_level="warning",
                            access_log=False, lifespan="on",
                            timeout_graceful_shutdown=int(settings.shutdown_timeout_s))
    return uvicorn.Server(config)


def listening_socket(host: str, port: int, options: str = "--port, or port in --config"):
    """The server's socket, bound before the model loads: a port in use fails at once in one line naming the command's
    `options` for another port, and port 0 names the free port it got (`sock.getsockname()`). uvicorn serves on it
    (`Server.run(sockets=[sock])`)."""
    import socket

    from sftlab.errors import SftlabError

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds its own
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SftlabError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another port "
                          f"({options}) or host") from None
    return sock


def socket_url(host: str, sock) -> str:
    """The http:// address a `listening_socket` serves on: an IPv6 host in brackets, the port it got (port 0: a free
    one)."""
    return f"http://{f'[{host}]' if ':' in host else host}:{sock.getsockname()[1]}"


class UvicornThread:
    """A uvicorn.Server run in a daemon thread; `start()` returns its URL once it listens (port 0 = a free port)."""

    def __init__(self, server, name: str, start_timeout_s: float, stop_timeout_s: float):
        self.server = server
        self.thread = threading.Thread(target=self.server.run, name=name, daemon=True)
        self.start_timeout_s, self.stop_timeout_s = start_timeout_s, stop_timeout_s
        self.url = ""

    def start(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the {self.thread.name} server did not start")
            time.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self.url

    def stop(self, timeout_s: float | None = None) -> None:
        """Graceful stop: uvicorn finishes requests in flight, then runs the app's shutdown."""
        self.server.should_exit = True
        self.thread.join(self.stop_timeout_s if timeout_s is None else timeout_s)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class ServerThread(UvicornThread):
    """The OpenAI-compatible server in a background thread, e.g. `with ServerThread(served, settings) as url: ...`."""

    def __init__(self, served, settings: ServeSettings, start_timeout_s: float = 60.0):
        super().__init__(build_server(served, settings), "sftlab-uvicorn", start_timeout_s, stop_timeout_s=60.0)
        self.engine = self.server.config.app.state.engine
