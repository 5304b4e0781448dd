"""Assembles the agent: model pool, gRPC and HTTP front ends on one event loop, lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc

from agent.grpc_api import GrpcFrontEnd
from agent.http_api import create_app
from agent.inference import Inference
from agent.model_pool import BackendFactory, ModelPool
from agent.request_validation import RequestLimits
from agent.settings import AgentSettings
from agent.telemetry.agent_metrics import AgentMetrics
from common.embedded_http import bind_listener, embedded_server
from common.policy.alert_notify import AlertEvent, LogNotifier, Notifiers, WebhookNotifier
from common.policy.budgets import SettledUsage
from common.policy.cloud_client import CloudClient
from common.policy.forwarding import ServingAgent
from common.policy.gate import PolicyGate
from common.policy.ledger_record import LedgerRecord
from common.policy.request_alerts import EVALUATE_EVERY_S, RequestAlerts
from common.policy.request_budgets import RequestBudgets
from common.policy.routing import Caller, PolicyEngine
from common.systemd_notify import SystemdNotifier

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class BoundPorts:
    grpc: int
    http: int


def _disk_paths(settings: AgentSettings) -> list[Path]:
    """Where the agent keeps state and models: the disks its telemetry watches."""
    paths = [settings.state_dir] if settings.state_dir is not None else []
    paths += [model.path.parent for model in settings.models]
    return list(dict.fromkeys(paths))


class Companion(Protocol):
    """Work that runs with the servers, e.g. the control-plane link of a managed agent."""

    async def prepare(self, pool: ModelPool, metrics: AgentMetrics, ports: BoundPorts) -> None:
        """Runs after the configured models are loaded and before health turns SERVING."""
        ...

    async def run(self, stop: asyncio.Event) -> None:
        """Runs while the agent serves, until `stop` is set; an error stops the agent."""
        ...

    def register_services(self, server: grpc.aio.Server) -> None:
        """Adds gRPC services of its own to the agent's server before it starts."""
        ...


class PolicySource(Protocol):
    """Where the agent's endpoints get the routing policy in force and their callers' keys."""

    def current_engine(self) -> PolicyEngine: ...

    def authenticate(self, authorization: str | None) -> Caller | None: ...

    def record_usage(self, record: LedgerRecord) -> None:
        """The ledger sink: once per routed request, on the event loop; never blocks."""
        ...

    def record_alert_event(self, event: AlertEvent) -> None:
        """Each alert firing and clearing, from the evaluating thread; never blocks."""
        ...

    def settled_usage(self) -> list[SettledUsage]:
        """Requests settled earlier this UTC month (before a restart), for the budgets."""
        ...

    async def find_site_agents(self, agent: str) -> tuple[ServingAgent, ...]:
        """Where the site's agent a `site_agent` target names takes forwarded requests."""
        ...


class AgentServer:
    """Runs until `request_stop()`; servers answer at once, health turns SERVING when loaded."""

    def __init__(
        self,
        settings: AgentSettings,
        backend_factory: BackendFactory,
        companion: Companion | None = None,
        *,
        policy: PolicySource | None = None,
        environ: Mapping[str, str] | None = None,
        notifier: SystemdNotifier | None = None,
    ) -> None:
        """`policy`: the routing policy to enforce (None: only this agent's models answer,
        to anyone); `environ`: where cloud targets' `env:` key references are looked up;
        `notifier`: tells systemd when the agent is ready and stopping, and feeds its watchdog."""
        self._settings = settings
        self._notifier = notifier
        self._companion = companion
        self.pool = ModelPool(settings.models, backend_factory)  # checks the model files
        self._cloud = CloudClient(environ=dict(environ or {}))
        self._webhooks = WebhookNotifier()
        self.gate: PolicyGate | None = None
        if policy is not None:
            budgets = RequestBudgets()
            budgets.replay(policy.settled_usage())  # today's spend survives a restart
            self.gate = PolicyGate(
                policy.current_engine,
                policy.authenticate,
                self._cloud,
                budgets,
                alerts=RequestAlerts(
                    Notifiers(LogNotifier(), self._webhooks), record=policy.record_alert_event
                ),
                ledger=policy.record_usage,
                site_agents=policy.find_site_agents,
            )
        self.inference = Inference(
            self.pool,
            RequestLimits(
                max_tokens_limit=settings.max_tokens_limit,
                default_max_tokens=settings.default_max_tokens,
                max_stop_sequences=settings.max_stop_sequences,
            ),
            self.gate,
        )
        self.metrics = AgentMetrics.for_paths(self.pool, _disk_paths(settings))
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def request_stop(self) -> None:
        """Thread-safe: asks a running server to shut down."""
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)

    async def run(self, on_listening: asyncio.Future[BoundPorts] | None = None) -> None:
        settings = self._settings
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        grpc_front = GrpcFrontEnd(self.inference, max_message_bytes=settings.max_request_bytes)
        if self._companion is not None:
            self._companion.register_services(grpc_front.server)
        http_socket = bind_listener(settings.host, settings.http_port)
        http_server = embedded_server(
            create_app(
                self.inference,
                max_request_bytes=settings.max_request_bytes,
                prometheus=self.metrics.prometheus,
            )
        )
        watchdog = self._notifier.start_watchdog() if self._notifier is not None else None
        try:
            grpc_port = await grpc_front.start(settings.host, settings.grpc_port)
            if grpc_port == 0:
                raise OSError(f"cannot listen for gRPC on {settings.host}:{settings.grpc_port}")
            http_task = asyncio.create_task(http_server.serve(sockets=[http_socket]))
            ports = BoundPorts(grpc=grpc_port, http=http_socket.getsockname()[1])
            log.info("gRPC listening on %s:%d", settings.host, ports.grpc)
            log.info("HTTP listening on http://%s:%d", settings.host, ports.http)
            if on_listening is not None:
                on_listening.set_result(ports)
            load_task = asyncio.create_task(self._lifecycle(grpc_front, self._stop, ports))
            stop_task = asyncio.create_task(self._stop.wait())
            alerts_task = asyncio.create_task(self._evaluate_alerts(self._stop))
            done, _ = await asyncio.wait(
                {load_task, stop_task, http_task}, return_when=asyncio.FIRST_COMPLETED
            )
            if load_task in done and load_task.exception() is None:
                await asyncio.wait({stop_task, http_task}, return_when=asyncio.FIRST_COMPLETED)
            for task in (load_task, stop_task, alerts_task):
                task.cancel()
            log.info("shutting down")
            if self._notifier is not None:
                self._notifier.stopping()
            await grpc_front.stop(SHUTDOWN_GRACE_SECONDS)
            http_server.should_exit = True
            await http_task
            if load_task.done() and not load_task.cancelled() and load_task.exception():
                raise load_task.exception()  # type: ignore[misc]
        finally:
            if watchdog is not None:
                watchdog.cancel()
            http_socket.close()
            await self._cloud.aclose()
            await asyncio.to_thread(self._webhooks.close)
            await asyncio.to_thread(self.pool.close)

    async def _evaluate_alerts(self, stop: asyncio.Event) -> None:
        """Measures the policy's alert rules every few seconds, so firing rules clear (and
        their actions end) also while no request comes in."""
        if self.gate is None:
            return
        while not stop.is_set():
            await asyncio.to_thread(self.gate.evaluate_alerts)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), EVALUATE_EVERY_S)

    async def _lifecycle(
        self, grpc_front: GrpcFrontEnd, stop: asyncio.Event, ports: BoundPorts
    ) -> None:
        await self.pool.load_all()
        if self._companion is not None:
            await self._companion.prepare(self.pool, self.metrics, ports)
        await grpc_front.set_serving(True)
        log.info("models loaded; serving")
        if self._notifier is not None:

            def describe() -> str:
                models = ", ".join(alias for alias, _ in self.pool.runners()) or "no models"
                return f"serving {models}; gRPC port {ports.grpc}, HTTP {ports.http}"

            self._notifier.ready(describe())
            self._notifier.follow_status(describe)  # kept current through rollouts
        if self._companion is not None:
            await self._companion.run(stop)
