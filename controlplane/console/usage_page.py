"""The usage page: a UTC month's spend by team, route, level and day, and cloud savings."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from litestar import Request, get
from litestar.response import Response

from common.policy.costs import nanos_to_decimal
from common.policy.document import parse_policy
from controlplane.console.errors import BadForm
from controlplane.console.gate import ConsoleGate
from controlplane.console.rendering import Renderer
from controlplane.services import ControlPlaneServices
from controlplane.usage_reports import Totals, UsageReports, Window, cloud_equivalents


@dataclass(frozen=True)
class SpendRow:
    group: str
    requests: int
    refused: int
    tokens: int
    cost: str


@dataclass(frozen=True)
class LevelRow:
    """Requests of one data level and their share of all requests (the sensitive share)."""

    level: str
    requests: int
    share: str
    cost: str


@dataclass(frozen=True)
class CloudRow:
    """What this month's tokens would have cost on a cloud target of the live policy."""

    target: str
    model: str
    cost: str
    savings: str  # that cost minus the actual spend; negative: the cloud was cheaper


@dataclass(frozen=True)
class DayBar:
    """One UTC day of the month as a bar of the requests chart (SVG coordinates)."""

    day: str
    requests: int
    cost: str
    x: float
    y: float
    height: float


BARS_WIDTH, BARS_HEIGHT, DAYS_SHOWN = 600, 120, 31
MONTH = re.compile(r"(\d{4})-(\d{2})")


@dataclass(frozen=True)
class UsageSummary:
    month: str  # YYYY-MM
    previous: str
    following: str | None  # None: this is the current month
    window: Window
    total: SpendRow
    by_team: tuple[SpendRow, ...]
    by_route: tuple[SpendRow, ...]
    by_level: tuple[LevelRow, ...]
    days: tuple[DayBar, ...]
    cloud: tuple[CloudRow, ...]
    policy_version: int | None
    truncated: bool


def money(nanos: int) -> str:
    """Six decimals under one unit of currency (requests cost fractions of a cent), else two."""
    amount = nanos_to_decimal(nanos)
    if amount == 0:
        return "0.00"
    return f"{amount:.6f}" if abs(amount) < 1 else f"{amount:,.2f}"


def _row(group: str, totals: Totals) -> SpendRow:
    return SpendRow(group, totals.requests, totals.refused, totals.tokens, money(totals.cost_nanos))


def _days(reports: UsageReports, window: Window) -> tuple[tuple[DayBar, ...], bool]:
    groups, truncated = reports.spend(window, ["outcome"], by_day=True)
    days: dict[str, Totals] = {}
    for group in groups:
        day = str(group.key["day"])
        days[day] = days.get(day, Totals()) + group.totals
    shown = sorted(days.items())[-DAYS_SHOWN:]
    most = max([t.requests for _, t in shown] + [1])
    slot = BARS_WIDTH / DAYS_SHOWN
    bars = tuple(
        DayBar(
            day=day,
            requests=totals.requests,
            cost=money(totals.cost_nanos),
            x=round(index * slot + 1, 1),
            y=round(BARS_HEIGHT - BARS_HEIGHT * totals.requests / most, 1),
            height=round(BARS_HEIGHT * totals.requests / most, 1),
        )
        for index, (day, totals) in enumerate(shown)
    )
    return bars, truncated


def _cloud(
    services: ControlPlaneServices, actual: Totals
) -> tuple[int | None, tuple[CloudRow, ...]]:
    live = services.policies.live()
    if live is None:
        return None, ()
    policy = parse_policy(live.document)
    return live.version, tuple(
        CloudRow(e.target, e.model, money(e.cost_nanos), money(e.cost_nanos - actual.cost_nanos))
        for e in cloud_equivalents(policy, actual.prompt_tokens, actual.completion_tokens)
    )


def month_start(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month(start: datetime) -> datetime:
    return (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )


def previous_month(start: datetime) -> datetime:
    return month_start(start - timedelta(days=1))


def parse_month(text: str | None, now: datetime) -> datetime:
    """`YYYY-MM` (a month up to this one, the last 10 years), or this month; else BadForm."""
    current = month_start(now)
    if not text:
        return current
    match = MONTH.fullmatch(text)
    if match is None or not 1 <= int(match.group(2)) <= 12:
        raise BadForm("The month must be given as YYYY-MM, e.g. 2026-11.")
    start = datetime(int(match.group(1)), int(match.group(2)), 1, tzinfo=UTC)
    if not current.replace(year=current.year - 10) <= start <= current:
        raise BadForm("The month must be this one or one of the ten years before it.")
    return start


def usage_summary(services: ControlPlaneServices, month: str | None = None) -> UsageSummary:
    """This month's usage, or `month`'s (YYYY-MM); blocking: call in a thread."""
    reports = UsageReports(services.db)
    now = services.usage.now()
    start = parse_month(month, now)
    window = Window(start, min(now, next_month(start)))
    by_team, team_cut = reports.spend(window, ["team"])
    by_route, route_cut = reports.spend(window, ["route"])
    totals = reports.totals(window)
    levels = reports.by_level(window)
    days, days_cut = _days(reports, window)
    version, cloud = _cloud(services, totals)
    return UsageSummary(
        month=f"{start:%Y-%m}",
        previous=f"{previous_month(start):%Y-%m}",
        following=f"{next_month(start):%Y-%m}" if next_month(start) <= now else None,
        window=window,
        total=_row("all", totals),
        by_team=tuple(_row(g.key["team"] or "-", g.totals) for g in by_team),
        by_route=tuple(_row(g.key["route"] or "-", g.totals) for g in by_route),
        by_level=tuple(
            LevelRow(
                level or "-",
                level_totals.requests,
                f"{100 * level_totals.requests / totals.requests:.1f} %"
                if totals.requests
                else "-",
                money(level_totals.cost_nanos),
            )
            for level, level_totals in sorted(levels.items(), key=lambda item: item[0] or "")
        ),
        days=days,
        cloud=cloud,
        policy_version=version,
        truncated=team_cut or route_cut or days_cut,
    )


def usage_routes(
    services: ControlPlaneServices, gate: ConsoleGate, renderer: Renderer
) -> list[Any]:
    @get("/console/usage", include_in_schema=False)
    async def usage_page(request: Request[Any, Any, Any]) -> Response[Any]:
        login = await gate.login(request)
        month = request.query_params.get("month")
        summary = await asyncio.to_thread(usage_summary, services, month)
        return renderer.page("usage.html", login=login, summary=summary)

    return [usage_page]
