"""The alerts page: the live policy's rules, what fires now, the latest firings and clearings."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from litestar import Request, get
from litestar.response import Response

from common.policy.document import parse_policy
from common.policy.policy_model import AlertRule
from controlplane.console.gate import ConsoleGate
from controlplane.console.rendering import Renderer
from controlplane.db.models import AlertEventRow
from controlplane.services import ControlPlaneServices

ALERTS_PATH = "/console/alerts"
RECENT_EVENTS = 100


@dataclass(frozen=True)
class RuleRow:
    name: str
    condition: str  # e.g. "error_rate > 0.2 per target over 300 s"
    action: str
    notify: str  # channel kinds only: a webhook's URL may hold a secret


@dataclass(frozen=True)
class EventRow:
    at: datetime
    source: str  # the agent's name, or "gateway"
    rule: str
    scope: str
    state: str
    measured: str
    action: str
    reason: str


@dataclass(frozen=True)
class AlertsView:
    policy_version: int | None
    rules: tuple[RuleRow, ...]
    firing: tuple[EventRow, ...]
    firing_truncated: bool
    recent: tuple[EventRow, ...]


def _number(value: float) -> str:
    return f"{value:.4g}"


def _rule(rule: AlertRule, default_notify: str) -> RuleRow:
    window = f" over {rule.window_s} s" if rule.window_s else ""
    threshold = rule.threshold if isinstance(rule.threshold, str) else _number(rule.threshold)
    notify = ", ".join(c.kind.value for c in rule.notify) if rule.notify else default_notify
    return RuleRow(
        name=rule.name,
        condition=f"{rule.metric.value} {rule.op.value} {threshold} per {rule.scope.value}{window}",
        action=rule.action.value,
        notify=notify,
    )


def alerts_view(services: ControlPlaneServices) -> AlertsView:
    """Blocking: call in a thread."""
    live = services.policies.live()
    rules: tuple[RuleRow, ...] = ()
    if live is not None:
        alerts = parse_policy(live.document).alerts
        default_notify = ", ".join(c.kind.value for c in alerts.notify) or "-"
        rules = tuple(_rule(rule, default_notify) for rule in alerts.rules)
    names = {agent.id: agent.name for agent in services.fleet.list()}

    def row(event: AlertEventRow) -> EventRow:
        return EventRow(
            at=event.at,
            source=names.get(event.source, event.source),
            rule=event.rule,
            scope=f"{event.scope}: {event.scope_key}",
            state=event.state,
            measured=f"{_number(event.value)} {event.op} {_number(event.threshold)}",
            action=event.action,
            reason=event.reason,
        )

    firing, truncated = services.alert_events.firing()
    recent = services.alert_events.events(limit=RECENT_EVENTS)
    return AlertsView(
        policy_version=live.version if live is not None else None,
        rules=rules,
        firing=tuple(row(e) for e in firing),
        firing_truncated=truncated,
        recent=tuple(row(e) for e in recent),
    )


def alert_routes(
    services: ControlPlaneServices, gate: ConsoleGate, renderer: Renderer
) -> list[Any]:
    @get(ALERTS_PATH, include_in_schema=False)
    async def alerts_page(request: Request[Any, Any, Any]) -> Response[Any]:
        login = await gate.login(request)
        view = await asyncio.to_thread(alerts_view, services)
        return renderer.page("alerts.html", login=login, view=view)

    return [alerts_page]
