"""The FastAPI app: /health, /v1/models, /v1/chat/completions and /v1/completions over an `Engine`.

Handlers validate and render the prompt with the training template (with `tools`, see sftlab.serve.tools),
then hand a `Request` to the engine thread; its events come back through an asyncio queue. A full queue
answers 429 with Retry-After, a request past `request_timeout_s` 504, and a client that disconnects has
its row cancelled at the next decode step. Requests are batched per model: adapters never share a batch.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.responses import StreamingResponse

from sftlab.data.messages import has_tool_data
from sftlab.errors import SftlabError
from sftlab.infer.engine import Engine, QueueFull
from sftlab.infer.engine import Request as GenRequest
from sftlab.infer.prompts import render_chat, render_text, stop_token_ids
from sftlab.infer.sampling import SamplingParams
from sftlab.serve import schemas
from sftlab.serve.accesslog import AccessLogMiddleware, make_access_logger
from sftlab.serve.config import ServeSettings
from sftlab.serve.errors import APIError, install_error_handlers
from sftlab.serve.tools import (answer_message, refuse_tools_with_images, render_tool_prompt, request_messages,
                                request_tools, stream_deltas)


def create_app(served, settings: ServeSettings) -> FastAPI:
    """An app serving `served` (a `sftlab.infer.loading.ServedModel`); the engine runs while the app lives."""
    template = settings.template or served.template
    engine = Engine(served, stop_token_ids(served.tokenizer, served.model, template), max_batch=settings.max_batch,
                    max_queue=settings.max_queue, batch_window_s=settings.batch_window_ms / 1000)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        yield
        await asyncio.to_thread(engine.stop, settings.shutdown_timeout_s)

    app = FastAPI(title="sftlab", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    install_error_handlers(app)
    app.add_middleware(AccessLogMiddleware, logger=make_access_logger(settings.access_log))
    generation = _Generation(served, settings, engine, template)
    auth = Depends(_key_checker(settings.api_keys))

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": served.default_name}

    @app.get("/v1/models", dependencies=[auth])
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "sftlab"}
                                           for name in served.names]}

    @app.post("/v1/chat/completions", dependencies=[auth])
    async def chat_completions(body: schemas.ChatCompletionRequest, request: Request):
        from sftlab.vision.serve import answer_with_images, has_images

        messages = request_messages(body.messages)
        tool_list, parse = request_tools(body)
        if has_images(body.messages):  # image_url parts: a vision-language model answers them (sftlab.vision.serve)
            refuse_tools_with_images(body.messages, messages, tool_list)
            request_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
            request.state.access = access = {"id": request_id, "model": body.model, "stream": body.stream}
            return await answer_with_images(served, body, request_id, access)
        if has_tool_data(messages, tool_list):
            prompt = render_tool_prompt(served.tokenizer, messages, tool_list, template)
        else:
            try:
                prompt = render_chat(served.tokenizer, messages, template, src="messages")
            except SftlabError as exc:
                raise APIError(400, str(exc), param="messages", code="invalid_value") from None
        limit = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        return await generation.respond(request, body, prompt, limit, chat=True, tools=tool_list if parse else None)

    @app.post("/v1/completions", dependencies=[auth])
    async def completions(body: schemas.CompletionRequest, request: Request):
        prompt = render_text(served.tokenizer, body.prompt)
        return await generation.respond(request, body, prompt, body.max_tokens, chat=False)

    return app


def _key_checker(keys: list[str]):
    """A dependency that demands `Authorization: Bearer <key>` with one of `keys` (no keys: open server)."""
    encoded = [key.encode() for key in keys]

    async def check(request: Request) -> None:
        if not encoded:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise APIError(401, "missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")
        if not any(hmac.compare_digest(given.strip().encode(), key) for key in encoded):
            raise APIError(401, "incorrect API key provided", code="invalid_api_key")

    return check


class _Generation:
    """Turns a validated request into an engine request and its events into an HTTP response."""

    def __init__(self, served, settings: ServeSettings, engine: Engine, template: str):
        self.served, self.settings, self.engine, self.template = served, settings, engine, template

    async def respond(self, request: Request, body, prompt: list[int], max_tokens: int | None, chat: bool,
                      tools: list[dict] | None = None):
        """The response to a request; with `tools` the answer is parsed for tool calls (sftlab.serve.tools)."""
        request_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        access = {"id": request_id, "model": body.model, "stream": body.stream, "prompt_tokens": len(prompt)}
        request.state.access = access
        if body.model not in self.served.adapters:
            raise APIError(404, f"model {body.model!r} does not exist; served: {', '.join(self.served.names)}",
                           param="model", code="model_not_found")
        if not prompt:
            raise APIError(400, "prompt: the prompt is empty", param="prompt", code="invalid_value")
        params = self._params(body, prompt, max_tokens)
        events: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        job = GenRequest(prompt, params, _emitter(loop, events), adapter=self.served.adapters[body.model],
                         deadline=time.monotonic() + self.settings.request_timeout_s, stream=body.stream)
        try:
            self.engine.submit(job)
        except QueueFull as exc:
            raise APIError(429, f"server busy: {exc}; retry later", code="rate_limit_exceeded",
                           headers={"Retry-After": str(self.settings.retry_after_s)}) from None
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            chunks = self._stream(job, events, request_id, body.model, chat, include_usage, access, tools)
            return StreamingResponse(chunks, media_type="text/event-stream", headers={"x-request-id": request_id})
        done = await self._wait(request, job, events)
        access.update(completion_tokens=done["completion_tokens"], finish_reason=done["finish_reason"])
        if chat:
            message, finish_reason = answer_message(done["text"], done["finish_reason"], tools)
            access["finish_reason"] = finish_reason  # what the client gets: tool_calls when calls were parsed
            return schemas.chat_response(request_id, body.model, done, message, finish_reason)
        return schemas.completion_response(request_id, body.model, done)

    def _params(self, body, prompt: list[int], max_tokens: int | None) -> SamplingParams:
        context = self.served.max_context
        limit = self.settings.max_tokens_limit
        name = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) is not None else "max_tokens"
        if max_tokens is not None and not 1 <= max_tokens <= limit:
            raise APIError(400, f"{name}: must be between 1 and {limit}, got {max_tokens}", param=name,
                           code="invalid_value")
        room = context - len(prompt)
        where = "messages" if isinstance(body, schemas.ChatCompletionRequest) else "prompt"
        if room < 1:
            raise APIError(400, f"{where}: the prompt has {len(prompt)} tokens, which leaves no room for an answer in "
                           f"the model's context of {context} tokens", param=where, code="context_length_exceeded")
        if max_tokens is None:
            max_tokens = min(self.settings.default_max_tokens, room)
        if len(prompt) + max_tokens > context:
            raise APIError(400, f"{where}: the prompt has {len(prompt)} tokens and {name} is {max_tokens}, "
                           f"more than the model's context of {context} tokens", param=where,
                           code="context_length_exceeded")
        return SamplingParams(max_new_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                              seed=body.seed, stop=body.stop_strings())

    async def _wait(self, request: Request, job: GenRequest, events: asyncio.Queue) -> dict:
        """The request's final event; cancels the row if the client leaves or the engine never answers."""
        give_up = time.monotonic() + self.settings.request_timeout_s + 30
        while True:
            try:
                event = await asyncio.wait_for(events.get(), timeout=0.5)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    self.engine.cancel(job)
                    request.state.access.update(finish_reason="cancelled",
                                                completion_tokens=len(job.row.generated) if job.row else 0)
                    raise APIError(499, "client closed the request") from None
                if time.monotonic() > give_up:
                    self.engine.cancel(job)
                    raise APIError(504, "request timed out", code="timeout") from None
                continue
            if event["type"] == "done":
                request.state.access["finish_reason"] = event["finish_reason"]  # timeout: logged beside the 504
                return _checked(event, self.settings.request_timeout_s)
            if event["type"] == "error":
                raise APIError(500, event["message"])

    async def _stream(self, job: GenRequest, events: asyncio.Queue, request_id: str, model: str, chat: bool,
                      include_usage: bool, access: dict, tools: list[dict] | None = None):
        """Server-sent events in the OpenAI chunk format, ending with `data: [DONE]`.

        With `tools` the answer is held back and sent at the end: content, then all tool calls in one delta.
        """
        try:
            if chat:
                yield _sse(schemas.chat_chunk(request_id, model, {"role": "assistant", "content": ""}))
            while True:
                event = await events.get()
                if event["type"] == "delta" and tools:  # held back: the done event carries the whole text
                    continue
                if event["type"] == "delta":
                    piece = (schemas.chat_chunk(request_id, model, {"content": event["text"]}) if chat else
                             schemas.completion_response(request_id, model, {}, text=event["text"], with_usage=False))
                    yield _sse(piece)
                    continue
                if event["type"] == "error" or event["finish_reason"] not in ("stop", "length"):
                    message = event.get("message") or f"request ended: {event['finish_reason']}"
                    access["finish_reason"] = event.get("finish_reason", "error")
                    yield _sse({"error": {"message": message, "type": "server_error", "param": None, "code": None}})
                    break
                access.update(completion_tokens=event["completion_tokens"], finish_reason=event["finish_reason"])
                finish_reason = event["finish_reason"]
                if tools:
                    deltas, finish_reason = stream_deltas(event["text"], finish_reason, tools)
                    access["finish_reason"] = finish_reason  # as sent in the finish chunk
                    for delta in deltas:
                        yield _sse(schemas.chat_chunk(request_id, model, delta))
                last = (schemas.chat_chunk(request_id, model, {}, finish_reason) if chat else
                        schemas.completion_response(request_id, model, event, text="",
                                                    finish_reason=event["finish_reason"], with_usage=False))
                yield _sse(last)
                if include_usage:
                    yield _sse({"id": request_id, "object": last["object"], "created": last["created"], "model": model,
                                "choices": [], "usage": schemas.usage(event)})
                break
            yield "data: [DONE]\n\n"
        finally:
            if not job.finished:
                self.engine.cancel(job)
                access.setdefault("finish_reason", "cancelled")
                access.setdefault("completion_tokens", len(job.row.generated) if job.row else 0)


def _emitter(loop: asyncio.AbstractEventLoop, events: asyncio.Queue):
    """A thread-safe callback that hands engine events to the request's event loop (dropped once it is closed)."""
    def emit(event: dict) -> None:
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:  # the loop has shut down; nobody is listening any more
            pass
    return emit


def _checked(done: dict, timeout_s: float) -> dict:
    if done["finish_reason"] == "timeout":
        raise APIError(504, f"request timed out after {timeout_s:g} s", code="timeout")
    if done["finish_reason"] not in ("stop", "length"):
        raise APIError(500, f"request ended: {done['finish_reason']}")
    return done


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
