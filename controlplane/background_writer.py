"""The gateway's sinks (ledger rows, alert events): handed over on the loop, written by a thread."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

MAX_WAITING = 10_000  # items not written yet; more are dropped (counted and logged)
MAX_BATCH = 200  # items written together (one database transaction)
_T = TypeVar("_T")


class BackgroundWriter(Generic[_T]):
    """`record` never blocks: the item is queued, and `write` (a database insert of a list)
    runs on the writer thread with what is waiting, in order, at most MAX_BATCH at a time.
    `close` writes what is queued, then stops. `name` and `describe` (an item in a few words)
    are for log messages."""

    def __init__(
        self,
        write: Callable[[list[_T]], object],
        *,
        name: str,
        describe: Callable[[_T], str] = lambda _: "an item",
        max_waiting: int = MAX_WAITING,
    ) -> None:
        self._write = write
        self._name = name
        self._describe = describe
        self._max_waiting = max_waiting
        self._queue: queue.Queue[_T | None] = queue.Queue(max_waiting)
        self._idle = threading.Condition()
        self._pending = 0
        self.written = 0
        self.dropped = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def record(self, record: _T) -> None:
        with self._idle:
            self._pending += 1
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            with self._idle:
                self._pending -= 1
                self.dropped += 1
                self._idle.notify_all()
            log.error(
                "%s: %d waiting; %s dropped",
                self._name,
                self._max_waiting,
                self._describe(record),
            )

    def wait_idle(self, timeout_s: float) -> bool:
        """True once every queued item is written (or failed) within `timeout_s`."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        closing = False
        while not closing:
            batch: list[_T] = []
            item = self._queue.get()
            while item is not None:
                batch.append(item)
                if len(batch) >= MAX_BATCH or self._queue.empty():
                    break
                item = self._queue.get_nowait()
            closing = item is None
            if batch:
                self._write_batch(batch)

    def _write_batch(self, batch: list[_T]) -> None:
        written = False
        try:
            self._write(batch)
            written = True
        except Exception:
            what = f"{self._describe(batch[0])} and {len(batch) - 1} more"
            log.exception("%s: writing %s failed", self._name, what)
        with self._idle:
            self._pending -= len(batch)
            if written:
                self.written += len(batch)
            else:
                self.failed += len(batch)
            self._idle.notify_all()
