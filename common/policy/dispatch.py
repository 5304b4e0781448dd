"""Carrying out a routing Decision: each target tried in order, with fallback and redaction."""

# `dispatch` (one answer) and `dispatch_stream` (a stream of chunks) call the caller's
# `attempt(target, parts)` for each of `decision.targets` in order. An attempt fails by raising
# TargetFailure (any other exception counts as an ERROR); the next target is tried only when
# the failure's kind is in `policy.fallback_on`, or `enable_fallback` is set (an alert firing).
# A target that is refused before it is called (REFUSED below) is passed over like a candidate
# decide() skipped, since nothing was sent to it.
#
# Fail closed (design principle 4), checked here again even though decide() filters:
# - a target whose ceiling is below the request's level is never called, nor a target that is
#   not in the policy, nor (without a policy) anything but an on-premises model;
# - for a cloud target with `redact`, the parts are redacted first; if that cannot be done
#   (RedactionError) the target is not called.
#
# Each target's `timeout_s` is the deadline of its whole attempt (for a stream: until its last
# chunk). A stream can fall back only until its first chunk arrives: once a chunk has been
# handed to the caller (and on to its client), a later failure ends the stream with that
# failure. Cancellation (asyncio.CancelledError) is never caught: it ends the dispatch at once.

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

from common.policy.policy_model import FallbackOn, LocalTarget, Policy, Target
from common.policy.redaction import RedactionError, redact
from common.policy.routing import Decision

__all__ = [
    "AttemptRecord",
    "DispatchFailed",
    "Dispatched",
    "DispatchedStream",
    "Outcome",
    "TargetFailure",
    "dispatch",
    "dispatch_stream",
]

T = TypeVar("T")
_MAX_REASON = 300


class Outcome(StrEnum):
    OK = "ok"
    ERROR = "error"  # connection failure, 5xx, a broken answer (FallbackOn.ERROR)
    TIMEOUT = "timeout"  # no complete answer within timeout_s (FallbackOn.TIMEOUT)
    BUDGET = "budget"  # quota or rate limit, HTTP 429 / 402 (FallbackOn.BUDGET)
    REJECTED = "rejected"  # the target called the request wrong (other 4xx): no fallback
    REFUSED = "refused"  # not called: above its ceiling, unknown, or redaction impossible

    @property
    def fallback_kind(self) -> FallbackOn | None:
        return _FALLBACK_KINDS.get(self)


_FALLBACK_KINDS = {
    Outcome.ERROR: FallbackOn.ERROR,
    Outcome.TIMEOUT: FallbackOn.TIMEOUT,
    Outcome.BUDGET: FallbackOn.BUDGET,
}


class TargetFailure(Exception):
    """An attempt failed; `reason` never contains prompt text or keys."""

    def __init__(self, outcome: Outcome, reason: str) -> None:
        if outcome is Outcome.OK:
            raise ValueError("a failure cannot have the outcome ok")
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason[:_MAX_REASON]


@dataclass(frozen=True)
class AttemptRecord:
    target: str
    outcome: Outcome
    reason: str
    latency_s: float  # 0 for a target refused without being called
    masked: int = 0  # how many spans redaction masked before the call


@dataclass(frozen=True)
class Dispatched(Generic[T]):
    value: T
    target: Target
    attempts: tuple[AttemptRecord, ...]  # every target tried, the one that answered last


class DispatchFailed(Exception):
    """No target answered; `attempts` says what each did, `outcome` is the last failure's."""

    def __init__(self, reason: str, outcome: Outcome, attempts: tuple[AttemptRecord, ...]):
        super().__init__(reason)
        self.outcome = outcome
        self.attempts = attempts


Attempt = Callable[[Target, tuple[str, ...]], Awaitable[T]]
StreamAttempt = Callable[[Target, tuple[str, ...]], AsyncIterator[T]]
Clock = Callable[[], float]


@dataclass
class _Plan:
    """The targets to try and the parts each one is sent."""

    decision: Decision
    policy: Policy | None
    parts: tuple[str, ...]
    enable_fallback: bool
    attempts: list[AttemptRecord]

    def targets(self) -> list[Target | AttemptRecord]:
        """Each target in order, or the record of why it is refused."""
        return [self._target(name) for name in self.decision.targets]

    def parts_for(self, target: Target) -> tuple[tuple[str, ...], int]:
        if getattr(target, "redact", False):
            redacted = redact(self.parts, self.decision.classification)
            return redacted.parts, redacted.masked
        return self.parts, 0

    def falls_back(self, failure: TargetFailure) -> bool:
        if failure.outcome is Outcome.REFUSED:
            return True
        kind = failure.outcome.fallback_kind
        return kind is not None and (self.enable_fallback or kind in self._fallback_on())

    def failed(self) -> DispatchFailed:
        attempts = tuple(self.attempts)
        if self.decision.refusal:
            return DispatchFailed(self.decision.refusal, Outcome.REFUSED, attempts)
        if not attempts:
            return DispatchFailed("the decision lists no target", Outcome.REFUSED, attempts)
        last = attempts[-1]
        tried = "; ".join(f"{a.target}: {a.outcome.value} ({a.reason})" for a in attempts)
        return DispatchFailed(f"no target answered: {tried}", last.outcome, attempts)

    def _fallback_on(self) -> tuple[FallbackOn, ...]:
        return self.policy.fallback_on if self.policy is not None else ()

    def _target(self, name: str) -> Target | AttemptRecord:
        policy = self.policy
        level = self.decision.level
        if policy is None:
            if self.decision.policy_digest:
                return _refused(name, "the decision was made under a policy that is not given")
            return LocalTarget(name=name, model=name, max_level="")  # on-premises only
        if self.decision.policy_digest != policy.digest:
            return _refused(name, "the decision was made under another policy")
        if name not in {target.name for target in policy.targets}:
            return _refused(name, "not a target of the policy")
        target = policy.target(name)
        if level not in policy.levels:
            return _refused(name, f"the request's level {level[:64]!r} is not a policy level")
        if policy.rank(level) > policy.rank(target.max_level):
            return _refused(name, f"{level} data is above its ceiling {target.max_level}")
        return target


def _refused(name: str, reason: str) -> AttemptRecord:
    return AttemptRecord(name, Outcome.REFUSED, reason, 0.0)


async def dispatch(
    decision: Decision,
    policy: Policy | None,
    attempt: Attempt[T],
    *,
    parts: Sequence[str],
    enable_fallback: bool = False,
    clock: Clock = time.monotonic,
) -> Dispatched[T]:
    """The first answer of `decision.targets`, tried in order; DispatchFailed when none
    answers (its `attempts` say why)."""
    plan = _Plan(decision, policy, tuple(parts), enable_fallback, [])
    for target in [] if decision.refusal else plan.targets():
        if isinstance(target, AttemptRecord):
            plan.attempts.append(target)
            continue
        started = clock()
        masked = 0
        try:
            sent, masked = plan.parts_for(target)
            async with asyncio.timeout(target.timeout_s):
                value = await attempt(target, sent)
        except Exception as exc:  # CancelledError is a BaseException: it propagates
            failure = _as_failure(exc, target)
            plan.attempts.append(
                AttemptRecord(
                    target.name, failure.outcome, failure.reason, clock() - started, masked
                )
            )
            if plan.falls_back(failure):
                continue
            break
        plan.attempts.append(
            AttemptRecord(target.name, Outcome.OK, "answered", clock() - started, masked)
        )
        return Dispatched(value, target, tuple(plan.attempts))
    raise plan.failed()


def _as_failure(exc: Exception, target: Target) -> TargetFailure:
    if isinstance(exc, TargetFailure):
        return exc
    if isinstance(exc, RedactionError):
        return TargetFailure(Outcome.REFUSED, f"not called: redaction impossible: {exc}")
    if isinstance(exc, TimeoutError):
        return TargetFailure(Outcome.TIMEOUT, f"no answer within {target.timeout_s:g} s")
    return TargetFailure(Outcome.ERROR, f"{type(exc).__name__} in the attempt")


class DispatchedStream(Generic[T]):
    """The chunks of the target that sent a first chunk; iterate once. A failure after the
    first chunk raises TargetFailure (no fallback). `attempts` is final once it has ended."""

    def __init__(
        self,
        plan: _Plan,
        target: Target,
        first: T,
        chunks: AsyncIterator[T],
        deadline: float,
        started: float,
        masked: int,
        clock: Clock,
    ) -> None:
        self.target = target
        self._plan = plan
        self._first: tuple[T] | None = (first,)
        self._chunks = chunks
        self._deadline = deadline
        self._started = started
        self._masked = masked
        self._clock = clock
        self._final: AttemptRecord | None = None

    @property
    def attempts(self) -> tuple[AttemptRecord, ...]:
        """Every target tried; the streaming one last, with its outcome once it has ended."""
        current = self._final or AttemptRecord(
            self.target.name, Outcome.OK, "streaming", self._clock() - self._started, self._masked
        )
        return (*self._plan.attempts, current)

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[T]:
        if self._first is None:
            raise RuntimeError("a dispatched stream can be iterated once")
        (first,) = self._first
        self._first = None
        try:
            yield first
            while True:
                try:
                    async with asyncio.timeout_at(self._deadline):
                        chunk = await anext(self._chunks)
                except StopAsyncIteration:
                    break
                yield chunk
        except Exception as exc:
            failure = _as_failure(exc, self.target)
            reason = f"after the first chunk, no fallback: {failure.reason}"
            self._finish(failure.outcome, reason)
            raise TargetFailure(failure.outcome, reason) from exc
        finally:
            await _close(self._chunks)
        self._finish(Outcome.OK, "answered")

    async def aclose(self) -> None:
        """Ends the stream early (the client went away); the attempt is recorded as ok."""
        if self._final is None:
            self._finish(Outcome.OK, "the caller stopped reading")
        await _close(self._chunks)

    def _finish(self, outcome: Outcome, reason: str) -> None:
        if self._final is None:
            latency = self._clock() - self._started
            self._final = AttemptRecord(self.target.name, outcome, reason, latency, self._masked)


async def dispatch_stream(
    decision: Decision,
    policy: Policy | None,
    open_stream: StreamAttempt[T],
    *,
    parts: Sequence[str],
    enable_fallback: bool = False,
    clock: Clock = time.monotonic,
) -> DispatchedStream[T]:
    """The stream of the first of `decision.targets` that sends a first chunk; DispatchFailed
    when none does. Fallback happens only before a first chunk (see the module comment)."""
    plan = _Plan(decision, policy, tuple(parts), enable_fallback, [])
    loop = asyncio.get_running_loop()
    for target in [] if decision.refusal else plan.targets():
        if isinstance(target, AttemptRecord):
            plan.attempts.append(target)
            continue
        started = clock()
        deadline = loop.time() + target.timeout_s
        masked = 0
        chunks: AsyncIterator[T] | None = None
        try:
            sent, masked = plan.parts_for(target)
            chunks = open_stream(target, sent)
            async with asyncio.timeout_at(deadline):
                first = await anext(chunks)
        except BaseException as exc:
            if chunks is not None:
                await _close(chunks)
            if not isinstance(exc, Exception):
                raise  # cancellation and exits propagate
            failure = (
                TargetFailure(Outcome.ERROR, "the stream ended before its first chunk")
                if isinstance(exc, StopAsyncIteration)
                else _as_failure(exc, target)
            )
            record = AttemptRecord(
                target.name, failure.outcome, failure.reason, clock() - started, masked
            )
            plan.attempts.append(record)
            if plan.falls_back(failure):
                continue
            break
        return DispatchedStream(plan, target, first, chunks, deadline, started, masked, clock)
    raise plan.failed()


async def _close(chunks: AsyncIterator[object]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()
