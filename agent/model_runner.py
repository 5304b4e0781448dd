"""Runs one model's generations on its own thread, one at a time, behind a bounded queue."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import cast

from agent.engine.protocol import ModelBackend, ResolvedSampling
from agent.telemetry.inference_metrics import ModelMetrics
from common.errors import ResourceExhausted
from common.inference import Finished, GenerationEvent, GenerationFailed, TextDelta

log = logging.getLogger(__name__)

_END = object()


class GenerationStream:
    """The events of one admitted generation, as an async iterator.

    Closing it (`aclose()`, or dropping it unread) cancels the generation.
    """

    def __init__(self, queue: asyncio.Queue[object], cancelled: threading.Event) -> None:
        self._queue = queue
        self._cancelled = cancelled
        self._done = False

    def cancel(self) -> None:
        self._cancelled.set()

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> GenerationEvent:
        if self._done:
            raise StopAsyncIteration
        try:
            item = await self._queue.get()
        except asyncio.CancelledError:  # the consumer went away (client gone, deadline)
            self.cancel()
            raise
        if item is _END:
            self._done = True
            raise StopAsyncIteration
        if isinstance(item, GenerationFailed):
            self._done = True
            raise item
        event = cast(GenerationEvent, item)
        self._done = isinstance(event, Finished)
        return event

    async def aclose(self) -> None:
        self.cancel()

    def __del__(self) -> None:
        self._cancelled.set()


class ModelRunner:
    """Admits generations to one backend: up to its `parallel` run at once (a batching backend
    decodes them together), up to `queue_depth` more wait in FIFO order. A request that finds
    the queue full is refused at once with ResourceExhausted. A caller that goes away stops its
    generation at the next token, or before it starts while it is still queued.
    """

    def __init__(self, alias: str, backend: ModelBackend, *, queue_depth: int) -> None:
        self.alias = alias
        self.backend = backend
        self.queue_depth = queue_depth
        self.description = backend.describe()
        self.parallel = max(1, self.description.parallel)
        self._executor = ThreadPoolExecutor(
            max_workers=self.parallel, thread_name_prefix=f"model-{alias}"
        )
        self.metrics = ModelMetrics(self.description.adapters)
        self._admitted = 0  # jobs submitted and not yet done; event loop thread only

    @property
    def waiting(self) -> int:
        """Requests admitted and waiting for one of the running ones to end."""
        return max(self._admitted - self.parallel, 0)

    def start(self, prompt_tokens: Sequence[int], sampling: ResolvedSampling) -> GenerationStream:
        """Admits a generation or raises ResourceExhausted at once; must run on the event loop."""
        if self._admitted >= self.parallel + self.queue_depth:
            self.metrics.rejected(sampling.adapter)
            raise ResourceExhausted(
                f"model {self.alias!r} is busy: {self.waiting} requests are already queued "
                f"(limit {self.queue_depth}); retry later"
            )
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancelled = threading.Event()

        admitted_at = time.perf_counter()

        def run() -> None:
            first_token_at: float | None = None
            try:
                for event in self.backend.generate(prompt_tokens, sampling, cancelled):
                    if first_token_at is None and isinstance(event, TextDelta):
                        first_token_at = time.perf_counter()
                    if isinstance(event, Finished):
                        self._record(event, sampling.adapter, admitted_at, first_token_at)
                    loop.call_soon_threadsafe(queue.put_nowait, event)
            except Exception as exc:  # reported to the caller; the worker thread lives on
                log.exception("generation on model %r failed", self.alias)
                self.metrics.failed(sampling.adapter)
                loop.call_soon_threadsafe(queue.put_nowait, GenerationFailed(str(exc)))
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _END)

        self._admitted += 1
        self.metrics.admitted(sampling.adapter)
        job = loop.run_in_executor(self._executor, run)
        job.add_done_callback(self._release)
        return GenerationStream(queue, cancelled)

    def _record(
        self, event: Finished, adapter: str, admitted_at: float, first_token_at: float | None
    ) -> None:
        now = time.perf_counter()
        ttft = None if first_token_at is None else first_token_at - admitted_at
        decode = 0.0 if first_token_at is None else now - first_token_at
        self.metrics.finished(event.usage, ttft, decode, adapter)

    def _release(self, job: asyncio.Future[None]) -> None:
        self._admitted -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.backend.close()
