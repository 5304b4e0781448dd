"""The gate marks a ledger row `forwarded` when another agent answered the request: a
site_agent target (a real HTTP server stands in for the agent), or the gateway's local target."""

from __future__ import annotations

from typing import Any

import pytest

from common.errors import Unavailable
from common.policy.cloud_client import CloudClient
from common.policy.document import parse_policy
from common.policy.forwarding import ServingAgent
from common.policy.gate import Credentials, PolicyGate
from common.policy.ledger_record import LedgerRecord
from common.policy.routing import PolicyEngine
from tests.recording_openai_server import ANSWER_TEXT, Behaviour, RecordingOpenAI
from tests.unit.test_policy_gate import CALLER, KEY, POLICY, Locals, complete, run

SITE = POLICY.replace(
    "routes:\n  - {name: all, targets: [cloud, here]}",
    "  hq: {type: site_agent, agent: hq-1, model: smol, max_level: internal}\n"
    "routes:\n  - {name: all, targets: [hq, here]}",
)


def gate(document: str, rows: list[LedgerRecord], **options: Any) -> PolicyGate:
    engine = PolicyEngine(parse_policy(document, source="test.yaml"))
    return PolicyGate(
        lambda: engine,
        lambda authorization: CALLER if authorization == KEY else None,
        CloudClient(environ={"GATE_TEST_KEY": "sk-test"}),
        ledger=rows.append,
        **options,
    )


def site_gate(rows: list[LedgerRecord], address: str, document: str = SITE) -> PolicyGate:
    async def site_agents(agent: str) -> tuple[ServingAgent, ...]:
        return (ServingAgent("hq-1", address),) if agent == "hq-1" else ()

    return gate(document, rows, site_agents=site_agents)


def test_a_row_answered_by_a_site_agent_is_marked_forwarded() -> None:
    rows: list[LedgerRecord] = []
    with RecordingOpenAI() as agent:
        agent.behave(Behaviour.STREAM)  # forwarding always streams
        gate = site_gate(rows, agent.base_url.removeprefix("http://").removesuffix("/v1"))
        assert run(complete(gate, Locals(), "hi", Credentials(KEY))) == ANSWER_TEXT
        agent.behave(Behaviour.FAIL_500)  # the site agent fails: its own model answers
        assert run(complete(gate, Locals(), "hi", Credentials(KEY))) == "hello"
        (sent,) = [r for r in agent.received if r.path.endswith("/completions")][:1]
    assert sent.headers["x-outpost-forwarded"] == "true"
    assert [(r.target, r.outcome, r.forwarded) for r in rows] == [
        ("hq", "ok", True),
        ("here", "ok", False),
    ]


def test_a_forwarded_request_that_no_target_answers_is_not_marked() -> None:
    rows: list[LedgerRecord] = []
    # Nothing listens at hq's address and "there" is loading: no target answers.
    failing = site_gate(rows, "127.0.0.1:9", SITE.replace("[hq, here]", "[hq, there]"))
    with pytest.raises(Unavailable, match="no target"):
        run(complete(failing, Locals(), "hi", Credentials(KEY)))
    assert [(r.outcome, r.forwarded) for r in rows] == [("failed", False)]


def test_local_targets_count_as_forwarded_only_where_the_gate_is_told_so() -> None:
    agent_rows: list[LedgerRecord] = []
    run(complete(gate(POLICY, agent_rows), Locals(), "hi", Credentials(KEY)))
    gateway_rows: list[LedgerRecord] = []
    gateway = gate(POLICY, gateway_rows, local_targets_forwarded=True)  # as the gateway's
    run(complete(gateway, Locals(), "hi", Credentials(KEY)))
    assert [(r.target, r.forwarded) for r in agent_rows] == [("here", False)]
    assert [(r.target, r.forwarded) for r in gateway_rows] == [("here", True)]
