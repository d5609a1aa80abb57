"""`sftlab serve MODEL`: an OpenAI-compatible HTTP API over a trained model (see docs/serve.md).

Endpoints: GET /health, GET /v1/models, POST /v1/chat/completions, POST /v1/completions (streaming
with server-sent events). Concurrent requests share decode steps (continuous batching). API keys come
from --config's `api_keys` and SFTLAB_API_KEYS (comma-separated); with none, the server is open.
"""

from __future__ import annotations

import argparse

from sftlab.errors import SftlabError


def register(registry) -> None:
    parser = registry.top.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="MODEL", help="model dir, PEFT adapter dir, or run dir (with model/ inside)")
    parser.add_argument("--adapter", action="append", default=[], metavar="[NAME=]DIR",
                        help="extra PEFT adapter on the same base, served as model NAME (default: its dir name); repeatable")
    parser.add_argument("--config", help="serve settings YAML (host, port, api_keys, max_batch, max_queue, ...)")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--model-name", help="served name of MODEL (default: its directory name)")
    parser.add_argument("--template", help="chat template (default: the run's data.template, else auto)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16", "auto"],
                        help="weights dtype (default float32); auto: bfloat16 where the machine has bf16 matmuls in "
                             "hardware (AMX, AVX-512 BF16, a GPU), else float32")
    parser.add_argument("--max-batch", type=int, help="rows decoded together (default 16)")
    parser.add_argument("--max-queue", type=int, help="waiting requests before answering 429 (default 64)")
    parser.add_argument("--timeout", type=float, dest="request_timeout_s", help="per-request timeout in seconds (default 120)")
    parser.add_argument("--access-log", help="append the JSON access log to this file (default: stderr)")
    from sftlab.commands.generate import add_trust_argument

    add_trust_argument(parser)
    parser.set_defaults(func=run_serve)


def parse_adapters(items: list[str]) -> dict[str, str]:
    """`name=dir` or `dir` (named after the directory, or its parent for a run's model/ dir)."""
    from pathlib import Path

    adapters: dict[str, str] = {}
    for item in items:
        name, sep, directory = item.partition("=")
        if not sep:
            path = Path(item.rstrip("/"))
            name, directory = (path.parent.name if path.name == "model" else path.name), item
        if not name or not directory:
            raise SftlabError(f"--adapter {item!r}: expected NAME=DIR or DIR")
        if name in adapters:
            raise SftlabError(f"--adapter {item!r}: the name {name!r} is given twice")
        adapters[name] = directory
    return adapters


def run_serve(args) -> int:
    from sftlab.infer.loading import load_served
    from sftlab.serve.config import load_settings
    from sftlab.serve.server import build_server, listening_socket, socket_url

    settings = load_settings(args.config, host=args.host, port=args.port, model_name=args.model_name, template=args.template,
                             dtype=args.dtype,
                             max_batch=args.max_batch, max_queue=args.max_queue,
                             request_timeout_s=args.request_timeout_s, access_log=args.access_log,
                             adapters=parse_adapters(args.adapter) or None)
    sock = listening_socket(settings.host, settings.port)
    try:
        served = load_served(args.model, adapters=settings.adapters, dtype=settings.dtype, name=settings.model_name,
                             trust_remote_code=args.trust_remote_code)
        auth = f"{len(settings.api_keys)} API key(s)" if settings.api_keys else "no API keys (open)"
        print(f"serving {', '.join(served.names)} on {socket_url(settings.host, sock)} with {auth}", flush=True)
        build_server(served, settings).run(sockets=[sock])
    finally:
        sock.close()
    return 0
