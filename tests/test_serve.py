"""`sftlab serve` through the official openai client and raw HTTP: answers, streaming, auth, errors, access log."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from sftlab.infer.engine import generate_all
from sftlab.infer.loading import load_served
from sftlab.infer.prompts import render_chat, render_text, stop_token_ids
from sftlab.infer.sampling import SamplingParams
from sftlab.models.tiny import save_tiny
from sftlab.serve.config import load_settings

from logged_server import access_log_records, start_logged_server

KEY = "sk-test-key"
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    return load_served(save_tiny("qwen2", tmp_path_factory.mktemp("serve") / "tiny"))


@pytest.fixture(scope="module")
def server(served, tmp_path_factory):
    thread = start_logged_server(served, tmp_path_factory, api_keys=[KEY])
    yield thread
    thread.stop()


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)


def _post(server, body, key=KEY, path="/v1/chat/completions"):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{server.url}{path}", json=body, headers=headers, timeout=60)


def _reference(served, messages=None, text=None, max_tokens=8):
    ids = render_chat(served.tokenizer, messages) if messages else render_text(served.tokenizer, text)
    stops = stop_token_ids(served.tokenizer, served.model)
    return generate_all(served, [ids], SamplingParams(max_new_tokens=max_tokens), stops)[0]


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"  # no key needed


def test_chat_completion_greedy_equals_direct_generation(served, client):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "What is the capital"}]
    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0)
    expected = _reference(served, messages)
    assert reply.choices[0].message.content == expected["text"]
    assert reply.choices[0].finish_reason == expected["finish_reason"]
    assert reply.usage.completion_tokens == expected["completion_tokens"]
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_chat_streaming_chunks_add_up_to_the_answer(served, client):
    messages = [{"role": "user", "content": "hello"}]
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert text == _reference(served, messages)["text"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 8 and len({c.id for c in chunks}) == 1


def test_completions_plain_and_streamed(served, client):
    expected = _reference(served, text="The quick brown", max_tokens=6)
    plain = client.completions.create(model="tiny", prompt="The quick brown", max_tokens=6, temperature=0)
    streamed = client.completions.create(model="tiny", prompt="The quick brown", max_tokens=6, temperature=0, stream=True)
    assert plain.choices[0].text == expected["text"] == "".join(c.choices[0].text for c in streamed)


def test_stop_sequence_and_seeded_sampling(served, client):
    messages = [{"role": "user", "content": "tax"}]
    full = _reference(served, messages, max_tokens=12)["text"]
    cut = full[3:6]
    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0, stop=[cut])
    assert reply.choices[0].message.content == full[: full.index(cut)]
    assert reply.choices[0].finish_reason == "stop"
    sampled = [client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=1.0,
                                              top_p=0.9, seed=5).choices[0].message.content for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_auth_missing_or_wrong_key_is_401_in_openai_shape(server):
    for key in (None, "sk-wrong"):
        response = _post(server, {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}, key=key)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key" and "message" in response.json()["error"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-wrong", max_retries=0).models.list()


@pytest.mark.parametrize("body, param", [
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": True}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 0}, "max_completion_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": True}, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": 1}, "stream"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 5}, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, "tools"),
    ({"messages": [{"role": "user", "content": "hi"}], "logprobs": True}, "logprobs"),
    ({"messages": [{"role": "user", "content": "hi " * 1500}], "max_tokens": 2000}, "messages"),
])
def test_invalid_input_is_400_naming_the_field(server, body, param):
    response = _post(server, {"model": "tiny", **body})
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == param and error["type"] == "invalid_request_error"
    assert "Traceback" not in response.text


def test_prompt_longer_than_context_and_unknown_model(server):
    long = _post(server, {"model": "tiny", "messages": [{"role": "user", "content": "hi " * 1500}], "max_tokens": 2000})
    assert long.json()["error"]["code"] == "context_length_exceeded"
    missing = _post(server, {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]})
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"
    broken = httpx.post(f"{server.url}/v1/completions", content=b"{not json", timeout=30,
                        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert broken.status_code == 400 and "error" in broken.json()


def test_failure_inside_generation_is_500_without_details(server, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(server.engine.scheduler.batch, "_forward", broken)
    response = _post(server, {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    assert response.status_code == 500 and response.json()["error"]["type"] == "server_error"
    assert "secret" not in response.text and "Traceback" not in response.text
    monkeypatch.undo()
    assert _post(server, {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}).status_code == 200
    empty = _post(server, {"model": "tiny", "prompt": "", "max_tokens": 3}, path="/v1/completions")
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "prompt"


def test_client_disconnect_stops_generation(server):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2000, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {KEY}"}) as response:
        received = 0
        for line in response.iter_lines():
            received += line.startswith("data: ")
            if received >= 3:
                break
    deadline = time.monotonic() + 10
    while server.engine.scheduler.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not server.engine.scheduler.running
    record = _last_record(server, lambda r: r["finish_reason"] == "cancelled")
    assert record["finish_reason"] == "cancelled" and record["completion_tokens"] < 2000


def test_client_leaving_a_non_streamed_request_stops_generation(server):
    # greedy: the tiny model then runs to max_tokens (about 1 s here); sampled, it stopped after 195 tokens in 0.17 s
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2000, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=httpx.Timeout(30, read=0.3),
                   headers={"Authorization": f"Bearer {KEY}"})
    deadline = time.monotonic() + 10
    while server.engine.scheduler.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not server.engine.scheduler.running
    record = _last_record(server, lambda r: r["status"] == 499)
    assert record["status"] == 499 and record["finish_reason"] == "cancelled" and record["completion_tokens"] < 2000


def test_access_log_has_one_json_line_per_request(server, client):
    before = len(access_log_records(server, lambda records: True))
    client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3, temperature=0)
    _post(server, {"model": "tiny", "messages": []})
    records = access_log_records(server, lambda records: len(records) >= before + 2)[before:]
    assert [r["status"] for r in records] == [200, 400]
    ok = records[0]
    assert ok["id"].startswith("chatcmpl-") and ok["model"] == "tiny" and ok["prompt_tokens"] > 0
    assert ok["completion_tokens"] == 3 and ok["latency_ms"] > 0 and ok["path"] == "/v1/chat/completions"


def test_settings_from_yaml_and_environment(tmp_path, monkeypatch):
    (tmp_path / "serve.yaml").write_text("api_keys: [a]\nmax_batch: 4\n", encoding="utf-8")
    monkeypatch.setenv("SFTLAB_API_KEYS", "b, c")
    settings = load_settings(tmp_path / "serve.yaml", port=0, max_queue=None)
    assert settings.api_keys == ["a", "b", "c"] and settings.max_batch == 4 and settings.port == 0
    (tmp_path / "bad.yaml").write_text("max_bach: 4\n", encoding="utf-8")
    with pytest.raises(Exception, match="max_bach"):
        load_settings(tmp_path / "bad.yaml")


def _last_record(server, matches) -> dict:
    """The access log's last record, once it `matches` (its line is written just after the response has ended)."""
    return access_log_records(server, lambda records: bool(records) and matches(records[-1]))[-1]
