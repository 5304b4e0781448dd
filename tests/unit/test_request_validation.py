"""Request checks against the agent's limits, and sampling defaults."""

from __future__ import annotations

import math
import secrets
from typing import Any

import pytest

from agent.engine.protocol import ResolvedSampling
from agent.request_validation import (
    MAX_SEED,
    MAX_STOP_LENGTH,
    MAX_TOP_K,
    RequestLimits,
    SamplingDefaults,
    check_prompt_fits,
    resolve_sampling,
)
from common.errors import InvalidArgument
from common.inference import MAX_MESSAGES, ChatMessage, SamplingParams, check_messages, check_prompt

LIMITS = RequestLimits(max_tokens_limit=512, default_max_tokens=64, max_stop_sequences=3)


def resolve(**params: Any) -> ResolvedSampling:
    return resolve_sampling(SamplingParams(**params), LIMITS)


# --- resolve_sampling --------------------------------------------------------------------


def test_defaults_fill_every_unset_value() -> None:
    resolved = resolve()
    defaults = SamplingDefaults()
    assert resolved.max_tokens == LIMITS.default_max_tokens
    assert resolved.temperature == defaults.temperature
    assert resolved.top_p == defaults.top_p
    assert resolved.top_k == defaults.top_k
    assert resolved.min_p == defaults.min_p
    assert resolved.repeat_penalty == defaults.repeat_penalty
    assert resolved.stop == ()
    assert 0 <= resolved.seed <= MAX_SEED


def test_custom_defaults_are_used() -> None:
    defaults = SamplingDefaults(temperature=0.1, top_p=0.5, top_k=7, min_p=0.2, repeat_penalty=1.3)
    resolved = resolve_sampling(SamplingParams(seed=1), LIMITS, defaults)
    assert resolved == ResolvedSampling(
        max_tokens=64,
        temperature=0.1,
        top_p=0.5,
        top_k=7,
        min_p=0.2,
        repeat_penalty=1.3,
        seed=1,
        stop=(),
    )


def test_explicit_values_are_kept() -> None:
    resolved = resolve(
        max_tokens=10,
        temperature=0.0,
        top_p=0.5,
        top_k=1,
        min_p=0.0,
        repeat_penalty=1.1,
        seed=42,
        stop=("\n", "END"),
    )
    assert resolved == ResolvedSampling(
        max_tokens=10,
        temperature=0.0,
        top_p=0.5,
        top_k=1,
        min_p=0.0,
        repeat_penalty=1.1,
        seed=42,
        stop=("\n", "END"),
    )
    assert isinstance(resolved.temperature, float)
    assert isinstance(resolved.top_k, int)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", 1),
        ("max_tokens", LIMITS.max_tokens_limit),
        ("temperature", 0.0),
        ("temperature", 2.0),
        ("top_p", 0.0),
        ("top_p", 1.0),
        ("top_k", 0),
        ("top_k", MAX_TOP_K),
        ("min_p", 0.0),
        ("min_p", 1.0),
        ("repeat_penalty", 0.01),
        ("repeat_penalty", 10.0),
        ("seed", 0),
        ("seed", MAX_SEED),
    ],
)
def test_bounds_are_accepted(field: str, value: float) -> None:
    assert getattr(resolve(**{field: value}), field) == value


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", math.nan),
        ("temperature", math.inf),
        ("temperature", -math.inf),
        ("temperature", -0.1),
        ("temperature", 2.01),
        ("temperature", 1e9),
        ("top_p", math.nan),
        ("top_p", -0.01),
        ("top_p", 1.01),
        ("top_k", -1),
        ("top_k", MAX_TOP_K + 1),
        ("min_p", math.nan),
        ("min_p", -0.1),
        ("min_p", 1.5),
        ("repeat_penalty", 0.0),
        ("repeat_penalty", 0.009),
        ("repeat_penalty", 10.01),
        ("repeat_penalty", math.inf),
        ("seed", -1),
        ("seed", MAX_SEED + 1),
    ],
)
def test_out_of_range_values_are_rejected_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(InvalidArgument, match="must be between") as error:
        resolve(**{field: value})
    assert str(error.value).startswith(field + " ")


@pytest.mark.parametrize("max_tokens", [0, -5, LIMITS.max_tokens_limit + 1, 2_000_000_000])
def test_max_tokens_outside_the_agent_limit_is_rejected(max_tokens: int) -> None:
    with pytest.raises(InvalidArgument, match="max_tokens must be between 1 and 512") as error:
        resolve(max_tokens=max_tokens)
    assert str(max_tokens) in str(error.value)


def test_default_max_tokens_is_checked_against_the_limit_too() -> None:
    limits = RequestLimits(max_tokens_limit=10, default_max_tokens=11, max_stop_sequences=1)
    with pytest.raises(InvalidArgument, match="max_tokens"):
        resolve_sampling(SamplingParams(), limits)


def test_stop_sequences_up_to_the_limit_are_accepted() -> None:
    stops = ("a", "b" * MAX_STOP_LENGTH, "c")
    assert resolve(stop=stops).stop == stops


def test_too_many_stop_sequences_are_rejected() -> None:
    with pytest.raises(InvalidArgument, match="at most 3 stop sequences") as error:
        resolve(stop=("a", "b", "c", "d"))
    assert "got 4" in str(error.value)


@pytest.mark.parametrize("stop", ["", "x" * (MAX_STOP_LENGTH + 1)], ids=["empty", "too-long"])
def test_stop_sequence_length_is_limited(stop: str) -> None:
    with pytest.raises(InvalidArgument, match=f"1 to {MAX_STOP_LENGTH} characters"):
        resolve(stop=("ok", stop))


def test_random_seed_is_drawn_over_the_full_range_when_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bounds: list[int] = []

    def fake_randbelow(bound: int) -> int:
        bounds.append(bound)
        return bound - 1

    monkeypatch.setattr(secrets, "randbelow", fake_randbelow)
    assert resolve().seed == MAX_SEED
    assert bounds == [MAX_SEED + 1]


def test_random_seeds_are_in_range_and_vary() -> None:
    seeds = {resolve().seed for _ in range(20)}
    assert all(0 <= seed <= MAX_SEED for seed in seeds)
    assert len(seeds) > 1  # 20 equal draws from 2**32 values: chance about 2**-608


def test_explicit_seed_is_not_replaced_by_a_random_one() -> None:
    assert {resolve(seed=7).seed for _ in range(5)} == {7}


@pytest.mark.parametrize("field", ["seed", "top_k"])
def test_huge_integers_are_invalid_arguments(field: str) -> None:
    with pytest.raises(InvalidArgument, match=field):
        resolve(**{field: 10**400})


# --- prompt and messages -----------------------------------------------------------------


def test_empty_prompt_is_rejected() -> None:
    with pytest.raises(InvalidArgument, match="prompt must not be empty"):
        check_prompt("")
    check_prompt(" ")


def user(content: str = "hi") -> ChatMessage:
    return ChatMessage(role="user", content=content)


def test_valid_conversation_is_accepted() -> None:
    check_messages(
        [
            ChatMessage("system", "be brief"),
            user("hello"),
            ChatMessage("assistant", "hi"),
            user("bye"),
        ]
    )


def test_empty_messages_are_rejected() -> None:
    with pytest.raises(InvalidArgument, match="messages must not be empty"):
        check_messages([])


def test_too_many_messages_are_rejected() -> None:
    check_messages([user()] * MAX_MESSAGES)
    with pytest.raises(InvalidArgument, match=f"at most {MAX_MESSAGES} messages") as error:
        check_messages([user()] * (MAX_MESSAGES + 1))
    assert f"got {MAX_MESSAGES + 1}" in str(error.value)


@pytest.mark.parametrize("role", ["tool", "User", "", "developer"])
def test_unknown_role_is_rejected_naming_the_message(role: str) -> None:
    with pytest.raises(InvalidArgument, match=r"messages\[1\]\.role") as error:
        check_messages([user(), ChatMessage(role=role, content="x")])
    assert repr(role) in str(error.value)


@pytest.mark.parametrize(
    "messages",
    [
        [ChatMessage("system", "s")],
        [ChatMessage("system", "s"), ChatMessage("assistant", "a")],
        [ChatMessage("system", "s"), user("")],
    ],
    ids=["system-only", "no-user", "empty-user"],
)
def test_conversation_without_a_user_message_is_rejected(messages: list[ChatMessage]) -> None:
    with pytest.raises(InvalidArgument, match="at least one non-empty user message"):
        check_messages(messages)


def test_prompt_longer_than_context_names_both_token_counts() -> None:
    with pytest.raises(InvalidArgument) as error:
        check_prompt_fits(prompt_tokens=1500, context_length=1024)
    message = str(error.value)
    assert "prompt is 1500 tokens" in message
    assert "context is 1024 tokens" in message
    assert "1023" in message


def test_prompt_must_leave_room_for_one_token() -> None:
    with pytest.raises(InvalidArgument, match="prompt is 64 tokens"):
        check_prompt_fits(64, 64)
    check_prompt_fits(63, 64)
