"""An OpenAI-compatible HTTP client for cloud targets, its failures classified for fallback."""

# POST {base_url}/chat/completions or /completions with the target's model substituted and its
# key as a bearer token, answered whole (`complete`) or as server-sent events (`stream`: the
# JSON chunks, passed through as they arrive). `timeout_s` is the deadline of the whole call,
# stream included; answers, events and error bodies are read up to bounded sizes.
#
# Failures raise TargetFailure (common/policy/dispatch.py), classified as:
#   connection refused / reset, DNS, TLS, 5xx, 3xx, a broken answer (not JSON, bad SSE, too
#   large, no [DONE], an error event), a key that cannot be resolved  -> ERROR
#   the deadline, or httpx's own timeouts                               -> TIMEOUT
#   HTTP 429 (rate limit, quota) and 402 (payment required)             -> BUDGET
#   any other 4xx (the request is wrong: no fallback)                   -> REJECTED
# Reasons name the status and the provider's error type/code, never the prompt, the answer or
# the key. httpx reads no proxy settings from the environment (trust_env=False).

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import httpx

from common.policy.dispatch import Outcome, TargetFailure
from common.policy.key_references import KeyReferenceError, resolve_api_key
from common.policy.policy_model import CloudTarget

__all__ = [
    "CloudAnswer",
    "CloudClient",
    "CloudClientSettings",
    "CloudStream",
    "Endpoint",
    "Usage",
    "request_parts",
    "with_parts",
]

_CHARACTERS_PER_TOKEN = 4  # the estimate when a provider reports no usage
_MAX_LABEL = 64


class Endpoint(StrEnum):
    CHAT = "chat/completions"
    COMPLETIONS = "completions"


@dataclass(frozen=True)
class CloudClientSettings:
    max_response_bytes: int = 16 * 1024 * 1024  # a whole answer, or a whole stream
    max_event_bytes: int = 1024 * 1024  # one server-sent event line
    max_error_bytes: int = 64 * 1024  # an error answer's body


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    estimated: bool  # True: the provider reported none; counted as characters / 4


@dataclass(frozen=True)
class CloudAnswer:
    body: dict[str, Any]  # the provider's answer as it sent it
    usage: Usage


def request_parts(endpoint: Endpoint, body: Mapping[str, Any]) -> tuple[str, ...]:
    """The texts of a request that are classified and redacted, in order: each chat message's
    string content or text pieces; the completion prompt (or each of its prompts)."""
    return tuple(text for _, _, text in _text_slots(endpoint, body))


def with_parts(endpoint: Endpoint, body: Mapping[str, Any], parts: Sequence[str]) -> dict[str, Any]:
    """A copy of `body` with its texts (as `request_parts` lists them) replaced by `parts`."""
    copy = json.loads(json.dumps(body))
    slots = list(_text_slots(endpoint, copy))
    if len(slots) != len(parts):
        raise ValueError(f"the request has {len(slots)} texts, {len(parts)} were given")
    for (container, key, _), text in zip(slots, parts, strict=True):
        container[key] = text
    return dict(copy)


def _text_slots(endpoint: Endpoint, body: Mapping[str, Any]) -> list[tuple[Any, Any, str]]:
    slots: list[tuple[Any, Any, str]] = []
    if endpoint is Endpoint.CHAT:
        for message in body.get("messages") or ():
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                slots.append((message, "content", content))
            elif isinstance(content, list):
                for piece in content:
                    if isinstance(piece, dict) and isinstance(piece.get("text"), str):
                        slots.append((piece, "text", piece["text"]))
        return slots
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        slots.append((body, "prompt", prompt))
    elif isinstance(prompt, list):
        slots += [(prompt, i, p) for i, p in enumerate(prompt) if isinstance(p, str)]
    return slots


class CloudStream:
    """The chunks of one streamed answer; `usage` is known once it has ended."""

    def __init__(self) -> None:
        self._chunks: AsyncIterator[dict[str, Any]] | None = None
        self.usage: Usage | None = None

    def _attach(self, chunks: AsyncIterator[dict[str, Any]]) -> CloudStream:
        self._chunks = chunks
        return self

    def __aiter__(self) -> CloudStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        assert self._chunks is not None
        return await anext(self._chunks)

    async def aclose(self) -> None:
        close = getattr(self._chunks, "aclose", None)  # an async generator's
        if close is not None:
            await close()


class CloudClient:
    """One connection pool for every cloud target; `environ` resolves `env:` key references."""

    def __init__(
        self,
        settings: CloudClientSettings | None = None,
        *,
        environ: Mapping[str, str],
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = settings or CloudClientSettings()
        self._environ = environ
        self._http = httpx.AsyncClient(transport=transport, trust_env=False, follow_redirects=False)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def complete(
        self, target: CloudTarget, endpoint: Endpoint, body: Mapping[str, Any]
    ) -> CloudAnswer:
        """The whole answer; TargetFailure when there is none."""
        payload = {**body, "model": target.model, "stream": False}
        payload.pop("stream_options", None)
        try:
            async with asyncio.timeout(target.timeout_s):
                request = self._request(target, endpoint, payload)
                response = await self._http.send(request, stream=True)
                try:
                    await self._check_status(response)
                    data = await self._read(response, self._settings.max_response_bytes)
                finally:
                    await response.aclose()
        except (TimeoutError, httpx.TimeoutException):
            raise _timeout(target) from None
        except httpx.HTTPError as exc:
            raise _transport_failure(exc) from None
        answer = _json_object(data, "answer")
        return CloudAnswer(answer, _usage(answer.get("usage"), payload, [answer]))

    def stream(
        self,
        target: CloudTarget,
        endpoint: Endpoint,
        body: Mapping[str, Any],
        headers: Mapping[str, str] | None = None,
    ) -> CloudStream:
        """The answer's chunks as they arrive (the call starts at the first `anext`).
        `headers` are sent besides the target's (an `Authorization` among them replaces the
        target's key: the gateway forwards its caller's inference key to an agent)."""
        options = body.get("stream_options")
        payload = {
            **body,
            "model": target.model,
            "stream": True,
            "stream_options": {
                **(options if isinstance(options, dict) else {}),
                "include_usage": True,
            },
        }
        stream = CloudStream()
        return stream._attach(self._chunks(target, endpoint, payload, stream, headers or {}))

    async def _chunks(
        self,
        target: CloudTarget,
        endpoint: Endpoint,
        payload: dict[str, Any],
        sink: CloudStream,
        headers: Mapping[str, str],
    ) -> AsyncIterator[dict[str, Any]]:
        deadline = asyncio.get_running_loop().time() + target.timeout_s
        received: list[dict[str, Any]] = []
        usage: Any = None
        try:
            async with asyncio.timeout_at(deadline):
                request = self._request(target, endpoint, payload, headers)
                response = await self._http.send(request, stream=True)
            try:
                async with asyncio.timeout_at(deadline):
                    await self._check_status(response)
                    if not response.headers.get("content-type", "").startswith("text/event-stream"):
                        raise TargetFailure(Outcome.ERROR, "the answer is not an event stream")
                events = _events(response.aiter_bytes(), self._settings)
                while True:
                    async with asyncio.timeout_at(deadline):
                        data = await anext(events, None)
                    if data is None:
                        raise TargetFailure(Outcome.ERROR, "the stream ended before [DONE]")
                    if data == "[DONE]":
                        await _drain(events, deadline)  # to the end: the connection is reused
                        break
                    chunk = _json_object(data.encode(), "stream event")
                    if "error" in chunk:
                        raise TargetFailure(Outcome.ERROR, f"error event: {_error_label(chunk)}")
                    if isinstance(chunk.get("usage"), dict):
                        usage = chunk["usage"]
                    received.append({"choices": chunk.get("choices")})
                    yield chunk
            finally:
                await response.aclose()
        except (TimeoutError, httpx.TimeoutException):
            raise _timeout(target) from None
        except httpx.HTTPError as exc:
            raise _transport_failure(exc) from None
        sink.usage = _usage(usage, payload, received)

    def _request(
        self,
        target: CloudTarget,
        endpoint: Endpoint,
        payload: dict[str, Any],
        extra_headers: Mapping[str, str] | None = None,
    ) -> httpx.Request:
        try:
            key = resolve_api_key(target.api_key_ref, self._environ)
        except KeyReferenceError as exc:
            raise TargetFailure(Outcome.ERROR, f"no key: {exc}") from None
        headers = {"Accept": "application/json, text/event-stream", "User-Agent": "outpost"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        headers.update(extra_headers or {})
        url = f"{target.base_url.rstrip('/')}/{endpoint.value}"
        return self._http.build_request(
            "POST", url, json=payload, headers=headers, timeout=target.timeout_s
        )

    async def _check_status(self, response: httpx.Response) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        body = await self._read(response, self._settings.max_error_bytes, truncate=True)
        label = ""
        try:
            parsed = json.loads(body)
            if isinstance(parsed, dict):
                label = _error_label(parsed)
        except ValueError:
            pass
        reason = f"HTTP {status}{f' ({label})' if label else ''}"
        if status in (402, 429):
            raise TargetFailure(Outcome.BUDGET, reason)
        if 400 <= status < 500:
            raise TargetFailure(Outcome.REJECTED, reason)
        raise TargetFailure(Outcome.ERROR, reason)

    async def _read(self, response: httpx.Response, limit: int, *, truncate: bool = False) -> bytes:
        declared = response.headers.get("content-length", "")
        if not truncate and declared.isdigit() and int(declared) > limit:
            raise TargetFailure(Outcome.ERROR, f"the answer is larger than {limit} bytes")
        data = bytearray()
        async for piece in response.aiter_bytes():
            data += piece
            if len(data) > limit:
                if truncate:
                    return bytes(data[:limit])
                raise TargetFailure(Outcome.ERROR, f"the answer is larger than {limit} bytes")
        return bytes(data)


async def _events(raw: AsyncIterator[bytes], settings: CloudClientSettings) -> AsyncIterator[str]:
    """The data of each server-sent event; bounded per line and in all."""
    buffer = bytearray()
    total = 0
    data: list[str] = []
    async for piece in raw:
        total += len(piece)
        if total > settings.max_response_bytes:
            raise TargetFailure(
                Outcome.ERROR, f"the stream is larger than {settings.max_response_bytes} bytes"
            )
        buffer += piece
        while (end := buffer.find(b"\n")) >= 0:
            line = bytes(buffer[:end]).rstrip(b"\r")
            del buffer[: end + 1]
            if not line:
                if data:
                    yield "\n".join(data)
                    data = []
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                raise TargetFailure(Outcome.ERROR, "an event that is not UTF-8") from None
            if text.startswith(":"):
                continue  # a comment (keep-alive)
            field, _, value = text.partition(":")
            if field == "data":
                data.append(value[1:] if value.startswith(" ") else value)
        if len(buffer) > settings.max_event_bytes:
            raise TargetFailure(
                Outcome.ERROR, f"an event line longer than {settings.max_event_bytes} bytes"
            )
    if data:
        yield "\n".join(data)


async def _drain(events: AsyncIterator[str], deadline: float) -> None:
    """Reads what follows [DONE] (normally nothing) until the call's deadline, so httpx returns
    the connection to its pool instead of closing it; anything wrong there (too much, too
    slow, broken) only costs the connection, never the answer."""
    with contextlib.suppress(TargetFailure, httpx.HTTPError, TimeoutError):
        async with asyncio.timeout_at(deadline):
            async for _ in events:
                pass


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        parsed = json.loads(data)
    except ValueError:
        raise TargetFailure(Outcome.ERROR, f"the {what} is not JSON") from None
    if not isinstance(parsed, dict):
        raise TargetFailure(Outcome.ERROR, f"the {what} is not a JSON object")
    return parsed


def _error_label(body: dict[str, Any]) -> str:
    """The provider's error type and code, short and printable; never its message."""
    error = body.get("error")
    if not isinstance(error, dict):
        return ""
    labels = [error.get(key) for key in ("type", "code")]
    words = [
        str(v)[:_MAX_LABEL] for v in labels if isinstance(v, str | int) and str(v).isprintable()
    ]
    return "/".join(words)


def _usage(
    reported: Any, payload: Mapping[str, Any], answers: Sequence[Mapping[str, Any]]
) -> Usage:
    if isinstance(reported, dict):
        prompt, completion = reported.get("prompt_tokens"), reported.get("completion_tokens")
        if isinstance(prompt, int) and isinstance(completion, int) and prompt >= 0 <= completion:
            return Usage(prompt, completion, estimated=False)
    endpoint = Endpoint.CHAT if "messages" in payload else Endpoint.COMPLETIONS
    prompt_chars = sum(map(len, request_parts(endpoint, payload)))
    output_chars = sum(len(text) for answer in answers for text in _answer_texts(answer))
    return Usage(_tokens(prompt_chars), _tokens(output_chars), estimated=True)


def _answer_texts(answer: Mapping[str, Any]) -> list[str]:
    texts: list[str] = []
    for choice in answer.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        for holder in (choice, choice.get("message"), choice.get("delta")):
            if isinstance(holder, dict):
                texts += [holder[k] for k in ("text", "content") if isinstance(holder.get(k), str)]
    return texts


def _tokens(characters: int) -> int:
    return math.ceil(characters / _CHARACTERS_PER_TOKEN)


def _timeout(target: CloudTarget) -> TargetFailure:
    return TargetFailure(Outcome.TIMEOUT, f"no complete answer within {target.timeout_s:g} s")


def _transport_failure(exc: httpx.HTTPError) -> TargetFailure:
    return TargetFailure(Outcome.ERROR, f"{type(exc).__name__}: the provider cannot be reached")
