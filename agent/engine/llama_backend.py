"""llama.cpp backend (llama-cpp-python's low-level API): one GGUF model, continuous batching."""

from __future__ import annotations

import ctypes
import logging
import queue
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import llama_cpp
import numpy

from agent.engine.batch_scheduler import BatchScheduler, Job
from agent.engine.chat_template import ChatTemplate
from agent.engine.protocol import BackendDescription, ResolvedSampling
from common.errors import InvalidArgument
from common.inference import ChatMessage, Finished, GenerationEvent

_PIECE_BUFFER_BYTES = 256
_METADATA_BYTES = 256
ALL_LAYERS = 0x7FFFFFFF
# llama-cpp-python routes llama.cpp's log through this logger's level: errors only.
logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)


class LlamaCppBackend:
    """A GGUF model and one llama.cpp context whose KV cache `parallel` sequences share.

    `context_length` is each sequence's limit; the context holds `parallel` of them. Requests
    run concurrently (up to `parallel`, each from its own caller thread): one scheduler thread
    decodes them together.
    """

    def __init__(
        self,
        path: Path,
        *,
        context_length: int,
        gpu_layers: int,
        threads: int,
        batch_size: int,
        parallel: int = 1,
        adapters: Mapping[str, Path] | None = None,
    ) -> None:
        """`adapters`: LoRA adapter files by the name requests use for them."""
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = ALL_LAYERS if gpu_layers == -1 else gpu_layers
        self._model: Any = llama_cpp.llama_model_load_from_file(str(path).encode(), model_params)
        if not self._model:
            raise RuntimeError(f"llama.cpp could not load the model {path}")
        params = llama_cpp.llama_context_default_params()
        # One KV stream per sequence (and one for the health prompt), each `context_length`
        # cells: a sequence's attention then reads only its own cells, in the same order as
        # when it runs alone, so batching does not change its numbers.
        params.n_seq_max = parallel + 1
        params.n_ctx = context_length * params.n_seq_max
        params.n_batch = params.n_ubatch = batch_size
        params.n_threads = params.n_threads_batch = threads
        params.kv_unified = False
        # Flash attention stays at llama.cpp's default (auto: on where the backend has it): with
        # 8 sequences in a decode it gave ~25 % more tokens/s here than without.
        self._context: Any = llama_cpp.llama_init_from_model(self._model, params)
        if not self._context:
            llama_cpp.llama_model_free(self._model)
            raise RuntimeError(f"llama.cpp could not create a context for {path}")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self._vocab_size = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        self._piece_buffer = ctypes.create_string_buffer(_PIECE_BUFFER_BYTES)
        self._piece_lock = threading.Lock()
        self._context_length = context_length
        self._parallel = parallel
        self._batch_size = batch_size
        self._architecture = self._metadata("general.architecture") or "unknown"
        self._chat_template = self._load_chat_template()
        try:
            handles = {
                name: self._load_adapter(name, file) for name, file in (adapters or {}).items()
            }
        except BaseException:
            llama_cpp.llama_free(self._context)
            llama_cpp.llama_model_free(self._model)  # frees the adapters loaded so far too
            raise
        self._adapter_names = tuple(sorted(handles))
        self._scheduler = BatchScheduler(
            self._context,
            self._vocab,
            parallel=parallel,
            context_length=context_length,
            batch_size=batch_size,
            vocab_size=self._vocab_size,
            piece=self._generated_piece,
            adapters=handles,
        )

    def _load_adapter(self, name: str, path: Path) -> Any:
        handle = llama_cpp.llama_adapter_lora_init(self._model, str(path).encode())
        if not handle:  # a NULL pointer, not None
            raise RuntimeError(
                f"LoRA adapter {name!r} ({path}) cannot be loaded: not a GGUF LoRA adapter for "
                "this model (llama.cpp checks the architecture and every tensor's shape)"
            )
        return handle

    def _metadata(self, key: str) -> str:
        buffer = ctypes.create_string_buffer(_METADATA_BYTES)
        length = llama_cpp.llama_model_meta_val_str(
            self._model, key.encode(), buffer, _METADATA_BYTES
        )
        return buffer.value.decode("utf-8", errors="replace") if length >= 0 else ""

    def _load_chat_template(self) -> ChatTemplate | None:
        source = llama_cpp.llama_model_chat_template(self._model, None)
        if not source:
            return None
        return ChatTemplate(
            source.decode("utf-8", errors="replace"),
            bos_token=self._token_text(llama_cpp.llama_vocab_bos(self._vocab)),
            eos_token=self._token_text(llama_cpp.llama_vocab_eos(self._vocab)),
        )

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._piece(token, special=True).decode("utf-8", errors="replace")

    def _generated_piece(self, token: int) -> bytes:
        return self._piece(token, special=False)

    def _piece(self, token: int, *, special: bool) -> bytes:
        with self._piece_lock:  # one shared buffer
            n = llama_cpp.llama_token_to_piece(
                self._vocab, token, self._piece_buffer, _PIECE_BUFFER_BYTES, 0, special
            )
            if n >= 0:
                return bytes(self._piece_buffer.raw[:n])
        buffer = ctypes.create_string_buffer(-n)  # longer than the buffer: llama.cpp said how long
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, -n, 0, special)
        return bytes(buffer.raw[:n])

    def describe(self) -> BackendDescription:
        return BackendDescription(
            architecture=self._architecture,
            context_length=self._context_length,
            vocab_size=self._vocab_size,
            parallel=self._parallel,
            adapters=self._adapter_names,
        )

    def render_chat(self, messages: Sequence[ChatMessage]) -> str:
        if self._chat_template is None:
            raise InvalidArgument("this model has no chat template; use text completion instead")
        return self._chat_template.render(messages)

    def tokenize(self, text: str) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 2
        while True:
            tokens = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(self._vocab, data, len(data), tokens, capacity, True, True)
            if n >= 0:
                return list(tokens[:n])
            capacity = -n

    def generate(
        self,
        prompt_tokens: Sequence[int],
        sampling: ResolvedSampling,
        cancelled: threading.Event,
    ) -> Iterator[GenerationEvent]:
        """Runs in the caller's thread, fed by the scheduler thread; ends with one Finished."""
        events: queue.SimpleQueue[GenerationEvent | BaseException] = queue.SimpleQueue()
        self._scheduler.submit(Job(list(prompt_tokens), sampling, cancelled, events.put))
        finished = False
        try:
            while True:
                event = events.get()
                if isinstance(event, BaseException):
                    finished = True
                    raise event
                yield event
                if isinstance(event, Finished):
                    finished = True
                    return
        finally:
            if not finished:  # the caller stopped reading: the sequence frees its cells
                cancelled.set()

    def used_cells(self) -> int:
        """KV cells held by running sequences (0 once every request has ended)."""
        return self._scheduler.used_cells()

    def self_test(self) -> None:
        """Evaluates a short prompt and checks its logits are finite: weights that load but
        hold garbage (NaN scales) fail here instead of answering nonsense."""
        tokens = self.tokenize("The capital of France is")
        probe = self._parallel  # the spare sequence id
        memory = llama_cpp.llama_get_memory(self._context)
        batch = llama_cpp.llama_batch_init(len(tokens), 0, 1)
        try:
            with self._scheduler.decode_lock:
                self._scheduler.use_adapter("")  # the base model's own weights
                for index, token in enumerate(tokens):
                    batch.token[index] = token
                    batch.pos[index] = index
                    batch.n_seq_id[index] = 1
                    batch.seq_id[index][0] = probe
                    batch.logits[index] = index == len(tokens) - 1
                batch.n_tokens = len(tokens)
                if llama_cpp.llama_decode(self._context, batch) != 0:
                    raise RuntimeError("llama.cpp could not evaluate a test prompt")
                pointer = llama_cpp.llama_get_logits_ith(self._context, len(tokens) - 1)
                logits = numpy.ctypeslib.as_array(pointer, shape=(self._vocab_size,)).copy()
                llama_cpp.llama_memory_seq_rm(memory, probe, -1, -1)
        finally:
            llama_cpp.llama_batch_free(batch)
        if not numpy.isfinite(logits).all():
            raise RuntimeError("the model's logits on a test prompt are not finite (NaN or inf)")

    def close(self) -> None:
        self._scheduler.close()
        llama_cpp.llama_free(self._context)
        llama_cpp.llama_model_free(self._model)
