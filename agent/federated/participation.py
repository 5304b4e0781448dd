"""The agent's part in federated jobs: its SuperNodes, and the local relay that carries their
Fleet API traffic to the control plane over mutual TLS with the agent's own certificate."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from agent.control.identity import IdentityStore, StoredIdentity
from agent.federated.supernodes import NodeContext, SuperNodes
from common.control import FederatedTask, ItemState, ItemStatus
from common.fleet_relay import FleetRelay
from common.fleet_relay_tls import client_ssl_context

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 10.0  # how often an exited SuperNode is noticed and started again


def _host(address: str) -> str:
    host, _, _ = address.rpartition(":")
    return host.strip("[]") or address


class FederatedParticipation:
    """`apply(tasks)` with each desired state; `close()` when the agent stops."""

    def __init__(
        self,
        state_dir: Path,
        datasets_dir: Path,
        model_path: Callable[[str], Path],
        identities: IdentityStore,
        *,
        insecure: bool = False,
    ) -> None:
        self._work_dir = state_dir / "federated"
        self._datasets_dir = datasets_dir
        self._model_path = model_path
        self._identities = identities
        self._insecure = insecure
        self._nodes: SuperNodes | None = None
        self._identity: StoredIdentity | None = None
        self._relays: dict[int, tuple[FleetRelay, str]] = {}  # fleet port -> relay, address
        self._tasks: tuple[FederatedTask, ...] = ()
        self._problem = ""

    async def apply(self, tasks: tuple[FederatedTask, ...]) -> None:
        self._tasks = tasks
        self._problem = ""
        if not tasks and self._nodes is None:
            return
        identity = await asyncio.to_thread(self._identities.load)
        if identity is None:
            self._problem = "the agent is not enrolled: it cannot take part in federated jobs"
            return
        if self._identity is not None and identity != self._identity:
            await self._close_relays()  # a renewed certificate: new connections use it
        self._identity = identity
        if self._nodes is None:
            context = NodeContext(
                identity.agent_id, self._datasets_dir, self._model_path, self._work_dir
            )
            self._nodes = SuperNodes(context, self._relay_address)
        await self._nodes.apply(tasks)
        if not tasks:
            await self._close_relays()

    async def _relay_address(self, task: FederatedTask) -> str:
        known = self._relays.get(task.fleet_port)
        if known is not None:
            return known[1]
        identity = self._identity
        assert identity is not None, "apply() sets the identity first"
        host = _host(identity.control_plane)
        if self._insecure:
            relay = FleetRelay(
                host="127.0.0.1", port=0, upstream=f"http://{host}:{task.fleet_port}"
            )
        else:
            tls = client_ssl_context(
                ca_pem=identity.ca_certificate_pem,
                cert_pem=identity.certificate_pem,
                key_pem=identity.key_pem,
            )
            relay = FleetRelay(
                host="127.0.0.1",
                port=0,
                upstream=f"https://{host}:{task.fleet_port}",
                upstream_ssl=tls,
            )
        address = f"127.0.0.1:{await relay.start()}"
        self._relays[task.fleet_port] = (relay, address)
        log.info("Flower Fleet API relay %s -> %s:%d", address, host, task.fleet_port)
        return address

    async def watch(self, stop: asyncio.Event) -> None:
        """Starts again any SuperNode that exited while its task remains."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), WATCH_INTERVAL_S)
            except TimeoutError:
                if self._nodes is not None and self._nodes.exited():
                    log.warning("a SuperNode exited: starting it again")
                    await self.apply(self._tasks)

    def statuses(self) -> list[ItemStatus]:
        items = self._nodes.statuses() if self._nodes is not None else []
        if self._problem:
            items += [
                ItemStatus(
                    kind="federated", name=t.job_id, state=ItemState.FAILED, error=self._problem
                )
                for t in self._tasks
            ]
        return items

    async def _close_relays(self) -> None:
        relays, self._relays = list(self._relays.values()), {}
        for relay, _ in relays:
            await relay.close()

    async def close(self) -> None:
        if self._nodes is not None:
            await self._nodes.close()
        await self._close_relays()
