"""`LoginLimiter`: failed console logins counted per user name and per address in a window."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

MAX_TRACKED_KEYS = 100_000  # bounded memory: the oldest keys are forgotten first


class LoginLimiter:
    """After `failures` failed logins within `window_s` for a user name or for an address,
    further attempts for it are refused until the oldest failure leaves the window.

    In memory, per process: a restart forgets the counts (an attacker gains one window)."""

    def __init__(
        self, failures: int, window_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._failures = failures
        self._window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, deque[float]] = {}

    def blocked(self, name: str, address: str) -> bool:
        now = self._clock()
        with self._lock:
            return any(
                len(self._recent(key, now)) >= self._failures for key in _keys(name, address)
            )

    def failed(self, name: str, address: str) -> None:
        now = self._clock()
        with self._lock:
            for key in _keys(name, address):
                self._recent(key, now).append(now)
                self._seen[key] = self._seen.pop(key)  # most recent last
            while len(self._seen) > MAX_TRACKED_KEYS:
                del self._seen[next(iter(self._seen))]

    def succeeded(self, name: str) -> None:
        """A right password clears the name's count (not the address's)."""
        with self._lock:
            self._seen.pop(f"user:{name}", None)

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._seen.setdefault(key, deque())
        while times and times[0] <= now - self._window_s:
            times.popleft()
        return times


def _keys(name: str, address: str) -> tuple[str, str]:
    return f"user:{name}", f"address:{address}"
