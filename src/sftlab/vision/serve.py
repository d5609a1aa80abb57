"""Chat requests with images for `sftlab serve`: OpenAI `image_url` parts answered by a vision-language model.

    if has_images(body.messages):
        return await answer_with_images(served, body, request_id, access)   # a chat.completion; access: log record

Images come as `{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}` parts. Only data
URLs are accepted: a server never opens files or URLs that a client names. Such requests run outside the text
engine's continuous batch, one at a time (a lock), with the served adapter active. With `stream: true` the text
comes as OpenAI chunks while it is generated (transformers' TextIteratorStreamer); `stop` strings are then refused.
A model without a vision tower answers 400. Errors raise `sftlab.serve.errors.APIError`.
"""

from __future__ import annotations

import asyncio
import json
import threading

from sftlab.errors import SftlabError
from sftlab.vision.data import IMAGE_PLACEHOLDER, open_image

_LOCK = threading.Lock()


def has_images(messages) -> bool:
    """Whether any message of a chat request has an image part."""
    return any(isinstance(m.content, list) and any(part.type != "text" for part in m.content) for m in messages)


def request_conversation(messages) -> tuple[list[dict], list]:
    """(messages with `<image>` placeholders, PIL images in order) from the request's messages."""
    from sftlab.serve.errors import APIError

    converted, images = [], []
    for i, message in enumerate(messages):
        if isinstance(message.content, str):
            converted.append({"role": message.role, "content": message.content})
            continue
        pieces = []
        for j, part in enumerate(message.content):
            if part.type == "text":
                pieces.append(part.text)
                continue
            if message.role == "assistant":
                raise APIError(400, f"messages[{i}]: images may only be in system or user messages",
                               param=f"messages[{i}].content", code="invalid_value")
            url = part.image_url.url
            if not url.startswith("data:"):
                raise APIError(400, f"messages[{i}].content[{j}]: only data URLs (data:image/...;base64,...) are "
                               "accepted; the server does not fetch URLs or open files", param="messages",
                               code="invalid_value")
            try:
                images.append(open_image(url, f"messages[{i}].content[{j}]"))
            except SftlabError as exc:
                raise APIError(400, str(exc), param="messages", code="invalid_value") from None
            pieces.append(IMAGE_PLACEHOLDER)
        converted.append({"role": message.role, "content": "".join(pieces)})
    return converted, images


def _generate(served, body, messages: list[dict], images: list, streamer=None) -> dict:
    import torch

    from sftlab.config.schema import ModelConfig
    from sftlab.vision.evaluate import generate_answer
    from sftlab.vision.load import load_processor

    processor = load_processor(ModelConfig(path=str(served.base_dir)))
    limit = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    limit = limit or 256
    sample = body.temperature > 0
    with _LOCK, served.activate(served.adapters[body.model]):
        if body.seed is not None:
            torch.manual_seed(body.seed)
        text, prompt_tokens, generated = generate_answer(served.model, processor, messages, images, limit, sample,
                                                         body.temperature, body.top_p, streamer)
    reason = "length" if generated >= limit else "stop"
    for stop in body.stop_strings():
        if stop and stop in text:
            text, reason = text[: text.index(stop)], "stop"
    return {"text": text, "finish_reason": reason, "prompt_tokens": prompt_tokens, "completion_tokens": generated}


async def answer_with_images(served, body, request_id: str, access: dict | None = None):
    """The chat.completion response (or, with `stream`, its server-sent events) to a request with image parts;
    token counts and the finish_reason sent go into `access` (the access log's record) once known."""
    from fastapi.responses import StreamingResponse

    from sftlab.serve import schemas
    from sftlab.serve.errors import APIError
    from sftlab.vision.load import is_vision_model_dir

    if body.model not in served.adapters:
        raise APIError(404, f"model {body.model!r} does not exist; served: {', '.join(served.names)}",
                       param="model", code="model_not_found")
    if served.base_dir is None or not is_vision_model_dir(served.base_dir):
        raise APIError(400, f"model {body.model!r} does not take images (it has no vision tower)",
                       param="messages", code="invalid_value")
    if body.stream and body.stop_strings():
        raise APIError(400, "stop: not supported together with stream for requests with images",
                       param="stop", code="invalid_value")
    messages, images = request_conversation(body.messages)
    if body.stream:
        return StreamingResponse(_stream(served, body, messages, images, request_id, access),
                                 media_type="text/event-stream", headers={"x-request-id": request_id})
    done = await asyncio.to_thread(_generate, served, body, messages, images)
    _record(access, done)
    return schemas.chat_response(request_id, body.model, done)


def _record(access: dict | None, done: dict) -> None:
    if access is not None:
        access.update(prompt_tokens=done["prompt_tokens"], completion_tokens=done["completion_tokens"],
                      finish_reason=done["finish_reason"])


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def _stream(served, body, messages: list[dict], images: list, request_id: str, access: dict | None):
    """OpenAI chunks: the role, each piece of text as transformers' TextIteratorStreamer decodes it, the finish."""
    from transformers import TextIteratorStreamer

    from sftlab.config.schema import ModelConfig
    from sftlab.serve import schemas
    from sftlab.vision.load import load_processor

    tokenizer = load_processor(ModelConfig(path=str(served.base_dir))).tokenizer
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
    def generate():
        try:
            return _generate(served, body, messages, images, streamer)
        finally:
            streamer.end()  # ends the reader below even when generation failed before streaming anything

    task = asyncio.ensure_future(asyncio.to_thread(generate))
    yield _sse(schemas.chat_chunk(request_id, body.model, {"role": "assistant", "content": ""}))
    pieces = iter(streamer)
    while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
        if piece:
            yield _sse(schemas.chat_chunk(request_id, body.model, {"content": piece}))
    try:
        done = await task
    except Exception as exc:  # the generation failed after the response started: tell the client in-stream
        yield _sse({"error": {"message": f"generation failed: {type(exc).__name__}", "type": "server_error",
                              "param": None, "code": None}})
        yield "data: [DONE]\n\n"
        return
    _record(access, done)
    last = schemas.chat_chunk(request_id, body.model, {}, done["finish_reason"])
    yield _sse(last)
    if body.stream_options and body.stream_options.include_usage:
        yield _sse({"id": request_id, "object": last["object"], "created": last["created"], "model": body.model,
                    "choices": [], "usage": schemas.usage(done)})
    yield "data: [DONE]\n\n"
