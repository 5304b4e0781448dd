"""Turns generated token bytes into text deltas: UTF-8 reassembly and stop-sequence holdback."""

from __future__ import annotations

import codecs


class TextStream:
    """Accumulates token bytes and releases only text that is final.

    Text that could still be the start of a stop sequence is held back until it is known not
    to be; a matched stop sequence and everything after it is never released.
    """

    def __init__(self, stop: tuple[str, ...]) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(s for s in stop if s)
        self._holdback = max((len(s) for s in self._stop), default=1) - 1
        self._pending = ""
        self.stopped = False

    def feed(self, piece: bytes) -> str:
        """Adds one token's bytes; returns the text that may be released now."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(piece)
        if not self._stop:
            released, self._pending = self._pending, ""
            return released
        cut = self._earliest_stop()
        if cut is not None:
            self.stopped = True
            released, self._pending = self._pending[:cut], ""
            return released
        keep = self._partial_stop_suffix()
        split = len(self._pending) - keep
        released, self._pending = self._pending[:split], self._pending[split:]
        return released

    def finish(self) -> str:
        """Releases what is held back once generation has ended without a stop match."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(b"", final=True)
        released, self._pending = self._pending, ""
        return released

    def _earliest_stop(self) -> int | None:
        found = [i for i in (self._pending.find(s) for s in self._stop) if i >= 0]
        return min(found) if found else None

    def _partial_stop_suffix(self) -> int:
        """Length of the longest tail of pending text that begins some stop sequence."""
        limit = min(self._holdback, len(self._pending))
        for length in range(limit, 0, -1):
            tail = self._pending[-length:]
            if any(s.startswith(tail) for s in self._stop):
                return length
        return 0
