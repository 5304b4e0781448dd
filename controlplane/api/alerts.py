"""Routes under /api/v1/alerts: alert firings and clearings recorded, and what fires now."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from litestar import get
from litestar.params import Parameter, QueryParameter

from common.errors import InvalidArgument
from controlplane.api.auth_guard import Access, access
from controlplane.api.telemetry import MAX_TIME_CHARS, iso_ms, parse_time
from controlplane.api.usage import DEFAULT_PAGE, MAX_CURSOR_CHARS, MAX_PAGE, cursor_of, parse_cursor
from controlplane.db.models import ALERT_STATES, ID_CHARS, USAGE_SOURCE_CHARS, AlertEventRow
from controlplane.services import ControlPlaneServices


def event_view(row: AlertEventRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "source": row.source,
        "seq": row.seq,
        "at": iso_ms(row.at),
        "received_at": iso_ms(row.received_at),
        "rule": row.rule,
        "metric": row.metric,
        "scope": row.scope,
        "key": row.scope_key,
        "state": row.state,
        "value": row.value,
        "threshold": row.threshold,
        "op": row.op,
        "action": row.action,
        "reason": row.reason,
    }


def alert_routes(services: ControlPlaneServices) -> list[Any]:
    store = services.alert_events
    time_param = Parameter(
        default=None, max_length=MAX_TIME_CHARS, description="ISO-8601; the range is [since, until)"
    )

    @get("/alerts/events", opt=access(Access.READ, "alerts.events"))
    async def alert_events(
        since: str | None = time_param,
        until: str | None = time_param,
        source: str | None = Parameter(
            default=None, max_length=USAGE_SOURCE_CHARS, description="an agent id or 'gateway'"
        ),
        rule: str | None = Parameter(default=None, max_length=ID_CHARS),
        # `state` is a name Litestar reserves for its own kwarg.
        alert_state: Annotated[
            str | None,
            QueryParameter(name="state", max_length=16, description="'firing' or 'cleared'"),
        ] = None,
        limit: int = Parameter(
            default=DEFAULT_PAGE, ge=1, le=MAX_PAGE, description="events per page (at most 1000)"
        ),
        cursor: str | None = Parameter(
            default=None, max_length=MAX_CURSOR_CHARS, description="a page's next_cursor"
        ),
    ) -> dict[str, Any]:
        """Alert rules that started or stopped firing, at agents and the gateway, newest first,
        `limit` per page; `next_cursor` continues (null on the last page)."""
        start = parse_time(since, "since") if since is not None else None
        end = parse_time(until, "until") if until is not None else None
        if start is not None and end is not None and start >= end:
            raise InvalidArgument("'since' must be before 'until'")
        if alert_state is not None and alert_state not in ALERT_STATES:
            raise InvalidArgument(f"'state' must be 'firing' or 'cleared', not {alert_state!r}")
        before = parse_cursor(cursor) if cursor is not None else None
        filters = {"source": source, "rule": rule, "state": alert_state}
        chosen = {name: value for name, value in filters.items() if value is not None}

        def load() -> dict[str, Any]:
            rows = store.events(limit=limit, since=start, until=end, before=before, filters=chosen)
            last = rows[-1] if len(rows) == limit else None
            return {
                "events": [event_view(row) for row in rows],
                "next_cursor": cursor_of(last) if last is not None else None,
            }

        return await asyncio.to_thread(load)

    @get("/alerts/firing", opt=access(Access.READ, "alerts.firing"))
    async def alerts_firing() -> dict[str, Any]:
        """The rules firing now: for each (source, rule, key), its latest event when that is a
        firing, newest first; `truncated` when more than 10,000."""

        def load() -> dict[str, Any]:
            rows, truncated = store.firing()
            return {"firing": [event_view(row) for row in rows], "truncated": truncated}

        return await asyncio.to_thread(load)

    return [alert_events, alerts_firing]
