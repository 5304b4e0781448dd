"""InferenceService over real gRPC, serving the real demo model through llama.cpp."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from common.inference import FinishReason
from outpost.v1 import inference_pb2 as pb
from tests.agent_harness import GenerationLog, RunningAgent
from tests.conftest import CONTEXT_LENGTH, COUNTING_PROMPT, MODEL_ALIAS

GREEDY: dict[str, Any] = {"temperature": 0.0, "seed": 7}


def generate(agent: RunningAgent, prompt: str, **sampling: Any) -> tuple[str, pb.GenerateResponse]:
    with agent.channel() as channel:
        stub = agent.inference_stub(channel)
        request = pb.GenerateRequest(
            model=MODEL_ALIAS, prompt=prompt, sampling=pb.SamplingParams(**sampling)
        )
        responses = list(stub.Generate(request, timeout=60))
    *deltas, last = responses
    assert all(r.finish_reason == pb.FINISH_REASON_UNSPECIFIED for r in deltas)
    return "".join(r.text for r in deltas) + last.text, last


def chat(
    agent: RunningAgent, messages: list[tuple[str, str]], **sampling: Any
) -> tuple[str, pb.GenerateResponse]:
    with agent.channel() as channel:
        stub = agent.inference_stub(channel)
        request = pb.ChatRequest(
            model=MODEL_ALIAS,
            messages=[pb.ChatMessage(role=r, content=c) for r, c in messages],
            sampling=pb.SamplingParams(**sampling),
        )
        responses = list(stub.Chat(request, timeout=60))
    text = "".join(r.text for r in responses)
    return text, responses[-1]


def test_generate_streams_until_max_tokens(agent: RunningAgent) -> None:
    text, last = generate(agent, "The capital of France is", max_tokens=12, **GREEDY)
    assert text.strip()
    assert last.finish_reason == pb.FINISH_REASON_LENGTH
    assert last.usage.completion_tokens == 12
    assert last.usage.prompt_tokens >= 5


def test_generate_streams_text_in_several_messages(agent: RunningAgent) -> None:
    with agent.channel() as channel:
        request = pb.GenerateRequest(
            model=MODEL_ALIAS,
            prompt="Count: one, two,",
            sampling=pb.SamplingParams(max_tokens=10, **GREEDY),
        )
        responses = list(agent.inference_stub(channel).Generate(request, timeout=60))
    text_messages = [r for r in responses if r.text]
    assert len(text_messages) >= 5  # streamed token by token, not in one piece
    assert responses[-1].finish_reason != pb.FINISH_REASON_UNSPECIFIED
    assert sum(1 for r in responses if r.finish_reason) == 1


def test_chat_uses_the_models_template_and_stops_at_end_of_turn(agent: RunningAgent) -> None:
    text, last = chat(agent, [("user", "Say hello.")], max_tokens=200, **GREEDY)
    assert text.strip()
    assert "<|im_end|>" not in text
    assert "<|im_start|>" not in text
    assert last.finish_reason == pb.FINISH_REASON_STOP
    assert 0 < last.usage.completion_tokens < 200


def test_chat_prompt_tokens_count_the_rendered_template(agent: RunningAgent) -> None:
    _, plain = generate(agent, "Say hello.", max_tokens=1, **GREEDY)
    _, chatted = chat(agent, [("user", "Say hello.")], max_tokens=1, **GREEDY)
    # ChatML adds the role markers and the assistant turn header around the same words.
    assert chatted.usage.prompt_tokens > plain.usage.prompt_tokens + 4


def test_stop_sequence_ends_the_text_before_it(agent: RunningAgent) -> None:
    reference, _ = generate(agent, "List the days of the week: Monday,", max_tokens=24, **GREEDY)
    words = [w.strip(",. \n") for w in reference.split() if w.strip(",. \n")]
    assert len(words) >= 3, reference
    stop = words[2]
    text, last = generate(
        agent, "List the days of the week: Monday,", max_tokens=24, stop=[stop], **GREEDY
    )
    assert last.finish_reason == pb.FINISH_REASON_STOP
    assert stop not in text
    assert reference.startswith(text)
    assert len(text) < len(reference)


def test_seeded_sampling_is_reproducible(agent: RunningAgent) -> None:
    first, _ = generate(agent, "Once upon a time", max_tokens=20, temperature=0.9, seed=1234)
    second, _ = generate(agent, "Once upon a time", max_tokens=20, temperature=0.9, seed=1234)
    other, _ = generate(agent, "Once upon a time", max_tokens=20, temperature=0.9, seed=99)
    assert first == second
    assert first != other


def test_list_models(agent: RunningAgent) -> None:
    with agent.channel() as channel:
        response = agent.inference_stub(channel).ListModels(pb.ListModelsRequest(), timeout=10)
    (model,) = response.models
    assert model.alias == MODEL_ALIAS
    assert model.ready
    assert model.architecture == "llama"
    assert model.context_length == CONTEXT_LENGTH
    assert model.size_bytes == 98_362_432
    assert model.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def test_concurrent_requests_match_sequential_results(agent: RunningAgent) -> None:
    prompts = [f"Write a short fact about the number {n}." for n in range(8)]
    sequential = [generate(agent, p, max_tokens=16, **GREEDY)[0] for p in prompts]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(
            pool.map(lambda p: generate(agent, p, max_tokens=16, **GREEDY)[0], prompts)
        )
    assert concurrent == sequential
    assert len(set(sequential)) > 1  # different prompts, different answers


def test_cancelled_stream_stops_generation_and_frees_the_model(
    agent: RunningAgent, generation_log: GenerationLog
) -> None:
    before = len(generation_log.finished)
    with agent.channel() as channel:
        request = pb.GenerateRequest(
            model=MODEL_ALIAS,
            prompt=COUNTING_PROMPT,
            sampling=pb.SamplingParams(max_tokens=900, **GREEDY),
        )
        call = agent.inference_stub(channel).Generate(request, timeout=120)
        for received, _ in enumerate(call, start=1):
            if received == 3:
                call.cancel()
                break
    finished = generation_log.wait_for(before + 1)[before]
    assert finished.reason == FinishReason.CANCELLED
    assert finished.usage.completion_tokens < 100  # stopped right away, not at 900
    text, last = generate(agent, "Hi", max_tokens=4, **GREEDY)
    assert last.usage.completion_tokens == 4
    assert text


def test_deadline_stops_generation(agent: RunningAgent, generation_log: GenerationLog) -> None:
    before = len(generation_log.finished)
    with agent.channel() as channel:
        request = pb.GenerateRequest(
            model=MODEL_ALIAS,
            prompt=COUNTING_PROMPT,
            sampling=pb.SamplingParams(max_tokens=900, **GREEDY),
        )
        with pytest.raises(grpc.RpcError) as error:
            list(agent.inference_stub(channel).Generate(request, timeout=0.5))
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finished = generation_log.wait_for(before + 1)[before]
    assert finished.reason == FinishReason.CANCELLED
    assert finished.usage.completion_tokens < 900
