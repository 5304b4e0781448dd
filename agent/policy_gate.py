"""The routing policy on the agent's endpoints: who calls, at what level, which target answers.

With a policy in force every request needs an inference key (`Authorization: Bearer ...`, or
the gRPC metadata `authorization`); the caller may declare a data level (HTTP header
`X-Outpost-Data-Level`, gRPC metadata `x-outpost-data-level`), which can raise the detected
level but never lower it. `PolicyEngine.decide` classifies the prompt and lists the targets;
`dispatch_stream` tries them in order: a `local` target runs on this agent's model of that
alias, a `cloud` target is called through the OpenAI-compatible client (its answer turned
into the same text events a local model gives), and a `site_agent` target fails (forwarding
to other agents is not built yet), so the policy's fallbacks apply. Each routed request is
reserved on its team's and key's budgets first and settled when it ends
(agent/request_budgets.py). A refusal is 403, a missing or unknown key 401, a budget that
rejects 429, no target answering 503 with every attempt's reason.
Without a policy nothing changes: no key is asked for and only local models answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from agent.model_runner import EventStream, GenerationFailed, GenerationStream
from agent.request_budgets import Held, RequestBudgets
from common.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from common.inference import (
    ChatRequest,
    CompletionRequest,
    Finished,
    FinishReason,
    GenerationEvent,
    SamplingParams,
    TextDelta,
    Usage,
)
from common.policy.cloud_client import CloudClient, Endpoint
from common.policy.dispatch import DispatchFailed, Outcome, TargetFailure, dispatch_stream
from common.policy.policy_model import CloudTarget, LocalTarget, Policy, Target
from common.policy.routing import Caller, PolicyEngine

log = logging.getLogger(__name__)

DECLARED_LEVEL_HEADER = "x-outpost-data-level"
MAX_CREDENTIAL_CHARS = 4096


@dataclass(frozen=True)
class Credentials:
    """What a request says about its caller, as received (unchecked)."""

    authorization: str | None = None
    declared_level: str | None = None


NO_CREDENTIALS = Credentials()
Authenticate = Callable[[str | None], Caller | None]
StartLocal = Callable[[str, tuple[str, ...]], Awaitable[GenerationStream]]


class PolicyGate:
    def __init__(
        self,
        engine: Callable[[], PolicyEngine],
        authenticate: Authenticate,
        cloud: CloudClient,
        budgets: RequestBudgets | None = None,
    ) -> None:
        self._engine = engine
        self._authenticate = authenticate
        self._cloud = cloud
        self._budgets = budgets or RequestBudgets()

    def engine(self) -> PolicyEngine:
        """The policy in force now (`PolicyEngine(None)`: none)."""
        return self._engine()

    async def completion(
        self,
        engine: PolicyEngine,
        request: CompletionRequest,
        credentials: Credentials,
        start_local: StartLocal,
        max_tokens: int,
    ) -> EventStream:
        """The events of whichever target answers `request` under the policy; `max_tokens`:
        the request's, resolved (for its budget reservation)."""
        body = {"prompt": request.prompt, **_sampling_body(request.sampling)}
        return await self._run(
            engine,
            request.model,
            (request.prompt,),
            credentials,
            start_local,
            Endpoint.COMPLETIONS,
            lambda parts: {**body, "prompt": parts[0]},
            max_tokens,
        )

    async def chat(
        self,
        engine: PolicyEngine,
        request: ChatRequest,
        credentials: Credentials,
        start_local: StartLocal,
        max_tokens: int,
    ) -> EventStream:
        roles = [m.role for m in request.messages]
        sampling = _sampling_body(request.sampling)

        def cloud_body(parts: tuple[str, ...]) -> dict[str, Any]:
            messages = [{"role": r, "content": c} for r, c in zip(roles, parts, strict=True)]
            return {"messages": messages, **sampling}

        return await self._run(
            engine,
            request.model,
            tuple(m.content for m in request.messages),
            credentials,
            start_local,
            Endpoint.CHAT,
            cloud_body,
            max_tokens,
        )

    async def _run(
        self,
        engine: PolicyEngine,
        model: str,
        parts: tuple[str, ...],
        credentials: Credentials,
        start_local: StartLocal,
        endpoint: Endpoint,
        cloud_body: Callable[[tuple[str, ...]], dict[str, Any]],
        max_tokens: int,
    ) -> EventStream:
        caller = self._caller(credentials)
        decision = engine.decide(parts, caller, requested=model)
        if decision.refusal:
            raise PermissionDenied(f"the routing policy refuses this request: {decision.refusal}")
        policy = engine.policy
        assert policy is not None  # the gate runs only with a policy in force
        admission = self._budgets.admit(policy, caller, decision.targets, parts, max_tokens)
        if admission.restrictions.local_only:  # over a budget whose over_budget is "local"
            decision = engine.decide(
                parts, caller, requested=model, restrictions=admission.restrictions
            )
        held = Held(admission.reservation, time.monotonic())
        if decision.refusal:
            self._settle(policy, held, None, None)
            raise PermissionDenied(f"the routing policy refuses this request: {decision.refusal}")

        def open_stream(target: Target, sent: tuple[str, ...]) -> AsyncIterator[GenerationEvent]:
            if isinstance(target, LocalTarget):
                return _local_events(start_local, target.model, sent)
            if isinstance(target, CloudTarget):
                return _cloud_events(self._cloud, target, endpoint, cloud_body(sent))
            return _failing(f"target {target.name}: forwarding to other agents is not built yet")

        try:
            stream = await dispatch_stream(decision, policy, open_stream, parts=parts)
        except BaseException as exc:
            self._settle(policy, held, None, None)
            if not isinstance(exc, DispatchFailed):
                raise
            if exc.outcome is Outcome.REJECTED:
                raise InvalidArgument(str(exc)) from exc
            raise Unavailable(f"no target of the routing policy answered: {exc}") from exc
        log.info(
            "routed %s request of role %s to %s (route %s; %d attempt(s))",
            decision.level,
            caller.role,
            stream.target.name,
            decision.route,
            len(stream.attempts),
        )
        return _SettlingStream(
            stream, lambda finished: self._settle(policy, held, stream.target.name, finished)
        )

    def _settle(
        self, policy: Policy, held: Held, target: str | None, finished: Finished | None
    ) -> None:
        usage = finished.usage if finished is not None else Usage(0, 0)
        self._budgets.settle(
            policy,
            held.reservation,
            target,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            busy_seconds=time.monotonic() - held.started,
        )

    def _caller(self, credentials: Credentials) -> Caller:
        authorization = credentials.authorization
        if authorization is not None and len(authorization) > MAX_CREDENTIAL_CHARS:
            raise Unauthenticated("the Authorization value is too long")
        caller = self._authenticate(authorization)
        if caller is None:
            raise Unauthenticated(
                "a routing policy is in force: send a valid inference key "
                "(Authorization: Bearer <key>)"
            )
        declared = credentials.declared_level
        if declared is not None:
            declared = declared.strip()[:64]
        return replace(caller, declared_level=declared or None)


class _SettlingStream:
    """A routed request's events; its budget reservation is settled exactly once, when the
    events end, fail, or the reader closes it (also before reading anything)."""

    def __init__(self, stream: Any, settle: Callable[[Finished | None], None]) -> None:
        self._settled = False
        self._settle = settle
        self._stream = stream
        self._events = _events_of(stream, self._settle_once)

    def _settle_once(self, finished: Finished | None) -> None:
        if not self._settled:
            self._settled = True
            self._settle(finished)

    def __aiter__(self) -> _SettlingStream:
        return self

    def __anext__(self) -> Awaitable[GenerationEvent]:
        return self._events.__anext__()

    async def aclose(self) -> None:
        try:
            await self._events.aclose()
            await self._stream.aclose()  # also when nothing was read (the generator never ran)
        finally:
            self._settle_once(None)


async def _events_of(
    stream: Any, settle: Callable[[Finished | None], None]
) -> AsyncGenerator[GenerationEvent, None]:
    """The dispatched stream's events; closing this closes the target's stream. `settle` is
    called once at the end with the Finished event (None if the stream ended without one)."""
    finished: Finished | None = None
    try:
        async for event in stream:
            if isinstance(event, Finished):
                finished = event
            yield event
    except TargetFailure as exc:  # after its first chunk: no fallback (see dispatch)
        raise GenerationFailed(f"the answering target failed: {exc.reason}") from exc
    finally:
        try:
            await stream.aclose()
        finally:
            settle(finished)


async def _local_events(
    start_local: StartLocal, alias: str, parts: tuple[str, ...]
) -> AsyncIterator[GenerationEvent]:
    try:
        stream = await start_local(alias, parts)
    except (InvalidArgument, NotFound) as exc:  # the request itself: another target won't help
        raise TargetFailure(Outcome.REJECTED, str(exc)) from exc
    except (ResourceExhausted, Unavailable) as exc:  # busy or loading: the next target may
        raise TargetFailure(Outcome.ERROR, str(exc)) from exc
    try:
        async for event in stream:
            yield event
    finally:
        await stream.aclose()


async def _cloud_events(
    client: CloudClient, target: CloudTarget, endpoint: Endpoint, body: dict[str, Any]
) -> AsyncIterator[GenerationEvent]:
    """A cloud provider's chunks as the text events of a local model, ending with Finished."""
    chunks = client.stream(target, endpoint, {**body, "stream": True})
    reason = FinishReason.STOP
    try:
        async for chunk in chunks:
            for choice in chunk.get("choices") or []:
                text = _chunk_text(endpoint, choice)
                if text:
                    yield TextDelta(text)
                if choice.get("finish_reason") == "length":
                    reason = FinishReason.LENGTH
    finally:
        await chunks.aclose()
    usage = chunks.usage
    tokens = Usage(usage.prompt_tokens, usage.completion_tokens) if usage else Usage(0, 0)
    yield Finished(reason, tokens)


async def _failing(reason: str) -> AsyncIterator[GenerationEvent]:
    raise TargetFailure(Outcome.ERROR, reason)
    yield  # an async generator that fails when first read


def _chunk_text(endpoint: Endpoint, choice: dict[str, Any]) -> str:
    if endpoint is Endpoint.CHAT:
        delta = choice.get("delta")
        content = delta.get("content") if isinstance(delta, dict) else None
    else:
        content = choice.get("text")
    return content if isinstance(content, str) else ""


def _sampling_body(sampling: SamplingParams) -> dict[str, Any]:
    """The request's sampling choices in OpenAI's names (those a provider understands)."""
    body: dict[str, Any] = {
        name: value
        for name, value in (
            ("max_tokens", sampling.max_tokens),
            ("temperature", sampling.temperature),
            ("top_p", sampling.top_p),
            ("seed", sampling.seed),
        )
        if value is not None
    }
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    return body
