"""The Protocol every inference backend implements, and the fully resolved sampling it takes."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from common.inference import ChatMessage, GenerationEvent


@dataclass(frozen=True)
class ResolvedSampling:
    """A request's generation parameters with every value decided and validated; what a
    backend runs with."""

    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    seed: int
    stop: tuple[str, ...]
    adapter: str = ""  # the LoRA adapter to apply, by name; "" = the base model


@dataclass(frozen=True)
class BackendDescription:
    architecture: str
    context_length: int  # per request
    vocab_size: int
    parallel: int = 1  # requests it decodes together
    adapters: tuple[str, ...] = ()  # LoRA adapters a request may name


class ModelBackend(Protocol):
    """One loaded model. Not thread-safe: callers run every method on one thread at a time."""

    def describe(self) -> BackendDescription: ...

    def render_chat(self, messages: Sequence[ChatMessage]) -> str:
        """Renders messages into a prompt with the model's own chat template."""
        ...

    def tokenize(self, text: str) -> list[int]: ...

    def generate(
        self,
        prompt_tokens: Sequence[int],
        sampling: ResolvedSampling,
        cancelled: threading.Event,
    ) -> Iterator[GenerationEvent]:
        """Yields text deltas and ends with exactly one Finished event.

        Checks `cancelled` between tokens and finishes with reason CANCELLED when it is set.
        """
        ...

    def self_test(self) -> None:
        """Raises when the loaded model cannot answer a short prompt sensibly."""
        ...

    def close(self) -> None: ...
