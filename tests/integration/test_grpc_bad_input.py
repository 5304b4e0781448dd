"""Bad input over gRPC gets the right status and a clear message; the model stays usable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.settings import ModelSettings
from outpost.v1 import inference_pb2 as pb
from tests.agent_harness import RunningAgent, agent_settings
from tests.conftest import CONTEXT_LENGTH, COUNTING_PROMPT, MODEL_ALIAS, llama_factory


def rpc_error(agent: RunningAgent, request: pb.GenerateRequest | pb.ChatRequest) -> grpc.RpcError:
    with agent.channel() as channel:
        stub = agent.inference_stub(channel)
        call = stub.Chat if isinstance(request, pb.ChatRequest) else stub.Generate
        with pytest.raises(grpc.RpcError) as error:
            list(call(request, timeout=30))
    return error.value


def test_unknown_model_is_not_found(agent: RunningAgent) -> None:
    error = rpc_error(agent, pb.GenerateRequest(model="nope", prompt="hi"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "nope" in error.details()
    assert MODEL_ALIAS in error.details()


def test_prompt_longer_than_context_is_refused_with_token_counts(agent: RunningAgent) -> None:
    error = rpc_error(agent, pb.GenerateRequest(model=MODEL_ALIAS, prompt="hello " * 3000))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"context is {CONTEXT_LENGTH} tokens" in error.details()
    prompt_tokens = int(error.details().split("prompt is ")[1].split(" tokens")[0])
    assert prompt_tokens > CONTEXT_LENGTH


@pytest.mark.parametrize(
    ("sampling", "field"),
    [
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": 1e9}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"min_p": -0.1}, "min_p"),
        ({"repeat_penalty": 0.0}, "repeat_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"max_tokens": 2_000_000_000}, "max_tokens"),
        ({"seed": -1}, "seed"),
        ({"stop": [""]}, "stop"),
        ({"stop": ["x"] * 50}, "stop"),
    ],
)
def test_bad_sampling_values_are_invalid(
    agent: RunningAgent, sampling: dict[str, Any], field: str
) -> None:
    request = pb.GenerateRequest(
        model=MODEL_ALIAS, prompt="hi", sampling=pb.SamplingParams(**sampling)
    )
    error = rpc_error(agent, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in error.details()


def test_empty_prompt_is_invalid(agent: RunningAgent) -> None:
    error = rpc_error(agent, pb.GenerateRequest(model=MODEL_ALIAS, prompt=""))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "prompt" in error.details()


def test_empty_messages_are_invalid(agent: RunningAgent) -> None:
    error = rpc_error(agent, pb.ChatRequest(model=MODEL_ALIAS))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "messages" in error.details()


def test_bad_role_is_invalid(agent: RunningAgent) -> None:
    request = pb.ChatRequest(
        model=MODEL_ALIAS, messages=[pb.ChatMessage(role="wizard", content="hi")]
    )
    error = rpc_error(agent, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "wizard" in error.details()


def test_message_over_the_size_limit_is_resource_exhausted(agent: RunningAgent) -> None:
    request = pb.GenerateRequest(model=MODEL_ALIAS, prompt="x" * (2 * 1024 * 1024))
    with (
        agent.channel(**{"grpc.max_send_message_length": 8 * 1024 * 1024}) as channel,
        pytest.raises(grpc.RpcError) as error,
    ):
        list(agent.inference_stub(channel).Generate(request, timeout=30))
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in error.value.details()  # the agent's limit, not the client's


def test_model_still_answers_after_bad_input(agent: RunningAgent) -> None:
    rpc_error(agent, pb.GenerateRequest(model=MODEL_ALIAS, prompt="hello " * 3000))
    rpc_error(
        agent, pb.ChatRequest(model=MODEL_ALIAS, messages=[pb.ChatMessage(role="", content="")])
    )
    with agent.channel() as channel:
        request = pb.GenerateRequest(
            model=MODEL_ALIAS, prompt="Hello", sampling=pb.SamplingParams(max_tokens=3)
        )
        responses = list(agent.inference_stub(channel).Generate(request, timeout=30))
    assert responses[-1].usage.completion_tokens == 3


def test_full_queue_is_refused_at_once(demo_model: Path) -> None:
    """Two run at once (parallel 2), none may wait (queue 0): the third is refused."""
    model = ModelSettings(
        path=demo_model, alias=MODEL_ALIAS, context_length=512, queue_depth=0, parallel=2
    )
    with RunningAgent(agent_settings([model]), llama_factory()) as agent:
        agent.wait_until_serving()
        with agent.channel() as channel:
            stub = agent.inference_stub(channel)
            long = pb.GenerateRequest(
                model=MODEL_ALIAS,
                prompt=COUNTING_PROMPT,
                sampling=pb.SamplingParams(max_tokens=400, temperature=0.0),
            )
            running = [stub.Generate(long, timeout=60) for _ in range(2)]
            for stream in running:
                next(stream)  # both generations are running now
            with pytest.raises(grpc.RpcError) as error:
                list(stub.Generate(pb.GenerateRequest(model=MODEL_ALIAS, prompt="hi"), timeout=30))
            for stream in running:
                stream.cancel()
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "busy" in error.value.details()
