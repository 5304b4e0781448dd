"""Sends a sequenced buffer over the control stream: one batch in flight, forgotten once acked."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

from agent.telemetry.sequenced_buffer import Pending

BATCH_ITEMS = 500
# When an ack moved nothing forward, wait this long (or for a new item) before resending.
STALLED_RETRY_S = 5.0
_T = TypeVar("_T")


class PendingSource(Protocol[_T]):
    def pending_items(self, limit: int = ..., *, max_bytes: int | None = ...) -> Pending[_T]: ...

    def ack(self, acked_seq: int, *, dropped_reported: int) -> None: ...


class SequencedUplink(Generic[_T]):
    """Replays the on-disk buffer in order on each new stream. Event loop only.
    `max_bytes` bounds a batch's stored text (one item always goes)."""

    def __init__(
        self,
        buffer: PendingSource[_T],
        *,
        batch_items: int = BATCH_ITEMS,
        max_bytes: int | None = None,
    ) -> None:
        self._buffer = buffer
        self._batch_items = batch_items
        self._max_bytes = max_bytes
        self.ready = asyncio.Event()  # set when an item was appended
        self._acked = asyncio.Event()
        self._acked_seq = 0
        self._in_flight: Pending[_T] | None = None

    async def run(self, send: Callable[[Pending[_T]], Awaitable[None]]) -> None:
        """Sends until cancelled (the stream ends)."""
        while True:
            self.ready.clear()
            batch = await asyncio.to_thread(
                self._buffer.pending_items, self._batch_items, max_bytes=self._max_bytes
            )
            if not batch.items and not batch.dropped:
                await self.ready.wait()
                continue
            self._in_flight = batch
            self._acked.clear()
            await send(batch)
            await self._acked.wait()
            first = batch.items[0][0] if batch.items else 0
            if batch.items and self._acked_seq < first:  # nothing stored: don't spin
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.ready.wait(), STALLED_RETRY_S)

    async def acknowledge(self, acked_seq: int) -> None:
        """The control plane stored everything up to `acked_seq`."""
        batch, self._in_flight = self._in_flight, None
        dropped = batch.dropped if batch is not None else 0
        await asyncio.to_thread(self._buffer.ack, acked_seq, dropped_reported=dropped)
        self._acked_seq = acked_seq
        self._acked.set()
