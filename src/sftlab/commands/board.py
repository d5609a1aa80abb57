"""`sftlab board [--host H] [--port P] [--runs-dir DIR]`: the local web board (see docs/board.md).

Serves the bundled interface (no internet assets). On a loopback address (127.0.0.1, ::1, localhost) it
is open to this machine (requests must name a local Host, against DNS rebinding); on any other address it requires the API keys `sftlab serve` uses (`--config` serve settings'
`api_keys` plus SFTLAB_API_KEYS) and refuses to start without one. The port is bound before anything is printed,
so a port in use is one `error:` line; `--port 0` picks a free port and the printed address names it.
`--trust-remote-code` lets the chat and evaluate of a run whose model ships its own code (config.json's `auto_map`)
run that code; without it they answer a one-line refusal.
"""

from __future__ import annotations

import argparse
import ipaddress

from sftlab.commands.generate import add_trust_argument


def register(registry) -> None:
    parser = registry.top.add_parser("board", help="web board: new runs, live curves, compare, evaluate, chat, policy push",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--runs-dir", default="runs", help="where run configs (NAME.yaml) and run dirs live (default runs)")
    parser.add_argument("--config", help="serve settings YAML whose api_keys protect the board off loopback")
    parser.add_argument("--db", help="policy application database URL (default: $SFTLAB_DB_URL, else sqlite:///sftlab_policy.db)")
    parser.add_argument("--policy-report", help="directory with the metrics.json of `sftlab policy evaluate`")
    add_trust_argument(parser)
    parser.set_defaults(func=handle)


def is_loopback(host: str) -> bool:
    """True for localhost and loopback IP addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_keys_for(host: str, config: str | None) -> list[str]:
    """The keys that protect the board: none on loopback; on another address the serve keys, at least one."""
    from sftlab.errors import SftlabError
    from sftlab.serve.config import load_settings

    if is_loopback(host):
        return []
    keys = load_settings(config).api_keys
    if not keys:
        raise SftlabError(f"--host {host}: the board is reachable from other machines there; set API keys "
                          "(--config serve.yaml with api_keys, or SFTLAB_API_KEYS) or listen on 127.0.0.1")
    return keys


def check_policy_report(report: str | None) -> None:
    """--policy-report must hold the metrics.json of `sftlab policy evaluate` / `baselines` (not a typo'd path)."""
    from pathlib import Path

    from sftlab.errors import SftlabError

    if report and not (Path(report).expanduser() / "metrics.json").is_file():
        raise SftlabError(f"--policy-report {report}: no metrics.json there; give the report directory of "
                          "`sftlab policy evaluate` or `sftlab policy baselines`")


def handle(args) -> int:
    import uvicorn

    from sftlab.board.app import BoardSettings, create_app
    from sftlab.errors import SftlabError
    from sftlab.serve.server import listening_socket, socket_url

    if not 0 <= args.port <= 65535:
        raise SftlabError(f"--port {args.port}: expected a port number from 0 to 65535")
    check_policy_report(args.policy_report)
    keys = api_keys_for(args.host, args.config)
    local_names = ["127.0.0.1", "localhost", "::1", "[::1]"]  # Host header names, port not included
    app = create_app(BoardSettings(runs_dir=args.runs_dir, api_keys=keys, policy_db=args.db,
                                   policy_report=args.policy_report, trust_remote_code=args.trust_remote_code,
                                   allowed_hosts=local_names if is_loopback(args.host) else None))
    sock = listening_socket(args.host, args.port, "--port")  # bound first: a port in use is one line, before the banner
    try:
        auth = f"{len(keys)} API key(s)" if keys else "no API keys (loopback only)"
        print(f"sftlab board on {socket_url(args.host, sock)} (runs in {args.runs_dir}; {auth})", flush=True)
        config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", lifespan="on")
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return 0
