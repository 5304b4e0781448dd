"""Reconnect delays after gRPC's connection-backoff spec (doc/connection-backoff.md)."""

from __future__ import annotations

import random


class Backoff:
    """Exponential backoff with jitter: base × multiplierⁿ ±jitter, never above `max_delay`.

    gRPC's connection-backoff parameters; unlike its spec the cap also bounds the jittered
    delay (so "at most 120 s" holds), and the first retry is jittered too, so a fleet that
    lost the control plane at the same moment does not reconnect in lockstep.
    """

    def __init__(
        self,
        *,
        base: float = 1.0,
        multiplier: float = 1.6,
        jitter: float = 0.2,
        max_delay: float = 120.0,
        rng: random.Random | None = None,
    ) -> None:
        if base <= 0 or multiplier < 1 or not 0 <= jitter < 1 or max_delay < base:
            raise ValueError(
                "backoff needs base > 0, multiplier >= 1, 0 <= jitter < 1, max >= base"
            )
        self.base = base
        self.multiplier = multiplier
        self.jitter = jitter
        self.max_delay = max_delay
        self._rng = rng if rng is not None else random.Random()
        self._current = base

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt; each call advances the sequence."""
        delay = min(
            self._current * (1 + self._rng.uniform(-self.jitter, self.jitter)), self.max_delay
        )
        self._current = min(self._current * self.multiplier, self.max_delay)
        return delay

    def reset(self) -> None:
        """Back to the first delay: call after a connection succeeded."""
        self._current = self.base
