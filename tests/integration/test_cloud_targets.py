"""Cloud targets end to end: what reaches a recording OpenAI-compatible server on loopback."""

from __future__ import annotations

import asyncio
import os
import random
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from common.policy.cloud_client import (
    CloudClient,
    CloudClientSettings,
    Endpoint,
    request_parts,
    with_parts,
)
from common.policy.dispatch import DispatchFailed, Outcome, TargetFailure, dispatch
from common.policy.key_references import MAX_KEY_FILE_BYTES, KeyReferenceError, resolve_api_key
from common.policy.policy_model import (
    BuiltinDetector,
    CloudTarget,
    FallbackOn,
    LocalTarget,
    Policy,
    Role,
    Route,
    Target,
)
from common.policy.routing import Caller, PolicyEngine
from tests.recording_openai_server import ANSWER_TEXT, Behaviour, RecordingOpenAI
from tests.sensitive_corpus import valid_card

KEY = "sk-test-0123456789abcdef"
ENVIRON = {"CLOUD_KEY": KEY}


@pytest.fixture(scope="module")
def server() -> Iterator[RecordingOpenAI]:
    with RecordingOpenAI() as running:
        yield running


@pytest.fixture
def recording(server: RecordingOpenAI) -> RecordingOpenAI:
    server.behave(Behaviour.ANSWER)
    return server


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def target(base_url: str, name: str = "cloud", **extra: Any) -> CloudTarget:
    settings: dict[str, Any] = {
        "name": name,
        "model": f"{name}-provider-model",
        "max_level": "confidential",
        "base_url": base_url,
        "price_per_1k_input": 0.1,
        "price_per_1k_output": 0.2,
        "api_key_ref": "env:CLOUD_KEY",
        "timeout_s": 5.0,
    }
    return CloudTarget(**(settings | extra))


CHAT = {"model": "asked-for", "messages": [{"role": "user", "content": "hello there"}]}


def complete(cloud: CloudTarget, body: dict[str, Any] = CHAT, **settings: int) -> Any:
    async def main() -> Any:
        client = CloudClient(CloudClientSettings(**settings), environ=ENVIRON)
        try:
            return await client.complete(cloud, Endpoint.CHAT, body)
        finally:
            await client.aclose()

    return asyncio.run(main())


def stream(cloud: CloudTarget, body: dict[str, Any] = CHAT) -> tuple[list[Any], Any]:
    async def main() -> tuple[list[Any], Any]:
        client = CloudClient(environ=ENVIRON)
        try:
            chunks = client.stream(cloud, Endpoint.CHAT, body)
            return [chunk async for chunk in chunks], chunks.usage
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_the_recording_server_speaks_openai_as_the_official_client_reads_it(
    recording: RecordingOpenAI,
) -> None:
    client = openai.OpenAI(base_url=recording.base_url, api_key=KEY, max_retries=0)
    answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert answer.choices[0].message.content == ANSWER_TEXT
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 3
    recording.behave(Behaviour.STREAM)
    chunks = list(
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], stream=True
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER_TEXT
    assert chunks[-1].usage is not None
    assert recording.received[-1].headers["authorization"] == f"Bearer {KEY}"


def test_a_complete_answer_with_the_model_substituted_and_the_key_sent(
    recording: RecordingOpenAI,
) -> None:
    before = len(recording.received)
    answer = complete(target(recording.base_url))
    assert answer.body["choices"][0]["message"]["content"] == ANSWER_TEXT
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (11, 3)
    assert not answer.usage.estimated
    [sent] = recording.received[before:]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.json() == {**CHAT, "model": "cloud-provider-model", "stream": False}


def test_a_completion_goes_to_completions(recording: RecordingOpenAI) -> None:
    async def main() -> Any:
        client = CloudClient(environ=ENVIRON)
        try:
            body = {"model": "x", "prompt": "once upon"}
            return await client.complete(target(recording.base_url), Endpoint.COMPLETIONS, body)
        finally:
            await client.aclose()

    answer = asyncio.run(main())
    assert answer.body["choices"][0]["text"] == ANSWER_TEXT
    assert recording.received[-1].path == "/v1/completions"
    assert recording.received[-1].json()["prompt"] == "once upon"


def test_without_usage_the_tokens_are_estimated_and_said_to_be(
    recording: RecordingOpenAI,
) -> None:
    recording.behave(Behaviour.ANSWER_WITHOUT_USAGE)
    usage = complete(target(recording.base_url)).usage
    assert usage.estimated
    assert (usage.prompt_tokens, usage.completion_tokens) == (3, 6)  # 11 and 21 characters / 4


def test_a_stream_passes_its_chunks_through_and_reads_the_usage_chunk(
    recording: RecordingOpenAI,
) -> None:
    recording.behave(Behaviour.STREAM)
    chunks, usage = stream(target(recording.base_url))
    text = "".join(c["choices"][0]["delta"]["content"] for c in chunks if c["choices"])
    assert text == ANSWER_TEXT
    assert (usage.prompt_tokens, usage.completion_tokens, usage.estimated) == (11, 3, False)
    sent = recording.received[-1].json()
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["model"] == "cloud-provider-model"


def test_streams_one_after_another_reuse_one_connection(recording: RecordingOpenAI) -> None:
    """The client reads each stream to its end, so its connection goes back to the pool (the
    gateway forwards every request this way: a new connection each would cost a handshake)."""
    recording.behave(Behaviour.STREAM)

    async def main() -> None:
        client = CloudClient(environ=ENVIRON)
        try:
            for _ in range(3):
                chunks = client.stream(target(recording.base_url), Endpoint.CHAT, CHAT)
                assert [chunk async for chunk in chunks]
        finally:
            await client.aclose()

    asyncio.run(main())
    ports = {received.client_port for received in recording.received[-3:]}
    assert len(ports) == 1, ports


def test_a_stream_without_usage_is_estimated(recording: RecordingOpenAI) -> None:
    recording.behave(Behaviour.STREAM_WITHOUT_USAGE)
    _, usage = stream(target(recording.base_url))
    assert usage.estimated
    assert usage.completion_tokens == 6


@pytest.mark.parametrize(
    ("behaviour", "outcome", "reason"),
    [
        (Behaviour.FAIL_500, Outcome.ERROR, "HTTP 500 (server_error)"),
        (Behaviour.RATE_LIMITED_429, Outcome.BUDGET, "HTTP 429 (rate_limit/rate_limit_exceeded)"),
        (Behaviour.PAYMENT_402, Outcome.BUDGET, "HTTP 402 (insufficient_quota)"),
        (Behaviour.BAD_REQUEST_400, Outcome.REJECTED, "HTTP 400 (invalid_request_error)"),
        (Behaviour.MALFORMED_JSON, Outcome.ERROR, "the answer is not JSON"),
        (Behaviour.HUGE, Outcome.ERROR, "the answer is larger than 1048576 bytes"),
        (Behaviour.REDIRECT, Outcome.ERROR, "HTTP 307"),
        (Behaviour.STREAM, Outcome.ERROR, "the answer is not JSON"),
    ],
)
def test_failures_are_classified(
    recording: RecordingOpenAI, behaviour: Behaviour, outcome: Outcome, reason: str
) -> None:
    recording.behave(behaviour)
    with pytest.raises(TargetFailure) as caught:
        complete(target(recording.base_url), max_response_bytes=1024 * 1024)
    assert (caught.value.outcome, caught.value.reason) == (outcome, reason)
    assert "hello there" not in caught.value.reason  # the 400 echoes the request; not kept
    assert KEY not in caught.value.reason


def test_a_hanging_provider_times_out_at_the_deadline(recording: RecordingOpenAI) -> None:
    recording.behave(Behaviour.HANG)
    with pytest.raises(TargetFailure) as caught:
        complete(target(recording.base_url, timeout_s=0.3))
    assert caught.value.outcome is Outcome.TIMEOUT
    assert caught.value.reason == "no complete answer within 0.3 s"


def test_connection_refused_is_an_error() -> None:
    with pytest.raises(TargetFailure) as caught:
        complete(target(closed_port_url()))
    assert caught.value.outcome is Outcome.ERROR
    assert "ConnectError" in caught.value.reason


@pytest.mark.parametrize(
    ("behaviour", "outcome", "reason"),
    [
        (Behaviour.MALFORMED_SSE, Outcome.ERROR, "the stream event is not JSON"),
        (Behaviour.STREAM_WITHOUT_DONE, Outcome.ERROR, "the stream ended before [DONE]"),
        (Behaviour.ANSWER, Outcome.ERROR, "the answer is not an event stream"),
        (Behaviour.RATE_LIMITED_429, Outcome.BUDGET, "HTTP 429 (rate_limit/rate_limit_exceeded)"),
    ],
)
def test_stream_failures_are_classified(
    recording: RecordingOpenAI, behaviour: Behaviour, outcome: Outcome, reason: str
) -> None:
    recording.behave(behaviour)
    with pytest.raises(TargetFailure) as caught:
        stream(target(recording.base_url))
    assert (caught.value.outcome, caught.value.reason) == (outcome, reason)


def test_a_stream_that_hangs_after_its_first_chunk_times_out(recording: RecordingOpenAI) -> None:
    recording.behave(Behaviour.HANG_AFTER_FIRST_CHUNK)
    with pytest.raises(TargetFailure) as caught:
        stream(target(recording.base_url, timeout_s=0.3))
    assert caught.value.outcome is Outcome.TIMEOUT


# ------------------------------------------------------------- dispatch to the recording server


def policy_with(
    *targets: Target, fallback_on: tuple[FallbackOn, ...] = tuple(FallbackOn)
) -> Policy:
    return Policy(
        detectors=(BuiltinDetector(name="cards", level="confidential", builtin="payment_card"),),
        roles=(Role(name="dev", max_level="restricted", min_level="public", targets=("*",)),),
        targets=targets,
        routes=(Route(name="all", targets=tuple(t.name for t in targets)),),
        fallback_on=fallback_on,
    )


def dispatch_chat(policy: Policy, body: dict[str, Any]) -> Any:
    parts = request_parts(Endpoint.CHAT, body)
    decision = PolicyEngine(policy).decide(parts, Caller(role="dev"))

    async def main() -> Any:
        client = CloudClient(environ=ENVIRON)

        async def attempt(chosen: Target, sent: tuple[str, ...]) -> Any:
            assert isinstance(chosen, CloudTarget)
            return await client.complete(
                chosen, Endpoint.CHAT, with_parts(Endpoint.CHAT, body, sent)
            )

        try:
            return await dispatch(decision, policy, attempt, parts=parts)
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_exactly_the_redacted_text_reaches_the_cloud(recording: RecordingOpenAI) -> None:
    card = valid_card(random.Random(11))
    body = {
        "model": "asked",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": f"charge {card} now"}]},
        ],
    }
    before = len(recording.received)
    result = dispatch_chat(policy_with(target(recording.base_url)), body)
    assert result.target.name == "cloud"
    [sent] = recording.received[before:]
    assert card.encode() not in sent.body
    assert sent.json()["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "charge [REDACTED:cards] now"}]},
    ]
    assert result.attempts[-1].masked == 1


def test_an_unreachable_cloud_falls_back_to_the_next_in_order(recording: RecordingOpenAI) -> None:
    down = target(closed_port_url(), name="down")
    up = target(recording.base_url, name="up")
    before = len(recording.received)
    result = dispatch_chat(policy_with(down, up), CHAT)
    assert [(a.target, a.outcome) for a in result.attempts] == [
        ("down", Outcome.ERROR),
        ("up", Outcome.OK),
    ]
    [sent] = recording.received[before:]
    assert sent.json()["model"] == "up-provider-model"


def test_a_rate_limited_cloud_does_not_fall_back_unless_budget_is_listed(
    recording: RecordingOpenAI,
) -> None:
    recording.behave(Behaviour.RATE_LIMITED_429)
    first = target(recording.base_url, name="first")
    second = target(recording.base_url, name="second")
    before = len(recording.received)
    with pytest.raises(DispatchFailed) as caught:
        dispatch_chat(policy_with(first, second, fallback_on=(FallbackOn.ERROR,)), CHAT)
    assert caught.value.outcome is Outcome.BUDGET
    assert [r.json()["model"] for r in recording.received[before:]] == ["first-provider-model"]
    with pytest.raises(DispatchFailed):
        dispatch_chat(policy_with(first, second), CHAT)
    assert [r.json()["model"] for r in recording.received[before + 1 :]] == [
        "first-provider-model",
        "second-provider-model",
    ]


def test_data_above_the_cloud_ceiling_never_reaches_it(recording: RecordingOpenAI) -> None:
    card = valid_card(random.Random(12))
    low = target(recording.base_url, name="low", max_level="internal")
    here = LocalTarget(name="here", model="smol", max_level="restricted")
    before = len(recording.received)
    policy = policy_with(low, here)
    body = {"messages": [{"role": "user", "content": f"card {card}"}]}
    decision = PolicyEngine(policy).decide(request_parts(Endpoint.CHAT, body), Caller(role="dev"))
    assert decision.targets == ("here",)
    assert recording.received[before:] == []


# ------------------------------------------------------------------------- request parts


def test_request_parts_and_with_parts_round_trip_and_refuse_a_mismatch() -> None:
    body = {"messages": [{"role": "user", "content": "a"}, {"role": "x", "content": None}, "junk"]}
    assert request_parts(Endpoint.CHAT, body) == ("a",)
    assert with_parts(Endpoint.CHAT, body, ["b"])["messages"][0]["content"] == "b"
    assert body["messages"][0] == {"role": "user", "content": "a"}  # not changed in place
    with pytest.raises(ValueError, match="the request has 1 texts, 2 were given"):
        with_parts(Endpoint.CHAT, body, ["b", "c"])
    prompts = {"prompt": ["p", 3, "q"]}
    assert request_parts(Endpoint.COMPLETIONS, prompts) == ("p", "q")
    assert with_parts(Endpoint.COMPLETIONS, prompts, ["P", "Q"])["prompt"] == ["P", 3, "Q"]
    assert request_parts(Endpoint.CHAT, {"messages": "not a list"}) == ()


# -------------------------------------------------------------------------- key references


def key_file(tmp_path: Path, content: bytes, mode: int = 0o600) -> str:
    path = tmp_path / "key"
    path.write_bytes(content)
    path.chmod(mode)
    return f"file:{path}"


def test_a_key_from_a_file_reaches_the_provider(recording: RecordingOpenAI, tmp_path: Path) -> None:
    reference = key_file(tmp_path, b"  sk-from-file-42\n")
    complete(target(recording.base_url, api_key_ref=reference))
    assert recording.received[-1].headers["authorization"] == "Bearer sk-from-file-42"


def test_a_readable_by_others_key_file_is_accepted(tmp_path: Path) -> None:
    assert resolve_api_key(key_file(tmp_path, b"k-1", 0o644), {}) == "k-1"


@pytest.mark.parametrize(
    ("content", "mode", "message"),
    [
        (b"sk-secret-value\n", 0o622, "may be written by group or others"),
        (b"sk-secret-value\n", 0o602, "may be written by group or others"),
        (b"sk-secret-value" * 400, 0o600, f"larger than {MAX_KEY_FILE_BYTES} bytes"),
        (b"sk-secret value", 0o600, "a character a key cannot have"),
        (b"sk-secret-value\r\nX-Injected: 1", 0o600, "a character a key cannot have"),
        (b"sk-secret-value\xff", 0o600, "not ASCII text"),
        (b"  \n", 0o600, "is empty"),
    ],
)
def test_a_bad_key_file_is_refused_without_quoting_it(
    tmp_path: Path, content: bytes, mode: int, message: str
) -> None:
    with pytest.raises(KeyReferenceError, match=message) as caught:
        resolve_api_key(key_file(tmp_path, content, mode), {})
    assert "secret" not in str(caught.value).replace(str(tmp_path), "")


def test_key_references_that_do_not_resolve(tmp_path: Path) -> None:
    cases = {
        "env:MISSING": "environment variable 'MISSING' is not set",
        "env:": "names no variable",
        "file:relative/key": "is not an absolute path",
        f"file:{tmp_path / 'absent'}": "cannot be opened",
        f"file:{tmp_path}": "is not a regular file",
        "vault:x": "neither env:NAME nor file:/path",
    }
    for reference, message in cases.items():
        with pytest.raises(KeyReferenceError, match=message):
            resolve_api_key(reference, {})
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(KeyReferenceError, match="is not a regular file"):
        resolve_api_key(f"file:{fifo}", {})  # opened without blocking on a writer
    assert resolve_api_key(None, {}) is None
    with pytest.raises(KeyReferenceError, match="a character a key cannot have") as caught:
        resolve_api_key("env:K", {"K": "sk-secret\x00x"})
    assert "sk-secret" not in str(caught.value)


def test_a_key_that_cannot_be_resolved_fails_the_target_as_an_error() -> None:
    with pytest.raises(TargetFailure) as caught:
        complete(target("http://127.0.0.1:9/v1", api_key_ref="env:NOT_SET"))
    assert caught.value.outcome is Outcome.ERROR
    assert caught.value.reason == "no key: environment variable 'NOT_SET' is not set"
