"""The gateway's forwarding to agents: headers it sends, the next agent on failure, none left."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from common.inference import Finished, GenerationEvent, TextDelta
from common.policy.cloud_client import CloudClient, Endpoint
from common.policy.dispatch import Outcome, TargetFailure
from common.policy.forwarding import ServingAgent, forward_to_agents
from tests.recording_openai_server import ANSWER_TEXT, Behaviour, RecordingOpenAI

HEADERS = {
    "authorization": "Bearer opi_caller",
    "x-outpost-data-level": "confidential",
    "x-outpost-local-only": "true",
}
BODY = {"model": "smol", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


@pytest.fixture
def agent() -> Iterator[RecordingOpenAI]:
    with RecordingOpenAI() as server:
        server.behave(Behaviour.STREAM)
        yield server


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def address(server: RecordingOpenAI) -> str:
    return server.base_url.removeprefix("http://").removesuffix("/v1")


def forward(agents: tuple[ServingAgent, ...]) -> list[GenerationEvent]:
    async def run() -> list[GenerationEvent]:
        client = CloudClient(environ={})
        try:
            events = forward_to_agents(client, agents, "smol", Endpoint.CHAT, BODY, HEADERS, 10.0)
            return [event async for event in events]
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_an_unreachable_agent_gives_way_to_the_next_which_gets_the_callers_headers(
    agent: RecordingOpenAI,
) -> None:
    events = forward(
        (
            ServingAgent("down", f"127.0.0.1:{closed_port()}"),
            ServingAgent("up", address(agent)),
        )
    )
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == ANSWER_TEXT
    assert isinstance(events[-1], Finished)
    (received,) = agent.received
    assert {name: received.headers[name] for name in HEADERS} == HEADERS
    assert received.json()["model"] == "smol"
    assert received.json()["stream"] is True


@pytest.mark.parametrize("behaviour", [Behaviour.FAIL_500, Behaviour.RATE_LIMITED_429])
def test_a_failing_or_busy_agent_gives_way_and_none_left_names_every_reason(
    agent: RecordingOpenAI, behaviour: Behaviour
) -> None:
    agent.behave(behaviour)
    with pytest.raises(TargetFailure) as failed:
        forward((ServingAgent("a-1", address(agent)), ServingAgent("a-2", address(agent))))
    assert failed.value.outcome is Outcome.ERROR
    assert "agent a-1: HTTP" in failed.value.reason
    assert "agent a-2: HTTP" in failed.value.reason
    assert len(agent.received) == 2


def test_an_agent_that_refuses_the_request_ends_it(agent: RecordingOpenAI) -> None:
    agent.behave(Behaviour.BAD_REQUEST_400)
    with pytest.raises(TargetFailure) as failed:
        forward((ServingAgent("a-1", address(agent)), ServingAgent("a-2", address(agent))))
    assert failed.value.outcome is Outcome.REJECTED
    assert len(agent.received) == 1  # the same request would be refused by the next one too


def test_no_agent_serving_the_model_is_a_failure_that_says_so() -> None:
    with pytest.raises(TargetFailure, match="no connected agent serves it"):
        forward(())
