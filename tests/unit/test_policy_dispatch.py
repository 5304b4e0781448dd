"""Carrying out a decision: order, fallback per fallback_on, records, ceilings, redaction."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.policy.detector_kinds import BUILTIN_DETECTOR_KINDS
from common.policy.detectors import DetectorFailure
from common.policy.dispatch import (
    Dispatched,
    DispatchFailed,
    Outcome,
    TargetFailure,
    dispatch,
    dispatch_stream,
)
from common.policy.policy_model import (
    DEFAULT_LEVELS,
    BuiltinDetector,
    CloudTarget,
    FallbackOn,
    LocalTarget,
    Policy,
    Role,
    Route,
    Target,
)
from common.policy.routing import Caller, Candidate, Classification, Decision, PolicyEngine
from tests.sensitive_corpus import sensitive_prompt, valid_card


def cloud(name: str, max_level: str, **extra: object) -> CloudTarget:
    return CloudTarget(
        name=name,
        model=f"{name}-model",
        max_level=max_level,
        base_url="http://127.0.0.1:9/v1",
        price_per_1k_input=0.1,
        price_per_1k_output=0.2,
        **extra,  # type: ignore[arg-type]
    )


def make_policy(
    *targets: Target, fallback_on: tuple[FallbackOn, ...] = tuple(FallbackOn)
) -> Policy:
    return Policy(
        detectors=(BuiltinDetector(name="cards", level="confidential", builtin="payment_card"),),
        roles=(Role(name="dev", max_level="restricted", min_level="public", targets=("*",)),),
        targets=targets,
        routes=(Route(name="all", targets=tuple(t.name for t in targets)),),
        fallback_on=fallback_on,
    )


THREE = (
    cloud("first", "internal"),
    cloud("second", "confidential"),
    LocalTarget(name="here", model="smol", max_level="restricted"),
)


def decide(policy: Policy, *parts: str) -> Decision:
    return PolicyEngine(policy).decide(parts, Caller(role="dev"))


class Recorder:
    """An attempt callable: records what each target was sent, fails as told."""

    def __init__(self, failures: Mapping[str, BaseException] | None = None) -> None:
        self.failures = dict(failures or {})
        self.sent: list[tuple[str, tuple[str, ...]]] = []

    async def __call__(self, target: Target, parts: tuple[str, ...]) -> str:
        self.sent.append((target.name, parts))
        failure = self.failures.get(target.name)
        if failure is not None:
            raise failure
        return f"answer from {target.name}"


def run_dispatch(
    decision: Decision, policy: Policy | None, recorder: Recorder, *, enable_fallback: bool = False
) -> Dispatched[str]:
    return asyncio.run(
        dispatch(decision, policy, recorder, parts=["hello"], enable_fallback=enable_fallback)
    )


def test_the_first_target_answers_and_only_it_is_called() -> None:
    policy = make_policy(*THREE)
    recorder = Recorder()
    result = run_dispatch(decide(policy, "hello"), policy, recorder)
    assert result.value == "answer from first"
    assert recorder.sent == [("first", ("hello",))]
    assert [(a.target, a.outcome) for a in result.attempts] == [("first", Outcome.OK)]


@pytest.mark.parametrize("outcome", [Outcome.ERROR, Outcome.TIMEOUT, Outcome.BUDGET])
def test_each_fallback_kind_moves_to_the_next_target_in_order(outcome: Outcome) -> None:
    policy = make_policy(*THREE)
    recorder = Recorder(
        {"first": TargetFailure(outcome, "down"), "second": TargetFailure(outcome, "down too")}
    )
    result = run_dispatch(decide(policy, "hello"), policy, recorder)
    assert result.value == "answer from here"
    assert [name for name, _ in recorder.sent] == ["first", "second", "here"]
    assert [(a.target, a.outcome, a.reason) for a in result.attempts] == [
        ("first", outcome, "down"),
        ("second", outcome, "down too"),
        ("here", Outcome.OK, "answered"),
    ]
    assert all(a.latency_s >= 0 for a in result.attempts)


def test_no_fallback_when_the_kind_is_not_in_fallback_on() -> None:
    policy = make_policy(*THREE, fallback_on=(FallbackOn.TIMEOUT,))
    recorder = Recorder({"first": TargetFailure(Outcome.ERROR, "503")})
    with pytest.raises(DispatchFailed) as caught:
        run_dispatch(decide(policy, "hello"), policy, recorder)
    assert [name for name, _ in recorder.sent] == ["first"]
    assert caught.value.outcome is Outcome.ERROR
    assert "first: error (503)" in str(caught.value)


def test_enable_fallback_falls_back_whatever_fallback_on_says() -> None:
    policy = make_policy(*THREE, fallback_on=())
    recorder = Recorder({"first": TargetFailure(Outcome.BUDGET, "429")})
    result = run_dispatch(decide(policy, "hello"), policy, recorder, enable_fallback=True)
    assert result.target.name == "second"


def test_a_rejected_request_never_falls_back() -> None:
    policy = make_policy(*THREE)
    recorder = Recorder({"first": TargetFailure(Outcome.REJECTED, "HTTP 400")})
    with pytest.raises(DispatchFailed) as caught:
        run_dispatch(decide(policy, "hello"), policy, recorder, enable_fallback=True)
    assert caught.value.outcome is Outcome.REJECTED
    assert [name for name, _ in recorder.sent] == ["first"]


def test_an_unexpected_exception_counts_as_an_error_without_its_message() -> None:
    policy = make_policy(*THREE)
    recorder = Recorder({"first": ValueError("secret prompt text")})
    result = run_dispatch(decide(policy, "hello"), policy, recorder)
    assert result.attempts[0].outcome is Outcome.ERROR
    assert "secret" not in result.attempts[0].reason
    assert result.target.name == "second"


def test_a_target_past_its_timeout_counts_as_timeout() -> None:
    slow = cloud("slow", "internal", timeout_s=0.1)
    policy = make_policy(slow, THREE[2])

    async def attempt(target: Target, parts: tuple[str, ...]) -> str:
        if target.name == "slow":
            await asyncio.Event().wait()  # never set: only the deadline ends it
        return target.name

    result = asyncio.run(dispatch(decide(policy, "hi"), policy, attempt, parts=["hi"]))
    assert [(a.target, a.outcome) for a in result.attempts] == [
        ("slow", Outcome.TIMEOUT),
        ("here", Outcome.OK),
    ]
    assert result.attempts[0].latency_s >= 0.1
    assert result.attempts[0].reason == "no answer within 0.1 s"


def test_a_target_above_its_ceiling_is_never_called_even_when_the_decision_allows_it() -> None:
    policy = make_policy(*THREE)
    card = valid_card(random.Random(5))
    honest = decide(policy, f"card {card}")
    assert honest.level == "confidential"
    assert honest.targets == ("second", "here")
    forged = replace(
        honest, candidates=tuple(Candidate(c.target, True, "forged") for c in honest.candidates)
    )
    recorder = Recorder()
    result = asyncio.run(dispatch(forged, policy, recorder, parts=[f"card {card}"]))
    assert [name for name, _ in recorder.sent] == ["second"]
    assert (result.attempts[0].target, result.attempts[0].outcome) == ("first", Outcome.REFUSED)
    assert result.attempts[0].reason == "confidential data is above its ceiling internal"


def test_a_decision_under_another_policy_or_an_unknown_target_is_refused() -> None:
    policy = make_policy(*THREE)
    decision = decide(policy, "hello")
    other = make_policy(*THREE, fallback_on=())
    recorder = Recorder()
    with pytest.raises(DispatchFailed) as caught:
        asyncio.run(dispatch(decision, other, recorder, parts=["hello"]))
    assert recorder.sent == []
    assert {a.reason for a in caught.value.attempts} == {
        "the decision was made under another policy"
    }
    unknown = replace(decision, candidates=(Candidate("elsewhere", True, "forged"),))
    with pytest.raises(DispatchFailed, match="not a target of the policy"):
        asyncio.run(dispatch(unknown, policy, recorder, parts=["hello"]))
    assert recorder.sent == []


def test_a_refused_decision_calls_nothing() -> None:
    policy = make_policy(*THREE)
    decision = PolicyEngine(policy).decide(["hi"], Caller(role="nobody"))
    recorder = Recorder()
    with pytest.raises(DispatchFailed, match="role 'nobody' is not in the policy") as caught:
        asyncio.run(dispatch(decision, policy, recorder, parts=["hi"]))
    assert caught.value.outcome is Outcome.REFUSED
    assert recorder.sent == []


def test_without_a_policy_only_the_local_model_is_called() -> None:
    decision = PolicyEngine(None).decide(
        ["hi"], Caller(role="dev"), requested="smol", local_models=["smol"]
    )
    recorder = Recorder()
    result = asyncio.run(dispatch(decision, None, recorder, parts=["hi"]))
    assert recorder.sent == [("smol", ("hi",))]
    assert result.target.on_premises
    with pytest.raises(DispatchFailed, match="under a policy that is not given"):
        asyncio.run(dispatch(decide(make_policy(*THREE), "hi"), None, recorder, parts=["hi"]))


def test_a_cloud_target_with_redact_gets_masked_parts_and_a_local_one_the_original() -> None:
    policy = make_policy(
        cloud("masked", "confidential"),
        LocalTarget(name="here", model="smol", max_level="restricted"),
    )
    card = valid_card(random.Random(6))
    parts = [f"pay with {card}", "thanks"]
    decision = decide(policy, *parts)
    recorder = Recorder({"masked": TargetFailure(Outcome.ERROR, "down")})
    result = asyncio.run(dispatch(decision, policy, recorder, parts=parts))
    assert recorder.sent == [
        ("masked", ("pay with [REDACTED:cards]", "thanks")),
        ("here", (f"pay with {card}", "thanks")),
    ]
    assert [a.masked for a in result.attempts] == [1, 0]


def test_a_cloud_target_without_redact_gets_the_original() -> None:
    policy = make_policy(cloud("plain", "confidential", redact=False))
    card = valid_card(random.Random(7))
    recorder = Recorder()
    asyncio.run(dispatch(decide(policy, card), policy, recorder, parts=[card]))
    assert recorder.sent == [("plain", (card,))]


def test_when_redaction_is_impossible_the_cloud_target_is_not_called() -> None:
    policy = make_policy(
        cloud("masked", "restricted"),
        LocalTarget(name="here", model="smol", max_level="restricted"),
        fallback_on=(),
    )
    decision = decide(policy, "text")
    failed = Classification("restricted", (), (DetectorFailure("cards", "timed out"),), ())
    decision = replace(decision, classification=failed)
    recorder = Recorder()
    result = asyncio.run(dispatch(decision, policy, recorder, parts=["text"]))
    assert recorder.sent == [("here", ("text",))]
    assert result.attempts[0].outcome is Outcome.REFUSED
    assert "redaction impossible: detector cards failed" in result.attempts[0].reason


def test_cancellation_propagates_and_nothing_else_is_tried() -> None:
    policy = make_policy(*THREE)
    started = asyncio.Event()
    called: list[str] = []

    async def attempt(target: Target, parts: tuple[str, ...]) -> str:
        called.append(target.name)
        started.set()
        await asyncio.Event().wait()
        return "never"

    async def main() -> None:
        task = asyncio.create_task(dispatch(decide(policy, "hi"), policy, attempt, parts=["hi"]))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert called == ["first"]


# ------------------------------------------------------------------------------- streaming


def streamer(
    plan: dict[str, list[str | BaseException]],
) -> tuple[Callable[[Target, tuple[str, ...]], AsyncIterator[str]], list[str]]:
    """An open_stream callable: each target's chunks, an exception where it fails."""
    opened: list[str] = []

    async def open_stream(target: Target, parts: tuple[str, ...]) -> AsyncIterator[str]:
        opened.append(target.name)
        for item in plan.get(target.name, []):
            if isinstance(item, BaseException):
                raise item
            yield item

    return open_stream, opened


async def collect(stream: AsyncIterable[str]) -> list[str]:
    return [chunk async for chunk in stream]


def test_a_stream_falls_back_before_its_first_chunk() -> None:
    policy = make_policy(*THREE)
    open_stream, opened = streamer(
        {
            "first": [TargetFailure(Outcome.BUDGET, "429")],
            "second": [],
            "here": ["a", "b"],
        }
    )

    async def main() -> tuple[list[str], object]:
        stream = await dispatch_stream(decide(policy, "hi"), policy, open_stream, parts=["hi"])
        return await collect(stream), stream.attempts

    chunks, attempts = asyncio.run(main())
    assert chunks == ["a", "b"]
    assert opened == ["first", "second", "here"]
    assert [(a.target, a.outcome) for a in attempts] == [  # type: ignore[attr-defined]
        ("first", Outcome.BUDGET),
        ("second", Outcome.ERROR),
        ("here", Outcome.OK),
    ]


def test_a_stream_that_fails_after_its_first_chunk_does_not_fall_back() -> None:
    policy = make_policy(*THREE)
    open_stream, opened = streamer(
        {"first": ["a", TargetFailure(Outcome.ERROR, "reset")], "second": ["x"]}
    )

    async def main() -> tuple[list[str], object]:
        stream = await dispatch_stream(decide(policy, "hi"), policy, open_stream, parts=["hi"])
        received: list[str] = []

        async def read() -> None:
            async for chunk in stream:
                received.append(chunk)

        with pytest.raises(TargetFailure, match="after the first chunk, no fallback: reset"):
            await read()
        return received, stream.attempts

    received, attempts = asyncio.run(main())
    assert received == ["a"]
    assert opened == ["first"]
    assert [(a.target, a.outcome) for a in attempts] == [("first", Outcome.ERROR)]  # type: ignore[attr-defined]


def test_a_stream_past_its_deadline_after_the_first_chunk_times_out() -> None:
    slow = cloud("slow", "internal", timeout_s=0.1)
    policy = make_policy(slow)

    async def open_stream(target: Target, parts: tuple[str, ...]) -> AsyncIterator[str]:
        yield "first"
        await asyncio.Event().wait()
        yield "never"

    async def main() -> None:
        stream = await dispatch_stream(decide(policy, "hi"), policy, open_stream, parts=["hi"])
        with pytest.raises(TargetFailure) as caught:
            await collect(stream)
        assert caught.value.outcome is Outcome.TIMEOUT
        assert stream.attempts[-1].outcome is Outcome.TIMEOUT

    asyncio.run(main())


def test_a_stream_above_its_ceiling_is_never_opened() -> None:
    policy = make_policy(*THREE)
    card = valid_card(random.Random(8))
    honest = decide(policy, card)
    forged = replace(honest, candidates=(Candidate("first", True, "forged"),))
    open_stream, opened = streamer({"first": ["leak"]})
    with pytest.raises(DispatchFailed, match="above its ceiling"):
        asyncio.run(dispatch_stream(forged, policy, open_stream, parts=[card]))
    assert opened == []


# ------------------------------------------------------------------------ property: ceilings

LEVELS = DEFAULT_LEVELS
KINDS = sorted(BUILTIN_DETECTOR_KINDS)


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    count = draw(st.integers(1, 6))
    names = [f"t{index}" for index in range(count)]
    targets: list[Target] = []
    for index, name in enumerate(names):
        ceiling = draw(st.sampled_from(LEVELS))
        later = names[index + 1 :]  # fallbacks only forwards: no cycles
        fallback = (
            tuple(draw(st.lists(st.sampled_from(later), unique=True, max_size=3))) if later else ()
        )
        if draw(st.booleans()):
            targets.append(LocalTarget(name=name, model="m", max_level=ceiling, fallback=fallback))
        else:
            targets.append(cloud(name, ceiling, fallback=fallback, redact=draw(st.booleans())))
    detectors = tuple(
        BuiltinDetector(name=f"d-{kind}", level=draw(st.sampled_from(LEVELS[1:])), builtin=kind)
        for kind in KINDS
    )
    route_targets = tuple(draw(st.lists(st.sampled_from(names), min_size=1, unique=True)))
    return Policy(
        detectors=detectors,
        roles=(Role(name="dev", max_level="restricted", min_level="public", targets=("*",)),),
        targets=tuple(targets),
        routes=(Route(name="all", targets=route_targets),),
        fallback_on=tuple(draw(st.lists(st.sampled_from(list(FallbackOn)), unique=True))),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    policy=policies(),
    kind=st.sampled_from(KINDS),
    seed=st.integers(0, 2**32 - 1),
    failures=st.lists(st.sampled_from([None, *Outcome]), min_size=6, max_size=6),
    forge=st.booleans(),
    enable_fallback=st.booleans(),
)
def test_no_sensitive_prompt_reaches_a_target_below_its_level(
    policy: Policy,
    kind: str,
    seed: int,
    failures: list[Outcome | None],
    forge: bool,
    enable_fallback: bool,
) -> None:
    prompt = sensitive_prompt(kind, random.Random(seed))
    parts = ["please help with this", prompt.text]
    decision = PolicyEngine(policy).decide(parts, Caller(role="dev"))
    if forge:  # a decision that wrongly lets every candidate through
        every = tuple(Candidate(name, True, "forged") for name in (t.name for t in policy.targets))
        decision = replace(decision, candidates=every, refusal="")
    told = {
        f"t{i}": TargetFailure(o, "told to")
        for i, o in enumerate(failures)
        if o not in (None, Outcome.OK)
    }
    recorder = Recorder(told)
    with contextlib.suppress(DispatchFailed):
        asyncio.run(
            dispatch(decision, policy, recorder, parts=parts, enable_fallback=enable_fallback)
        )
    level = decision.level
    for name, sent in recorder.sent:
        target = policy.target(name)
        assert policy.rank(target.max_level) >= policy.rank(level), (name, level)
        if getattr(target, "redact", False):
            for item in decision.classification.findings:
                finding = item.finding
                value = parts[item.part][finding.start : finding.end]
                assert value not in sent[item.part], (name, finding)
        else:
            assert sent == tuple(parts)
