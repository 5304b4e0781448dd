"""The gateway's ledger sink: rows handed over on the event loop, written by one thread."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from common.policy.ledger_record import LedgerRecord

log = logging.getLogger(__name__)

MAX_WAITING = 10_000  # rows not written yet; more are dropped (counted and logged)


class LedgerWriter:
    """`record` never blocks: the row is queued and `write` (a database insert) runs on the
    writer thread. `close` writes what is queued, then stops."""

    def __init__(self, write: Callable[[LedgerRecord], object], max_waiting: int = MAX_WAITING):
        self._write = write
        self._queue: queue.Queue[LedgerRecord | None] = queue.Queue(max_waiting)
        self._idle = threading.Condition()
        self._pending = 0
        self.written = 0
        self.dropped = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="gateway-ledger", daemon=True)
        self._thread.start()

    def record(self, record: LedgerRecord) -> None:
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
                "gateway ledger: %d rows waiting; row %s dropped", MAX_WAITING, record.request_id
            )

    def wait_idle(self, timeout_s: float) -> bool:
        """True once every queued row is written (or failed) within `timeout_s`."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while (record := self._queue.get()) is not None:
            written = False
            try:
                self._write(record)
                written = True
            except Exception:
                log.exception("gateway ledger: writing row %s failed", record.request_id)
            with self._idle:
                self._pending -= 1
                self.written += written
                self.failed += not written
                self._idle.notify_all()
