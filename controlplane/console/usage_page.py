"""The usage page: this UTC month's requests, tokens and spend by team, route and data level."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from litestar import Request, get
from litestar.response import Response

from common.policy.costs import nanos_to_decimal
from controlplane.console.gate import ConsoleGate
from controlplane.console.rendering import Renderer
from controlplane.services import ControlPlaneServices
from controlplane.usage_reports import Totals, UsageReports, Window


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
class UsageSummary:
    window: Window
    total: SpendRow
    by_team: tuple[SpendRow, ...]
    by_route: tuple[SpendRow, ...]
    by_level: tuple[LevelRow, ...]
    truncated: bool


def money(nanos: int) -> str:
    """Two decimals, or more when the amount is under a cent but not zero."""
    amount = nanos_to_decimal(nanos)
    if 0 < abs(amount) < 0.01:
        return f"{amount:.6f}"
    return f"{amount:.2f}"


def _row(group: str, totals: Totals) -> SpendRow:
    return SpendRow(group, totals.requests, totals.refused, totals.tokens, money(totals.cost_nanos))


def usage_summary(services: ControlPlaneServices) -> UsageSummary:
    """Blocking: call in a thread."""
    reports = UsageReports(services.db)
    end = services.usage.now()
    start = end.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    window = Window(start, end)
    by_team, team_cut = reports.spend(window, ["team"])
    by_route, route_cut = reports.spend(window, ["route"])
    totals = reports.totals(window)
    levels = reports.by_level(window)
    return UsageSummary(
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
        truncated=team_cut or route_cut,
    )


def usage_routes(
    services: ControlPlaneServices, gate: ConsoleGate, renderer: Renderer
) -> list[Any]:
    @get("/console/usage", include_in_schema=False)
    async def usage_page(request: Request[Any, Any, Any]) -> Response[Any]:
        login = await gate.login(request)
        summary = await asyncio.to_thread(usage_summary, services)
        return renderer.page("usage.html", login=login, summary=summary)

    return [usage_page]
