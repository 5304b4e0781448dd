"""A bound on the gateway's requests in flight: past it a request is refused at once (429)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from common.errors import ResourceExhausted
from common.inference import EventStream, GenerationEvent

MAX_IN_FLIGHT = 64  # about half a second of work for one control plane core at its capacity


class InFlightLimit:
    """Counts requests from admission until their events are closed. Refusing the excess at
    once keeps an overloaded gateway answering what it can (a queue without bound made every
    request wait until it timed out). Event loop only."""

    def __init__(self, limit: int = MAX_IN_FLIGHT) -> None:
        if limit < 1:
            raise ValueError("the in-flight limit must be at least 1")
        self.limit = limit
        self.in_flight = 0
        self.refused = 0

    async def run(self, start: Callable[[], Awaitable[EventStream]]) -> EventStream:
        """`start()`'s events, counted until they are closed; ResourceExhausted when full."""
        if self.in_flight >= self.limit:
            self.refused += 1
            raise ResourceExhausted(
                f"the gateway has {self.limit} requests in flight, its limit: retry shortly"
            )
        self.in_flight += 1
        try:
            stream = await start()
        except BaseException:
            self.in_flight -= 1
            raise
        return _Counted(stream, self._release)

    def _release(self) -> None:
        self.in_flight -= 1


class _Counted:
    """The stream's events; `release` runs once, when the stream is closed."""

    def __init__(self, stream: EventStream, release: Callable[[], None]) -> None:
        self._stream = stream
        self._release: Callable[[], None] | None = release

    def __aiter__(self) -> AsyncIterator[GenerationEvent]:
        return self

    async def __anext__(self) -> GenerationEvent:
        return await self._stream.__anext__()

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()
