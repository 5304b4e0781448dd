"""The policy gate: ledger rows for every outcome, self-restriction to local, alert actions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from common.errors import PermissionDenied, ResourceExhausted, Unauthenticated, Unavailable
from common.inference import (
    CompletionRequest,
    EventStream,
    Finished,
    FinishReason,
    SamplingParams,
    TextDelta,
    Usage,
)
from common.policy.alert_notify import AlertEvent
from common.policy.cloud_client import CloudClient
from common.policy.document import parse_policy
from common.policy.gate import Credentials, PolicyGate, credentials_from
from common.policy.ledger_record import LedgerRecord
from common.policy.request_alerts import RequestAlerts
from common.policy.routing import Caller, PolicyEngine

KEY = "Bearer opk_test"
CALLER = Caller(role="dev", team="support", key_id="k-1")

# "cloud" is a loopback port nothing listens on: every call to it fails at once.
POLICY = """\
version: 1
roles:
  dev: {max_level: internal, targets: ["*"]}
detectors:
  - {name: codename, keywords: [bluebird], level: confidential}
targets:
  here: {type: local, model: smol}
  there: {type: local, model: big}
  cloud:
    type: cloud
    base_url: http://127.0.0.1:9/v1
    model: mini
    api_key_ref: env:GATE_TEST_KEY
    price_per_1k_input: 0.1
    price_per_1k_output: 0.2
    max_level: internal
routes:
  - {name: all, targets: [cloud, here]}
"""
ALERTS = """\
alerts:
  rules:
    - {name: cloud-down, metric: error_rate, op: ">", threshold: 0.05, scope: target,
       window_s: 60, action: route_away}
"""
BUDGETS = """\
budgets:
  api_keys:
    k-1: {requests_per_minute: 1, over_budget: reject}
"""


class Locals:
    """The agent's own models as `start_local` sees them: "smol" answers, "big" is busy."""

    def __init__(self) -> None:
        self.started: list[str] = []

    async def start(self, alias: str, parts: tuple[str, ...], level: str) -> EventStream:
        self.started.append(alias)
        if alias != "smol":
            raise Unavailable(f"model {alias} is loading")
        return _answer(parts)


async def _answer(parts: tuple[str, ...]) -> AsyncGenerator[Any, None]:
    yield TextDelta("hello")
    yield Finished(FinishReason.STOP, Usage(len(parts[0]), 1))


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def gate_for(
    document: str, rows: list[LedgerRecord], alerts: RequestAlerts | None = None
) -> PolicyGate:
    engine = PolicyEngine(parse_policy(document, source="test.yaml"))
    return PolicyGate(
        lambda: engine,
        lambda authorization: CALLER if authorization == KEY else None,
        CloudClient(environ={"GATE_TEST_KEY": "sk-test"}),
        alerts=alerts,
        ledger=rows.append,
    )


async def complete(gate: PolicyGate, locals_: Locals, prompt: str, credentials: Credentials) -> str:
    request = CompletionRequest(model="", prompt=prompt, sampling=SamplingParams(max_tokens=4))
    stream = await gate.completion(gate.engine(), request, credentials, locals_.start, 4)
    texts = [event.text async for event in stream if isinstance(event, TextDelta)]
    return "".join(texts)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_an_answered_request_gives_one_row_with_its_attempts_tokens_and_cost() -> None:
    rows: list[LedgerRecord] = []
    gate = gate_for(POLICY, rows)
    assert run(complete(gate, Locals(), "hi there", Credentials(KEY))) == "hello"
    (row,) = rows
    assert (row.key_id, row.team, row.role) == ("k-1", "support", "dev")
    assert (row.level, row.route, row.target, row.outcome) == ("public", "all", "here", "ok")
    assert [(a.target, a.outcome) for a in row.attempts] == [("cloud", "error"), ("here", "ok")]
    assert (row.prompt_tokens, row.completion_tokens) == (len("hi there"), 1)
    assert row.cost_nanos == 0  # a local target without a cost per hour
    assert row.prompt is None  # the policy does not store prompts
    assert row.latency_ms > 0
    assert len(row.request_id) == 32


def test_refused_and_failed_requests_are_recorded_too() -> None:
    rows: list[LedgerRecord] = []
    gate = gate_for(POLICY.replace("[cloud, here]", "[cloud, there]"), rows)
    locals_ = Locals()
    with pytest.raises(PermissionDenied):  # confidential is above the role's ceiling
        run(complete(gate, locals_, "about bluebird", Credentials(KEY)))
    with pytest.raises(Unavailable, match="no target of the routing policy answered"):
        run(complete(gate, locals_, "hello", Credentials(KEY)))
    refused, failed = rows
    assert (refused.outcome, refused.level, refused.target) == ("refused", "confidential", None)
    assert refused.detectors == ("codename",)
    assert "bluebird" not in refused.reason
    assert (failed.outcome, failed.target) == ("failed", None)
    assert [a.target for a in failed.attempts] == ["cloud", "there"]
    assert locals_.started == ["big"]  # the refused request reached no model


def test_a_budget_refusal_is_recorded_with_its_reason() -> None:
    rows: list[LedgerRecord] = []
    gate = gate_for(POLICY + BUDGETS, rows)
    run(complete(gate, Locals(), "one", Credentials(KEY)))
    with pytest.raises(ResourceExhausted, match="over budget"):
        run(complete(gate, Locals(), "two", Credentials(KEY)))
    assert [row.outcome for row in rows] == ["ok", "refused"]
    assert "over budget" in rows[1].reason


def test_an_unknown_key_is_refused_before_anything_is_recorded() -> None:
    rows: list[LedgerRecord] = []
    with pytest.raises(Unauthenticated):
        run(complete(gate_for(POLICY, rows), Locals(), "hi", Credentials("Bearer nope")))
    assert rows == []


def test_a_caller_may_restrict_itself_to_local_targets() -> None:
    rows: list[LedgerRecord] = []
    gate = gate_for(POLICY, rows)
    run(complete(gate, Locals(), "hi", Credentials(KEY, local_only=True)))
    assert [a.target for a in rows[0].attempts] == ["here"]  # the cloud was never tried


@pytest.mark.parametrize(
    ("value", "local_only"),
    [("true", True), (" TRUE ", True), ("1", True), ("yes", True), ("false", False), ("", False)],
)
def test_the_local_only_header_reads_as_a_flag(value: str, local_only: bool) -> None:
    headers = {"authorization": KEY, "x-outpost-local-only": value}
    assert credentials_from(headers.get) == Credentials(KEY, None, local_only)


def test_a_firing_route_away_rule_skips_its_target_until_it_clears() -> None:
    rows: list[LedgerRecord] = []
    events: list[AlertEvent] = []
    clock = Clock()
    alerts = RequestAlerts(record=events.append, clock=clock)
    gate = gate_for(POLICY + ALERTS, rows, alerts)
    locals_ = Locals()
    for _ in range(10):  # the rule needs 10 requests in its window
        run(complete(gate, locals_, "hi", Credentials(KEY)))
    assert all(row.attempts[0].target == "cloud" for row in rows)
    gate.evaluate_alerts()
    assert [(e.rule, e.key, e.state) for e in events] == [("cloud-down", "cloud", "firing")]

    run(complete(gate, locals_, "hi", Credentials(KEY)))
    assert [a.target for a in rows[-1].attempts] == ["here"]  # routed away from the cloud

    clock.now += 3600  # the window drains: no requests reached the cloud since
    gate.evaluate_alerts()
    assert [(e.rule, e.state) for e in events] == [
        ("cloud-down", "firing"),
        ("cloud-down", "cleared"),
    ]
    run(complete(gate, locals_, "hi", Credentials(KEY)))
    assert [a.target for a in rows[-1].attempts] == ["cloud", "here"]
