"""Sends buffered telemetry over the control stream: one batch in flight, forgotten once acked."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Protocol

from common.telemetry import TelemetryBatch

BATCH_SAMPLES = 500
# When an ack moved nothing forward, wait this long (or for a new sample) before resending.
STALLED_RETRY_S = 5.0


class SampleBuffer(Protocol):
    def pending(self, limit: int = ...) -> TelemetryBatch: ...

    def ack(self, acked_seq: int, *, dropped_reported: int) -> None: ...


class TelemetryUplink:
    """Replays the on-disk buffer in order on each new stream. Event loop only."""

    def __init__(self, buffer: SampleBuffer) -> None:
        self._buffer = buffer
        self.ready = asyncio.Event()  # set when a sample was appended
        self._acked = asyncio.Event()
        self._acked_seq = 0
        self._in_flight: TelemetryBatch | None = None

    async def run(self, send: Callable[[TelemetryBatch], Awaitable[None]]) -> None:
        """Sends until cancelled (the stream ends)."""
        while True:
            self.ready.clear()
            batch = await asyncio.to_thread(self._buffer.pending, BATCH_SAMPLES)
            if not batch.samples and not batch.dropped:
                await self.ready.wait()
                continue
            self._in_flight = batch
            self._acked.clear()
            await send(batch)
            await self._acked.wait()
            first = batch.samples[0].seq if batch.samples else 0
            if batch.samples and self._acked_seq < first:  # nothing stored: don't spin
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.ready.wait(), STALLED_RETRY_S)

    async def acknowledge(self, acked_seq: int) -> None:
        """The control plane stored everything up to `acked_seq`."""
        batch, self._in_flight = self._in_flight, None
        dropped = batch.dropped if batch is not None else 0
        await asyncio.to_thread(self._buffer.ack, acked_seq, dropped_reported=dropped)
        self._acked_seq = acked_seq
        self._acked.set()
