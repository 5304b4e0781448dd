"""The GGUF LoRA exporter against torch + peft: llama.cpp's logits with the adapter match.

Compared on an F32 dequantized copy of the demo model: on the Q4_1 file llama.cpp quantizes
activations and differs from torch by ~1-2 in the logits, which would hide a wrong adapter.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt
import pytest

import common.federated.gguf_lora as gguf_lora

pytestmark = pytest.mark.model

PROMPT = b"The capital of France is a city"  # 7 tokens
RANK = 4
ALPHA = 8.0
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "down_proj")
# Measured: ~0.016 with the exporter (f16 or f32 tensors); ~2.9 without the q/k permutation.
TOLERANCE = 0.05

Logits = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Reference:
    tokens: list[int]
    base: Logits  # torch, adapter off: (n_tokens, vocab)
    adapted: Logits  # torch + peft
    tensors: dict[str, npt.NDArray[np.float32]]  # the adapter in the transit contract


@pytest.fixture(scope="module")
def f32_model(f32_demo_model: Path) -> Path:
    return f32_demo_model


def _llama(model: Path, lora: Path | None = None) -> llama_cpp.Llama:
    return llama_cpp.Llama(
        str(model),
        n_ctx=64,
        n_threads=2,
        n_batch=64,
        logits_all=True,
        verbose=False,
        lora_path=None if lora is None else str(lora),
    )


def llama_logits(model: Path, tokens: list[int], lora: Path | None = None) -> Logits:
    llm = _llama(model, lora)
    try:
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], dtype=np.float32)
    finally:
        llm.close()


def _contract_key(module_name: str) -> str:
    # e.g. base_model.model.model.layers.3.self_attn.q_proj -> layers.3.q_proj
    parts = module_name.split(".")
    layer = parts[parts.index("layers") + 1]
    return f"layers.{layer}.{parts[-1]}"


@pytest.fixture(scope="module")
def reference(f32_model: Path) -> Reference:
    # Any-typed: this reference pokes at peft's and torch's internals freely.
    torch: Any = importlib.import_module("torch")
    peft: Any = importlib.import_module("peft")
    transformers: Any = importlib.import_module("transformers")
    model = transformers.LlamaForCausalLM.from_pretrained(
        str(f32_model.parent),
        gguf_file=f32_model.name,
        local_files_only=True,
        dtype=torch.float32,
    ).eval()
    config = peft.LoraConfig(
        r=RANK, lora_alpha=ALPHA, target_modules=list(TARGETS), lora_dropout=0.0
    )
    lora_model: Any = peft.get_peft_model(model, config)
    generator = torch.Generator().manual_seed(0)
    tensors: dict[str, npt.NDArray[np.float32]] = {}
    with torch.no_grad():
        for name, module in lora_model.named_modules():
            if not isinstance(module, peft.tuners.lora.LoraLayer) or not name.endswith(TARGETS):
                continue
            a = module.lora_A["default"].weight
            b = module.lora_B["default"].weight
            a.copy_(torch.randn(a.shape, generator=generator) / a.shape[1] ** 0.5)
            b.copy_(torch.randn(b.shape, generator=generator) * 0.05)
            key = _contract_key(name)
            tensors[f"{key}.lora_A"] = a.numpy().copy()
            tensors[f"{key}.lora_B"] = b.numpy().copy()
    assert len(tensors) == 30 * len(TARGETS) * 2
    vocab = llama_cpp.Llama(str(f32_model), vocab_only=True, n_ctx=64, verbose=False)
    tokens = vocab.tokenize(PROMPT, add_bos=False)
    vocab.close()
    with torch.no_grad():
        ids = torch.tensor([tokens])
        with lora_model.disable_adapter():
            base = lora_model(ids).logits[0].numpy()
        adapted = lora_model(ids).logits[0].numpy()
    return Reference(tokens, base, adapted, tensors)


@pytest.fixture
def identity_permutation(monkeypatch: pytest.MonkeyPatch) -> None:
    """The deliberate mistake: q/k lora_b rows left in Hugging Face order."""
    monkeypatch.setattr(gguf_lora, "permute_rope_rows", lambda rows, n_heads: rows)


def _export_and_compare(f32_model: Path, reference: Reference, target: Path) -> float:
    adapter = gguf_lora.export_gguf_lora(
        reference.tensors, base_gguf=f32_model, alpha=ALPHA, target=target
    )
    logits = llama_logits(f32_model, reference.tokens, adapter)
    difference = np.abs(logits - reference.adapted)
    last = float(difference[-1].max())
    print(f"\nmax |dlogit| vs torch+peft: all positions {difference.max():.4f}, last {last:.4f}")
    return float(difference.max())


def test_the_reference_adapter_moves_the_logits(f32_model: Path, reference: Reference) -> None:
    assert np.abs(reference.adapted - reference.base).max() > 0.5
    # The F32 copy itself agrees with torch: what remains below is the adapter's doing.
    base = llama_logits(f32_model, reference.tokens)
    assert np.abs(base - reference.base).max() < TOLERANCE


def test_exported_adapter_matches_torch(
    f32_model: Path, reference: Reference, tmp_path: Path
) -> None:
    assert _export_and_compare(f32_model, reference, tmp_path / "a.gguf") < TOLERANCE


def test_f32_tensors_match_too(
    f32_model: Path, reference: Reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gguf_lora, "STORAGE_DTYPE", np.float32)
    assert _export_and_compare(f32_model, reference, tmp_path / "a.gguf") < TOLERANCE


@pytest.mark.usefixtures("identity_permutation")
def test_export_without_the_permutation_is_caught(
    f32_model: Path, reference: Reference, tmp_path: Path
) -> None:
    assert _export_and_compare(f32_model, reference, tmp_path / "a.gguf") > 10 * TOLERANCE
