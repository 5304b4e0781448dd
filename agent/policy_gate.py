"""The routing policy on the agent's endpoints: who calls, at what level, which target answers.

With a policy in force every request needs an inference key (`Authorization: Bearer ...`, or
the gRPC metadata `authorization`); the caller may declare a data level (HTTP header
`X-Outpost-Data-Level`, gRPC metadata `x-outpost-data-level`), which can raise the detected
level but never lower it. `PolicyEngine.decide` classifies the prompt and lists the targets;
`dispatch_stream` tries them in order: a `local` target runs on this agent's model of that
alias, a `cloud` target is called through the OpenAI-compatible client (its answer turned
into the same text events a local model gives), and a `site_agent` target fails (forwarding
to other agents is not built yet), so the policy's fallbacks apply. A refusal is 403, a
missing or unknown key 401, no target answering 503 with every attempt's reason.
Without a policy nothing changes: no key is asked for and only local models answer.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass, replace
from typing import Any

from agent.model_runner import EventStream, GenerationFailed, GenerationStream
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
from common.policy.policy_model import CloudTarget, LocalTarget, Target
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


def no_keys(_: str | None) -> Caller | None:
    """The authenticator of an agent that has been given no inference keys: nobody."""
    return None


class PolicyGate:
    def __init__(
        self,
        engine: Callable[[], PolicyEngine],
        authenticate: Authenticate,
        cloud: CloudClient,
    ) -> None:
        self._engine = engine
        self._authenticate = authenticate
        self._cloud = cloud

    def engine(self) -> PolicyEngine:
        """The policy in force now (`PolicyEngine(None)`: none)."""
        return self._engine()

    async def completion(
        self,
        engine: PolicyEngine,
        request: CompletionRequest,
        credentials: Credentials,
        local_models: Collection[str],
        start_local: StartLocal,
    ) -> EventStream:
        """The events of whichever target answers `request` under the policy."""
        body = {"prompt": request.prompt, **_sampling_body(request.sampling)}
        return await self._run(
            engine,
            request.model,
            (request.prompt,),
            credentials,
            local_models,
            start_local,
            Endpoint.COMPLETIONS,
            lambda parts: {**body, "prompt": parts[0]},
        )

    async def chat(
        self,
        engine: PolicyEngine,
        request: ChatRequest,
        credentials: Credentials,
        local_models: Collection[str],
        start_local: StartLocal,
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
            local_models,
            start_local,
            Endpoint.CHAT,
            cloud_body,
        )

    async def _run(
        self,
        engine: PolicyEngine,
        model: str,
        parts: tuple[str, ...],
        credentials: Credentials,
        local_models: Collection[str],
        start_local: StartLocal,
        endpoint: Endpoint,
        cloud_body: Callable[[tuple[str, ...]], dict[str, Any]],
    ) -> EventStream:
        caller = self._caller(credentials)
        decision = engine.decide(parts, caller, requested=model, local_models=local_models)
        if decision.refusal:
            raise PermissionDenied(f"the routing policy refuses this request: {decision.refusal}")

        def open_stream(target: Target, sent: tuple[str, ...]) -> AsyncIterator[GenerationEvent]:
            if isinstance(target, LocalTarget):
                return _local_events(start_local, target.model, sent)
            if isinstance(target, CloudTarget):
                return _cloud_events(self._cloud, target, endpoint, cloud_body(sent))
            return _failing(f"target {target.name}: forwarding to other agents is not built yet")

        try:
            stream = await dispatch_stream(decision, engine.policy, open_stream, parts=parts)
        except DispatchFailed as exc:
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
        return _events_of(stream)

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


async def _events_of(stream: Any) -> AsyncGenerator[GenerationEvent, None]:
    """The dispatched stream's events; closing this closes the target's stream."""
    try:
        async for event in stream:
            yield event
    except TargetFailure as exc:  # after its first chunk: no fallback (see dispatch)
        raise GenerationFailed(f"the answering target failed: {exc.reason}") from exc
    finally:
        await stream.aclose()


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
