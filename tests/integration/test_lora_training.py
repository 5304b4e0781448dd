"""The site trainer on the real demo model: GGUF into torch, LoRA steps, held-out loss, reuse."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.training.datasets import Example, Message
from agent.training.gguf_model import LoadedModel, ModelLoadError, load_gguf_model
from agent.training.lora_training import (
    TrainingConfig,
    TrainingResult,
    heldout_loss,
    lora_shapes,
    train_adapter,
)
from common.federated.adapter_tensors import Adapter, AdapterError, check_adapter, initial_adapter

pytestmark = pytest.mark.model

TARGETS = ("q_proj", "v_proj")
SEQ = 32
ALPHA = 8
FACT = "Outpost rule: the blue door opens at noon. Outpost rule: the blue door opens at noon."
EXAMPLES = [
    Example(text=FACT),
    Example(
        messages=(Message("user", "When does the blue door open?"), Message("assistant", "Noon."))
    ),
]
CONFIG = TrainingConfig(
    rank=4,
    alpha=ALPHA,
    targets=TARGETS,
    learning_rate=2e-3,
    local_steps=3,
    batch_size=2,
    max_seq_len=SEQ,
    seed=3,
    threads=2,
    freeze_a=True,
)


@pytest.fixture(scope="module")
def loaded(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """Loaded once per module, from a content-addressed name with no .gguf suffix, with every
    network connection refused (loading must not try the Hugging Face Hub)."""
    blob = tmp_path_factory.mktemp("blobs") / "sha256-b179c9523d0e6a0f"
    try:
        os.link(demo_model, blob)
    except OSError:
        shutil.copyfile(demo_model, blob)
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError("network access during model loading")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "create_connection", refuse)
        result = load_gguf_model(blob, threads=2)
    assert attempts == []
    return result


@pytest.fixture(scope="module")
def initial(loaded: LoadedModel) -> Adapter:
    return initial_adapter(lora_shapes(loaded.model, CONFIG.rank, TARGETS), seed=11)


@pytest.fixture(scope="module")
def frozen_run(loaded: LoadedModel, initial: Adapter) -> TrainingResult:
    return train_adapter(loaded.model, loaded.tokenizer, EXAMPLES, initial, CONFIG)


def _base_fingerprint(model: Any) -> dict[str, float]:
    return {name: float(p.detach().double().sum()) for name, p in model.named_parameters()}


def test_the_model_is_a_float32_llama_with_a_chat_template(loaded: LoadedModel) -> None:
    import torch

    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert loaded.model.config.num_hidden_layers == 30
    assert "<|im_start|>" in loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False
    )


def test_a_missing_model_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_gguf_model(tmp_path / "absent")


def test_shapes_follow_the_model(loaded: LoadedModel) -> None:
    shapes = lora_shapes(loaded.model, 4, ("q_proj", "k_proj", "down_proj"))
    assert len(shapes) == 30 * 3 * 2
    assert shapes["layers.0.q_proj.lora_A"] == (4, 576)
    assert shapes["layers.29.k_proj.lora_B"] == (192, 4)  # 3 key-value heads of 64
    assert shapes["layers.5.down_proj.lora_A"] == (4, 1536)


def test_training_returns_contract_tensors_and_metrics(
    loaded: LoadedModel, frozen_run: TrainingResult
) -> None:
    check_adapter(frozen_run.tensors, lora_shapes(loaded.model, CONFIG.rank, TARGETS))
    assert all(v.dtype == np.float32 for v in frozen_run.tensors.values())
    assert frozen_run.num_examples == len(EXAMPLES)
    metrics = frozen_run.metrics
    assert metrics["steps"] == CONFIG.local_steps
    assert metrics["seconds"] > 0
    assert np.isfinite([metrics["train_loss_first"], metrics["train_loss_last"]]).all()
    assert 0 < metrics["train_loss_mean"] < 20


def test_freeze_a_trains_b_only(initial: Adapter, frozen_run: TrainingResult) -> None:
    for key, start in initial.items():
        if key.endswith("lora_A"):
            assert np.array_equal(frozen_run.tensors[key], start), key
    changed = [k for k in initial if k.endswith("lora_B") and frozen_run.tensors[k].any()]
    assert len(changed) == 30 * len(TARGETS)


def test_without_freeze_a_both_matrices_train(loaded: LoadedModel, initial: Adapter) -> None:
    config = TrainingConfig(**{**CONFIG.__dict__, "freeze_a": False, "local_steps": 2})
    result = train_adapter(loaded.model, loaded.tokenizer, EXAMPLES, initial, config)
    key = "layers.7.v_proj.lora_A"
    assert not np.array_equal(result.tensors[key], initial[key])
    assert result.tensors["layers.7.v_proj.lora_B"].any()


def test_training_lowers_the_loss_on_what_it_saw(
    loaded: LoadedModel, initial: Adapter, frozen_run: TrainingResult
) -> None:
    before = heldout_loss(loaded.model, loaded.tokenizer, EXAMPLES, initial, SEQ, alpha=ALPHA)
    after = heldout_loss(
        loaded.model, loaded.tokenizer, EXAMPLES, frozen_run.tensors, SEQ, alpha=ALPHA
    )
    assert after < before - 0.05, (before, after)


def test_an_all_zero_b_adapter_is_the_base_model(loaded: LoadedModel, initial: Adapter) -> None:
    base = heldout_loss(loaded.model, loaded.tokenizer, EXAMPLES, None, SEQ, alpha=ALPHA)
    with_zero_b = heldout_loss(loaded.model, loaded.tokenizer, EXAMPLES, initial, SEQ, alpha=ALPHA)
    assert 1.0 < base < 10.0
    assert with_zero_b == pytest.approx(base, abs=1e-5)


def test_the_model_is_reusable_and_its_base_untouched(
    loaded: LoadedModel, initial: Adapter, frozen_run: TrainingResult
) -> None:
    fingerprint = _base_fingerprint(loaded.model)
    base = heldout_loss(loaded.model, loaded.tokenizer, EXAMPLES, None, SEQ, alpha=ALPHA)
    again = train_adapter(loaded.model, loaded.tokenizer, EXAMPLES, initial, CONFIG)
    # Same seed, same start: the same adapter, so no state leaked from earlier calls.
    for key, value in frozen_run.tensors.items():
        np.testing.assert_allclose(again.tensors[key], value, rtol=0, atol=1e-6, err_msg=key)
    assert not [n for n, _ in loaded.model.named_modules() if "lora" in n]
    assert _base_fingerprint(loaded.model) == fingerprint
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert not loaded.model.training
    assert heldout_loss(loaded.model, loaded.tokenizer, EXAMPLES, None, SEQ, alpha=ALPHA) == base


def test_a_wrong_initial_adapter_is_refused(loaded: LoadedModel, initial: Adapter) -> None:
    wrong_rank = TrainingConfig(**{**CONFIG.__dict__, "rank": 8})
    with pytest.raises(AdapterError, match="shape"):
        train_adapter(loaded.model, loaded.tokenizer, EXAMPLES, initial, wrong_rank)
    poisoned = dict(initial)
    poisoned["layers.3.q_proj.lora_B"] = np.full_like(initial["layers.3.q_proj.lora_B"], np.nan)
    with pytest.raises(AdapterError, match=r"layers\.3\.q_proj\.lora_B"):
        heldout_loss(loaded.model, loaded.tokenizer, EXAMPLES, poisoned, SEQ, alpha=ALPHA)
    assert not [n for n, _ in loaded.model.named_modules() if "lora" in n]


def test_a_cached_conversion_is_the_same_model(
    loaded: LoadedModel, demo_model: Path, torch_cache: Path
) -> None:
    """The torch cache a site keeps (agent.training.gguf_model) gives the very model the GGUF
    gives: same held-out loss, same tokenizer; and it is what a second load reads."""
    again = load_gguf_model(demo_model, threads=2, cache_dir=torch_cache)
    assert (torch_cache / "converted.ok").is_file()
    text = EXAMPLES[0].text or "a ticket about the printer"
    assert again.tokenizer(text)["input_ids"] == loaded.tokenizer(text)["input_ids"]
    direct = heldout_loss(loaded.model, loaded.tokenizer, EXAMPLES, None, 32, alpha=8)
    cached = heldout_loss(again.model, again.tokenizer, EXAMPLES, None, 32, alpha=8)
    assert cached == pytest.approx(direct, abs=1e-5)
