"""Where the site's other agents take forwarded requests (`site_agent` targets), cached."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from common.policy.forwarding import ServingAgent

log = logging.getLogger(__name__)

FRESH_S = 30.0  # an answer is used this long before the control plane is asked again
MAX_CACHED = 256

Lookup = Callable[[str], Awaitable[tuple[str, str] | None]]


@dataclass(frozen=True)
class _Answer:
    agents: tuple[ServingAgent, ...]
    at: float


class SiteAgentDirectory:
    """Asks the control plane (`lookup`: ControlLink.find_site_agent) at most once per FRESH_S
    per name; while it cannot be reached, the last answer is used however old (so an agent
    keeps forwarding to its site's agents when the control plane is down)."""

    def __init__(self, lookup: Lookup, clock: Callable[[], float] = time.monotonic) -> None:
        self._lookup = lookup
        self._clock = clock
        self._answers: dict[str, _Answer] = {}

    async def find(self, agent: str) -> tuple[ServingAgent, ...]:
        known = self._answers.get(agent)
        if known is not None and self._clock() - known.at < FRESH_S:
            return known.agents
        try:
            found = await self._lookup(agent)
        except ConnectionError as exc:
            log.info("site agent %r: the control plane cannot be asked (%s)", agent, exc)
            return known.agents if known is not None else ()
        agents = (ServingAgent(*found),) if found is not None else ()
        if len(self._answers) >= MAX_CACHED and agent not in self._answers:
            self._answers.clear()
        self._answers[agent] = _Answer(agents, self._clock())
        return agents
