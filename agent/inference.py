"""The agent's inference use cases, shared by its gRPC and HTTP front ends."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace

from agent.engine.protocol import ResolvedSampling
from agent.model_pool import ModelPool
from agent.model_runner import GenerationStream, ModelRunner
from agent.request_validation import RequestLimits, check_prompt_fits, resolve_sampling
from common.errors import InvalidArgument, NotFound
from common.inference import (
    ADAPTER_SEPARATOR,
    ChatRequest,
    CompletionRequest,
    EventStream,
    ModelInfo,
    check_messages,
    check_prompt,
)
from common.policy.gate import NO_CREDENTIALS, Credentials, PolicyGate
from common.policy.routing import PolicyEngine


class Inference:
    """Validates a request completely, then admits it to its model's queue.

    Every error (unknown model, bad values, prompt too long, queue full) is raised before the
    first event, so front ends can answer with a clean error instead of a broken stream.
    """

    def __init__(
        self, pool: ModelPool, limits: RequestLimits, gate: PolicyGate | None = None
    ) -> None:
        """`gate`: the routing policy's enforcement (None: this agent's models only)."""
        self._pool = pool
        self._limits = limits
        self._gate = gate

    @property
    def ready(self) -> bool:
        return self._pool.ready

    def models(self) -> list[ModelInfo]:
        return self._pool.describe()

    def _runner(self, model: str) -> tuple[ModelRunner, str]:
        """The runner of `alias` or `alias:adapter`, and the adapter named ("" if none)."""
        alias, _, adapter = model.partition(ADAPTER_SEPARATOR)
        runner = self._pool.runner(alias)
        if adapter and adapter not in runner.description.adapters:
            known = ", ".join(runner.description.adapters) or "none"
            raise NotFound(f"model {alias!r} has no adapter {adapter!r} (adapters: {known})")
        return runner, adapter

    async def start_completion(
        self, request: CompletionRequest, credentials: Credentials = NO_CREDENTIALS
    ) -> EventStream:
        """The request's events; under a routing policy, from the target the policy picks."""
        gate, engine = self._gate, self._policy_in_force()
        if gate is None or engine is None:
            return await self._completion_here(request)
        check_prompt(request.prompt)  # bad input is refused before it is routed anywhere
        max_tokens = resolve_sampling(request.sampling, self._limits).max_tokens

        async def start_local(alias: str, parts: tuple[str, ...], _: str) -> GenerationStream:
            return await self._completion_here(replace(request, model=alias, prompt=parts[0]))

        return await gate.completion(engine, request, credentials, start_local, max_tokens)

    async def start_chat(
        self, request: ChatRequest, credentials: Credentials = NO_CREDENTIALS
    ) -> EventStream:
        """The request's events; under a routing policy, from the target the policy picks."""
        gate, engine = self._gate, self._policy_in_force()
        if gate is None or engine is None:
            return await self._chat_here(request)
        check_messages(request.messages)
        max_tokens = resolve_sampling(request.sampling, self._limits).max_tokens

        async def start_local(alias: str, parts: tuple[str, ...], _: str) -> GenerationStream:
            messages = tuple(
                replace(m, content=c) for m, c in zip(request.messages, parts, strict=True)
            )
            return await self._chat_here(replace(request, model=alias, messages=messages))

        return await gate.chat(engine, request, credentials, start_local, max_tokens)

    def _policy_in_force(self) -> PolicyEngine | None:
        """The routing policy's engine when the agent enforces one, else None (then requests
        name this agent's models and need no key)."""
        if self._gate is None:
            return None
        engine = self._gate.engine()
        return engine if engine.policy is not None else None

    async def _completion_here(self, request: CompletionRequest) -> GenerationStream:
        runner, adapter = self._runner(request.model)

        def prepare() -> tuple[list[int], ResolvedSampling]:
            check_prompt(request.prompt)
            sampling = replace(resolve_sampling(request.sampling, self._limits), adapter=adapter)
            return runner.backend.tokenize(request.prompt), sampling

        return await self._start(runner, adapter, prepare)

    async def _chat_here(self, request: ChatRequest) -> GenerationStream:
        runner, adapter = self._runner(request.model)

        def prepare() -> tuple[list[int], ResolvedSampling]:
            check_messages(request.messages)
            sampling = replace(resolve_sampling(request.sampling, self._limits), adapter=adapter)
            prompt = runner.backend.render_chat(request.messages)
            return runner.backend.tokenize(prompt), sampling

        return await self._start(runner, adapter, prepare)

    @staticmethod
    async def _start(
        runner: ModelRunner,
        adapter: str,
        prepare: Callable[[], tuple[list[int], ResolvedSampling]],
    ) -> GenerationStream:
        """Checks, renders and tokenizes off the event loop (llama.cpp's tokenizer only reads
        the vocabulary), then admits; a refused request counts as an error of its model."""
        try:
            tokens, sampling = await asyncio.to_thread(prepare)
            check_prompt_fits(len(tokens), runner.description.context_length)
        except InvalidArgument:
            runner.metrics.rejected(adapter)
            raise
        return runner.start(tokens, sampling)
