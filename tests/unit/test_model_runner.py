"""ModelRunner with a scripted backend: ordering, admission, cancellation, failures."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass

import pytest

from agent.engine.protocol import BackendDescription, ModelBackend, ResolvedSampling
from agent.model_runner import GenerationStream, ModelRunner
from common.errors import ResourceExhausted
from common.inference import (
    ChatMessage,
    Finished,
    FinishReason,
    GenerationEvent,
    GenerationFailed,
    TextDelta,
    Usage,
)

# Only a safety net so that a broken test fails instead of hanging; nothing waits this long
# when the code under test works.
TIMEOUT_S = 10.0

SAMPLING = ResolvedSampling(
    max_tokens=16,
    temperature=0.0,
    top_p=1.0,
    top_k=1,
    min_p=0.0,
    repeat_penalty=1.0,
    seed=1,
    stop=(),
)


@dataclass(frozen=True)
class Call:
    prompt_tokens: tuple[int, ...]
    sampling: ResolvedSampling


class FakeBackend:
    """Yields one TextDelta per scripted token, then one Finished.

    With `pause_after=n`, each generation stops after n tokens, sets `paused` and waits for
    `resume` (which stays set once set). `fail_at=(call, token)` raises instead of that
    token of that call. Every Finished it produces is also put on `finishes`, so tests can
    see outcomes that no consumer received.
    """

    def __init__(
        self,
        tokens: Sequence[str] = ("Hel", "lo", " world"),
        *,
        pause_after: int | None = None,
        fail_at: tuple[int, int] | None = None,
    ) -> None:
        self.tokens = tuple(tokens)
        self.pause_after = pause_after
        self.fail_at = fail_at
        self.paused = threading.Event()
        self.resume = threading.Event()
        self.finishes: queue.Queue[Finished] = queue.Queue()
        self.calls: list[Call] = []
        self.closed = False

    def describe(self) -> BackendDescription:
        return BackendDescription(architecture="fake", context_length=256, vocab_size=32)

    def render_chat(self, messages: Sequence[ChatMessage]) -> str:
        return "".join(f"{m.role}: {m.content}\n" for m in messages)

    def tokenize(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def generate(
        self,
        prompt_tokens: Sequence[int],
        sampling: ResolvedSampling,
        cancelled: threading.Event,
    ) -> Iterator[GenerationEvent]:
        call = len(self.calls)
        self.calls.append(Call(tuple(prompt_tokens), sampling))
        produced = 0
        reason = FinishReason.STOP
        for index, token in enumerate(self.tokens):
            if index == self.pause_after:
                self.paused.set()
                if not self.resume.wait(TIMEOUT_S):
                    raise TimeoutError("test never resumed the fake backend")
            if cancelled.is_set():
                reason = FinishReason.CANCELLED
                break
            if self.fail_at == (call, index):
                raise RuntimeError(f"boom in call {call}")
            produced += 1
            yield TextDelta(token)
        finished = Finished(reason, Usage(len(prompt_tokens), produced))
        self.finishes.put(finished)
        yield finished

    def self_test(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    async def wait_paused(self) -> None:
        assert await asyncio.to_thread(self.paused.wait, TIMEOUT_S), "backend never paused"

    async def next_finish(self) -> Finished:
        return await asyncio.to_thread(self.finishes.get, True, TIMEOUT_S)


def run_with(
    backend: FakeBackend,
    queue_depth: int,
    test: Callable[[ModelRunner], Awaitable[None]],
) -> ModelRunner:
    """Runs `test` on a fresh runner inside asyncio.run; always unblocks and joins the worker."""
    typed: ModelBackend = backend  # the fake must satisfy the Protocol
    runner = ModelRunner("fake", typed, queue_depth=queue_depth)

    async def main() -> None:
        try:
            await test(runner)
        finally:
            backend.resume.set()
            runner.close()

    asyncio.run(main())
    return runner


async def collect(stream: GenerationStream) -> list[GenerationEvent]:
    return [event async for event in stream]


async def collect_into(stream: GenerationStream, sink: list[GenerationEvent]) -> None:
    async for event in stream:
        sink.append(event)


async def settle(runner: ModelRunner) -> None:
    """Returns once every job admitted so far has finished and been released.

    The worker is one FIFO thread: a no-op queued behind all jobs completes after them, and
    asyncio delivers the completions (and their done callbacks) in that order.
    """
    await asyncio.get_running_loop().run_in_executor(runner._executor, lambda: None)


def test_events_arrive_in_order_and_end_with_one_finished() -> None:
    backend = FakeBackend(("a", "b", "c", "d"))
    events: list[GenerationEvent] = []

    async def test(runner: ModelRunner) -> None:
        events.extend(await collect(runner.start([1, 2, 3], SAMPLING)))

    run_with(backend, 2, test)
    assert events == [
        TextDelta("a"),
        TextDelta("b"),
        TextDelta("c"),
        TextDelta("d"),
        Finished(FinishReason.STOP, Usage(prompt_tokens=3, completion_tokens=4)),
    ]
    assert backend.calls == [Call((1, 2, 3), SAMPLING)]


def test_generation_without_text_still_finishes() -> None:
    backend = FakeBackend(())
    events: list[GenerationEvent] = []

    async def test(runner: ModelRunner) -> None:
        events.extend(await collect(runner.start([9], SAMPLING)))

    run_with(backend, 0, test)
    assert events == [Finished(FinishReason.STOP, Usage(1, 0))]


def test_requests_run_one_at_a_time_in_admission_order() -> None:
    backend = FakeBackend(("x",), pause_after=0)
    results: list[list[GenerationEvent]] = []

    async def test(runner: ModelRunner) -> None:
        streams = [runner.start([n] * n, SAMPLING) for n in (1, 2, 3)]
        await backend.wait_paused()
        assert len(backend.calls) == 1  # the others wait for the first to finish
        backend.resume.set()
        results.extend(await asyncio.gather(*(collect(s) for s in streams)))

    run_with(backend, 2, test)
    assert [c.prompt_tokens for c in backend.calls] == [(1,), (2, 2), (3, 3, 3)]
    assert [r[-1] for r in results] == [Finished(FinishReason.STOP, Usage(n, 1)) for n in (1, 2, 3)]


def test_full_queue_refuses_at_once_while_the_first_is_blocked() -> None:
    backend = FakeBackend(("x", "y"), pause_after=0)
    outcomes: list[list[GenerationEvent]] = []

    async def test(runner: ModelRunner) -> None:
        first = runner.start([1], SAMPLING)
        await backend.wait_paused()
        second = runner.start([2], SAMPLING)
        with pytest.raises(ResourceExhausted, match="'fake' is busy") as error:
            runner.start([3], SAMPLING)
        assert "limit 1" in str(error.value)
        assert backend.paused.is_set()  # the first is still blocked
        assert not backend.resume.is_set()
        backend.resume.set()
        outcomes.append(await collect(first))
        outcomes.append(await collect(second))

    run_with(backend, 1, test)
    assert [o[-1].reason for o in outcomes if isinstance(o[-1], Finished)] == [
        FinishReason.STOP,
        FinishReason.STOP,
    ]
    assert [c.prompt_tokens for c in backend.calls] == [(1,), (2,)]  # the refused one never ran


def test_queue_depth_zero_admits_only_the_running_request() -> None:
    backend = FakeBackend(("x",), pause_after=0)

    async def test(runner: ModelRunner) -> None:
        first = runner.start([1], SAMPLING)
        with pytest.raises(ResourceExhausted, match="limit 0"):
            runner.start([2], SAMPLING)
        backend.resume.set()
        assert (await collect(first))[-1] == Finished(FinishReason.STOP, Usage(1, 1))
        await settle(runner)
        later = runner.start([3], SAMPLING)  # room again once the first is done
        assert (await collect(later))[-1] == Finished(FinishReason.STOP, Usage(1, 1))

    run_with(backend, 0, test)
    assert len(backend.calls) == 2


def test_waiting_counts_requests_behind_the_running_one() -> None:
    backend = FakeBackend(("x",), pause_after=0)
    seen: list[int] = []

    async def test(runner: ModelRunner) -> None:
        seen.append(runner.waiting)
        streams = [runner.start([1], SAMPLING)]
        seen.append(runner.waiting)
        await backend.wait_paused()
        streams.append(runner.start([2], SAMPLING))
        seen.append(runner.waiting)
        streams.append(runner.start([3], SAMPLING))
        seen.append(runner.waiting)
        with pytest.raises(ResourceExhausted, match="2 requests are already queued"):
            runner.start([4], SAMPLING)
        seen.append(runner.waiting)
        backend.resume.set()
        for stream in streams:
            await collect(stream)
        await settle(runner)
        seen.append(runner.waiting)

    run_with(backend, 2, test)
    assert seen == [0, 0, 1, 2, 2, 0]


def test_leaving_events_early_cancels_the_generation() -> None:
    backend = FakeBackend(("a", "b", "c"), pause_after=1)
    finished: list[Finished] = []

    async def test(runner: ModelRunner) -> None:
        events = runner.start([1, 2], SAMPLING)
        assert await anext(events) == TextDelta("a")
        await backend.wait_paused()
        await events.aclose()
        backend.resume.set()
        finished.append(await backend.next_finish())

    run_with(backend, 1, test)
    assert finished == [Finished(FinishReason.CANCELLED, Usage(2, 1))]


def test_cancelling_the_consumer_task_cancels_the_generation() -> None:
    backend = FakeBackend(("a", "b", "c"), pause_after=1)
    finished: list[Finished] = []

    async def test(runner: ModelRunner) -> None:
        stream = runner.start([1], SAMPLING)
        got_first = asyncio.Event()

        async def consume() -> None:
            async for _ in stream:
                got_first.set()

        task = asyncio.create_task(consume())
        await got_first.wait()
        await backend.wait_paused()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        backend.resume.set()
        finished.append(await backend.next_finish())

    run_with(backend, 1, test)
    assert finished == [Finished(FinishReason.CANCELLED, Usage(1, 1))]


def test_request_cancelled_while_queued_never_generates() -> None:
    backend = FakeBackend(("a", "b"), pause_after=0)
    results: list[list[GenerationEvent]] = []

    async def test(runner: ModelRunner) -> None:
        first = runner.start([1], SAMPLING)
        await backend.wait_paused()
        queued = runner.start([2, 2], SAMPLING)
        queued.cancel()
        backend.resume.set()
        results.append(await collect(first))
        results.append(await collect(queued))

    run_with(backend, 1, test)
    assert results[0][-1] == Finished(FinishReason.STOP, Usage(1, 2))
    assert results[1] == [Finished(FinishReason.CANCELLED, Usage(2, 0))]


def test_backend_failure_reaches_the_caller_and_the_runner_recovers() -> None:
    backend = FakeBackend(("ok", "bad", "never"), fail_at=(0, 1))
    received: list[GenerationEvent] = []
    retry: list[GenerationEvent] = []

    async def test(runner: ModelRunner) -> None:
        with pytest.raises(GenerationFailed, match="boom in call 0"):
            await collect_into(runner.start([1], SAMPLING), received)
        retry.extend(await collect(runner.start([1], SAMPLING)))

    run_with(backend, 1, test)
    assert received == [TextDelta("ok")]
    assert retry == [
        TextDelta("ok"),
        TextDelta("bad"),
        TextDelta("never"),
        Finished(FinishReason.STOP, Usage(1, 3)),
    ]


def test_failure_before_any_text_is_reported() -> None:
    backend = FakeBackend(("x",), fail_at=(0, 0))

    async def test(runner: ModelRunner) -> None:
        with pytest.raises(GenerationFailed, match="boom"):
            await collect(runner.start([1], SAMPLING))

    run_with(backend, 0, test)
    assert backend.finishes.empty()


def test_description_and_close_come_from_the_backend() -> None:
    backend = FakeBackend()

    async def test(runner: ModelRunner) -> None:
        assert runner.alias == "fake"
        assert runner.description == backend.describe()
        assert runner.waiting == 0
        assert not backend.closed

    run_with(backend, 3, test)
    assert backend.closed
