"""`sftlab serve` with images: OpenAI image_url parts (data URLs) answered by a tiny Qwen2-VL, through the openai client."""

from __future__ import annotations

import base64
import io

import httpx
import openai
import pytest
from PIL import Image

from sftlab.infer.loading import load_served
from sftlab.models.tiny import save_tiny
from sftlab.models.tiny_vlm import save_tiny_vlm
from sftlab.serve.config import ServeSettings
from sftlab.serve.server import ServerThread

from logged_server import access_log_records, start_logged_server

pytestmark = pytest.mark.timeout(120)


def data_url(rgb=(200, 30, 30)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (56, 48), rgb).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def huge_png_header(side: int = 30000) -> bytes:
    """A PNG that says it is side x side pixels (PIL refuses it on open as a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def image_message(url: str, text: str = "What colour is this?") -> dict:
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]}


@pytest.fixture(scope="module")
def vlm_server(tmp_path_factory):
    served = load_served(save_tiny_vlm("qwen2_vl", tmp_path_factory.mktemp("serve") / "tiny-vlm"))
    thread = start_logged_server(served, tmp_path_factory)
    yield thread
    thread.stop()


def test_image_url_parts_are_answered_by_the_vlm(vlm_server):
    client = openai.OpenAI(base_url=f"{vlm_server.url}/v1", api_key="none", max_retries=0, timeout=60)
    model = client.models.list().data[0].id
    reply = client.chat.completions.create(model=model, messages=[image_message(data_url())], max_tokens=5,
                                           temperature=0)
    assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens <= 5
    assert reply.usage.prompt_tokens > 10  # the image's tokens are part of the prompt
    again = client.chat.completions.create(model=model, messages=[image_message(data_url())], max_tokens=5,
                                           temperature=0)
    assert again.choices[0].message.content == reply.choices[0].message.content  # greedy: same answer
    chunks = list(client.chat.completions.create(model=model, messages=[image_message(data_url())], max_tokens=5,
                                                 temperature=0, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == reply.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    records = _log_records(vlm_server, [reply.id, again.id, chunks[0].id])  # what each client got, streamed or not
    assert [r["stream"] for r in records] == [False, False, True]
    for record in records:
        assert record["model"] == model and record["status"] == 200
        assert (record["prompt_tokens"], record["completion_tokens"], record["finish_reason"]) == (
            reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.choices[0].finish_reason)
    text_only = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
    assert text_only.usage.completion_tokens <= 3


@pytest.mark.parametrize("body, message", [
    ({"messages": [image_message("/etc/hostname")]}, "only data URLs"),
    ({"messages": [image_message("data:image/png;base64,AAAA")]}, "cannot read image"),
    ({"messages": [image_message("data:image/png;base64," + base64.b64encode(huge_png_header()).decode())]},
     "cannot read image"),  # a decompression bomb is a 400, not a 500
    ({"messages": [image_message(data_url())], "stream": True, "stop": "x"}, "stop: not supported together with stream"),
    ({"messages": [image_message(data_url())], "tools": [{"type": "function", "function": {"name": "get_weather"}}]},
     "tools: tools, tool_calls and tool messages are not supported in a request with images (messages.0.content.0"),
])
def test_bad_image_requests_are_400(vlm_server, body, message):
    response = httpx.post(f"{vlm_server.url}/v1/chat/completions", json={"model": "tiny-vlm", **body}, timeout=60)
    assert response.status_code == 400 and message in response.json()["error"]["message"]


def test_a_text_model_refuses_images(tmp_path):
    thread = ServerThread(load_served(save_tiny("qwen2", tmp_path / "tiny")), ServeSettings(port=0))
    thread.start()
    try:
        response = httpx.post(f"{thread.url}/v1/chat/completions", timeout=60,
                              json={"model": "tiny", "messages": [image_message(data_url())]})
    finally:
        thread.stop()
    assert response.status_code == 400 and "does not take images" in response.json()["error"]["message"]


def _log_records(server, ids: list[str]) -> list[dict]:
    """The access log's records of these request ids, in order, once written (after each response has ended)."""
    records = {record["id"]: record
               for record in access_log_records(server, lambda found: set(ids) <= {r["id"] for r in found})}
    return [records.get(i, {"id": i, "missing": True}) for i in ids]
