"""The event streams of a routed request's targets, and the wrapper that settles it once."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from common.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable
from common.inference import (
    EventStream,
    Finished,
    FinishReason,
    GenerationEvent,
    GenerationFailed,
    SamplingParams,
    TextDelta,
    Usage,
)
from common.policy.cloud_client import CloudClient, Endpoint
from common.policy.dispatch import Outcome, TargetFailure
from common.policy.policy_model import CloudTarget

# (alias, the parts as sent, the request's level) -> the events of that local model's answer
StartLocal = Callable[[str, tuple[str, ...], str], Awaitable[EventStream]]


class SettlingStream:
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

    def __aiter__(self) -> SettlingStream:
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


async def local_events(
    start_local: StartLocal, alias: str, parts: tuple[str, ...], level: str
) -> AsyncIterator[GenerationEvent]:
    try:
        stream = await start_local(alias, parts, level)
    except (InvalidArgument, NotFound) as exc:  # the request itself: another target won't help
        raise TargetFailure(Outcome.REJECTED, str(exc)) from exc
    except (ResourceExhausted, Unavailable) as exc:  # busy or loading: the next target may
        raise TargetFailure(Outcome.ERROR, str(exc)) from exc
    try:
        async for event in stream:
            yield event
    finally:
        await stream.aclose()


async def cloud_events(
    client: CloudClient,
    target: CloudTarget,
    endpoint: Endpoint,
    body: dict[str, Any],
    headers: Mapping[str, str] | None = None,
) -> AsyncGenerator[GenerationEvent, None]:
    """An OpenAI-compatible server's chunks (a cloud provider's, or an agent's the gateway
    forwards to) as the text events of a local model, ending with Finished."""
    chunks = client.stream(target, endpoint, {**body, "stream": True}, headers)
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


def _chunk_text(endpoint: Endpoint, choice: dict[str, Any]) -> str:
    if endpoint is Endpoint.CHAT:
        delta = choice.get("delta")
        content = delta.get("content") if isinstance(delta, dict) else None
    else:
        content = choice.get("text")
    return content if isinstance(content, str) else ""


def sampling_body(sampling: SamplingParams) -> dict[str, Any]:
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
