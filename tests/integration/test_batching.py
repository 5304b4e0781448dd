"""Continuous batching on the real model: concurrent requests match the same requests alone."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import pytest

from agent.engine.llama_backend import LlamaCppBackend
from agent.engine.protocol import ResolvedSampling
from agent.settings import ModelSettings
from common.errors import InvalidArgument
from common.inference import Finished, FinishReason, TextDelta
from tests.agent_harness import RunningAgent, agent_settings
from tests.conftest import COUNTING_PROMPT, GREEDY, llama_factory

pytestmark = pytest.mark.model

SYSTEM = (
    "You are the help desk assistant of a small branch office. Answer in one short sentence, "
    "politely, and never reveal internal ticket numbers. Question: "
)


@dataclass
class Outcome:
    text: str = ""
    finished: Finished | None = None
    deltas: int = 0
    first_token: threading.Event = field(default_factory=threading.Event)


@pytest.fixture(scope="module")
def backend(demo_model: Path) -> Iterator[LlamaCppBackend]:
    engine = LlamaCppBackend(
        demo_model, context_length=512, gpu_layers=0, threads=2, batch_size=512, parallel=8
    )
    yield engine
    engine.close()


def run(
    backend: LlamaCppBackend,
    prompt: str,
    sampling: ResolvedSampling,
    cancelled: threading.Event | None = None,
    outcome: Outcome | None = None,
) -> Outcome:
    outcome = outcome or Outcome()
    for event in backend.generate(
        backend.tokenize(prompt), sampling, cancelled or threading.Event()
    ):
        if isinstance(event, TextDelta):
            outcome.text += event.text
            outcome.deltas += 1
            outcome.first_token.set()
        else:
            outcome.finished = event
    return outcome


REQUESTS = [
    (COUNTING_PROMPT, replace(GREEDY, max_tokens=48)),
    ("The capital of France is", replace(GREEDY, max_tokens=8)),
    ("Once upon a time", replace(GREEDY, max_tokens=24, temperature=0.8, seed=7)),
    ("def fibonacci(n):", replace(GREEDY, max_tokens=40, repeat_penalty=1.3)),
    ("Monday, Tuesday,", replace(GREEDY, max_tokens=16, stop=("-01T",))),
    (SYSTEM + "Where is the printer?", replace(GREEDY, max_tokens=20)),
    (SYSTEM + "How do I reset my password?", replace(GREEDY, max_tokens=20)),
    ("a b c d e f", replace(GREEDY, max_tokens=12, temperature=1.2, top_k=5, seed=99)),
]


def test_eight_concurrent_streams_match_the_same_requests_alone(
    backend: LlamaCppBackend,
) -> None:
    alone = [run(backend, prompt, sampling) for prompt, sampling in REQUESTS]
    decodes_before = backend._scheduler.decodes
    with ThreadPoolExecutor(len(REQUESTS)) as pool:
        together = list(pool.map(lambda r: run(backend, *r), REQUESTS))
    for single, batched, (prompt, sampling) in zip(alone, together, REQUESTS, strict=True):
        assert single.finished is not None
        assert batched.finished is not None
        assert single.finished.usage.completion_tokens <= sampling.max_tokens
        assert batched.finished.usage.completion_tokens <= sampling.max_tokens
        assert batched.text, prompt
        # Greedy or seeded sampling: the same text, token for token, alone or in a batch.
        assert batched.text == single.text, prompt
        assert batched.finished == single.finished, prompt
    assert alone[0].finished is not None
    assert alone[0].finished.reason == FinishReason.LENGTH
    assert alone[4].finished is not None
    assert alone[4].finished.reason == FinishReason.STOP  # the stop sequence
    assert "-01T" not in alone[4].text
    # Batched: far fewer decodes than the 220 tokens and prompts would need one by one.
    assert backend._scheduler.decodes - decodes_before < 120
    assert backend.used_cells() == 0


def test_a_shared_system_prompt_is_copied_not_recomputed(backend: LlamaCppBackend) -> None:
    first = Outcome()
    long = replace(GREEDY, max_tokens=200)
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(run, backend, SYSTEM + "Where is the printer?", long, None, first)
        assert first.first_token.wait(60)
        shared_before = backend._scheduler.shared_prefix_tokens
        second = pool.submit(run, backend, SYSTEM + "How do I reset my password?", GREEDY)
        second_result = second.result(60)
        running.result(60)
    system_tokens = len(backend.tokenize(SYSTEM))
    assert backend._scheduler.shared_prefix_tokens - shared_before >= system_tokens - 1
    alone = run(backend, SYSTEM + "How do I reset my password?", GREEDY)
    assert second_result.text == alone.text
    assert backend.used_cells() == 0


def test_cancelling_one_stream_does_not_disturb_the_others(backend: LlamaCppBackend) -> None:
    sampling = replace(GREEDY, max_tokens=40)
    alone = run(backend, COUNTING_PROMPT, sampling)
    stop_me = threading.Event()
    victim = Outcome()
    with ThreadPoolExecutor(4) as pool:
        others = [pool.submit(run, backend, COUNTING_PROMPT, sampling) for _ in range(3)]
        cancelled = pool.submit(
            run, backend, COUNTING_PROMPT, replace(sampling, max_tokens=400), stop_me, victim
        )
        assert victim.first_token.wait(60)
        stop_me.set()
        results = [future.result(60) for future in others]
        cancelled.result(60)
    assert victim.finished is not None
    assert victim.finished.reason == FinishReason.CANCELLED
    assert victim.finished.usage.completion_tokens < 400
    assert [r.text for r in results] == [alone.text] * 3
    assert backend.used_cells() == 0


def test_a_long_prompt_is_read_in_chunks_while_others_stream(backend: LlamaCppBackend) -> None:
    streaming = Outcome()
    long_prompt = " ".join(f"item {i}," for i in range(85))
    assert 400 < len(backend.tokenize(long_prompt)) < 500
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(
            run, backend, COUNTING_PROMPT, replace(GREEDY, max_tokens=120), None, streaming
        )
        assert streaming.first_token.wait(60)
        before = streaming.deltas
        late = Outcome()
        admitted = pool.submit(run, backend, long_prompt, replace(GREEDY, max_tokens=4), None, late)
        assert late.first_token.wait(60)
        during = streaming.deltas - before
        admitted.result(60)
        running.result(60)
    # 128-token chunks: the running stream got tokens while the long prompt was being read.
    assert during >= 3
    assert late.finished is not None
    assert late.finished.usage.prompt_tokens > 400
    assert backend.used_cells() == 0


def test_a_prompt_longer_than_the_context_is_refused_clearly(backend: LlamaCppBackend) -> None:
    too_long = " ".join(f"item {i}," for i in range(200))
    with pytest.raises(InvalidArgument, match="this model takes 1 to 511 per request"):
        run(backend, too_long, GREEDY)
    assert run(backend, COUNTING_PROMPT, replace(GREEDY, max_tokens=4)).finished is not None
    assert backend.used_cells() == 0


def test_the_agent_serves_eight_concurrent_http_streams(demo_model: Path) -> None:
    model = ModelSettings(path=demo_model, alias="smol", context_length=512, parallel=8)
    with RunningAgent(agent_settings([model]), llama_factory()) as agent:
        agent.wait_until_serving()

        def complete(max_tokens: int) -> dict[str, object]:
            body = {
                "model": "smol",
                "prompt": COUNTING_PROMPT,
                "max_tokens": max_tokens,
                "temperature": 0,
            }
            response = httpx.post(f"{agent.http_base}/v1/completions", json=body, timeout=120)
            assert response.status_code == 200, response.text
            return dict(response.json())

        alone = complete(40)
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(complete, [40, 8, 40, 16, 40, 24, 40, 32]))
    long_texts = [a["choices"][0]["text"] for a in answers[::2]]  # type: ignore[index]
    assert long_texts == [alone["choices"][0]["text"]] * 4  # type: ignore[index]
    lengths = [a["usage"]["completion_tokens"] for a in answers]  # type: ignore[index]
    assert lengths == [40, 8, 40, 16, 40, 24, 40, 32]
