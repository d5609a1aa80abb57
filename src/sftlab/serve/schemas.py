"""Request bodies of the OpenAI-compatible endpoints (the subset sftlab implements) and response builders.

Unknown OpenAI parameters are ignored; those sftlab cannot honour (n > 1, logprobs, tool_choice "required" or a
named function, penalties, logit_bias, response_format, and for completions echo, best_of and suffix; each unless
left at its no-op value) are refused with 400 naming the parameter, so a client never silently gets something other than
it asked for. Tool fields (`tools`, `tool_calls`, `tool` messages) are checked in `sftlab.serve.tools`.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sftlab.config.types import Bool, Float, Int
from sftlab.infer.sampling import SEED_MAX, SEED_MIN


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImageUrl(BaseModel):
    url: str


class ImageUrlPart(BaseModel):
    """An OpenAI image part; answered by vision-language models only (`sftlab.vision.serve`)."""

    type: Literal["image_url"]
    image_url: ImageUrl


class ChatMessage(BaseModel):
    """One chat turn; content may be a string or a list of text (and, for VLMs, image_url) parts.

    An assistant turn may carry `tool_calls` (content then may be null); a `tool` turn is a tool result.
    """

    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[TextPart | ImageUrlPart] | None = None
    tool_calls: Any = None
    name: str | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(
            part.text for part in self.content if part.type == "text")


_NO_OP = {"presence_penalty": (0,), "frequency_penalty": (0,), "logit_bias": ({},),
          "response_format": ({"type": "text"},), "echo": (False,), "best_of": (1,), "suffix": ("",)}


def _no_op(value, name: str):
    """`value` when it asks for nothing (None, or the field's no-op value: 0, {}, false, ...), else ValueError."""
    numbers = (int, float)
    for ok in (None, *_NO_OP[name]):
        same_kind = type(value) is type(ok) or (type(value) in numbers and type(ok) in numbers)  # bool is not 0
        if same_kind and value == ok:
            return value
    raise ValueError(f"{name} is not supported; leave it out")


class StreamOptions(BaseModel):
    include_usage: Bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    model: str
    max_tokens: Int | None = None
    temperature: Float = Field(1.0, ge=0.0, le=2.0)
    top_p: Float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    stream: Bool = False
    stream_options: StreamOptions | None = None
    seed: Int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    n: Int = Field(1, ge=1, le=1, description="only one choice per request")
    logprobs: Bool | Int | None = None
    # OpenAI fields that would change the answer and that sftlab does not implement: refused unless left at their
    # no-op value, rather than silently ignored
    presence_penalty: Any = None
    frequency_penalty: Any = None
    logit_bias: Any = None
    response_format: Any = None

    @field_validator("presence_penalty", "frequency_penalty", "logit_bias", "response_format")
    @classmethod
    def _not_implemented(cls, value, info):
        return _no_op(value, info.field_name)

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value):
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value):
        if value:
            raise ValueError("logprobs are not supported")
        return value

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: Int | None = None
    tools: Any = None
    tool_choice: Any = None


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: Int | None = 16
    echo: Any = None
    best_of: Any = None
    suffix: Any = None

    @field_validator("echo", "best_of", "suffix")
    @classmethod
    def _not_implemented_here(cls, value, info):
        return _no_op(value, info.field_name)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value):
        if isinstance(value, list):
            if len(value) != 1:
                raise ValueError("exactly one prompt per request")
            return value[0]
        return value


def usage(done: dict) -> dict:
    return {"prompt_tokens": done["prompt_tokens"], "completion_tokens": done["completion_tokens"],
            "total_tokens": done["prompt_tokens"] + done["completion_tokens"]}


def chat_response(request_id: str, model: str, done: dict, message: dict | None = None,
                  finish_reason: str | None = None) -> dict:
    """A chat.completion; `message` and `finish_reason` replace the plain answer's (tool calls, sftlab.serve.tools)."""
    return {"id": request_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message or {"role": "assistant", "content": done["text"]},
                         "finish_reason": finish_reason or done["finish_reason"], "logprobs": None}],
            "usage": usage(done)}


def chat_chunk(request_id: str, model: str, delta: dict, finish_reason: str | None = None) -> dict:
    return {"id": request_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}


def completion_response(request_id: str, model: str, done: dict, text: str | None = None,
                        finish_reason: str | None = None, with_usage: bool = True) -> dict:
    body = {"id": request_id, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": done["text"] if text is None else text,
                         "finish_reason": finish_reason if text is not None else done["finish_reason"],
                         "logprobs": None}]}
    if with_usage:
        body["usage"] = usage(done)
    return body
