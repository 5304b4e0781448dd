"""The agent's inference use cases, shared by its gRPC and HTTP front ends."""

from __future__ import annotations

import asyncio

from agent.engine.protocol import ResolvedSampling
from agent.model_pool import ModelPool
from agent.model_runner import GenerationStream, ModelRunner
from agent.request_validation import (
    RequestLimits,
    check_messages,
    check_prompt,
    check_prompt_fits,
    resolve_sampling,
)
from common.inference import ChatRequest, CompletionRequest, ModelInfo


class Inference:
    """Validates a request completely, then admits it to its model's queue.

    Every error (unknown model, bad values, prompt too long, queue full) is raised before the
    first event, so front ends can answer with a clean error instead of a broken stream.
    """

    def __init__(self, pool: ModelPool, limits: RequestLimits) -> None:
        self._pool = pool
        self._limits = limits

    @property
    def ready(self) -> bool:
        return self._pool.ready

    def models(self) -> list[ModelInfo]:
        return self._pool.describe()

    async def start_completion(self, request: CompletionRequest) -> GenerationStream:
        runner = self._pool.runner(request.model)
        check_prompt(request.prompt)
        sampling = resolve_sampling(request.sampling, self._limits)
        tokens = await asyncio.to_thread(runner.backend.tokenize, request.prompt)
        return self._start(runner, tokens, sampling)

    async def start_chat(self, request: ChatRequest) -> GenerationStream:
        runner = self._pool.runner(request.model)
        check_messages(request.messages)
        sampling = resolve_sampling(request.sampling, self._limits)

        def render_and_tokenize() -> list[int]:
            return runner.backend.tokenize(runner.backend.render_chat(request.messages))

        tokens = await asyncio.to_thread(render_and_tokenize)
        return self._start(runner, tokens, sampling)

    @staticmethod
    def _start(
        runner: ModelRunner, tokens: list[int], sampling: ResolvedSampling
    ) -> GenerationStream:
        check_prompt_fits(len(tokens), runner.description.context_length)
        return runner.start(tokens, sampling)
