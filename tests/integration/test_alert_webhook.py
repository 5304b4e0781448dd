"""Alert events POSTed to a webhook on loopback; an unreachable webhook breaks nothing."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator

import pytest

from common.policy.alert_notify import LogNotifier, Notifiers, WebhookNotifier
from common.policy.alerts import AlertEvaluator, RequestOutcome
from common.policy.document import load_policy
from common.policy.policy_model import (
    AlertMetric,
    AlertRule,
    Alerts,
    AlertScope,
    NotifyChannel,
    NotifyKind,
    Policy,
)
from tests.policy_documents import EXAMPLE
from tests.recording_openai_server import RecordingOpenAI

START = 1_750_000_000.0
DELIVERY_TIMEOUT_S = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def busy_policy(url: str) -> Policy:
    rule = AlertRule(
        name="busy",
        metric=AlertMetric.REQUESTS_PER_MINUTE,
        threshold=1.0,
        scope=AlertScope.TARGET,
        window_s=60,
    )
    channels = (NotifyChannel(kind=NotifyKind.LOG), NotifyChannel(kind=NotifyKind.WEBHOOK, url=url))
    return dataclasses.replace(load_policy(EXAMPLE), alerts=Alerts(rules=(rule,), notify=channels))


def outcome() -> RequestOutcome:
    return RequestOutcome(
        at=START,
        target="cloud-mini",
        team="support",
        user="ana",
        latency_ms=120.0,
        ok=True,
        tokens=14,
        cost_nanos=0,
    )


@pytest.fixture
def webhooks() -> Iterator[WebhookNotifier]:
    notifier = WebhookNotifier(timeout_s=5.0)
    yield notifier
    notifier.close()


def test_a_firing_and_a_clearing_are_posted_as_json(webhooks: WebhookNotifier) -> None:
    clock = Clock()
    with RecordingOpenAI() as server:
        url = server.base_url + "/alert-hook"
        alerts = AlertEvaluator(
            busy_policy(url),
            clock=clock,
            notifier=Notifiers(LogNotifier(), webhooks),
            min_firing_s=0.0,
        )
        alerts.observe(outcome())
        alerts.observe(outcome())
        assert [event.state for event in alerts.evaluate()] == ["firing"]
        clock.now = START + 61
        assert [event.state for event in alerts.evaluate()] == ["cleared"]
        assert webhooks.wait_idle(DELIVERY_TIMEOUT_S)
        received = server.received
    assert [r.path for r in received] == ["/v1/alert-hook", "/v1/alert-hook"]
    assert all(r.headers["content-type"] == "application/json" for r in received)
    common = {
        "rule": "busy",
        "metric": "requests_per_minute",
        "scope": "target",
        "key": "cloud-mini",
        "threshold": 1.0,
        "op": ">",
        "action": "notify",
        "reason": "",
    }
    assert [r.json() for r in received] == [
        common | {"value": 2.0, "at": START, "state": "firing"},
        common | {"value": 0.0, "at": START + 61, "state": "cleared"},
    ]
    assert (webhooks.delivered, webhooks.failed, webhooks.dropped) == (2, 0, 0)


def test_an_unreachable_webhook_is_counted_and_evaluation_goes_on(
    webhooks: WebhookNotifier,
) -> None:
    with socket.socket() as unused:  # a port bound and then freed: nothing listens there
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    clock = Clock()
    alerts = AlertEvaluator(
        busy_policy(f"http://127.0.0.1:{port}/hook"),
        clock=clock,
        notifier=webhooks,
        min_firing_s=0.0,
    )
    alerts.observe(outcome())
    alerts.observe(outcome())
    assert [event.state for event in alerts.evaluate()] == ["firing"]
    assert alerts.fallback_enabled("cloud-mini") is False
    clock.now = START + 61
    assert [event.state for event in alerts.evaluate()] == ["cleared"]
    assert webhooks.wait_idle(DELIVERY_TIMEOUT_S)
    assert (webhooks.delivered, webhooks.failed) == (0, 2)


def test_a_closed_notifier_drops_deliveries_without_raising() -> None:
    blocked = WebhookNotifier(queue_size=1)
    blocked.close()
    alerts = AlertEvaluator(
        busy_policy("http://127.0.0.1:9/hook"), clock=Clock(), notifier=blocked, min_firing_s=0.0
    )
    alerts.observe(outcome())
    alerts.observe(outcome())
    assert len(alerts.evaluate()) == 1
    assert blocked.dropped == 1
