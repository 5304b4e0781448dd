"""llama.cpp backend (llama-cpp-python): one GGUF model, one context, sequential generation."""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import llama_cpp
import numpy

from agent.engine.chat_template import ChatTemplate
from agent.engine.protocol import BackendDescription, ResolvedSampling
from agent.engine.text_stream import TextStream
from common.errors import InvalidArgument
from common.inference import ChatMessage, Finished, FinishReason, GenerationEvent, TextDelta, Usage

_PIECE_BUFFER_BYTES = 256


class LlamaCppBackend:
    """A GGUF model loaded into one llama.cpp context. Callers serialise access to it."""

    def __init__(
        self,
        path: Path,
        *,
        context_length: int,
        gpu_layers: int,
        threads: int,
        batch_size: int,
    ) -> None:
        self._llama = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=context_length,
            n_gpu_layers=gpu_layers,
            n_threads=threads,
            n_threads_batch=threads,
            n_batch=batch_size,
            verbose=False,
        )
        self._vocab = llama_cpp.llama_model_get_vocab(self._llama.model)
        self._piece_buffer = ctypes.create_string_buffer(_PIECE_BUFFER_BYTES)
        metadata: dict[str, str] = self._llama.metadata
        self._architecture = metadata.get("general.architecture", "unknown")
        self._chat_template = self._load_chat_template(metadata)

    def _load_chat_template(self, metadata: dict[str, str]) -> ChatTemplate | None:
        source = metadata.get("tokenizer.chat_template")
        if not source:
            return None
        return ChatTemplate(
            source,
            bos_token=self._token_text(self._llama.token_bos()),
            eos_token=self._token_text(self._llama.token_eos()),
        )

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._piece(token, special=True).decode("utf-8", errors="replace")

    def _piece(self, token: int, *, special: bool) -> bytes:
        n = llama_cpp.llama_token_to_piece(
            self._vocab, token, self._piece_buffer, _PIECE_BUFFER_BYTES, 0, special
        )
        if n < 0:  # the piece is longer than the buffer: retry with the size llama.cpp asked for
            buffer = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, -n, 0, special)
            return bytes(buffer.raw[:n])
        return bytes(self._piece_buffer.raw[:n])

    def describe(self) -> BackendDescription:
        return BackendDescription(
            architecture=self._architecture,
            context_length=self._llama.n_ctx(),
            vocab_size=self._llama.n_vocab(),
        )

    def render_chat(self, messages: Sequence[ChatMessage]) -> str:
        if self._chat_template is None:
            raise InvalidArgument("this model has no chat template; use text completion instead")
        return self._chat_template.render(messages)

    def tokenize(self, text: str) -> list[int]:
        tokens: list[int] = self._llama.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        return tokens

    def generate(
        self,
        prompt_tokens: Sequence[int],
        sampling: ResolvedSampling,
        cancelled: threading.Event,
    ) -> Iterator[GenerationEvent]:
        budget = min(sampling.max_tokens, self._llama.n_ctx() - len(prompt_tokens))
        text = TextStream(sampling.stop)
        produced = 0
        reason = FinishReason.LENGTH
        if cancelled.is_set():
            yield Finished(FinishReason.CANCELLED, Usage(len(prompt_tokens), 0))
            return
        self._llama.set_seed(sampling.seed)
        tokens = self._llama.generate(
            prompt_tokens,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            min_p=sampling.min_p,
            temp=sampling.temperature,
            repeat_penalty=sampling.repeat_penalty,
            reset=True,  # keeps the KV cells of the prefix shared with the previous request
        )
        try:
            for token in tokens:
                if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    reason = FinishReason.STOP
                    break
                produced += 1
                delta = text.feed(self._piece(token, special=False))
                if delta:
                    yield TextDelta(delta)
                if text.stopped:
                    reason = FinishReason.STOP
                    break
                if cancelled.is_set():
                    reason = FinishReason.CANCELLED
                    break
                if produced >= budget:
                    break
        finally:
            tokens.close()
        tail = text.finish()
        if tail:
            yield TextDelta(tail)
        yield Finished(reason, Usage(len(prompt_tokens), produced))

    def self_test(self) -> None:
        """Evaluates a short prompt and checks its logits are finite: weights that load but
        hold garbage (NaN scales) fail here instead of answering nonsense."""
        tokens = self.tokenize("The capital of France is")
        self._llama.reset()  # type: ignore[no-untyped-call]
        self._llama.eval(tokens)
        # The last token's logits, straight from llama.cpp (the high-level API keeps them only
        # with logits_all).
        pointer = llama_cpp.llama_get_logits_ith(self._llama.ctx, -1)
        logits = numpy.ctypeslib.as_array(pointer, shape=(self._llama.n_vocab(),)).copy()
        self._llama.reset()  # type: ignore[no-untyped-call]  # next one starts afresh
        if not numpy.isfinite(logits).all():
            raise RuntimeError("the model's logits on a test prompt are not finite (NaN or inf)")

    def close(self) -> None:
        self._llama.close()
