"""The control plane's OpenAI gateway: the same policy as the agents, in front of the fleet."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.controlplane_harness import (
    ObservedManagedAgent,
    RunningControlPlane,
    apply_policy,
    connected_agent,
    controlplane_settings,
    wait_until,
)
from tests.integration.test_inference_key_distribution import create, desired_generation
from tests.recording_openai_server import ANSWER_TEXT, Behaviour, RecordingOpenAI

pytestmark = pytest.mark.model

CARD = "4111 1111 1111 1111"
CLOUD_KEY = "sk-gateway-test"


def policy(cloud_base_url: str, agent_id: str) -> str:
    return f"""
version: 1
detectors:
  - {{name: cards, builtin: payment_card, level: confidential}}
roles:
  analyst: {{max_level: confidential, targets: ["*"]}}
targets:
  home: {{type: local, model: smol, max_level: restricted}}
  shelf: {{type: site_agent, agent: "{agent_id}", model: smol, max_level: restricted}}
  cloud:
    type: cloud
    base_url: {cloud_base_url}
    model: cloud-mini
    api_key_ref: env:GATEWAY_CLOUD_KEY
    price_per_1k_input: 0.5
    price_per_1k_output: 1.5
    max_level: internal
    fallback: [home]
routes:
  - {{name: cloud-first, targets: [cloud]}}
"""


@dataclass
class Fleet:
    cp: RunningControlPlane
    agent_http: str
    companion: ObservedManagedAgent
    cloud: RecordingOpenAI
    key: str

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.cp.ports.http}"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, demo_model: Path) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("gateway")
    settings = controlplane_settings(tmp / "cp", None)
    with (
        RecordingOpenAI() as cloud,
        RunningControlPlane(settings, {"GATEWAY_CLOUD_KEY": CLOUD_KEY}) as cp,
        connected_agent(cp, tmp / "agent", demo_model, inference_address="127.0.0.1:0") as agent,
    ):
        key = create(cp, "bi", "analyst", "finance")["key"]
        # Before any policy is applied the gateway routes nothing.
        with pytest.raises(openai.InternalServerError, match="no routing policy is applied"):
            chat(f"http://127.0.0.1:{cp.ports.http}", key, "hello")
        apply_policy(cp, policy(cloud.base_url, agent.agent_id))
        agent.companion.wait_applied(desired_generation(cp, agent.agent_id))
        fleet = Fleet(cp, agent.running.http_base, agent.companion, cloud, key)
        wait_until(lambda: _home_ready(fleet), "the gateway sees smol served", timeout=120)
        yield fleet


def client(base: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=60)


def chat(base: str, key: str, text: str, extra_headers: dict[str, str] | None = None) -> str:
    answer = client(base, key).chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": text}],
        max_tokens=8,
        temperature=0,
        extra_headers=extra_headers,
    )
    return answer.choices[0].message.content or ""


def _home_ready(fleet: Fleet) -> bool:
    models = client(fleet.gateway, fleet.key).models.list()
    return any(m.id == "home" and getattr(m, "ready", False) for m in models.data)


def test_the_gateway_needs_a_valid_inference_key(fleet: Fleet) -> None:
    before = len(fleet.cloud.received)
    with pytest.raises(openai.AuthenticationError):
        chat(fleet.gateway, "opk_not-a-key", "hello")
    no_key = httpx.post(f"{fleet.gateway}/v1/completions", json={"model": "auto", "prompt": "hi"})
    assert no_key.status_code == 401
    assert no_key.json()["error"]["type"] == "authentication_error"
    assert len(fleet.cloud.received) == before


def test_public_text_goes_to_the_cloud_with_the_providers_key(fleet: Fleet) -> None:
    fleet.cloud.behave(Behaviour.STREAM)
    before = len(fleet.cloud.received)
    assert chat(fleet.gateway, fleet.key, "What is the capital of France?") == ANSWER_TEXT
    (received,) = fleet.cloud.received[before:]
    assert received.headers["authorization"] == f"Bearer {CLOUD_KEY}"
    assert received.json()["model"] == "cloud-mini"
    assert received.json()["messages"][0]["content"] == "What is the capital of France?"


def test_a_card_number_never_reaches_the_cloud_and_is_answered_by_the_agent(
    fleet: Fleet,
) -> None:
    fleet.cloud.behave(Behaviour.STREAM)
    before = len(fleet.cloud.received)
    text = f"My card is {CARD}. Count: 1, 2, 3,"
    through_gateway = chat(fleet.gateway, fleet.key, text)
    direct = chat(fleet.agent_http, fleet.key, text)  # the agent itself, same key and policy
    assert through_gateway
    assert through_gateway == direct
    assert fleet.cloud.received[before:] == []


def test_a_failing_cloud_falls_back_to_the_agent(fleet: Fleet) -> None:
    fleet.cloud.behave(Behaviour.FAIL_500)
    try:
        before = len(fleet.cloud.received)
        answer = chat(fleet.gateway, fleet.key, "Count: 1, 2, 3,")
        assert answer == chat(fleet.agent_http, fleet.key, "Count: 1, 2, 3,", extra_headers={
            "X-Outpost-Local-Only": "true"})  # fmt: skip
        assert len(fleet.cloud.received[before:]) == 1  # tried once, then the fallback
    finally:
        fleet.cloud.behave(Behaviour.STREAM)


def test_streamed_answers_come_through_as_server_sent_events(fleet: Fleet) -> None:
    text = f"Card {CARD}. Count: 1, 2, 3,"
    stream = client(fleet.gateway, fleet.key).chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": text}],
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == chat(fleet.gateway, fleet.key, text)
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.completion_tokens > 0


def test_completions_and_models_are_served_too(fleet: Fleet) -> None:
    text = f"Card {CARD}. Count: 1, 2, 3,"
    completion = client(fleet.gateway, fleet.key).completions.create(
        model="home", prompt=text, max_tokens=8, temperature=0
    )
    assert completion.choices[0].text
    names = {m.id for m in client(fleet.gateway, fleet.key).models.list().data}
    assert names == {"home", "cloud", "shelf"}
    listed = client(fleet.gateway, fleet.key).models.list().data
    assert all(getattr(m, "ready", False) for m in listed)  # the agent serves, and is connected


def test_a_site_agent_target_is_forwarded_to_the_agent_it_names(fleet: Fleet) -> None:
    text = f"Card {CARD}. Count: 1, 2, 3,"
    answer = client(fleet.gateway, fleet.key).chat.completions.create(
        model="shelf",  # a policy target of that name goes first
        messages=[{"role": "user", "content": text}],
        max_tokens=8,
        temperature=0,
    )
    assert answer.choices[0].message.content == chat(fleet.agent_http, fleet.key, text)

    def latest_gateway_row() -> dict[str, Any]:
        with fleet.cp.api() as api:
            rows = api.get("/usage/records", params={"source": "gateway", "limit": 1}).json()
        return dict(rows["records"][0]) if rows["records"] else {}

    # The gateway writes its rows on a thread of their own: wait for this one.
    wait_until(lambda: latest_gateway_row().get("target") == "shelf", "the gateway's row")
    assert latest_gateway_row()["forwarded"] is True  # the agent's own row counts the request


def test_a_level_above_the_role_is_refused_at_the_gateway(fleet: Fleet) -> None:
    with pytest.raises(openai.PermissionDeniedError, match="restricted"):
        chat(
            fleet.gateway, fleet.key, "hello", extra_headers={"X-Outpost-Data-Level": "restricted"}
        )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "JSON"),
        (b'{"model": "auto", "messages": []}', "messages must not be empty"),
        (b'{"model": "auto", "prompt": 7}', "prompt"),
    ],
)
def test_malformed_bodies_get_openai_errors(fleet: Fleet, body: bytes, message: str) -> None:
    path = "/v1/completions" if b"prompt" in body else "/v1/chat/completions"
    response = httpx.post(
        f"{fleet.gateway}{path}",
        content=body,
        headers={"Authorization": f"Bearer {fleet.key}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"]


def test_an_oversized_body_is_refused(fleet: Fleet) -> None:
    huge = b'{"model": "auto", "prompt": "' + b"a" * (2 * 1024 * 1024) + b'"}'
    response = httpx.post(
        f"{fleet.gateway}/v1/completions",
        content=huge,
        headers={"Authorization": f"Bearer {fleet.key}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_a_request_the_agent_answers_through_the_gateway_is_counted_once(fleet: Fleet) -> None:
    since = datetime.now(UTC).isoformat()  # rows of earlier tests arrived before
    assert chat(fleet.gateway, fleet.key, f"Card {CARD}. Count: 4, 5,")  # home: the agent

    def records() -> list[dict[str, Any]]:
        with fleet.cp.api() as api:
            found = api.get("/usage/records", params={"since": since}).json()["records"]
        return [r for r in found if r["level"] == "confidential"]

    wait_until(lambda: len(records()) >= 2, "both rows are stored (the agent ships its own)")
    assert len(records()) == 2
    rows = {r["source"]: r for r in records()}
    (agent_id,) = set(rows) - {"gateway"}
    assert (rows["gateway"]["forwarded"], rows[agent_id]["forwarded"]) == (True, False)
    assert rows["gateway"]["target"] == rows[agent_id]["target"] == "home"
    with fleet.cp.api() as api:
        spend = api.get("/usage/spend", params={"since": since, "group_by": "source"}).json()
        only = api.get("/usage/records", params={"since": since, "forwarded": "true"}).json()
    assert spend["total"]["requests"] == 1
    assert spend["total"]["completion_tokens"] == rows[agent_id]["completion_tokens"] > 0
    assert spend["total"]["cost"] == rows[agent_id]["cost"]
    assert [g["source"] for g in spend["groups"]] == [agent_id]
    assert [r["source"] for r in only["records"]] == ["gateway"]
