"""OpenAI's HTTP API (models, chat completions, completions, SSE) over an inference front."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any, Protocol

from litestar import Request, get, post
from litestar.exceptions import HTTPException
from litestar.response import Response, Stream
from litestar.types import ExceptionHandlersMap

from common.errors import (
    InvalidArgument,
    NotFound,
    OutpostError,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from common.inference import (
    ChatRequest,
    CompletionRequest,
    EventStream,
    Finished,
    GenerationFailed,
    ModelInfo,
    TextDelta,
    Usage,
)
from common.json_body import parse_json_object
from common.openai_schema import (
    StreamOptions,
    chat_request,
    completion_request,
    stream_options,
)
from common.policy.gate import Credentials, credentials_from

_ERRORS: dict[type[OutpostError], tuple[int, str]] = {
    InvalidArgument: (400, "invalid_request_error"),
    NotFound: (404, "not_found_error"),
    ResourceExhausted: (429, "rate_limit_error"),
    Unauthenticated: (401, "authentication_error"),
    PermissionDenied: (403, "permission_error"),
    Unavailable: (503, "service_unavailable"),
}


def error_response(
    status: int, message: str, error_type: str, code: str | None = None
) -> Response[Any]:
    body = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return Response(content=body, status_code=status, media_type="application/json")


def outpost_error(_: Request[Any, Any, Any], exc: OutpostError) -> Response[Any]:
    for kind, (status, error_type) in _ERRORS.items():
        if isinstance(exc, kind):
            return error_response(status, str(exc), error_type)
    return error_response(500, str(exc), "server_error")


def http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if exc.status_code == 413:
        return error_response(
            413, "request body is too large", "invalid_request_error", "request_too_large"
        )
    error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return error_response(exc.status_code, str(exc.detail), error_type)


def generation_failed(_: Request[Any, Any, Any], exc: GenerationFailed) -> Response[Any]:
    return error_response(500, f"generation failed: {exc}", "server_error")


def _sse(payload: object) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


def _usage(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


async def _collect(stream: EventStream) -> tuple[str, Finished]:
    parts: list[str] = []
    async with aclosing(stream) as events:
        async for event in events:
            if isinstance(event, TextDelta):
                parts.append(event.text)
            else:
                return "".join(parts), event
    raise GenerationFailed("the stream ended without a finish event")


class InferenceFront(Protocol):
    """What serves the OpenAI routes: the agent's Inference, or the control plane's gateway."""

    def models(self) -> list[ModelInfo]:
        """The models a caller may name (called on a worker thread: it may block briefly)."""
        ...

    async def start_completion(
        self, request: CompletionRequest, credentials: Credentials
    ) -> EventStream: ...

    async def start_chat(self, request: ChatRequest, credentials: Credentials) -> EventStream: ...


class OpenAIRoutes:
    """Builds the OpenAI route handlers (/v1/models, /v1/chat/completions, /v1/completions)
    around one InferenceFront; errors answer in OpenAI's JSON form (`EXCEPTION_HANDLERS`)."""

    def __init__(self, inference: InferenceFront) -> None:
        self.inference = inference

    def handlers(self) -> list[Any]:
        inference = self.inference

        @get("/v1/models", sync_to_thread=True)
        def models() -> dict[str, Any]:
            return {
                "object": "list",
                "data": [
                    {
                        "id": m.alias,
                        "object": "model",
                        "created": 0,
                        "owned_by": "outpost",
                        "ready": m.ready,
                        "context_length": m.context_length,
                        "sha256": m.sha256,
                    }
                    for m in inference.models()
                ],
            }

        @post("/v1/chat/completions", status_code=200)
        async def chat_completions(request: Request[Any, Any, Any]) -> Response[Any]:
            body = parse_json_object(await request.body())
            options = stream_options(body)
            chat = chat_request(body)
            stream = await inference.start_chat(chat, _credentials(request))
            ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
            chunk = _chat_chunk_maker(ident, created, chat.model)
            first = chunk(None, None)
            first["choices"][0]["delta"] = {"role": "assistant", "content": ""}

            def whole(text: str, finished: Finished) -> dict[str, Any]:
                return {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": chat.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": finished.reason.value,
                        }
                    ],
                    "usage": _usage(finished.usage),
                }

            return await _respond(stream, options, chunk, whole, first)

        @post("/v1/completions", status_code=200)
        async def completions(request: Request[Any, Any, Any]) -> Response[Any]:
            body = parse_json_object(await request.body())
            options = stream_options(body)
            completion = completion_request(body)
            stream = await inference.start_completion(completion, _credentials(request))
            ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
            chunk = _completion_chunk_maker(ident, created, completion.model)

            def whole(text: str, finished: Finished) -> dict[str, Any]:
                return {**chunk(text, finished.reason.value), "usage": _usage(finished.usage)}

            return await _respond(stream, options, chunk, whole)

        return [models, chat_completions, completions]


ChunkMaker = Callable[[str | None, str | None], dict[str, Any]]


def _credentials(request: Request[Any, Any, Any]) -> Credentials:
    return credentials_from(request.headers.get)


async def _respond(
    stream: EventStream,
    options: StreamOptions,
    chunk: ChunkMaker,
    whole: Callable[[str, Finished], dict[str, Any]],
    first: dict[str, Any] | None = None,
) -> Response[Any]:
    """Streams the events as server-sent events, or waits for the whole text."""
    if options.stream:
        return Stream(
            _sse_events(stream, chunk, options, first),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )
    text, finished = await _collect(stream)
    return Response(whole(text, finished))


def _chat_chunk_maker(ident: str, created: int, model: str) -> ChunkMaker:
    def chunk(text: str | None, finish: str | None) -> dict[str, Any]:
        delta = {} if text is None else {"content": text}
        return {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    return chunk


def _completion_chunk_maker(ident: str, created: int, model: str) -> ChunkMaker:
    def chunk(text: str | None, finish: str | None) -> dict[str, Any]:
        return {
            "id": ident,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [
                {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            ],
        }

    return chunk


async def _sse_events(
    stream: EventStream,
    chunk: ChunkMaker,
    options: StreamOptions,
    first: dict[str, Any] | None = None,
) -> AsyncIterator[str]:
    """OpenAI's streaming format: chunks, a finish chunk, optional usage, then [DONE]."""
    if first is not None:
        yield _sse(first)
    try:
        async with aclosing(stream) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    yield _sse(chunk(event.text, None))
                    continue
                yield _sse(chunk(None, event.reason.value))
                if options.include_usage:
                    yield _sse({**chunk(None, None), "choices": [], "usage": _usage(event.usage)})
    except GenerationFailed as exc:
        # The status line is sent already: report the failure in-band, as OpenAI does.
        yield _sse(
            {
                "error": {
                    "message": f"generation failed: {exc}",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            }
        )
    yield "data: [DONE]\n\n"


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    OutpostError: outpost_error,
    HTTPException: http_error,
    GenerationFailed: generation_failed,
}
