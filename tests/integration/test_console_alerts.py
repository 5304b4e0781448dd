"""The console's alerts page and the overview's count of firing alerts."""

from __future__ import annotations

import time

from common.policy.alert_notify import AlertEvent, AlertState
from tests.console_client import ConsoleClient
from tests.console_fleet import enroll_agent, services_of
from tests.controlplane_harness import RunningControlPlane
from tests.policy_documents import MINIMAL

POLICY_WITH_ALERTS = (
    MINIMAL
    + """\
alerts:
  notify: [log, {webhook: "http://127.0.0.1:9/hook?token=sekrit"}]
  rules:
    - {name: flaky, metric: error_rate, op: ">", threshold: 0.05, window_s: 300,
       action: enable_fallback}
"""
)


def event(rule: str, state: AlertState, key: str = "here") -> AlertEvent:
    return AlertEvent(
        rule=rule,
        metric="error_rate",
        scope="target",
        key=key,
        value=0.25 if state == "firing" else 0.01,
        threshold=0.05,
        op=">",
        action="enable_fallback",
        at=time.time(),
        state=state,
    )


def test_the_page_shows_rules_firing_alerts_and_history(
    console_cp: RunningControlPlane, viewer: ConsoleClient
) -> None:
    services = services_of(console_cp)
    assert "no alert rules" in viewer.get("/console/alerts").text
    services.policies.apply(POLICY_WITH_ALERTS, actor="test")
    agent_id = enroll_agent(console_cp, "alerting-agent")
    assert services.alert_events.record(event("flaky", "firing"), source=agent_id)
    assert services.alert_events.record(event("<b>odd</b>", "firing", key="x"))
    assert services.alert_events.record(event("<b>odd</b>", "cleared", key="x"))
    page = viewer.get("/console/alerts").text
    firing = page[page.index('id="alerts-firing"') : page.index("Rules</h2>")]
    assert "flaky" in firing
    assert "alerting-agent" in firing  # the agent's name, not its id
    assert "0.25 &gt; 0.05" in firing
    assert "odd" not in firing  # cleared since
    recent = page[page.index('id="alerts-recent"') :]
    assert recent.count('class="alert-event"') == 3
    assert "&lt;b&gt;odd&lt;/b&gt;" in recent
    assert "error_rate &gt; 0.05 per target over 300 s" in page
    assert "log, webhook" in page
    assert "sekrit" not in page  # a webhook URL may hold a secret: never shown
    agent_page = viewer.get(f"/console/agents/{agent_id}").text
    assert "alert flaky (target: here)" in agent_page
    assert "odd" not in agent_page  # the gateway's alert, not this agent's
    overview = viewer.get("/").text
    assert "1 alert firing" in overview
    services.alert_events.record(event("flaky", "cleared"), source=agent_id)
    assert "alert firing" not in viewer.get("/console/fleet-fragment").text
