"""Reads OpenAI-style JSON request bodies into domain requests, with field-naming errors."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from common.errors import InvalidArgument
from common.inference import ChatMessage, ChatRequest, CompletionRequest, SamplingParams


@dataclass(frozen=True)
class StreamOptions:
    stream: bool
    include_usage: bool


def _string(body: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise InvalidArgument(f"'{key}' is required")
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"'{key}' must be a string")
    return value


def _number(body: dict[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"'{key}' must be a number")
    try:
        number = float(value)
    except OverflowError:
        raise InvalidArgument(f"'{key}' is out of range") from None
    if not math.isfinite(number):
        raise InvalidArgument(f"'{key}' must be finite")
    return number


def _integer(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"'{key}' must be an integer")
    return value


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return tuple(value)
    raise InvalidArgument("'stop' must be a string or an array of strings")


def _sampling(body: dict[str, Any]) -> SamplingParams:
    max_tokens = _integer(body, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens")
    n = _integer(body, "n")
    if n not in (None, 1):
        raise InvalidArgument("'n' must be 1: this server returns one choice per request")
    top_k = _integer(body, "top_k")
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature"),
        top_p=_number(body, "top_p"),
        top_k=top_k,
        min_p=_number(body, "min_p"),
        repeat_penalty=_number(body, "repeat_penalty"),
        seed=_integer(body, "seed"),
        stop=_stop(body),
    )


def stream_options(body: dict[str, Any]) -> StreamOptions:
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise InvalidArgument("'stream' must be a boolean")
    options = body.get("stream_options")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise InvalidArgument("'stream_options' must be an object")
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise InvalidArgument("'stream_options.include_usage' must be a boolean")
    return StreamOptions(stream=stream, include_usage=include_usage)


def _message_content(value: object, index: int) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for part in value:
            if not (isinstance(part, dict) and part.get("type") == "text"):
                raise InvalidArgument(f"messages[{index}].content: only text parts are supported")
            text = part.get("text")
            if not isinstance(text, str):
                raise InvalidArgument(f"messages[{index}].content: a text part needs 'text'")
            parts.append(text)
        return "".join(parts)
    raise InvalidArgument(f"messages[{index}].content must be a string or an array of parts")


def chat_request(body: dict[str, Any]) -> ChatRequest:
    model = _string(body, "model", required=True)
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list):
        raise InvalidArgument("'messages' must be an array")
    messages = []
    for index, raw in enumerate(raw_messages):
        if not isinstance(raw, dict):
            raise InvalidArgument(f"messages[{index}] must be an object")
        role = raw.get("role")
        if not isinstance(role, str):
            raise InvalidArgument(f"messages[{index}].role must be a string")
        messages.append(ChatMessage(role=role, content=_message_content(raw.get("content"), index)))
    assert model is not None
    return ChatRequest(model=model, messages=tuple(messages), sampling=_sampling(body))


def completion_request(body: dict[str, Any]) -> CompletionRequest:
    model = _string(body, "model", required=True)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise InvalidArgument("'prompt' must be a string")
    assert model is not None
    return CompletionRequest(model=model, prompt=prompt, sampling=_sampling(body))
