"""An OpenAI-compatible server on loopback that records each request and answers as told."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from common.embedded_http import bind_listener, embedded_server
from tests.server_thread import ServerThread

Scope = dict[str, Any]
Receive = Any
Send = Any

MAX_RECORDED_BODY = 8 * 1024 * 1024
ANSWER_TEXT = "recorded and answered"


class Behaviour(StrEnum):
    ANSWER = "answer"  # a complete answer with usage
    ANSWER_WITHOUT_USAGE = "answer_without_usage"
    STREAM = "stream"  # SSE chunks, a usage chunk, [DONE]
    STREAM_WITHOUT_USAGE = "stream_without_usage"
    FAIL_500 = "fail_500"
    RATE_LIMITED_429 = "rate_limited_429"
    PAYMENT_402 = "payment_402"
    BAD_REQUEST_400 = "bad_request_400"
    HANG = "hang"  # never answers (until the server stops)
    HANG_AFTER_FIRST_CHUNK = "hang_after_first_chunk"
    MALFORMED_JSON = "malformed_json"
    MALFORMED_SSE = "malformed_sse"  # an event whose data is not JSON
    STREAM_WITHOUT_DONE = "stream_without_done"
    HUGE = "huge"  # an answer of HUGE_BYTES
    REDIRECT = "redirect"


HUGE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    client_port: int = 0  # the caller's TCP port: the same one for requests on one connection

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class RecordingState:
    behaviour: Behaviour = Behaviour.ANSWER
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class RecordingApp:
    """The ASGI app: POST /v1/chat/completions and /v1/completions, GET /v1/models."""

    def __init__(self, state: RecordingState, released: asyncio.Event) -> None:
        self._state = state
        self._released = released

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")[: MAX_RECORDED_BODY - len(body)]
            if not message.get("more_body"):
                break
        path = scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if path == "/v1/models":
            await _json(
                send,
                200,
                {
                    "object": "list",
                    "data": [
                        {"id": "recorded", "object": "model", "created": 0, "owned_by": "test"}
                    ],
                },
            )
            return
        with self._state.lock:
            client = scope.get("client") or ("", 0)
            self._state.received.append(Received(path, headers, bytes(body), int(client[1])))
            behaviour = self._state.behaviour
        request = json.loads(body or b"{}")
        await self._answer(behaviour, path, request, send)

    async def _answer(self, behaviour: Behaviour, path: str, request: Any, send: Send) -> None:
        chat = path.endswith("/chat/completions")
        model = request.get("model", "")
        if behaviour in (Behaviour.ANSWER, Behaviour.ANSWER_WITHOUT_USAGE):
            answer = _completion(chat, model)
            if behaviour is Behaviour.ANSWER_WITHOUT_USAGE:
                del answer["usage"]
            await _json(send, 200, answer)
        elif behaviour is Behaviour.FAIL_500:
            await _json(send, 500, {"error": {"type": "server_error", "message": "boom"}})
        elif behaviour is Behaviour.RATE_LIMITED_429:
            await _json(
                send,
                429,
                {
                    "error": {
                        "type": "rate_limit",
                        "code": "rate_limit_exceeded",
                        "message": "slow down",
                    }
                },
            )
        elif behaviour is Behaviour.PAYMENT_402:
            await _json(send, 402, {"error": {"type": "insufficient_quota"}})
        elif behaviour is Behaviour.BAD_REQUEST_400:
            await _json(
                send,
                400,
                {
                    "error": {
                        "type": "invalid_request_error",
                        "message": "echo: " + json.dumps(request),
                    }
                },
            )
        elif behaviour is Behaviour.HANG:
            await self._released.wait()
        elif behaviour is Behaviour.MALFORMED_JSON:
            await _raw(send, 200, "application/json", b'{"choices": [')
        elif behaviour is Behaviour.HUGE:
            await _raw(send, 200, "application/json", b'{"pad": "' + b"x" * HUGE_BYTES + b'"}')
        elif behaviour is Behaviour.REDIRECT:
            await send(
                {
                    "type": "http.response.start",
                    "status": 307,
                    "headers": [(b"location", b"http://127.0.0.1:9/")],
                }
            )
            await send({"type": "http.response.body", "body": b""})
        else:
            await self._stream(behaviour, chat, model, send)

    async def _stream(self, behaviour: Behaviour, chat: bool, model: str, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )

        async def event(data: str) -> None:
            await send(
                {
                    "type": "http.response.body",
                    "body": f"data: {data}\n\n".encode(),
                    "more_body": True,
                }
            )

        words = ANSWER_TEXT.split(" ")
        for index, word in enumerate(words):
            piece = word if index == 0 else " " + word
            delta = {"delta": {"content": piece}} if chat else {"text": piece}
            chunk = {
                "id": "c1",
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": 0,
                "model": model,
                "choices": [{"index": 0, "finish_reason": None, **delta}],
            }
            await event(json.dumps(chunk))
            if behaviour is Behaviour.HANG_AFTER_FIRST_CHUNK:
                await self._released.wait()
            if behaviour is Behaviour.MALFORMED_SSE:
                await event("{not json")
        if behaviour is Behaviour.STREAM:
            usage: dict[str, Any] = {
                "id": "c1",
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": 0,
                "model": model,
                "choices": [],
                "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
            }
            await event(json.dumps(usage))
        if behaviour is not Behaviour.STREAM_WITHOUT_DONE:
            await event("[DONE]")
        await send({"type": "http.response.body", "body": b""})


def _completion(chat: bool, model: str) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": ANSWER_TEXT}
    else:
        choice["text"] = ANSWER_TEXT
    return {
        "id": "r1",
        "object": "chat.completion" if chat else "text_completion",
        "created": 0,
        "model": model,
        "choices": [choice],
        "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
    }


async def _json(send: Send, status: int, body: Any) -> None:
    await _raw(send, status, "application/json", json.dumps(body).encode())


async def _raw(send: Send, status: int, content_type: str, body: bytes) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RecordingServer:
    """Runs the app under uvicorn on 127.0.0.1:0 (`ServerThread`-compatible)."""

    def __init__(self) -> None:
        self.state = RecordingState()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._released: asyncio.Event | None = None

    def request_stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)

    async def run(self, on_listening: asyncio.Future[int] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._released = asyncio.Event()
        sock = bind_listener("127.0.0.1", 0)
        server = embedded_server(RecordingApp(self.state, self._released))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        if on_listening is not None:
            on_listening.set_result(sock.getsockname()[1])
        await self._stop.wait()
        self._released.set()  # hanging answers end
        server.should_exit = True
        await task


class RecordingOpenAI:
    """A started recording server: `base_url`, `behave(...)`, `received`; use as a context."""

    def __init__(self) -> None:
        self._server = RecordingServer()
        self._thread = ServerThread(self._server, "recording-openai")
        self.base_url = ""

    def __enter__(self) -> RecordingOpenAI:
        port = self._thread.start()
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.stop()

    def behave(self, behaviour: Behaviour) -> None:
        with self._server.state.lock:
            self._server.state.behaviour = behaviour

    @property
    def received(self) -> list[Received]:
        with self._server.state.lock:
            return list(self._server.state.received)
