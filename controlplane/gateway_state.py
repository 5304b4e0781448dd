"""What the control plane's gateway routes with: the live policy, the keys, the serving agents."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from common.control import InferenceKeyGrant, ItemState
from common.policy.document import parse_policy
from common.policy.forwarding import ServingAgent
from common.policy.routing import PolicyEngine
from controlplane.db.models import AgentState
from controlplane.inference_keys import live_inference_keys
from controlplane.services import ControlPlaneServices

REFRESH_S = 2.0  # the longest a change made elsewhere (another replica, an agent) goes unseen


@dataclass(frozen=True)
class GatewaySnapshot:
    engine: PolicyEngine  # PolicyEngine(None) while no policy is applied
    keys: Mapping[str, InferenceKeyGrant]  # live inference keys by their sha256
    serving: Mapping[str, tuple[ServingAgent, ...]]  # model alias -> agents serving it now
    agents: Mapping[str, tuple[ServingAgent, ...]]  # agent id or name -> those agents
    loaded_at: float


class GatewayState:
    """A snapshot read once per REFRESH_S (or at the next request after `invalidate`, which the
    control plane calls whenever desired states change: a policy applied, a key created or
    revoked), so a request costs no database query. Thread-safe."""

    def __init__(
        self,
        services: ControlPlaneServices,
        *,
        refresh_s: float = REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._services = services
        self._refresh_s = refresh_s
        self._clock = clock
        self._snapshot: GatewaySnapshot | None = None
        self._stale = threading.Event()
        self._loading = asyncio.Lock()
        self._engine = PolicyEngine(None)

    def invalidate(self) -> None:
        self._stale.set()

    def latest(self) -> GatewaySnapshot | None:
        """The last snapshot read (None before the first), however old."""
        return self._snapshot

    def fresh(self) -> GatewaySnapshot | None:
        """The snapshot when it is recent enough to route with, else None."""
        snapshot = self._snapshot
        if snapshot is None or self._stale.is_set():
            return None
        return snapshot if self._clock() - snapshot.loaded_at < self._refresh_s else None

    async def current(self) -> GatewaySnapshot:
        """A fresh snapshot, read from the database on a worker thread when it is not."""
        snapshot = self.fresh()
        if snapshot is not None:
            return snapshot
        async with self._loading:  # one reader at a time; the others take its result
            snapshot = self.fresh()
            if snapshot is None:
                snapshot = await asyncio.to_thread(self.load)
            return snapshot

    def load(self) -> GatewaySnapshot:
        self._stale.clear()  # a change committed while loading sets it again
        started = self._clock()
        services = self._services
        live = services.policies.live()
        engine = self._engine
        if live is None:
            engine = PolicyEngine(None)
        elif engine.policy is None or engine.policy.digest != live.digest:
            engine = PolicyEngine(parse_policy(live.document, source=f"policy v{live.version}"))
        self._engine = engine
        with services.db.session() as session:
            grants = live_inference_keys(session)
        serving, agents = self._forwardable()
        snapshot = GatewaySnapshot(
            engine=engine,
            keys=MappingProxyType({grant.key_hash: grant for grant in grants}),
            serving=MappingProxyType(serving),
            agents=MappingProxyType(agents),
            loaded_at=started,
        )
        self._snapshot = snapshot
        return snapshot

    def _forwardable(
        self,
    ) -> tuple[dict[str, tuple[ServingAgent, ...]], dict[str, tuple[ServingAgent, ...]]]:
        """Connected agents that take forwarded requests, most recently seen first: by the
        models they serve (ready, or still serving the previous version while the next one
        rolls out), and by id and name (`site_agent` targets)."""
        serving: dict[str, list[ServingAgent]] = {}
        named: dict[str, list[ServingAgent]] = {}
        agents = [
            agent
            for agent in self._services.fleet.list()
            if agent.state == AgentState.CONNECTED.value and agent.inference_address
        ]
        agents.sort(key=lambda agent: agent.last_seen_at or agent.enrolled_at, reverse=True)
        for agent in agents:
            entry = ServingAgent(agent.id, agent.inference_address)
            for name in dict.fromkeys((agent.id, agent.name)):
                named.setdefault(name, []).append(entry)
            for item in agent.status_items:
                if item.get("kind") != "model":
                    continue
                if item.get("state") == ItemState.READY.value or item.get("serving_sha256"):
                    serving.setdefault(str(item.get("name", "")), []).append(entry)
        return _tuples(serving), _tuples(named)


def _tuples(lists: dict[str, list[ServingAgent]]) -> dict[str, tuple[ServingAgent, ...]]:
    return {key: tuple(entries) for key, entries in lists.items()}
