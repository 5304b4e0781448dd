"""Local LoRA training and held-out evaluation on a torch llama model, in the adapter contract."""

from __future__ import annotations

import math
import random
import re
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.training.datasets import Example
from common.federated.adapter_tensors import (
    LORA_A,
    LORA_TARGETS,
    Adapter,
    AdapterError,
    adapter_shapes,
    as_float32,
    check_adapter,
    parse_lora_key,
)

IGNORE_INDEX = -100
_PEFT_NAME = re.compile(
    r".*\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.(lora_A|lora_B)\.default\.weight"
)
_MODULE_PARENT = {
    "q_proj": "self_attn",
    "k_proj": "self_attn",
    "v_proj": "self_attn",
    "o_proj": "self_attn",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "down_proj": "mlp",
}


@dataclass(frozen=True)
class TrainingConfig:
    rank: int = 8
    alpha: int = 16
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    learning_rate: float = 1e-4
    local_steps: int = 10
    batch_size: int = 4
    max_seq_len: int = 256
    seed: int = 0
    threads: int = 2
    freeze_a: bool = False

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if not self.targets or any(t not in LORA_TARGETS for t in self.targets):
            raise ValueError(f"targets must be a non-empty subset of {LORA_TARGETS}")
        if len(set(self.targets)) != len(self.targets):
            raise ValueError(f"targets repeat a module: {self.targets}")
        positive = ("local_steps", "batch_size", "max_seq_len", "threads")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_seq_len < 2:
            raise ValueError("max_seq_len must be >= 2 (a token and the one it predicts)")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be a positive number, got {self.learning_rate}")
        if self.alpha < 1:
            raise ValueError(f"alpha must be >= 1, got {self.alpha}")


@dataclass(frozen=True)
class TrainingResult:
    tensors: Adapter
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


def lora_shapes(model: Any, rank: int, targets: Sequence[str]) -> dict[str, tuple[int, int]]:
    """The adapter contract's shapes for a rank-``rank`` LoRA on ``targets`` of every layer."""
    layers = model.model.layers
    features: dict[str, tuple[int, int]] = {}
    for target in targets:
        if target not in LORA_TARGETS:
            raise AdapterError(f"unknown LoRA target {target!r}; expected one of {LORA_TARGETS}")
        linear = getattr(getattr(layers[0], _MODULE_PARENT[target]), target)
        features[target] = (int(linear.in_features), int(linear.out_features))
    return adapter_shapes(len(layers), rank, targets, features)


def adapter_geometry(tensors: Mapping[str, npt.NDArray[np.generic]]) -> tuple[int, tuple[str, ...]]:
    """(rank, targets in contract order) of an adapter's tensors."""
    ranks = {value.shape[0] for key, value in tensors.items() if parse_lora_key(key)[2] == LORA_A}
    if len(ranks) != 1:
        raise AdapterError(f"adapter's lora_A tensors must share one rank, got {sorted(ranks)}")
    present = {parse_lora_key(key)[1] for key in tensors}
    return ranks.pop(), tuple(t for t in LORA_TARGETS if t in present)


@contextmanager
def lora_attached(model: Any, rank: int, alpha: int, targets: Sequence[str]) -> Iterator[Any]:
    """The model wrapped with fresh LoRA layers (peft), removed again on exit, so a model object
    can be trained and evaluated any number of times; base weights are never changed."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0, bias="none"
    )
    with warnings.catch_warnings():
        # peft 0.21 asks transformers 5 a deprecated question; nothing for a caller to do.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        peft_model = get_peft_model(model, config)
    try:
        yield peft_model
    finally:
        peft_model.unload()


def _lora_parameters(peft_model: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, parameter in peft_model.named_parameters():
        match = _PEFT_NAME.fullmatch(name)
        if match is not None:
            layer, target, matrix = int(match.group(1)), match.group(2), match.group(3)
            found[f"layers.{layer}.{target}.{matrix}"] = parameter
    return found


def _load_tensors(
    peft_model: Any, tensors: Mapping[str, npt.NDArray[np.generic]]
) -> dict[str, Any]:
    import torch

    parameters = _lora_parameters(peft_model)
    check_adapter(tensors, {key: tuple(p.shape) for key, p in parameters.items()})
    with torch.no_grad():
        for key, parameter in parameters.items():
            parameter.copy_(torch.from_numpy(np.asarray(tensors[key], dtype=np.float32)))
    return parameters


def _encode(tokenizer: Any, examples: Sequence[Example], max_seq_len: int) -> list[list[int]]:
    """Token ids of each example, truncated; examples under two tokens predict nothing and
    are dropped."""
    encoded: list[list[int]] = []
    for example in examples:
        text = example.render(tokenizer.apply_chat_template)
        ids = tokenizer(text, truncation=True, max_length=max_seq_len)["input_ids"]
        if len(ids) >= 2:
            encoded.append([int(i) for i in ids])
    return encoded


def _batch(sequences: Sequence[list[int]], pad_id: int) -> tuple[Any, Any, Any]:
    """input_ids, attention_mask and labels (padding is -100), right-padded."""
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        mask[row, : len(sequence)] = 1
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    return ids, mask, labels


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pad if pad is not None else 0)


def train_adapter(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    initial: Mapping[str, npt.NDArray[np.generic]],
    config: TrainingConfig,
) -> TrainingResult:
    """Starts from the ``initial`` adapter (shapes as lora_shapes gives for the config), runs
    ``config.local_steps`` AdamW steps on batches of the examples (in a seeded order), and
    returns the trained LoRA tensors (float32) only. The model is left as it was given."""
    import torch

    check_adapter(initial, lora_shapes(model, config.rank, config.targets))
    sequences = _encode(tokenizer, examples, config.max_seq_len)
    if not sequences:
        raise ValueError("no training example has two or more tokens")
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    order = random.Random(config.seed)
    was_training = model.training
    losses: list[float] = []
    started = time.monotonic()
    with lora_attached(model, config.rank, config.alpha, config.targets) as peft_model:
        parameters = _load_tensors(peft_model, initial)
        trainable = []
        for key, parameter in parameters.items():
            train_it = not (config.freeze_a and key.endswith(LORA_A))
            parameter.requires_grad_(train_it)
            if train_it:
                trainable.append(parameter)
        optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=0.0)
        peft_model.train()
        queue: list[int] = []
        try:
            for _ in range(config.local_steps):
                picked: list[list[int]] = []
                while len(picked) < min(config.batch_size, len(sequences)):
                    if not queue:
                        queue = list(range(len(sequences)))
                        order.shuffle(queue)
                    picked.append(sequences[queue.pop()])
                ids, mask, labels = _batch(picked, _pad_id(tokenizer))
                loss = peft_model(input_ids=ids, attention_mask=mask, labels=labels).loss
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"training loss is {loss.item()} at step {len(losses)}"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.item()))
            tensors = {key: p.detach().cpu().numpy().copy() for key, p in parameters.items()}
        finally:
            model.train(was_training)
    return TrainingResult(
        tensors=as_float32(tensors),
        num_examples=len(sequences),
        metrics={
            "train_loss_first": losses[0],
            "train_loss_last": losses[-1],
            "train_loss_mean": sum(losses) / len(losses),
            "steps": float(len(losses)),
            "seconds": time.monotonic() - started,
        },
    )


def _token_loss(model: Any, sequences: Sequence[list[int]], pad_id: int, batch: int) -> float:
    import torch.nn.functional as functional

    model.eval()

    total, count = 0.0, 0
    for start in range(0, len(sequences), batch):
        ids, mask, labels = _batch(sequences[start : start + batch], pad_id)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1, :]
        targets = labels[:, 1:]
        total += float(
            functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(),
                targets.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
        )
        count += int((targets != IGNORE_INDEX).sum())
    return total / count


def _inference_loss(model: Any, sequences: Sequence[list[int]], pad_id: int, batch: int) -> float:
    import torch

    with torch.inference_mode():
        return _token_loss(model, sequences, pad_id, batch)


def heldout_loss(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    tensors: Mapping[str, npt.NDArray[np.generic]] | None,
    max_seq_len: int,
    *,
    alpha: int,
    batch_size: int = 4,
) -> float:
    """Mean per-token loss on ``examples``: of the base model when ``tensors`` is None, else
    with that adapter applied at scale ``alpha / rank``. The model is left as it was given."""

    sequences = _encode(tokenizer, examples, max_seq_len)
    if not sequences:
        raise ValueError("no held-out example has two or more tokens")
    pad_id = _pad_id(tokenizer)
    was_training = model.training
    try:
        if tensors is None:
            return _inference_loss(model, sequences, pad_id, batch_size)
        rank, targets = adapter_geometry(tensors)
        with lora_attached(model, rank, alpha, targets) as peft_model:
            _load_tensors(peft_model, tensors)
            return _inference_loss(peft_model, sequences, pad_id, batch_size)
    finally:
        model.train(was_training)


def adapted_logits(
    model: Any,
    token_ids: Sequence[int],
    tensors: Mapping[str, npt.NDArray[np.generic]] | None,
    *,
    alpha: int,
) -> npt.NDArray[np.float32]:
    """The logits (tokens × vocabulary) of ``model`` on one sequence, with the adapter applied
    at scale ``alpha / rank`` (or of the base when ``tensors`` is None): the reference an
    exported GGUF adapter is checked against. The model is left as it was given."""
    import torch

    ids = torch.tensor([list(token_ids)])
    with torch.no_grad():
        if tensors is None:
            return np.asarray(model(ids).logits[0].numpy(), dtype=np.float32)
        rank, targets = adapter_geometry(tensors)
        with lora_attached(model, rank, alpha, targets) as peft_model:
            _load_tensors(peft_model, tensors)
            return np.asarray(peft_model(ids).logits[0].numpy(), dtype=np.float32)
