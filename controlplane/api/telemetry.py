"""Routes for agents' telemetry: latest health, a metric's time series, the fleet summary."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from litestar import get
from litestar.params import Parameter
from sqlalchemy import func
from sqlmodel import col, select

from common.errors import InvalidArgument
from common.telemetry import METRICS, Sample
from controlplane.api.auth_guard import Access, access
from controlplane.api.views import iso
from controlplane.db.models import METRIC_NAME_CHARS, Agent, AgentState
from controlplane.liveness import Health, Liveness
from controlplane.services import ControlPlaneServices
from controlplane.telemetry_store import MAX_BUCKETS, MIN_STEP, Counters, Series

AGENT = "agent:{agent_id}"
MAX_ID = 64
MAX_TIME_CHARS = 64
MAX_LABEL_PARAMS = 16
MAX_LABEL_PARAM_CHARS = 256
MAX_STEP = timedelta(days=366)
DEFAULT_RANGE = timedelta(hours=1)
DEFAULT_STEP = timedelta(seconds=60)
_STEP = re.compile(r"(\d{1,12}(?:\.\d{1,6})?)(ms|s|m|h|d)?")
_UNITS = {
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
}


def iso_ms(moment: datetime) -> str:
    """ISO-8601 in UTC with a `Z`; milliseconds only when the time has a fraction."""
    moment = moment.astimezone(UTC)
    spec = "milliseconds" if moment.microsecond else "seconds"
    return moment.isoformat(timespec=spec).replace("+00:00", "Z")


def parse_time(value: str, field: str) -> datetime:
    """An ISO-8601 time, e.g. 2030-01-31T12:00:00Z; without a zone it is taken as UTC."""
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidArgument(
            f"'{field}' must be an ISO-8601 time such as 2030-01-31T12:00:00Z, "
            f"not {value[:MAX_TIME_CHARS]!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def parse_step(value: str) -> timedelta:
    """A duration: a number with a unit (500ms, 15s, 5m, 1h, 1d) or plain seconds."""
    match = _STEP.fullmatch(value.strip())
    if match is None:
        raise InvalidArgument(
            f"'step' must be a duration such as 60s, 5m or 1h, not {value[:MAX_TIME_CHARS]!r}"
        )
    number, unit = match.groups()
    step = float(number) * _UNITS[unit or "s"]
    if step < MIN_STEP:
        raise InvalidArgument(f"'step' must be at least {MIN_STEP.total_seconds():g}s")
    if step > MAX_STEP:
        raise InvalidArgument(f"'step' must be at most {MAX_STEP.days}d")
    return step


def parse_labels(values: list[str] | None) -> dict[str, str] | None:
    """Repeated `label=key=value` query parameters; None when there is none."""
    if not values:
        return None
    if len(values) > MAX_LABEL_PARAMS:
        raise InvalidArgument(f"at most {MAX_LABEL_PARAMS} 'label' parameters")
    labels: dict[str, str] = {}
    for value in values:
        key, sep, label_value = value.partition("=")
        if not sep or not key:
            raise InvalidArgument(
                f"'label' must be key=value, e.g. label=cpu=total, not {value[:64]!r}"
            )
        if labels.get(key, label_value) != label_value:
            raise InvalidArgument(f"'label' gives {key[:64]!r} two values")
        labels[key] = label_value
    return labels


def counters_view(counters: Counters) -> dict[str, Any]:
    return {
        "received": counters.received,
        "stored": counters.stored,
        "duplicates": counters.duplicates,
        "rejected": counters.rejected,
        "dropped_by_agent": counters.dropped_by_agent,
        "last_sample_at": iso(counters.last_sample_at),
    }


def health_view(
    agent: Agent, sample: Sample | None, counters: Counters, health: Health
) -> dict[str, Any]:
    return {
        "agent_id": agent.id,
        "state": agent.state,
        "liveness": {"state": health.state.value, "reason": health.reason},
        "collected_at": iso_ms(sample.collected_at) if sample is not None else None,
        "metrics": [
            {"name": m.name, "labels": dict(m.labels), "value": m.value}
            for m in (sample.metrics if sample is not None else ())
        ],
        "notes": list(sample.notes) if sample is not None else [],
        "counters": counters_view(counters),
    }


def series_view(name: str, series: list[Series]) -> dict[str, Any]:
    spec = METRICS[name]
    return {
        "name": name,
        "unit": spec.unit,
        "kind": spec.kind.value,
        "series": [
            {"labels": s.labels, "points": [[iso_ms(at), value] for at, value in s.points]}
            for s in series
        ],
    }


def telemetry_routes(services: ControlPlaneServices) -> list[Any]:
    fleet, telemetry = services.fleet, services.telemetry
    agent_id_param = Parameter(max_length=MAX_ID, description="the agent's id (a UUID)")
    label_param = Parameter(
        default=None, description="key=value, repeatable: only the series with these labels"
    )

    @get("/agents/{agent_id:str}/health", opt=access(Access.READ, "telemetry.health", AGENT))
    async def agent_health(agent_id: str = agent_id_param) -> dict[str, Any]:
        """The agent's latest health: its connection state, its liveness (ready, degraded,
        unreachable or revoked, with the reason), the metrics and notes of its newest telemetry
        sample (`collected_at` null when none arrived yet) and its ingestion counters."""

        def load() -> dict[str, Any]:
            agent = fleet.get(agent_id)  # NotFound for an unknown agent
            latest = telemetry.latest(agent_id)
            health = services.health({agent_id: latest} if latest is not None else None)
            return health_view(agent, latest, telemetry.counters(agent_id), health[agent_id])

        return await asyncio.to_thread(load)

    @get(
        "/agents/{agent_id:str}/metrics/{name:str}",
        opt=access(Access.READ, "telemetry.series", AGENT),
    )
    async def metric_series(
        agent_id: str = agent_id_param,
        name: str = Parameter(
            max_length=METRIC_NAME_CHARS, description="a metric name, e.g. outpost_load_average"
        ),
        start: str | None = Parameter(
            default=None,
            max_length=MAX_TIME_CHARS,
            description="ISO-8601 start of the range (default: end minus one hour, aligned "
            "to the step)",
        ),
        end: str | None = Parameter(
            default=None, max_length=MAX_TIME_CHARS, description="ISO-8601 end (default: now)"
        ),
        step: str | None = Parameter(
            default=None,
            max_length=MAX_TIME_CHARS,
            description="bucket width, e.g. 15s, 5m, 1h (default 60s, at least 1s); at most "
            f"{MAX_BUCKETS} buckets",
        ),
        label: list[str] | None = label_param,
    ) -> dict[str, Any]:
        """A metric's time series in [start, end): per label set, the average of each step
        bucket that has data, as [bucket start, value] pairs. Older ranges come from minute
        averages. 400 for an unknown metric, a bad time or step, start >= end or too many
        buckets."""
        if name not in METRICS:
            raise InvalidArgument(
                f"unknown metric {name!r}; see the agent's /metrics for the names"
            )
        for value in label or ():
            if len(value) > MAX_LABEL_PARAM_CHARS:
                raise InvalidArgument(f"a 'label' is longer than {MAX_LABEL_PARAM_CHARS} chars")
        labels = parse_labels(label)
        width = DEFAULT_STEP if step is None else parse_step(step)
        until = telemetry.now() if end is None else parse_time(end, "end")
        if start is not None:
            since = parse_time(start, "start")
        else:  # whole steps since the epoch: a chart that refreshes keeps its buckets
            since = until - DEFAULT_RANGE
            since -= (since - datetime(1970, 1, 1, tzinfo=UTC)) % width
        if since >= until:
            raise InvalidArgument("'start' must be before 'end'")

        def load() -> dict[str, Any]:
            fleet.get(agent_id)  # NotFound for an unknown agent
            found = telemetry.series(
                agent_id, name, start=since, end=until, step=width, labels=labels
            )
            return series_view(name, found)

        return await asyncio.to_thread(load)

    @get("/fleet/summary", opt=access(Access.READ, "fleet.summary"))
    async def fleet_summary() -> dict[str, Any]:
        """How many agents there are, by state, and the fleet's telemetry ingestion counters."""

        def load() -> dict[str, Any]:
            with services.db.session() as session:
                rows = session.exec(
                    select(Agent.state, func.count()).group_by(col(Agent.state))
                ).all()
            by_state = {state.value: 0 for state in AgentState}
            by_state.update({state: int(count) for state, count in rows})
            by_liveness = {state.value: 0 for state in Liveness}
            for health in services.health().values():
                by_liveness[health.state.value] += 1
            totals = telemetry.totals()
            return {
                "agents": sum(by_state.values()),
                "by_state": by_state,
                "by_liveness": by_liveness,
                "telemetry": {
                    "received": totals.received,
                    "stored": totals.stored,
                    "duplicates": totals.duplicates,
                    "rejected": totals.rejected,
                    "dropped_by_agent": totals.dropped_by_agent,
                },
            }

        return await asyncio.to_thread(load)

    return [agent_health, metric_series, fleet_summary]
