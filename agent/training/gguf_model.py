"""The GGUF model an agent serves, dequantized into a float32 torch LlamaForCausalLM, offline."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The variables huggingface_hub and transformers read to stay off the network.
_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
_LINK_NAME = "model.gguf"


class ModelLoadError(RuntimeError):
    """The GGUF file could not be turned into a torch model."""


@dataclass(frozen=True)
class LoadedModel:
    """A torch causal LM (float32, eval mode, requires_grad off) and its tokenizer."""

    model: Any
    tokenizer: Any


@contextmanager
def _offline() -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in _OFFLINE_ENV}
    os.environ.update(_OFFLINE_ENV)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def load_gguf_model(path: Path, threads: int | None = None) -> LoadedModel:
    """Loads the GGUF at ``path`` (any file name, e.g. a content-addressed blob) as a float32
    torch model and tokenizer, with no network access and nothing cached outside a temporary
    directory removed before returning. ``threads`` sets torch's intra-op threads."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = Path(path).resolve()
    if not source.is_file():
        raise ModelLoadError(f"model file {path} does not exist or is not a file")
    if threads is not None:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="outpost-gguf-") as tmp:
        # transformers wants a directory plus a file name; a link gives any blob a .gguf name.
        link = Path(tmp) / _LINK_NAME
        link.symlink_to(source)
        options: dict[str, Any] = {
            "gguf_file": _LINK_NAME,
            "local_files_only": True,
            "cache_dir": tmp,
        }
        try:
            with _offline():
                tokenizer: Any = AutoTokenizer.from_pretrained(tmp, **options)
                model: Any = AutoModelForCausalLM.from_pretrained(
                    tmp, dtype=torch.float32, **options
                )
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelLoadError(f"cannot load {path} into torch: {exc}") from exc
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model=model, tokenizer=tokenizer)
