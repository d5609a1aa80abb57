"""Chat requests with images for `sftlab serve`: OpenAI `image_url` parts answered by a vision-language model.

    if has_images(body.messages):
        return await answer_with_images(served, body, request_id)   # an OpenAI chat.completion dict

Images come as `{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}` parts. Only data
URLs are accepted: a server never opens files or URLs that a client names. Such requests run outside the text
engine's continuous batch, one at a time (a lock), with the served adapter active; `stream: true` is refused
for them. A model without a vision tower answers 400. Errors raise `sftlab.serve.errors.APIError`.
"""

from __future__ import annotations

import asyncio
import threading

from sftlab.errors import SftlabError
from sftlab.vision.data import IMAGE_PLACEHOLDER, open_image

_LOCK = threading.Lock()


def has_images(messages) -> bool:
    """Whether any message of a chat request has an image part."""
    return any(not isinstance(m.content, str) and any(part.type != "text" for part in m.content) for m in messages)


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


def _generate(served, body, messages: list[dict], images: list) -> dict:
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
                                                         body.temperature, body.top_p)
    reason = "length" if generated >= limit else "stop"
    for stop in body.stop_strings():
        if stop and stop in text:
            text, reason = text[: text.index(stop)], "stop"
    return {"text": text, "finish_reason": reason, "prompt_tokens": prompt_tokens, "completion_tokens": generated}


async def answer_with_images(served, body, request_id: str) -> dict:
    """The chat.completion response to a request with image parts (see module docstring)."""
    from sftlab.serve import schemas
    from sftlab.serve.errors import APIError
    from sftlab.vision.load import is_vision_model_dir

    if body.model not in served.adapters:
        raise APIError(404, f"model {body.model!r} does not exist; served: {', '.join(served.names)}",
                       param="model", code="model_not_found")
    if served.base_dir is None or not is_vision_model_dir(served.base_dir):
        raise APIError(400, f"model {body.model!r} does not take images (it has no vision tower)",
                       param="messages", code="invalid_value")
    if body.stream:
        raise APIError(400, "stream: requests with images are answered whole; set stream to false",
                       param="stream", code="invalid_value")
    messages, images = request_conversation(body.messages)
    done = await asyncio.to_thread(_generate, served, body, messages, images)
    return schemas.chat_response(request_id, body.model, done)
