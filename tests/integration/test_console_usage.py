"""The console's usage page: this month by team, route, level and day, and cloud savings."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from controlplane.usage_store import UsageStore
from tests.console_client import ConsoleClient
from tests.console_fleet import services_of
from tests.controlplane_harness import RunningControlPlane
from tests.policy_documents import CLOUD
from tests.usage_rows import ledger_row


def test_an_empty_month_says_so(viewer: ConsoleClient) -> None:
    page = viewer.get("/console/usage").text
    assert "0 requests, 0 tokens, spend 0.00" in page
    assert "No routing policy is live" in page


def test_the_page_shows_this_months_spend_by_team_route_level_and_day(
    console_cp: RunningControlPlane, viewer: ConsoleClient
) -> None:
    services_of(console_cp).policies.apply(CLOUD, actor="test")
    store = UsageStore(services_of(console_cp).db)
    now = datetime.now(UTC)
    rows = [
        ledger_row(at=now, request_id="u1", team="support", level="internal", route="home-r"),
        ledger_row(at=now, request_id="u2", team="<b>sales</b>", level="confidential"),
    ]
    for row in rows:
        assert store.record(row, source="console-test")
    page = viewer.get("/console/usage").text
    assert "2 requests, 84 tokens, spend 0.002469" in page
    assert "&lt;b&gt;sales&lt;/b&gt;" in page
    assert "<b>sales</b>" not in page
    assert "home-r" in page
    levels = page[page.index("By data level") :]
    assert "confidential" in levels
    assert "50.0 %" in levels
    days = page[page.index('id="usage-days"') :]
    assert f"{now:%Y-%m-%d}: 2 requests, spend 0.002469" in days
    assert page.count('<rect class="bar"') == 1
    cloud = page[page.index('id="usage-cloud"') :]
    # 24 prompt tokens at 0.1 and 60 completion tokens at 0.2 per 1000, rounded up once
    assert "<td>cloud</td><td>mini</td>" in cloud
    assert "0.014400" in cloud
    assert "0.011931" in cloud  # saved: 0.0144 - 0.002469


def test_an_earlier_month_is_one_click_back(
    console_cp: RunningControlPlane, viewer: ConsoleClient
) -> None:
    now = datetime.now(UTC)
    last_month = (now.replace(day=1) - timedelta(days=1)).replace(day=15, hour=12)
    store = UsageStore(services_of(console_cp).db)
    assert store.record(
        ledger_row(at=last_month, request_id="old-1", team="archive-team"), source="console-test"
    )
    current = viewer.get("/console/usage").text
    assert "archive-team" not in current
    assert 'id="next-month"' not in current  # no future months
    link = re.search(r'<a href="\?month=(\d{4}-\d{2})" id="previous-month">', current)
    assert link is not None
    assert link.group(1) == f"{last_month:%Y-%m}"
    earlier = viewer.get(f"/console/usage?month={link.group(1)}").text
    assert f"Usage in {last_month:%Y-%m}" in earlier
    assert "archive-team" in earlier
    assert f'href="?month={now:%Y-%m}" id="next-month"' in earlier
    for bad in ("2026-13", "26-01", "next", f"{now.year + 1}-01", "1990-01"):
        response = viewer.get(f"/console/usage?month={bad}")
        assert response.status_code == 400, bad
        assert "month" in response.text
