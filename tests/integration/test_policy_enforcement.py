"""The agent enforcing a routing policy on its OpenAI endpoints: keys, levels, targets, fallback.

The "cloud" is a recording OpenAI-compatible server on loopback; the local target is the real
model through llama.cpp; the client is the official `openai` package.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import openai
import pytest

from agent.settings import ModelSettings
from common.policy.alert_notify import AlertEvent
from common.policy.budgets import SettledUsage
from common.policy.document import parse_policy
from common.policy.forwarding import ServingAgent
from common.policy.ledger_record import LedgerRecord
from common.policy.routing import Caller, PolicyEngine
from outpost.v1 import inference_pb2 as pb
from tests.agent_harness import RunningAgent, agent_settings
from tests.conftest import llama_factory
from tests.recording_openai_server import ANSWER_TEXT, Behaviour, RecordingOpenAI

pytestmark = pytest.mark.model

KEY = "ok-key-for-developers"
CARD = "4111 1111 1111 1111"
POLICY = """
version: 1
detectors:
  - {name: cards, builtin: payment_card, level: confidential}
roles:
  developer: {max_level: confidential, targets: [home, cloud]}
targets:
  home: {type: local, model: smol, max_level: restricted}
  cloud:
    type: cloud
    base_url: "%s"
    api_key_ref: env:CLOUD_KEY
    model: cloud-model
    price_per_1k_input: 0.001
    price_per_1k_output: 0.002
    max_level: internal
    timeout_s: 30
    fallback: [home]
routes:
  - {name: sensitive-stays-home, levels: [confidential, restricted], targets: [home]}
  - {name: default, targets: [cloud]}
fallback_on: [error, timeout]
"""


@dataclass
class StaticPolicy:
    """A PolicySource with one policy and one key (the managed agent's come from its state)."""

    engine: PolicyEngine
    ledger: list[LedgerRecord] = field(default_factory=list)
    alert_events: list[AlertEvent] = field(default_factory=list)

    def current_engine(self) -> PolicyEngine:
        return self.engine

    def record_usage(self, record: LedgerRecord) -> None:
        self.ledger.append(record)

    def record_alert_event(self, event: AlertEvent) -> None:
        self.alert_events.append(event)

    def settled_usage(self) -> list[SettledUsage]:
        return []

    async def find_site_agents(self, agent: str) -> tuple[ServingAgent, ...]:
        return ()

    def authenticate(self, authorization: str | None) -> Caller | None:
        if authorization == f"Bearer {KEY}":
            return Caller("developer", team="support", key_id="k1")
        return None


@pytest.fixture(scope="module")
def cloud() -> Iterator[RecordingOpenAI]:
    with RecordingOpenAI() as server:
        yield server


@pytest.fixture(scope="module")
def agent(demo_model: Path, cloud: RecordingOpenAI) -> Iterator[RunningAgent]:
    policy = StaticPolicy(PolicyEngine(parse_policy(POLICY % cloud.base_url)))
    model = ModelSettings(path=demo_model, alias="smol", context_length=512, parallel=2)
    with RunningAgent(
        agent_settings([model]),
        llama_factory(),
        policy=policy,
        environ={"CLOUD_KEY": "sk-cloud-secret"},
    ) as running:
        running.wait_until_serving()
        yield running


def client(agent: RunningAgent, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{agent.http_base}/v1", api_key=key, max_retries=0)


def ask(agent: RunningAgent, text: str, headers: dict[str, str] | None = None) -> str:
    answer = client(agent).chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": text}],
        max_tokens=8,
        temperature=0,
        extra_headers=headers,
    )
    return answer.choices[0].message.content or ""


def test_without_a_valid_key_the_agent_answers_401(agent: RunningAgent) -> None:
    with pytest.raises(openai.AuthenticationError, match="send a valid inference key"):
        client(agent, key="not-a-key").chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )


def test_public_text_goes_to_the_cloud_with_its_key_and_model(
    agent: RunningAgent, cloud: RecordingOpenAI
) -> None:
    cloud.behave(Behaviour.STREAM)
    before = len(cloud.received)
    assert ask(agent, "Name three colours.") == ANSWER_TEXT
    (received,) = cloud.received[before:]
    assert received.headers["authorization"] == "Bearer sk-cloud-secret"
    body = received.json()
    assert body["model"] == "cloud-model"
    assert body["messages"] == [{"role": "user", "content": "Name three colours."}]


def test_a_card_number_never_reaches_the_cloud(agent: RunningAgent, cloud: RecordingOpenAI) -> None:
    cloud.behave(Behaviour.STREAM)
    before = len(cloud.received)
    text = ask(agent, f"My card is {CARD}, count: 1, 2, 3,")
    assert text  # the local model answered
    assert text != ANSWER_TEXT
    assert cloud.received[before:] == []


def test_a_declared_level_keeps_the_request_home_and_one_above_the_role_is_refused(
    agent: RunningAgent, cloud: RecordingOpenAI
) -> None:
    before = len(cloud.received)
    text = ask(agent, "1, 2, 3,", {"X-Outpost-Data-Level": "confidential"})
    assert text != ANSWER_TEXT
    assert cloud.received[before:] == []
    with pytest.raises(openai.PermissionDeniedError, match="may not send restricted data"):
        ask(agent, "hello", {"X-Outpost-Data-Level": "restricted"})


def test_a_failing_cloud_falls_back_to_the_local_model(
    agent: RunningAgent, cloud: RecordingOpenAI
) -> None:
    cloud.behave(Behaviour.FAIL_500)
    before = len(cloud.received)
    text = ask(agent, "1, 2, 3,")
    assert text != ANSWER_TEXT
    assert len(cloud.received[before:]) == 1  # tried once, then home answered


def test_a_cloud_answer_streams_to_the_client(agent: RunningAgent, cloud: RecordingOpenAI) -> None:
    cloud.behave(Behaviour.STREAM)
    chunks = client(agent).chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "Name three colours."}],
        max_tokens=8,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER_TEXT


def test_completions_are_routed_too(agent: RunningAgent, cloud: RecordingOpenAI) -> None:
    cloud.behave(Behaviour.STREAM)
    before = len(cloud.received)
    answer = client(agent).completions.create(model="auto", prompt="Say hi", max_tokens=4)
    assert answer.choices[0].text == ANSWER_TEXT
    (received,) = cloud.received[before:]
    assert received.path.endswith("/completions")
    assert received.json()["prompt"] == "Say hi"


def test_grpc_callers_need_a_key_too_and_theirs_is_routed(
    agent: RunningAgent, cloud: RecordingOpenAI
) -> None:
    cloud.behave(Behaviour.STREAM)
    request = pb.GenerateRequest(
        model="auto", prompt="Say hi", sampling=pb.SamplingParams(max_tokens=4)
    )
    with agent.channel() as channel:
        stub = agent.inference_stub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.Generate(request, timeout=60))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        metadata = (("authorization", f"Bearer {KEY}"),)
        answers = list(stub.Generate(request, timeout=60, metadata=metadata))
    assert "".join(a.text for a in answers) == ANSWER_TEXT


BUDGETED = (
    POLICY
    + """
budgets:
  teams:
    support: {requests_per_minute: 2, over_budget: %s}
"""
)


@pytest.mark.parametrize("over_budget", ["reject", "local"])
def test_a_team_over_its_rate_is_refused_or_kept_local_as_the_policy_says(
    demo_model: Path, cloud: RecordingOpenAI, over_budget: str
) -> None:
    document = BUDGETED % (cloud.base_url, over_budget)
    policy = StaticPolicy(PolicyEngine(parse_policy(document)))
    model = ModelSettings(path=demo_model, alias="smol", context_length=512)
    settings = agent_settings([model])
    environ = {"CLOUD_KEY": "sk-cloud-secret"}
    with RunningAgent(settings, llama_factory(), policy=policy, environ=environ) as agent:
        agent.wait_until_serving()
        cloud.behave(Behaviour.STREAM)
        before = len(cloud.received)
        assert ask(agent, "Name a colour.") == ANSWER_TEXT
        assert ask(agent, "Name a fruit.") == ANSWER_TEXT
        assert len(cloud.received) == before + 2
        if over_budget == "reject":
            with pytest.raises(openai.RateLimitError, match="over budget: team support"):
                ask(agent, "Name a tree.")
        else:  # the third request within the minute goes to the local model only
            assert ask(agent, "1, 2, 3,") != ANSWER_TEXT
        assert len(cloud.received) == before + 2
