"""Live agent control streams by agent id: wakes them on desired-state changes, cuts them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import grpc

from common.control import DesiredState

log = logging.getLogger(__name__)


@dataclass(eq=False)
class AgentLink:
    """One connected agent's stream, as the hub sees it."""

    agent_id: str
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    # Desired states and telemetry acks are written by two tasks; one write at a time.
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # The newest state a committed change produced, so a push needs no database read.
    latest: DesiredState | None = None
    cut_reason: str | None = None
    cut_code: grpc.StatusCode = grpc.StatusCode.ABORTED

    def cut(self, reason: str, code: grpc.StatusCode) -> None:
        self.cut_reason = reason
        self.cut_code = code
        self.changed.set()


class Hub:
    """Owned by the event loop; `notify_changed` and `cut` may be called from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._links: dict[str, AgentLink] = {}

    def __len__(self) -> int:
        return len(self._links)

    def is_connected(self, agent_id: str) -> bool:
        return agent_id in self._links

    def register(self, agent_id: str) -> AgentLink:
        """A new stream for an agent replaces (cuts) any older one."""
        previous = self._links.get(agent_id)
        if previous is not None:
            previous.cut("replaced by a newer stream from the same agent", grpc.StatusCode.ABORTED)
        link = AgentLink(agent_id)
        self._links[agent_id] = link
        return link

    def unregister(self, link: AgentLink) -> None:
        if self._links.get(link.agent_id) is link:
            del self._links[link.agent_id]

    def notify_changed(self, states: Mapping[str, DesiredState]) -> None:
        """A DesiredStates listener: hands the new states to the streams of those agents."""
        self._loop.call_soon_threadsafe(self._deliver, dict(states))

    def cut(self, agent_id: str, reason: str = "agent revoked") -> None:
        """Ends the agent's stream with PERMISSION_DENIED (revocation)."""
        self._loop.call_soon_threadsafe(self._cut, agent_id, reason)

    def cut_all(self, reason: str) -> None:
        """Ends every stream with UNAVAILABLE (shutdown); agents reconnect with backoff.
        Event loop thread only."""
        for link in list(self._links.values()):
            link.cut(reason, grpc.StatusCode.UNAVAILABLE)

    def _deliver(self, states: dict[str, DesiredState]) -> None:
        for agent_id, state in states.items():
            link = self._links.get(agent_id)
            if link is None:
                continue
            if link.latest is None or state.generation > link.latest.generation:
                link.latest = state
            link.changed.set()

    def _cut(self, agent_id: str, reason: str) -> None:
        link = self._links.get(agent_id)
        if link is not None:
            log.info("cutting the stream of agent %s: %s", agent_id, reason)
            link.cut(reason, grpc.StatusCode.PERMISSION_DENIED)
