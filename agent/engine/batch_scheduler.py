"""Continuous batching on one llama.cpp context: every decode carries all running sequences."""

from __future__ import annotations

import ctypes
import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import llama_cpp

from agent.engine.llama_sampling import RequestSampler
from agent.engine.protocol import ResolvedSampling
from agent.engine.text_stream import TextStream
from common.errors import InvalidArgument
from common.inference import Finished, FinishReason, GenerationEvent, TextDelta, Usage

log = logging.getLogger(__name__)

# While other sequences stream, a new prompt is evaluated this many tokens per decode, so a
# long prompt delays their next token by one chunk's worth of work, not the whole prompt's.
PREFILL_CHUNK_WHILE_STREAMING = 128
# A shared prefix shorter than this is recomputed rather than copied between sequences.
MIN_SHARED_PREFIX = 8

Emit = Callable[[GenerationEvent | BaseException], None]
Piece = Callable[[int], bytes]


@dataclass
class Job:
    """One generation: its prompt, its own sampling, and where its events go."""

    prompt: list[int]
    sampling: ResolvedSampling
    cancelled: threading.Event
    emit: Emit  # TextDelta events, then exactly one Finished, or an exception


@dataclass
class _Sequence:
    seq_id: int
    job: Job
    sampler: RequestSampler
    text: TextStream
    budget: int  # new tokens it may still produce at most
    cells: list[int] = field(default_factory=list)  # tokens whose KV cells this sequence holds
    next_token: int | None = None  # sampled, not yet decoded
    produced: int = 0

    @property
    def prefilling(self) -> bool:
        return len(self.cells) < len(self.job.prompt)


class BatchScheduler:
    """Runs on its own thread. Up to `parallel` sequences share the context (each with its own
    KV stream); each decode holds the next token of every streaming sequence plus a chunk of
    any prompt still being read. Finished or cancelled sequences free their cells at once."""

    def __init__(
        self,
        context: Any,
        vocab: Any,
        *,
        parallel: int,
        context_length: int,
        batch_size: int,
        vocab_size: int,
        piece: Piece,
        adapters: Mapping[str, Any] | None = None,
    ) -> None:
        """`adapters`: loaded LoRA adapter handles by name (llama_adapter_lora_init)."""
        self._context = context
        self._adapters = dict(adapters or {})
        self._applied_adapter = ""  # what the context applies now ("" = none)
        self._last_group = ""
        self._memory = llama_cpp.llama_get_memory(context)
        self._vocab = vocab
        self._parallel = parallel
        self._context_length = context_length
        self._batch_size = batch_size
        self._vocab_size = vocab_size
        self._piece = piece
        self._batch = llama_cpp.llama_batch_init(batch_size, 0, 1)
        self._pending: deque[Job] = deque()
        self._active: dict[int, _Sequence] = {}
        self._condition = threading.Condition()
        self.decode_lock = threading.Lock()  # held for every use of the context
        self._closed = False
        self._thread: threading.Thread | None = None
        self.decodes = 0  # decode calls so far (for tests and metrics)
        self.shared_prefix_tokens = 0  # prompt tokens copied from another sequence's cells

    # -- public ----------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        with self._condition:
            if self._closed:
                raise RuntimeError("the model is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="llama-batch", daemon=True)
                self._thread.start()
            self._pending.append(job)
            self._condition.notify()

    def used_cells(self) -> int:
        """KV cells held by sequences now (0 when idle)."""
        with self.decode_lock:
            total = 0
            for seq_id in range(self._parallel + 1):
                top = llama_cpp.llama_memory_seq_pos_max(self._memory, seq_id)
                bottom = llama_cpp.llama_memory_seq_pos_min(self._memory, seq_id)
                if top >= 0:
                    total += top - bottom + 1
            return total

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify()
        if self._thread is not None:
            self._thread.join()
        llama_cpp.llama_batch_free(self._batch)

    # -- the loop --------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._closed and not self._pending and not self._active:
                    self._condition.wait()
                if self._closed:
                    self._fail_all(RuntimeError("the model was unloaded"))
                    return
                admitted = self._admit_locked()
            try:
                with self.decode_lock:
                    for sequence in admitted:
                        self._share_prefix(sequence)
                    self._step()
            except Exception as exc:  # an engine failure fails the requests, not the agent
                log.exception("batched decode failed")
                self._fail_all(exc)

    def _admit_locked(self) -> list[_Sequence]:
        admitted = []
        free = [i for i in range(self._parallel) if i not in self._active]
        while self._pending and free:
            job = self._pending.popleft()
            if not 0 < len(job.prompt) < self._context_length:
                job.emit(
                    InvalidArgument(
                        f"the prompt has {len(job.prompt)} tokens; this model takes 1 to "
                        f"{self._context_length - 1} per request"
                    )
                )
                continue
            adapter = job.sampling.adapter
            if adapter and adapter not in self._adapters:
                job.emit(InvalidArgument(f"this model has no adapter {adapter!r}"))
                continue
            seq_id = free.pop(0)
            sequence = _Sequence(
                seq_id=seq_id,
                job=job,
                sampler=RequestSampler(job.sampling, self._vocab_size, job.prompt),
                text=TextStream(job.sampling.stop),
                budget=min(job.sampling.max_tokens, self._context_length - len(job.prompt)),
            )
            self._active[seq_id] = sequence
            admitted.append(sequence)
        return admitted

    def _share_prefix(self, sequence: _Sequence) -> None:
        """Copies the KV cells of the longest prefix another running sequence already holds
        (e.g. a shared system prompt) instead of computing them again."""
        prompt = sequence.job.prompt
        best, source = 0, None
        for other in self._active.values():
            # KV cells computed under another adapter would give wrong results.
            if other is sequence or other.job.sampling.adapter != sequence.job.sampling.adapter:
                continue
            common = _common_prefix(other.cells, prompt)
            if common > best:
                best, source = common, other
        best = min(best, len(prompt) - 1)  # the last prompt token is decoded for its logits
        if source is None or best < MIN_SHARED_PREFIX:
            return
        # Streams are copied whole (llama.cpp copies only full per-sequence KV buffers), then
        # cut back to the shared prefix.
        llama_cpp.llama_memory_seq_cp(self._memory, source.seq_id, sequence.seq_id, -1, -1)
        llama_cpp.llama_memory_seq_rm(self._memory, sequence.seq_id, best, -1)
        sequence.cells = list(prompt[:best])
        self.shared_prefix_tokens += best

    def _step(self) -> None:
        for sequence in list(self._active.values()):
            if sequence.job.cancelled.is_set():
                self._finish(sequence, FinishReason.CANCELLED)
        if not self._active:
            return
        group = self._choose_adapter()
        members = [s for s in self._active.values() if s.job.sampling.adapter == group]
        batch = self._batch
        count = 0
        sample_at: list[tuple[_Sequence, int]] = []
        decoded: list[_Sequence] = []
        for sequence in members:
            if sequence.next_token is not None:
                self._put(count, sequence.next_token, len(sequence.cells), sequence.seq_id, True)
                sample_at.append((sequence, count))
                decoded.append(sequence)
                count += 1
        room = self._batch_size - count
        if decoded:
            room = min(room, PREFILL_CHUNK_WHILE_STREAMING)
        chunks: list[tuple[_Sequence, list[int]]] = []
        for sequence in members:
            if room <= 0:
                break
            if not sequence.prefilling:
                continue
            start = len(sequence.cells)
            chunk = sequence.job.prompt[start : start + room]
            last = start + len(chunk) == len(sequence.job.prompt)
            for offset, token in enumerate(chunk):
                logits = last and offset == len(chunk) - 1
                self._put(count, token, start + offset, sequence.seq_id, logits)
                if logits:
                    sample_at.append((sequence, count))
                count += 1
            chunks.append((sequence, chunk))
            room -= len(chunk)
        if count == 0:
            return
        batch.n_tokens = count
        self.use_adapter(group)
        result = llama_cpp.llama_decode(self._context, batch)
        self.decodes += 1
        if result != 0:
            reason = "no room left in the KV cache" if result == 1 else f"error {result}"
            failure = RuntimeError(f"llama.cpp could not decode the batch: {reason}")
            for sequence in {id(s): s for s in decoded + [c[0] for c in chunks]}.values():
                self._finish(sequence, None, failure)
            return
        for sequence in decoded:
            assert sequence.next_token is not None
            sequence.cells.append(sequence.next_token)
            sequence.next_token = None
        for sequence, chunk in chunks:
            sequence.cells.extend(chunk)
        for sequence, index in sample_at:
            self._accept(sequence, sequence.sampler.sample(self._context, index))

    def _choose_adapter(self) -> str:
        """The adapter whose sequences this decode carries: llama.cpp applies one adapter set
        per decode, so sequences sharing an adapter decode together and groups take turns."""
        groups = sorted({s.job.sampling.adapter for s in self._active.values()})
        later = [g for g in groups if g > self._last_group]
        self._last_group = (later or groups)[0] if len(groups) > 1 else groups[0]
        return self._last_group

    def use_adapter(self, name: str) -> None:
        """Makes the context apply adapter `name` ("" = none); hold `decode_lock`."""
        if name == self._applied_adapter:
            return
        if name:
            handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self._adapters[name])
            scales = (ctypes.c_float * 1)(1.0)
            llama_cpp.llama_set_adapters_lora(self._context, handles, 1, scales)
        else:
            llama_cpp.llama_set_adapters_lora(self._context, None, 0, None)
        self._applied_adapter = name

    def _put(self, index: int, token: int, position: int, seq_id: int, logits: bool) -> None:
        batch = self._batch
        batch.token[index] = token
        batch.pos[index] = position
        batch.n_seq_id[index] = 1
        batch.seq_id[index][0] = seq_id
        batch.logits[index] = logits

    def _accept(self, sequence: _Sequence, token: int) -> None:
        if llama_cpp.llama_vocab_is_eog(self._vocab, token):
            self._finish(sequence, FinishReason.STOP)
            return
        sequence.produced += 1
        delta = sequence.text.feed(self._piece(token))
        if delta:
            sequence.job.emit(TextDelta(delta))
        if sequence.text.stopped:
            self._finish(sequence, FinishReason.STOP)
        elif sequence.produced >= sequence.budget or sequence.job.cancelled.is_set():
            cancelled = sequence.job.cancelled.is_set() and sequence.produced < sequence.budget
            self._finish(sequence, FinishReason.CANCELLED if cancelled else FinishReason.LENGTH)
        else:
            sequence.next_token = token

    def _finish(
        self,
        sequence: _Sequence,
        reason: FinishReason | None,
        failure: BaseException | None = None,
    ) -> None:
        """Frees the sequence's cells and sampler, then tells its caller how it ended."""
        self._active.pop(sequence.seq_id, None)
        llama_cpp.llama_memory_seq_rm(self._memory, sequence.seq_id, -1, -1)
        sequence.sampler.close()
        if failure is not None or reason is None:
            sequence.job.emit(failure or RuntimeError("generation failed"))
            return
        tail = sequence.text.finish()
        if tail:
            sequence.job.emit(TextDelta(tail))
        prompt = len(sequence.job.prompt)
        sequence.job.emit(Finished(reason, Usage(prompt, sequence.produced)))

    def _fail_all(self, failure: BaseException) -> None:
        with self._condition:
            pending, self._pending = list(self._pending), deque()
        with self.decode_lock:
            for sequence in list(self._active.values()):
                self._finish(sequence, None, failure)
        for job in pending:
            job.emit(failure)


def _common_prefix(left: Sequence[int], right: Sequence[int]) -> int:
    count = 0
    for a, b in zip(left, right, strict=False):
        if a != b:
            break
        count += 1
    return count
