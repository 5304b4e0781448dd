"""Inference domain types shared by engines, APIs and clients; free of protobuf and HTTP."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

# A request names an adapter of a model as "alias:adapter" (aliases never contain ':').
ADAPTER_SEPARATOR = ":"


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
