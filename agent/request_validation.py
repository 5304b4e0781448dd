"""Checks requests against the agent's limits and fills in sampling defaults."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

from agent.engine.protocol import ResolvedSampling
from common.errors import InvalidArgument
from common.inference import SamplingParams

MAX_STOP_LENGTH = 256
MAX_SEED = 2**32 - 1
MAX_TOP_K = 100_000


@dataclass(frozen=True)
class RequestLimits:
    max_tokens_limit: int
    default_max_tokens: int
    max_stop_sequences: int


@dataclass(frozen=True)
class SamplingDefaults:
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0


def _check_range(name: str, value: float, low: float, high: float) -> None:
    # Integers are compared exactly: a huge one must not overflow a float conversion.
    finite = isinstance(value, int) or math.isfinite(value)
    if not (finite and low <= value <= high):
        raise InvalidArgument(f"{name} must be between {low:g} and {high:g}, got {value!r}")


def resolve_sampling(
    params: SamplingParams,
    limits: RequestLimits,
    defaults: SamplingDefaults = SamplingDefaults(),
) -> ResolvedSampling:
    max_tokens = limits.default_max_tokens if params.max_tokens is None else params.max_tokens
    if not 1 <= max_tokens <= limits.max_tokens_limit:
        raise InvalidArgument(
            f"max_tokens must be between 1 and {limits.max_tokens_limit} on this agent, "
            f"got {max_tokens}"
        )
    temperature = defaults.temperature if params.temperature is None else params.temperature
    _check_range("temperature", temperature, 0.0, 2.0)
    top_p = defaults.top_p if params.top_p is None else params.top_p
    _check_range("top_p", top_p, 0.0, 1.0)
    top_k = defaults.top_k if params.top_k is None else params.top_k
    _check_range("top_k", top_k, 0, MAX_TOP_K)
    min_p = defaults.min_p if params.min_p is None else params.min_p
    _check_range("min_p", min_p, 0.0, 1.0)
    repeat_penalty = (
        defaults.repeat_penalty if params.repeat_penalty is None else params.repeat_penalty
    )
    _check_range("repeat_penalty", repeat_penalty, 0.01, 10.0)
    seed = secrets.randbelow(MAX_SEED + 1) if params.seed is None else params.seed
    _check_range("seed", seed, 0, MAX_SEED)
    if len(params.stop) > limits.max_stop_sequences:
        raise InvalidArgument(
            f"at most {limits.max_stop_sequences} stop sequences are allowed, "
            f"got {len(params.stop)}"
        )
    for stop in params.stop:
        if not stop or len(stop) > MAX_STOP_LENGTH:
            raise InvalidArgument(f"stop sequences must be 1 to {MAX_STOP_LENGTH} characters long")
    return ResolvedSampling(
        max_tokens=max_tokens,
        temperature=float(temperature),
        top_p=float(top_p),
        top_k=int(top_k),
        min_p=float(min_p),
        repeat_penalty=float(repeat_penalty),
        seed=int(seed),
        stop=tuple(params.stop),
    )


def check_prompt_fits(prompt_tokens: int, context_length: int) -> None:
    if prompt_tokens >= context_length:
        raise InvalidArgument(
            f"prompt is {prompt_tokens} tokens but the model's context is {context_length} "
            f"tokens (at most {context_length - 1} prompt tokens leave room to generate)"
        )
