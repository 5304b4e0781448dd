"""Routes under /api/v1/usage: spend by group and day, sensitive share, cloud savings, rows."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from litestar import get
from litestar.params import Parameter

from common.errors import InvalidArgument
from common.policy.costs import nanos_to_decimal
from common.policy.document import parse_policy
from common.policy.policy_model import DEFAULT_LEVELS, Policy
from controlplane.api.auth_guard import Access, access
from controlplane.api.telemetry import MAX_TIME_CHARS, iso_ms, parse_time
from controlplane.db.models import ID_CHARS, USAGE_SOURCE_CHARS, AlertEventRow, UsageRecordRow
from controlplane.services import ControlPlaneServices
from controlplane.usage_reports import (
    Totals,
    UsageReports,
    Window,
    cloud_equivalents,
)

MAX_PAGE = 1000
DEFAULT_PAGE = 100
MAX_CURSOR_CHARS = 100


def money(nanos: int) -> str:
    """Nano-units as a decimal amount with all nine places, e.g. "0.001234567"."""
    return f"{nanos_to_decimal(nanos):f}"


def totals_view(totals: Totals) -> dict[str, Any]:
    return {
        "requests": totals.requests,
        "answered": totals.answered,
        "refused": totals.refused,
        "failed": totals.failed,
        "prompt_tokens": totals.prompt_tokens,
        "completion_tokens": totals.completion_tokens,
        "cost": money(totals.cost_nanos),
    }


def record_view(row: UsageRecordRow) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": row.id,
        "source": row.source,
        "seq": row.seq,
        "at": iso_ms(row.at),
        "received_at": iso_ms(row.received_at),
        "request_id": row.request_id,
        "key_id": row.key_id,
        "team": row.team,
        "role": row.role,
        "level": row.level,
        "route": row.route,
        "target": row.target,
        "outcome": row.outcome,
        "reason": row.reason,
        "detectors": list(row.detectors),
        "attempts": list(row.attempts),
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "latency_ms": row.latency_ms,
        "cost": money(row.cost_nanos),
        "policy_digest": row.policy_digest,
        "forwarded": row.forwarded,
    }
    if row.prompt is not None:
        view["prompt"] = row.prompt
    return view


def cursor_of(row: UsageRecordRow | AlertEventRow) -> str:
    return f"{iso_ms(row.at)},{row.id}"


def parse_cursor(text: str) -> tuple[datetime, int]:
    """`next_cursor` of a previous page: "<time>,<id>"."""
    moment, _, row_id = text.rpartition(",")
    if not moment or not row_id.isdigit() or not 0 < int(row_id) < 2**63:
        raise InvalidArgument(f"'cursor' must be a page's next_cursor, not {text[:64]!r}")
    return parse_time(moment, "cursor"), int(row_id)


def parse_flag(text: str, name: str) -> bool:
    """'true' or 'false'; InvalidArgument naming the parameter otherwise."""
    if text not in ("true", "false"):
        raise InvalidArgument(f"'{name}' must be 'true' or 'false', not {text[:16]!r}")
    return text == "true"


def share(part: int, whole: int) -> float:
    return round(part / whole, 6) if whole else 0.0


def usage_routes(services: ControlPlaneServices) -> list[Any]:
    reports = UsageReports(services.db)
    time_param = Parameter(
        default=None,
        max_length=MAX_TIME_CHARS,
        description="ISO-8601; the range is [since, until), by default this UTC month until now",
    )

    def window(since: str | None, until: str | None) -> Window:
        end = services.usage.now() if until is None else parse_time(until, "until")
        if since is not None:
            start = parse_time(since, "since")
        else:
            start = end.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        return Window(start, end)

    def range_view(span: Window) -> dict[str, Any]:
        return {"since": iso_ms(span.since), "until": iso_ms(span.until)}

    def live_policy() -> tuple[int | None, Policy | None]:
        live = services.policies.live()
        if live is None:
            return None, None
        return live.version, parse_policy(live.document, source=f"policy version {live.version}")

    @get("/usage/spend", opt=access(Access.READ, "usage.spend"))
    async def usage_spend(
        since: str | None = time_param,
        until: str | None = time_param,
        group_by: str = Parameter(
            default="team",
            max_length=200,
            description="1 to 3 of team, route, target, level, role, source, outcome, "
            "comma-separated",
        ),
        bucket: str | None = Parameter(
            default=None, max_length=16, description="'day': per UTC day as well"
        ),
    ) -> dict[str, Any]:
        """Requests, tokens and spend per group (and UTC day) in the range, with the total.
        Money is a decimal string in the currency of the policy's prices."""
        span = window(since, until)
        names = [name.strip() for name in group_by.split(",")]
        if bucket not in (None, "day"):
            raise InvalidArgument(f"'bucket' must be 'day' or absent, not {bucket[:32]!r}")

        def load() -> dict[str, Any]:
            groups, truncated = reports.spend(span, names, by_day=bucket == "day")
            return {
                **range_view(span),
                "group_by": names,
                "bucket": bucket,
                "groups": [group.key | totals_view(group.totals) for group in groups],
                "truncated": truncated,
                "total": totals_view(reports.totals(span)),
            }

        return await asyncio.to_thread(load)

    @get("/usage/sensitive", opt=access(Access.READ, "usage.sensitive"))
    async def usage_sensitive(
        since: str | None = time_param, until: str | None = time_param
    ) -> dict[str, Any]:
        """Requests and tokens per data level, and the share of sensitive traffic: every level
        above the live policy's lowest (a level the policy does not know counts as sensitive)."""
        span = window(since, until)

        def load() -> dict[str, Any]:
            version, policy = live_policy()
            levels = policy.levels if policy is not None else DEFAULT_LEVELS
            found = reports.by_level(span)
            order = [*levels, *sorted(set(found) - set(levels))]
            rows, sensitive, total = [], Totals(), Totals()
            for level in order:
                counted = found.get(level, Totals())
                is_sensitive = level != levels[0]
                rows.append({"level": level, "sensitive": is_sensitive, **_traffic(counted)})
                total += counted
                if is_sensitive:
                    sensitive += counted
            return {
                **range_view(span),
                "policy_version": version,
                "lowest_level": levels[0],
                "sensitive_levels": [level for level in order if level != levels[0]],
                "levels": rows,
                "sensitive": {
                    **_traffic(sensitive),
                    "request_share": share(sensitive.requests, total.requests),
                    "token_share": share(sensitive.tokens, total.tokens),
                },
                "total": _traffic(total),
            }

        return await asyncio.to_thread(load)

    @get("/usage/savings", opt=access(Access.READ, "usage.savings"))
    async def usage_savings(
        since: str | None = time_param, until: str | None = time_param
    ) -> dict[str, Any]:
        """The actual spend in the range next to what the same tokens would have cost on each
        cloud target of the live policy (at its prices, rounded up once), and the difference
        (`savings`, negative when the cloud would have been cheaper)."""
        span = window(since, until)

        def load() -> dict[str, Any]:
            version, policy = live_policy()
            actual = reports.totals(span)
            equivalents = (
                cloud_equivalents(policy, actual.prompt_tokens, actual.completion_tokens)
                if policy is not None
                else []
            )
            return {
                **range_view(span),
                "policy_version": version,
                "actual": totals_view(actual),
                "cloud": [
                    {
                        "target": e.target,
                        "model": e.model,
                        "cost": money(e.cost_nanos),
                        "savings": f"{nanos_to_decimal(e.cost_nanos - actual.cost_nanos):f}",
                    }
                    for e in equivalents
                ],
            }

        return await asyncio.to_thread(load)

    @get("/usage/records", opt=access(Access.READ, "usage.records"))
    async def usage_records(
        since: str | None = time_param,
        until: str | None = time_param,
        limit: int = Parameter(
            default=DEFAULT_PAGE, ge=1, le=MAX_PAGE, description="rows per page (at most 1000)"
        ),
        cursor: str | None = Parameter(
            default=None, max_length=MAX_CURSOR_CHARS, description="a page's next_cursor"
        ),
        team: str | None = Parameter(default=None, max_length=ID_CHARS),
        source: str | None = Parameter(
            default=None, max_length=USAGE_SOURCE_CHARS, description="an agent id or 'gateway'"
        ),
        outcome: str | None = Parameter(default=None, max_length=16),
        level: str | None = Parameter(default=None, max_length=ID_CHARS),
        forwarded: str | None = Parameter(
            default=None,
            max_length=8,
            description="'true': only rows answered by forwarding to another agent; 'false': "
            "only the others",
        ),
    ) -> dict[str, Any]:
        """Ledger rows in the range, newest first, `limit` per page; `next_cursor` continues
        (null on the last page). A row has `prompt` only when the policy stored it; a
        `forwarded` row is the forwarding side's of a request another agent answered (and
        recorded: the reports count only that one)."""
        span = window(since, until)
        before = parse_cursor(cursor) if cursor is not None else None
        filters: dict[str, str | bool | None] = {
            "team": team,
            "source": source,
            "outcome": outcome,
            "level": level,
            "forwarded": parse_flag(forwarded, "forwarded") if forwarded is not None else None,
        }
        chosen = {name: value for name, value in filters.items() if value is not None}

        def load() -> dict[str, Any]:
            rows = reports.records(span, limit=limit, before=before, filters=chosen)
            last = rows[-1] if len(rows) == limit else None
            return {
                **range_view(span),
                "records": [record_view(row) for row in rows],
                "next_cursor": cursor_of(last) if last is not None else None,
            }

        return await asyncio.to_thread(load)

    return [usage_spend, usage_sensitive, usage_savings, usage_records]


def _traffic(totals: Totals) -> dict[str, int]:
    return {
        "requests": totals.requests,
        "prompt_tokens": totals.prompt_tokens,
        "completion_tokens": totals.completion_tokens,
        "tokens": totals.tokens,
    }
