"""The OpenAI-compatible HTTP API with the official `openai` client, on the real model."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from outpost.v1 import inference_pb2 as pb
from tests.agent_harness import GenerationLog, RunningAgent
from tests.conftest import COUNTING_PROMPT, MODEL_ALIAS

GREEDY: dict[str, Any] = {"temperature": 0.0, "seed": 7}


@pytest.fixture
def client(agent: RunningAgent) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{agent.http_base}/v1", api_key="unused", max_retries=0)


def test_models_lists_the_alias(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [MODEL_ALIAS]


def test_chat_completion(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=MODEL_ALIAS,
        messages=[
            {"role": "system", "content": "You are brief."},
            {"role": "user", "content": "Say hello."},
        ],
        max_tokens=200,
        **GREEDY,
    )
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason == "stop"
    assert response.usage is not None
    assert (
        response.usage.total_tokens
        == response.usage.prompt_tokens + response.usage.completion_tokens
    )


def test_chat_completion_stream_matches_non_streamed(client: openai.OpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "Name three colors."}]
    whole = client.chat.completions.create(
        model=MODEL_ALIAS, messages=messages, max_tokens=40, **GREEDY
    )
    chunks = list(
        client.chat.completions.create(
            model=MODEL_ALIAS,
            messages=messages,
            max_tokens=40,
            stream=True,
            stream_options={"include_usage": True},
            **GREEDY,
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) > 3
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].usage is not None
    assert whole.usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completion_max_tokens_and_length_finish(client: openai.OpenAI) -> None:
    response = client.completions.create(
        model=MODEL_ALIAS, prompt=COUNTING_PROMPT, max_tokens=9, **GREEDY
    )
    assert response.choices[0].finish_reason == "length"
    assert response.usage is not None
    assert response.usage.completion_tokens == 9
    assert response.choices[0].text.startswith(" 6, 7")


def test_completion_stream_with_stop(client: openai.OpenAI) -> None:
    chunks = list(
        client.completions.create(
            model=MODEL_ALIAS,
            prompt=COUNTING_PROMPT,
            max_tokens=40,
            stop=["9"],
            stream=True,
            **GREEDY,
        )
    )
    text = "".join(c.choices[0].text for c in chunks)
    assert text == " 6, 7, 8, "
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_seeded_output_is_identical_over_grpc_and_http(
    agent: RunningAgent, client: openai.OpenAI
) -> None:
    prompt = "The best thing about the sea is"
    samplings: list[dict[str, Any]] = [
        {"temperature": 0.0, "seed": 5},
        {"temperature": 0.9, "seed": 4242},
    ]
    for sampling in samplings:
        http_text = (
            client.completions.create(model=MODEL_ALIAS, prompt=prompt, max_tokens=24, **sampling)
            .choices[0]
            .text
        )
        with agent.channel() as channel:
            request = pb.GenerateRequest(
                model=MODEL_ALIAS,
                prompt=prompt,
                sampling=pb.SamplingParams(max_tokens=24, **sampling),
            )
            grpc_text = "".join(
                r.text for r in agent.inference_stub(channel).Generate(request, timeout=60)
            )
        assert http_text == grpc_text
        assert http_text.strip()


def test_health_probes(agent: RunningAgent) -> None:
    assert httpx.get(f"{agent.http_base}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{agent.http_base}/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}


def test_client_disconnect_stops_the_generation(
    agent: RunningAgent, generation_log: GenerationLog
) -> None:
    before = len(generation_log.finished)
    body = {
        "model": MODEL_ALIAS,
        "prompt": COUNTING_PROMPT,
        "max_tokens": 900,
        "stream": True,
        "temperature": 0,
    }
    with (
        httpx.Client(base_url=agent.http_base, timeout=60) as http,
        http.stream("POST", "/v1/completions", json=body) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()
        received = [
            line for _, line in zip(range(6), lines, strict=False) if line.startswith("data:")
        ]
        assert len(received) >= 2
    finished = generation_log.wait_for(before + 1)[before]
    assert finished.reason == "cancelled"
    assert finished.usage.completion_tokens < 900
