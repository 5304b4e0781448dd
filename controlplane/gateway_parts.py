"""Assembles the control plane's gateway: its state, gate, cloud client, alerts and ledger."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from common.policy.alert_notify import AlertEvent, LogNotifier, Notifiers, WebhookNotifier
from common.policy.cloud_client import CloudClient
from common.policy.gate import Authenticate, FindSiteAgents, PolicyGate
from common.policy.ledger_record import LedgerRecord
from common.policy.request_alerts import EVALUATE_EVERY_S, RequestAlerts
from common.policy.routing import PolicyEngine
from controlplane.background_writer import BackgroundWriter
from controlplane.gateway import Gateway
from controlplane.gateway_state import GatewayState
from controlplane.services import ControlPlaneServices


@dataclass
class GatewayParts:
    state: GatewayState
    gateway: Gateway
    cloud: CloudClient
    webhooks: WebhookNotifier
    ledger: BackgroundWriter[LedgerRecord]
    alert_events: BackgroundWriter[AlertEvent]

    @classmethod
    def build(cls, services: ControlPlaneServices, environ: Mapping[str, str]) -> GatewayParts:
        """`environ` resolves cloud targets' `env:` key references. The gateway's ledger rows
        and alert events are stored with the source "gateway"."""
        state = GatewayState(services)
        cloud = CloudClient(environ=environ)
        webhooks = WebhookNotifier()
        ledger = BackgroundWriter(
            services.usage.record_many,
            name="gateway-ledger",
            describe=lambda row: f"ledger row {row.request_id}",
        )
        alert_events = BackgroundWriter(
            services.alert_events.record_many,
            name="gateway-alert-events",
            describe=lambda event: f"alert event {event.rule} {event.state}",
        )
        alerts = RequestAlerts(Notifiers(LogNotifier(), webhooks), record=alert_events.record)

        def gate_for(
            engine: Callable[[], PolicyEngine],
            authenticate: Authenticate,
            site_agents: FindSiteAgents,
        ) -> PolicyGate:
            return PolicyGate(
                engine,
                authenticate,
                cloud,
                alerts=alerts,
                ledger=ledger.record,
                site_agents=site_agents,
                local_targets_forwarded=True,  # served by forwarding to an agent
            )

        return cls(state, Gateway(state, cloud, gate_for), cloud, webhooks, ledger, alert_events)

    async def evaluate_alerts(self, stop: asyncio.Event) -> None:
        """Measures the gateway's alert rules every few seconds until `stop`."""
        while not stop.is_set():
            if self.state.latest() is not None:
                await asyncio.to_thread(self.gateway.gate.evaluate_alerts)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), EVALUATE_EVERY_S)

    async def aclose(self) -> None:
        await self.cloud.aclose()
        await asyncio.to_thread(self.webhooks.close)
        await asyncio.to_thread(self.ledger.close)
        await asyncio.to_thread(self.alert_events.close)
