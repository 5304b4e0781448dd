"""A llama.cpp sampler chain for one request: penalties, top-k/p, min-p, temperature, seed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import llama_cpp

from agent.engine.protocol import ResolvedSampling

REPEAT_WINDOW = 64  # tokens the repeat penalty looks back over (llama-cpp-python's default)


class RequestSampler:
    """Owns one `llama_sampler` chain; each sequence of a batch has its own, so requests never
    share sampling state (penalty history, random generator)."""

    def __init__(
        self, sampling: ResolvedSampling, vocab_size: int, prompt_tokens: Sequence[int]
    ) -> None:
        params = llama_cpp.llama_sampler_chain_default_params()
        self._chain: Any = llama_cpp.llama_sampler_chain_init(params)
        add = self._add
        if sampling.repeat_penalty != 1.0:
            add(
                llama_cpp.llama_sampler_init_penalties(
                    vocab_size, REPEAT_WINDOW, sampling.repeat_penalty, 0.0, 0.0
                )
            )
        if sampling.temperature == 0.0:
            add(llama_cpp.llama_sampler_init_greedy())
        else:
            add(llama_cpp.llama_sampler_init_top_k(sampling.top_k))
            add(llama_cpp.llama_sampler_init_top_p(sampling.top_p, 1))
            add(llama_cpp.llama_sampler_init_min_p(sampling.min_p, 1))
            add(llama_cpp.llama_sampler_init_temp(sampling.temperature))
            add(llama_cpp.llama_sampler_init_dist(sampling.seed & 0xFFFFFFFF))
        # The penalty window starts with the end of the prompt, as in a sequential run.
        for token in prompt_tokens[-REPEAT_WINDOW:]:
            llama_cpp.llama_sampler_accept(self._chain, token)

    def _add(self, sampler: Any) -> None:
        llama_cpp.llama_sampler_chain_add(self._chain, sampler)

    def sample(self, context: Any, batch_index: int) -> int:
        """The next token from the logits at `batch_index` of the last decode (accepted)."""
        return int(llama_cpp.llama_sampler_sample(self._chain, context, batch_index))

    def close(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)  # frees the samplers it holds too
            self._chain = None
