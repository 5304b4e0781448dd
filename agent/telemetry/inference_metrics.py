"""Per-model inference metrics: requests, errors, tokens, tokens/s, time to first token."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from common.inference import Usage


@dataclass(frozen=True)
class ModelMetricsSnapshot:
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    tokens_per_second: float  # decode rate of the last finished generation
    time_to_first_token_s: float  # of the last generation that produced a token


class ModelMetrics:
    """Counters of one model. Updated from the event loop and the model's thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests = 0
        self._errors = 0
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._tokens_per_second = 0.0
        self._ttft_s = 0.0

    def admitted(self) -> None:
        with self._lock:
            self._requests += 1

    def rejected(self) -> None:
        """A request for this model refused before it ran (bad input, queue full)."""
        with self._lock:
            self._requests += 1
            self._errors += 1

    def failed(self) -> None:
        """An admitted generation that raised."""
        with self._lock:
            self._errors += 1

    def finished(self, usage: Usage, ttft_s: float | None, decode_s: float) -> None:
        """`ttft_s`: from admission to the first token; `decode_s`: first token to the end."""
        with self._lock:
            self._prompt_tokens += usage.prompt_tokens
            self._completion_tokens += usage.completion_tokens
            if ttft_s is not None:
                self._ttft_s = ttft_s
            if usage.completion_tokens > 1 and decode_s > 0:
                self._tokens_per_second = (usage.completion_tokens - 1) / decode_s

    def snapshot(self) -> ModelMetricsSnapshot:
        with self._lock:
            return ModelMetricsSnapshot(
                requests=self._requests,
                errors=self._errors,
                prompt_tokens=self._prompt_tokens,
                completion_tokens=self._completion_tokens,
                tokens_per_second=self._tokens_per_second,
                time_to_first_token_s=self._ttft_s,
            )
