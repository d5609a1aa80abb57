"""`sftlab serve` under load and at its limits: 64 concurrent clients, 429 + Retry-After, timeouts,
graceful shutdown, and several adapters on one base chosen by the model field."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from sftlab.infer.engine import generate_all
from sftlab.infer.loading import load_served
from sftlab.infer.prompts import render_chat, stop_token_ids
from sftlab.infer.sampling import SamplingParams
from sftlab.models.tiny import save_tiny, save_tiny_adapter
from sftlab.serve.config import ServeSettings
from sftlab.serve.server import ServerThread

pytestmark = pytest.mark.timeout(180)
PROMPTS = ["hello", "What is the capital of France?", "tax relief", "Fine-tuning adapts a pretrained language model"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    return load_served(save_tiny("qwen2", tmp_path_factory.mktemp("load") / "tiny"))


def _expected(served, max_tokens, adapter=None):
    stops = stop_token_ids(served.tokenizer, served.model)
    ids = [render_chat(served.tokenizer, [{"role": "user", "content": p}]) for p in PROMPTS]
    return [generate_all(served, [i], SamplingParams(max_new_tokens=max_tokens), stops, max_batch=1, adapter=adapter)[0]["text"]
            for i in ids]


def _body(prompt, max_tokens, model="tiny"):
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0}


async def _clients(url, clients, per_client, max_tokens):
    """`clients` concurrent clients, each sending `per_client` requests one after another; returns (prompt, response)."""
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        async def one_client(c):
            out = []
            for r in range(per_client):
                prompt = PROMPTS[(c + r) % len(PROMPTS)]
                out.append((prompt, await http.post("/v1/chat/completions", json=_body(prompt, max_tokens))))
            return out
        results = await asyncio.wait_for(asyncio.gather(*(one_client(c) for c in range(clients))), timeout=150)
    return [pair for client in results for pair in client]


def test_64_concurrent_clients_all_answered_or_429_and_greedy_exact(served):
    expected = dict(zip(PROMPTS, _expected(served, 6)))
    settings = ServeSettings(port=0, max_batch=16, max_queue=24, retry_after_s=2)
    with ServerThread(served, settings) as url:
        results = asyncio.run(_clients(url, clients=64, per_client=2, max_tokens=6))
    statuses = [response.status_code for _, response in results]
    assert len(results) == 128 and set(statuses) <= {200, 429}
    assert statuses.count(200) >= 24 and statuses.count(429) >= 1  # the queue bound is enforced
    for prompt, response in results:
        if response.status_code == 429:
            assert response.headers["retry-after"] == "2" and response.json()["error"]["code"] == "rate_limit_exceeded"
        else:
            assert response.json()["choices"][0]["message"]["content"] == expected[prompt]


def test_request_timeout_is_504(served):
    with ServerThread(served, ServeSettings(port=0, request_timeout_s=0.3)) as url:
        started = time.monotonic()
        response = httpx.post(f"{url}/v1/chat/completions", json=_body("hello", 2000), timeout=60)
    assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"
    assert time.monotonic() - started < 20


def test_graceful_shutdown_finishes_requests_in_flight(served):
    expected = _expected(served, 150)[0]
    thread = ServerThread(served, ServeSettings(port=0, shutdown_timeout_s=60))
    url = thread.start()
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(
        response=httpx.post(f"{url}/v1/chat/completions", json=_body(PROMPTS[0], 150), timeout=60)))
    worker.start()
    deadline = time.monotonic() + 30
    while not thread.engine.scheduler.running and time.monotonic() < deadline:
        time.sleep(0.005)
    thread.stop()
    worker.join(60)
    response = outcome["response"]
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == expected
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=5)


def test_several_adapters_on_one_base_chosen_by_model_field(tmp_path):
    base_dir = save_tiny("qwen2", tmp_path / "base")
    adapters = {"legal": save_tiny_adapter(base_dir, tmp_path / "legal", 1), "tax": save_tiny_adapter(base_dir, tmp_path / "tax", 2)}
    served = load_served(base_dir, adapters=adapters)
    expected = {name: _expected(served, 6, adapter)[:2] for name, adapter in served.adapters.items()}
    assert len({tuple(v) for v in expected.values()}) == 3
    with ServerThread(served, ServeSettings(port=0, max_batch=4)) as url:
        listed = httpx.get(f"{url}/v1/models").json()["data"]
        assert [m["id"] for m in listed] == ["base", "legal", "tax"]

        async def run_all():
            names_and_jobs = []
            async with httpx.AsyncClient(base_url=url, timeout=60) as http:
                pending = {(name, i): asyncio.ensure_future(http.post("/v1/chat/completions",
                                                                      json=_body(PROMPTS[i], 6, model=name)))
                           for name in ("tax", "base", "legal") for i in range(2)}
                for key, job in pending.items():
                    names_and_jobs.append((*key, await job))
            return names_and_jobs

        for name, i, response in asyncio.run(run_all()):
            assert response.json()["choices"][0]["message"]["content"] == expected[name][i], (name, i)


@pytest.mark.slow  # starts `sftlab serve` as a process: ~15 s of imports and model loading on a busy box
def test_cli_server_finishes_stream_in_flight_on_sigterm(tmp_path):
    import json
    import signal
    import socket
    import subprocess
    import sys

    model_dir = save_tiny("qwen2", tmp_path / "tiny")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "sftlab", "serve", str(model_dir), "--port", str(port),
                                "--access-log", str(tmp_path / "access.jsonl")],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert "serving tiny on" in process.stdout.readline()
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                httpx.get(f"{url}/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        body = {**_body("hello", 120), "stream": True}
        pieces = []
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
            for line in response.iter_lines():
                if line.startswith("data: ") and not pieces:
                    process.send_signal(signal.SIGTERM)
                pieces.append(line)
        assert pieces[-2:] == ["data: [DONE]", ""] or pieces[-1] == "data: [DONE]"
        chunks = [json.loads(p[6:]) for p in pieces if p.startswith("data: {")]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert process.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after its graceful shutdown
        record = json.loads((tmp_path / "access.jsonl").read_text().splitlines()[-1])
        assert record["completion_tokens"] == 120 and record["status"] == 200
    finally:
        if process.poll() is None:
            process.kill()


def test_cli_port_in_use_fails_in_one_line_before_loading_and_port_0_prints_the_real_port(tmp_path, capsys,
                                                                                          monkeypatch):
    """A busy port was uvicorn's 'ERROR: [Errno 98] ...' with exit code 3 after the model had loaded; with --port 0
    the command printed 'on http://127.0.0.1:0'."""
    import socket

    from sftlab.cli import main
    from sftlab.infer import loading
    from sftlab.serve import server

    monkeypatch.delenv("SFTLAB_API_KEYS", raising=False)
    monkeypatch.setattr(loading, "load_served", lambda *a, **k: pytest.fail("the model was loaded"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", str(tmp_path), "--port", str(port)]) == 2
    assert capsys.readouterr().err == (f"error: cannot listen on 127.0.0.1:{port} (Address already in use); choose "
                                       "another port (--port, or port in --config) or host\n")
    served_on = []

    class Server:
        def run(self, sockets):
            served_on.append(sockets[0].getsockname()[1])

    monkeypatch.setattr(loading, "load_served", lambda *a, **k: type("Served", (), {"names": ["tiny"]})())
    monkeypatch.setattr(server, "build_server", lambda served, settings: Server())
    assert main(["serve", str(tmp_path), "--port", "0"]) == 0
    assert served_on[0] > 0
    assert capsys.readouterr().out == f"serving tiny on http://127.0.0.1:{served_on[0]} with no API keys (open)\n"


def test_dtype_reaches_the_loaded_weights_and_auto_follows_the_machine(tmp_path, monkeypatch):
    """`sftlab serve --dtype` (and the settings' dtype) is the served weights' dtype; auto is bfloat16 where the
    machine runs bf16 matmuls in hardware, else float32, as train.precision: auto decides."""
    import torch

    from sftlab.cli import main
    from sftlab.infer import loading
    from sftlab.serve import server
    from sftlab.train import precision

    model_dir = save_tiny("qwen2", tmp_path / "tiny")
    for machine, expected in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        monkeypatch.setattr(precision, "machine_precision", lambda machine=machine: machine)
        assert next(load_served(model_dir, dtype="auto").model.parameters()).dtype == expected
    monkeypatch.setattr(precision, "machine_precision", lambda: pytest.fail("only auto asks the machine"))
    assert next(load_served(model_dir, dtype="bfloat16").model.parameters()).dtype == torch.bfloat16
    asked = []
    monkeypatch.setattr(loading, "load_served", lambda *a, **k: asked.append(k["dtype"]) or
                        type("Served", (), {"names": ["tiny"]})())
    monkeypatch.setattr(server, "build_server", lambda served, settings: type("S", (), {"run": lambda s, sockets: 0})())
    assert main(["serve", str(model_dir), "--port", "0", "--dtype", "auto"]) == 0
    assert main(["serve", str(model_dir), "--port", "0"]) == 0
    assert asked == ["auto", "float32"]
