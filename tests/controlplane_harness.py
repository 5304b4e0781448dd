"""Runs a real control plane (`ControlPlaneServer`) and managed agents in background threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import httpx

from agent.control.client import ControlLinkSettings
from agent.managed import ManagedAgent
from agent.settings import AgentSettings, ModelSettings
from common.control import AgentStatus, DesiredState
from controlplane.server import ADMIN_KEY_FILE, ControlPlaneServer, ListeningPorts
from controlplane.settings import ControlPlaneSettings
from tests.agent_harness import RunningAgent
from tests.conftest import llama_factory
from tests.server_thread import ServerThread


class RunningControlPlane:
    """`outpost serve` in a thread; use as a context manager."""

    def __init__(
        self, settings: ControlPlaneSettings, environ: dict[str, str] | None = None
    ) -> None:
        """`environ`: the gateway's environment (cloud targets' `env:` key references)."""
        self.settings = settings
        self.server = ControlPlaneServer(settings, environ)
        self.ports = ListeningPorts(0, 0, 0)
        self._thread = ServerThread(self.server, "control-plane")

    def __enter__(self) -> RunningControlPlane:
        self.ports = self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._thread.stop()

    @property
    def admin_key(self) -> str:
        return (self.settings.data_dir / ADMIN_KEY_FILE).read_text().strip()

    @property
    def fingerprint(self) -> str:
        assert self.server.ca is not None
        return self.server.ca.fingerprint

    @property
    def enroll_address(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    def api(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.ports.http}/api/v1",
            headers={"Authorization": f"Bearer {key or self.admin_key}"},
            timeout=30,
        )

    def assign_demo_model(
        self, demo_model: Path, agent_id: str | None = None, alias: str = "smol", *, site: str = ""
    ) -> None:
        """Imports the demo model into the registry (once: it is content-addressed) and assigns
        it to the agent (or to every agent of `site`) as `alias` with a 512-token context."""
        target = {"site": site} if site else {"agent": agent_id}
        with self.api() as api:
            with demo_model.open("rb") as handle:
                imported = api.post(
                    "/models",
                    content=handle,
                    params={"name": "smollm2"},
                    headers={"Content-Type": "application/octet-stream"},
                )
            assert imported.status_code == 201, imported.text
            assigned = api.post(
                "/assignments",
                json={"model": "smollm2", **target, "alias": alias, "context_length": 512},
            )
            assert assigned.status_code == 201, assigned.text

    def create_token(self, **body: Any) -> str:
        with self.api() as api:
            response = api.post("/tokens", json=body)
        assert response.status_code == 201, response.text
        return str(response.json()["token"])


def controlplane_settings(
    data_dir: Path, database_url: str | None, **overrides: Any
) -> ControlPlaneSettings:
    settings = ControlPlaneSettings(
        data_dir=data_dir,
        database_url=database_url,
        http_port=0,
        grpc_port=0,
        mtls_port=0,
        fleet_port=0,
    )
    return replace(settings, **overrides)


class ObservedManagedAgent(ManagedAgent):
    """Lets tests wait for the agent to have applied a desired-state generation."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.applied: list[AgentStatus] = []
        self._changed = threading.Condition()

    async def apply(self, desired: DesiredState) -> AgentStatus:
        status = await super().apply(desired)
        with self._changed:
            self.applied.append(status)
            self._changed.notify_all()
        return status

    def wait_applied(self, generation: int, timeout: float = 60.0) -> AgentStatus:
        with self._changed:
            ok = self._changed.wait_for(
                lambda: any(s.observed_generation >= generation for s in self.applied), timeout
            )
            if not ok:
                raise TimeoutError(f"generation {generation} not applied; saw {self.applied}")
            return next(s for s in self.applied if s.observed_generation >= generation)


def managed_agent(
    state_dir: Path,
    control_plane: str = "",
    join_token: str = "",
    fingerprint: str = "",
    telemetry_interval_s: float = 5.0,
    **options: Any,
) -> tuple[RunningAgent, ObservedManagedAgent]:
    """`options` go to ManagedAgent (peer_address, download_rate_limit)."""
    link = ControlLinkSettings(
        control_plane=control_plane, join_token=join_token, ca_fingerprint=fingerprint
    )
    companion = ObservedManagedAgent(
        state_dir,
        link,
        ModelSettings(path=Path(), alias="model", threads=2),
        telemetry_interval_s=telemetry_interval_s,
        **options,
    )
    settings = AgentSettings(host="127.0.0.1", grpc_port=0, http_port=0, state_dir=state_dir)
    return RunningAgent(settings, llama_factory(), companion, policy=companion), companion


class ConnectedAgent(NamedTuple):
    """A managed agent that is serving and connected to its control plane."""

    running: RunningAgent
    companion: ObservedManagedAgent
    agent_id: str


@contextmanager
def connected_agent(
    cp: RunningControlPlane, state_dir: Path, demo_model: Path, **options: Any
) -> Iterator[ConnectedAgent]:
    """A managed agent enrolled at `cp` (site "hq"), serving and connected, the demo model
    assigned to it as smol (maybe not loaded yet); stopped on exit. `options` go to
    `managed_agent`."""
    running, companion = managed_agent(
        state_dir, cp.enroll_address, cp.create_token(site="hq"), cp.fingerprint, **options
    )
    with running:
        running.wait_until_serving()
        wait_until(companion.link.connected.is_set, "the agent is connected")
        with cp.api() as api:
            agent_id = api.get("/agents").json()["agents"][0]["id"]
        cp.assign_demo_model(demo_model, agent_id)
        yield ConnectedAgent(running, companion, agent_id)


def apply_policy(cp: RunningControlPlane, policy: str) -> None:
    """Makes the YAML routing policy `policy` live at `cp` (through its API)."""
    with cp.api() as api:
        applied = api.put("/policy", content=policy, headers={"Content-Type": "application/yaml"})
    assert applied.status_code == 201, applied.text


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Polls a condition another process or thread makes true (e.g. a row the control plane
    writes when a Status arrives), with a deadline; not a fixed sleep."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting until {what}")
        time.sleep(0.05)
