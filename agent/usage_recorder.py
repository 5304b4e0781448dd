"""Sinks that never block: ledger rows and alert events queued, written to their buffer in bulk."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from agent.telemetry.sequenced_buffer import SequencedBuffer, SequencedBufferError
from common.policy.alert_notify import AlertEvent
from common.policy.ledger_record import LedgerRecord

log = logging.getLogger(__name__)

MAX_QUEUED = 10_000  # items waiting for the disk; beyond, the oldest are dropped and counted
_T = TypeVar("_T")


class BufferRecorder(Generic[_T]):
    """`record` never blocks (the gate calls it on the event loop for every routed request): it
    queues the item; `run` writes what is queued in one transaction at a time, on a worker
    thread, then calls `written` (the uplink's wake-up). An item that arrives while nothing runs
    waits for the next `run` or `flush`. `what` names the items in log messages."""

    def __init__(
        self,
        buffer: SequencedBuffer[_T],
        written: Callable[[], None] = lambda: None,
        *,
        max_queued: int = MAX_QUEUED,
        what: str = "usage-ledger rows",
    ) -> None:
        self._buffer = buffer
        self._written = written
        self._max_queued = max_queued
        self._what = what
        self._queue: deque[_T] = deque()
        self._lost = 0  # rows dropped from a full queue, reported with the next write
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def record(self, record: _T) -> None:
        """Queues one item; any thread."""
        with self._lock:
            if len(self._queue) >= self._max_queued:
                self._queue.popleft()
                self._lost += 1
            self._queue.append(record)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    async def run(self, stop: asyncio.Event) -> None:
        """Writes queued items until `stop` is set (or the task is cancelled), then once more."""
        self._loop = asyncio.get_running_loop()
        try:
            while not stop.is_set():
                self._wake.clear()
                if await asyncio.to_thread(self.flush):
                    self._written()
                stopping = asyncio.ensure_future(stop.wait())
                waking = asyncio.ensure_future(self._wake.wait())
                try:
                    await asyncio.wait({stopping, waking}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopping.cancel()
                    waking.cancel()
        finally:
            self._loop = None
            self.flush()  # on the loop: it is shutting down, and a cancelled task cannot wait

    def flush(self) -> int:
        """Writes what is queued now; returns the items written. A buffer that fails loses
        them (logged): the agent keeps serving."""
        with self._flushing:  # one writer at a time keeps the rows in order
            with self._lock:
                rows, self._queue = list(self._queue), deque()
                lost, self._lost = self._lost, 0
            if not rows and not lost:
                return 0
            try:
                self._buffer.append_many(rows, also_dropped=lost)
            except SequencedBufferError as error:
                log.error("lost %d %s: %s", len(rows), self._what, error)
                return 0
            return len(rows)


UsageRecorder = BufferRecorder[LedgerRecord]  # the policy gate's ledger sink
AlertEventRecorder = BufferRecorder[AlertEvent]  # RequestAlerts' `record`
