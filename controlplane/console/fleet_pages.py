"""Fleet pages: the overview of sites and agents (health, models, load), its fragment, agents."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from litestar import Request, get, post
from litestar.params import Parameter
from litestar.response import Response

from common.errors import InvalidArgument
from common.telemetry import Metric, Sample
from controlplane.api.auth_guard import Access
from controlplane.console.charts import RANGES, agent_charts, check_range
from controlplane.console.errors import BadForm
from controlplane.console.gate import ConsoleGate, field
from controlplane.console.rendering import Renderer, redirect
from controlplane.console.sessions import ConsoleLogin
from controlplane.db.models import Agent
from controlplane.desired_state_checks import MAX_LABELS
from controlplane.fleet import AgentRevoked
from controlplane.liveness import Health
from controlplane.services import ControlPlaneServices
from controlplane.settings import ConsoleSettings

NO_SITE = "(no site)"
FRAGMENT_PATH = "/console/fleet-fragment"
MAX_AGENT_ID_CHARS = 64
MAX_LABELS_FORM_BYTES = 16 * 1024
MAX_LABELS_CHARS = MAX_LABELS * 128  # key=value lines of at most 63 + 1 + 63 + 1 characters


@dataclass(frozen=True)
class Load:
    cpu: str = "-"
    memory: str = "-"
    gpu: str = "-"
    tokens_per_second: str = "-"
    collected_at: datetime | None = None


@dataclass(frozen=True)
class AgentRow:
    id: str
    name: str
    site: str
    state: str
    reason: str
    models: tuple[str, ...]
    load: Load
    last_seen_at: datetime | None


@dataclass(frozen=True)
class SiteGroup:
    name: str
    agents: tuple[AgentRow, ...]
    ready: int


@dataclass(frozen=True)
class StatusItemRow:
    kind: str
    name: str
    state: str
    error: str
    progress: str


@dataclass(frozen=True)
class MetricRow:
    name: str
    labels: str
    value: str


@dataclass(frozen=True)
class EventLine:
    """Something that happened to or at the agent: an audited change or an alert."""

    at: datetime
    what: str
    by: str
    outcome: str


RECENT_EVENTS = 20


def recent_events(services: ControlPlaneServices, agent_id: str) -> tuple[EventLine, ...]:
    """The agent's newest audit events (enrolment, labels, models, revocation) and alerts."""
    audited = [
        EventLine(e.at, e.action, e.actor, e.outcome)
        for e in services.audit.list(RECENT_EVENTS, target=f"agent:{agent_id}")
    ]
    alerts = [
        EventLine(e.at, f"alert {e.rule} ({e.scope}: {e.scope_key})", "agent", e.state)
        for e in services.alert_events.events(limit=RECENT_EVENTS, filters={"source": agent_id})
    ]
    return tuple(sorted(audited + alerts, key=lambda e: e.at, reverse=True)[:RECENT_EVENTS])


@dataclass(frozen=True)
class AgentDetail:
    row: AgentRow
    agent: Agent
    hardware: tuple[tuple[str, str], ...]
    desired_models: tuple[tuple[str, str], ...]  # alias, source
    items: tuple[StatusItemRow, ...]
    metrics: tuple[MetricRow, ...]
    events: tuple[EventLine, ...]


def _values(sample: Sample, name: str) -> list[float]:
    return [m.value for m in sample.metrics if m.name == name]


def _cpu(sample: Sample) -> list[float]:
    """The whole machine's CPU share: the "total" series, else the cores' average."""
    cpu = [m for m in sample.metrics if m.name == "outpost_cpu_utilization_ratio"]
    total = [m.value for m in cpu if m.labels.get("cpu") == "total"]
    return total or [m.value for m in cpu]


def _percent(values: Iterable[float]) -> str:
    listed = list(values)
    return f"{100 * sum(listed) / len(listed):.0f} %" if listed else "-"


def load_of(sample: Sample | None) -> Load:
    if sample is None:
        return Load()
    used, total = (
        _values(sample, "outpost_memory_used_bytes"),
        _values(sample, "outpost_memory_total_bytes"),
    )
    memory = f"{100 * used[0] / total[0]:.0f} %" if used and total and total[0] > 0 else "-"
    rates = _values(sample, "outpost_model_tokens_per_second")
    return Load(
        cpu=_percent(_cpu(sample)),
        memory=memory,
        gpu=_percent(_values(sample, "outpost_gpu_utilization_ratio")),
        tokens_per_second=f"{sum(rates):.1f}" if rates else "-",
        collected_at=sample.collected_at,
    )


def _models(agent: Agent) -> tuple[str, ...]:
    return tuple(
        f"{item.get('name', '?')} ({item.get('state', '?')})"
        for item in agent.status_items or []
        if item.get("kind") == "model"
    )


def _row(agent: Agent, health: Health | None, sample: Sample | None) -> AgentRow:
    return AgentRow(
        id=agent.id,
        name=agent.name,
        site=agent.site or NO_SITE,
        state=health.state.value if health is not None else agent.state,
        reason=health.reason if health is not None else "",
        models=_models(agent),
        load=load_of(sample),
        last_seen_at=agent.last_seen_at,
    )


def fleet_overview(services: ControlPlaneServices) -> tuple[SiteGroup, ...]:
    """Every site (by name) with its agents (by name); blocking: call in a thread."""
    agents = services.fleet.list()
    latest = {a.id: s for a in agents if (s := services.telemetry.latest(a.id)) is not None}
    health = services.health(latest)
    sites: dict[str, list[AgentRow]] = {}
    for agent in agents:
        row = _row(agent, health.get(agent.id), latest.get(agent.id))
        sites.setdefault(row.site, []).append(row)
    return tuple(
        SiteGroup(
            name=name,
            agents=tuple(sorted(rows, key=lambda r: (r.name, r.id))),
            ready=sum(r.state == "ready" for r in rows),
        )
        for name, rows in sorted(sites.items())
    )


def _progress(item: dict[str, Any]) -> str:
    done, total = item.get("bytes_done") or 0, item.get("bytes_total") or 0
    if not total:
        return ""
    return f"{100 * done / total:.0f} % of {total / 1e6:.1f} MB"


def _metric(metric: Metric) -> MetricRow:
    labels = ", ".join(f"{k}={v}" for k, v in sorted(metric.labels.items()))
    return MetricRow(metric.name.removeprefix("outpost_"), labels, f"{metric.value:.4g}")


def _text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def agent_detail(services: ControlPlaneServices, agent_id: str) -> AgentDetail:
    """One agent (NotFound when unknown); blocking: call in a thread."""
    agent = services.fleet.get(agent_id)
    sample = services.telemetry.latest(agent_id)
    health = services.health({agent_id: sample} if sample is not None else None).get(agent_id)
    desired = services.desired.current(agent_id)
    return AgentDetail(
        row=_row(agent, health, sample),
        agent=agent,
        hardware=tuple((k, _text(v)) for k, v in sorted((agent.hardware or {}).items())),
        desired_models=tuple(
            (m.alias, m.model_name or m.path or f"sha256:{m.sha256[:12]}…") for m in desired.models
        ),
        items=tuple(
            StatusItemRow(
                kind=str(item.get("kind", "")),
                name=str(item.get("name", "")),
                state=str(item.get("state", "")),
                error=str(item.get("error", "")),
                progress=_progress(item),
            )
            for item in agent.status_items or []
        ),
        metrics=tuple(_metric(m) for m in sample.metrics) if sample is not None else (),
        events=recent_events(services, agent_id),
    )


def labels_text(labels: dict[str, str]) -> str:
    """An agent's labels as the label editor shows them: one `key=value` a line, by key."""
    return "".join(f"{key}={value}\n" for key, value in sorted(labels.items()))


def parse_label_lines(text: str) -> dict[str, str]:
    """`key=value` a line (blank lines skipped); BadForm names the first malformed line. What a
    valid key or value is, and how many there may be, is the fleet service's to say."""
    labels: dict[str, str] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise BadForm(f"Line {number} is not key=value: {line[:80]!r}.")
        if key in labels:
            raise BadForm(f"Line {number}: the label {key[:63]!r} is given twice.")
        labels[key] = value
    return labels


def fleet_routes(
    services: ControlPlaneServices,
    gate: ConsoleGate,
    renderer: Renderer,
    settings: ConsoleSettings,
) -> list[Any]:
    def overview_with_alerts() -> tuple[tuple[SiteGroup, ...], int]:
        return fleet_overview(services), len(services.alert_events.firing()[0])

    @get("/", include_in_schema=False)
    async def overview(request: Request[Any, Any, Any]) -> Response[Any]:
        """The fleet at a glance; logged-out visitors are sent to /login."""
        login = await gate.login(request)
        sites, firing = await asyncio.to_thread(overview_with_alerts)
        return renderer.page(
            "fleet.html",
            login=login,
            sites=sites,
            firing=firing,
            fragment_path=FRAGMENT_PATH,
            refresh_seconds=settings.refresh_seconds,
        )

    @get(FRAGMENT_PATH, include_in_schema=False)
    async def overview_fragment(request: Request[Any, Any, Any]) -> Response[Any]:
        """The overview's table alone, polled by console.js."""
        await gate.login(request)
        sites, firing = await asyncio.to_thread(overview_with_alerts)
        return renderer.page("fleet_table.html", sites=sites, firing=firing)

    async def agent_context(agent_id: str, range_name: str | None) -> dict[str, Any]:
        chosen = check_range(range_name)

        def load() -> dict[str, Any]:
            return {
                "detail": agent_detail(services, agent_id),
                "charts": agent_charts(services, agent_id, chosen),
                "range": chosen,
                "ranges": list(RANGES),
            }

        return await asyncio.to_thread(load)

    async def agent_html(
        login: ConsoleLogin,
        agent_id: str,
        range_name: str | None,
        *,
        status: int = 200,
        label_error: str = "",
        label_draft: str | None = None,
    ) -> Response[Any]:
        context = await agent_context(agent_id, range_name)
        detail: AgentDetail = context["detail"]
        return renderer.page(
            "agent.html",
            status=status,
            login=login,
            refresh_seconds=settings.refresh_seconds,
            can_label=login.principal.role.can_change() and detail.agent.revoked_at is None,
            label_error=label_error,
            label_text=labels_text(detail.agent.labels) if label_draft is None else label_draft,
            max_labels_chars=MAX_LABELS_CHARS,
            **context,
        )

    @get("/console/agents/{agent_id:str}", include_in_schema=False)
    async def agent_page(
        request: Request[Any, Any, Any],
        agent_id: str = Parameter(max_length=MAX_AGENT_ID_CHARS),
    ) -> Response[Any]:
        """One agent: identity, hardware, models and rollout, telemetry charts over a range."""
        login = await gate.login(request)
        return await agent_html(login, agent_id, request.query_params.get("range"))

    @post(
        "/console/agents/{agent_id:str}/labels",
        include_in_schema=False,
        request_max_body_size=MAX_LABELS_FORM_BYTES,
    )
    async def set_labels(
        request: Request[Any, Any, Any],
        agent_id: str = Parameter(max_length=MAX_AGENT_ID_CHARS),
    ) -> Response[Any]:
        """Replaces the agent's labels with the form's `key=value` lines (operators and admins,
        as PUT /api/v1/agents/{id}/labels); a refusal is shown on the agent page."""
        login = await gate.login(request)
        fields = await gate.form(request, login)
        await gate.require(login, Access.CHANGE, "agent.set_labels", f"agent:{agent_id}")
        draft = "".join(
            c for c in fields.get("labels", "")[:MAX_LABELS_CHARS] if c.isprintable() or c == "\n"
        )
        try:
            text = field(
                fields,
                "labels",
                "The labels",
                max_chars=MAX_LABELS_CHARS,
                required=False,
                multiline=True,
            )
            labels = parse_label_lines(text)
            name = login.principal.name
            await asyncio.to_thread(lambda: services.fleet.set_labels(agent_id, labels, actor=name))
        except (BadForm, InvalidArgument) as exc:
            message = exc.message if isinstance(exc, BadForm) else str(exc)
            return await agent_html(
                login, agent_id, None, status=400, label_error=message, label_draft=draft
            )
        except AgentRevoked as exc:
            return await agent_html(login, agent_id, None, status=409, label_error=str(exc))
        return redirect(f"/console/agents/{agent_id}")

    @get("/console/agents/{agent_id:str}/live", include_in_schema=False)
    async def agent_fragment(
        request: Request[Any, Any, Any],
        agent_id: str = Parameter(max_length=MAX_AGENT_ID_CHARS),
    ) -> Response[Any]:
        """The agent page's models, rollout and telemetry, polled by console.js."""
        await gate.login(request)
        context = await agent_context(agent_id, request.query_params.get("range"))
        return renderer.page("agent_live.html", **context)

    return [overview, overview_fragment, agent_page, set_labels, agent_fragment]
