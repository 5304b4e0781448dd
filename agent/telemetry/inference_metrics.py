"""Per-model inference metrics, with a breakdown by LoRA adapter: requests, errors, tokens,
tokens/s, time to first token."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from common.inference import Usage


@dataclass(frozen=True)
class InferenceCounts:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens_per_second: float = 0.0  # decode rate of the last finished generation
    time_to_first_token_s: float = 0.0  # of the last generation that produced a token


@dataclass(frozen=True)
class ModelMetricsSnapshot(InferenceCounts):
    # The same counts for the requests that named each adapter ("alias:adapter"); the model's
    # own counts above include them.
    adapters: Mapping[str, InferenceCounts] = field(default_factory=dict)


@dataclass
class _Counter:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens_per_second: float = 0.0
    ttft_s: float = 0.0

    def finished(self, usage: Usage, ttft_s: float | None, decode_s: float) -> None:
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        if ttft_s is not None:
            self.ttft_s = ttft_s
        if usage.completion_tokens > 1 and decode_s > 0:
            self.tokens_per_second = (usage.completion_tokens - 1) / decode_s

    def counts(self) -> InferenceCounts:
        return InferenceCounts(
            requests=self.requests,
            errors=self.errors,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            tokens_per_second=self.tokens_per_second,
            time_to_first_token_s=self.ttft_s,
        )


class ModelMetrics:
    """Counters of one model. Updated from the event loop and the model's thread.

    `adapter` names the LoRA adapter a request asked for ("" = the base model); the adapters a
    model loads are counted from the start, so each one reports zeros until it is used.
    """

    def __init__(self, adapters: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._model = _Counter()
        self._adapters = {name: _Counter() for name in adapters}

    def _counters(self, adapter: str) -> list[_Counter]:
        own = self._adapters.get(adapter) if adapter else None
        return [self._model] if own is None else [self._model, own]

    def admitted(self, adapter: str = "") -> None:
        with self._lock:
            for counter in self._counters(adapter):
                counter.requests += 1

    def rejected(self, adapter: str = "") -> None:
        """A request for this model refused before it ran (bad input, queue full)."""
        with self._lock:
            for counter in self._counters(adapter):
                counter.requests += 1
                counter.errors += 1

    def failed(self, adapter: str = "") -> None:
        """An admitted generation that raised."""
        with self._lock:
            for counter in self._counters(adapter):
                counter.errors += 1

    def finished(
        self, usage: Usage, ttft_s: float | None, decode_s: float, adapter: str = ""
    ) -> None:
        """`ttft_s`: from admission to the first token; `decode_s`: first token to the end."""
        with self._lock:
            for counter in self._counters(adapter):
                counter.finished(usage, ttft_s, decode_s)

    def snapshot(self) -> ModelMetricsSnapshot:
        with self._lock:
            model = self._model.counts()
            adapters = {name: counter.counts() for name, counter in self._adapters.items()}
        return ModelMetricsSnapshot(**vars(model), adapters=adapters)
