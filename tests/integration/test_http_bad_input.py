"""Bad input over HTTP: OpenAI-shaped errors with the right statuses; the model stays usable."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.settings import ModelSettings
from tests.agent_harness import RunningAgent, agent_settings
from tests.conftest import CONTEXT_LENGTH, COUNTING_PROMPT, MODEL_ALIAS, llama_factory


@pytest.fixture
def http(agent: RunningAgent) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=agent.http_base, timeout=30) as client:
        yield client


def assert_openai_error(response: httpx.Response, status: int, *needles: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    for needle in needles:
        assert needle in error["message"]


def chat_body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL_ALIAS, "messages": [{"role": "user", "content": "hi"}], **fields}


def test_unknown_model_is_404(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", json=chat_body(model="gpt-9"))
    assert_openai_error(response, 404, "gpt-9")


def test_prompt_longer_than_context_is_400_with_token_counts(http: httpx.Client) -> None:
    response = http.post("/v1/completions", json={"model": MODEL_ALIAS, "prompt": "hello " * 3000})
    assert_openai_error(response, 400, f"context is {CONTEXT_LENGTH} tokens", "prompt is ")


def test_malformed_json_is_400(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions",
        content=b'{"model": "smol", "messages": [',
        headers={"content-type": "application/json"},
    )
    assert_openai_error(response, 400, "not valid JSON")


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,  # nesting deep enough to exhaust a recursive parser
        b'{"model": "smol", "prompt": "x", "seed": 1' + b"0" * 5000 + b"}",  # over-long integer
        b'{"model": "smol", "prompt": "x", "temperature": 1' + b"0" * 400 + b"}",  # float overflow
        b'{"model": "smol", "prompt": "x", "top_k": 1' + b"0" * 400 + b"}",
    ],
    ids=["deep-nesting", "long-integer", "huge-temperature", "huge-top_k"],
)
def test_hostile_json_is_400(http: httpx.Client, body: bytes) -> None:
    response = http.post(
        "/v1/completions", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_json_that_is_not_an_object_is_400(http: httpx.Client) -> None:
    assert_openai_error(http.post("/v1/completions", json=["a", "b"]), 400, "JSON object")


def test_body_over_the_limit_is_413(http: httpx.Client) -> None:
    response = http.post(
        "/v1/completions", json={"model": MODEL_ALIAS, "prompt": "x" * (2 * 1024 * 1024)}
    )
    assert_openai_error(response, 413, "too large")


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"messages": []}, "messages"),
        ({"messages": "hello"}, "messages"),
        ({"messages": [{"role": "hacker", "content": "hi"}]}, "hacker"),
        ({"messages": [{"role": "user", "content": {"$gt": 1}}]}, "content"),
        ({"temperature": -1}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 7}, "top_p"),
        ({"max_tokens": -3}, "max_tokens"),
        ({"max_tokens": 10**12}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"seed": -9}, "seed"),
        ({"n": 3}, "'n'"),
        ({"stop": 5}, "stop"),
        ({"stream": "yes"}, "stream"),
        ({"model": 12}, "model"),
    ],
)
def test_bad_chat_fields_are_400(http: httpx.Client, fields: dict[str, Any], needle: str) -> None:
    assert_openai_error(http.post("/v1/chat/completions", json=chat_body(**fields)), 400, needle)


def test_empty_prompt_is_400(http: httpx.Client) -> None:
    assert_openai_error(
        http.post("/v1/completions", json={"model": MODEL_ALIAS, "prompt": ""}), 400, "prompt"
    )


def test_model_answers_after_bad_input(http: httpx.Client) -> None:
    http.post("/v1/completions", content=b"\xff\xfe garbage")
    http.post("/v1/completions", json={"model": MODEL_ALIAS, "prompt": "hello " * 3000})
    response = http.post(
        "/v1/completions", json={"model": MODEL_ALIAS, "prompt": "Hi", "max_tokens": 3}
    )
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 3


def test_full_queue_is_429_at_once(demo_model: Path) -> None:
    """One runs (parallel 1), none may wait (queue 0): the second is refused at once."""
    model = ModelSettings(
        path=demo_model, alias=MODEL_ALIAS, context_length=512, queue_depth=0, parallel=1
    )
    with RunningAgent(agent_settings([model]), llama_factory()) as agent:
        agent.wait_until_serving()
        long = {
            "model": MODEL_ALIAS,
            "prompt": COUNTING_PROMPT,
            "max_tokens": 400,
            "stream": True,
            "temperature": 0,
        }
        with (
            httpx.Client(base_url=agent.http_base, timeout=60) as http,
            http.stream("POST", "/v1/completions", json=long) as running,
        ):
            lines = running.iter_lines()  # kept open: closing it would cancel the generation
            next(lines)  # the first generation is running now
            refused = http.post("/v1/completions", json={"model": MODEL_ALIAS, "prompt": "hi"})
    assert_openai_error(refused, 429, "busy")
