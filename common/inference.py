"""Inference domain types shared by engines, APIs and clients; free of protobuf and HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from common.errors import InvalidArgument

# A request names an adapter of a model as "alias:adapter" (aliases never contain ':').
ADAPTER_SEPARATOR = ":"
CHAT_ROLES = frozenset({"system", "user", "assistant"})
MAX_MESSAGES = 256


def adapter_model_name(alias: str, adapter: str) -> str:
    """The model name a request gives to use `adapter` of the model served as `alias`."""
    return f"{alias}{ADAPTER_SEPARATOR}{adapter}"


class FinishReason(StrEnum):
    STOP = "stop"
    LENGTH = "length"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class SamplingParams:
    """A request's sampling choices; None means "use the agent's default"."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    prompt: str
    sampling: SamplingParams = field(default_factory=SamplingParams)


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: tuple[ChatMessage, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class TextDelta:
    """Newly generated text of a stream."""

    text: str


@dataclass(frozen=True)
class Finished:
    """The last event of every stream."""

    reason: FinishReason
    usage: Usage


GenerationEvent = TextDelta | Finished


@dataclass(frozen=True)
class ModelInfo:
    alias: str
    sha256: str
    architecture: str
    context_length: int
    size_bytes: int
    ready: bool


class GenerationFailed(Exception):
    """The backend raised while generating; the model stays usable for the next request."""


class EventStream(Protocol):
    """What front ends read: a generation's events (a local model's GenerationStream, or a
    routed one's); closing it ends the generation."""

    def __aiter__(self) -> AsyncIterator[GenerationEvent]: ...

    def __anext__(self) -> Awaitable[GenerationEvent]: ...

    def aclose(self) -> Awaitable[None]: ...


def check_prompt(prompt: str) -> None:
    if not prompt:
        raise InvalidArgument("prompt must not be empty")


def check_messages(messages: Sequence[ChatMessage]) -> None:
    if not messages:
        raise InvalidArgument("messages must not be empty")
    if len(messages) > MAX_MESSAGES:
        raise InvalidArgument(f"at most {MAX_MESSAGES} messages are allowed, got {len(messages)}")
    for index, message in enumerate(messages):
        if message.role not in CHAT_ROLES:
            raise InvalidArgument(
                f"messages[{index}].role must be one of {', '.join(sorted(CHAT_ROLES))}, "
                f"got {message.role!r}"
            )
    if not any(m.role == "user" and m.content for m in messages):
        raise InvalidArgument("messages must contain at least one non-empty user message")
