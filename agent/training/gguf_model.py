"""The GGUF model an agent serves, dequantized into a float32 torch LlamaForCausalLM, offline."""

from __future__ import annotations

import os
import shutil
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


def load_gguf_model(
    path: Path, threads: int | None = None, *, cache_dir: Path | None = None
) -> LoadedModel:
    """Loads the GGUF at ``path`` (any file name, e.g. a content-addressed blob) as a float32
    torch model and tokenizer, with no network access. ``threads`` sets torch's intra-op
    threads.

    Dequantizing a GGUF takes tens of seconds (the demo model: ~20 s on two idle cores), and
    every Flower message starts a fresh process. With ``cache_dir`` (one directory per base
    model, e.g. named by its sha256) the first load also saves the converted model there as
    safetensors, and later loads read that instead (about a second)."""
    import torch

    source = Path(path).resolve()
    if not source.is_file():
        raise ModelLoadError(f"model file {path} does not exist or is not a file")
    if threads is not None:
        torch.set_num_threads(threads)
    if cache_dir is not None and is_converted(cache_dir):
        try:
            return _finish(*_load_converted(cache_dir))
        except (OSError, ValueError, KeyError, RuntimeError):
            pass  # a damaged cache: convert again below
    loaded = _load_gguf(source, path)
    if cache_dir is not None:
        _save_converted(loaded, cache_dir)
    return _finish(*loaded)


_COMPLETE = "converted.ok"  # written last: a directory without it is incomplete


def is_converted(cache_dir: Path) -> bool:
    """`cache_dir` holds a whole conversion (load_gguf_model reads it instead of the GGUF)."""
    return (cache_dir / _COMPLETE).is_file()


_WEIGHTS = "model.safetensors"


def _load_gguf(source: Path, shown: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
            raise ModelLoadError(f"cannot load {shown} into torch: {exc}") from exc
    return model, tokenizer


def _load_converted(directory: Path) -> tuple[Any, Any]:
    import torch
    from safetensors.torch import load_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    with _offline():
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        config = AutoConfig.from_pretrained(directory, local_files_only=True)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    load_model(model, str(directory / _WEIGHTS))
    return model, tokenizer


def _save_converted(loaded: tuple[Any, Any], directory: Path) -> None:
    """Saves into a sibling temporary directory, then renames it into place: a concurrent
    loader sees the whole conversion or none. A failure only costs the next load the time."""
    from safetensors.torch import save_model

    model, tokenizer = loaded
    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        # transformers refuses save_pretrained on a model it loaded from a GGUF: the weights
        # go through safetensors (which keeps tied tensors once), the config and tokenizer
        # through their own save_pretrained.
        save_model(model, str(staging / _WEIGHTS))
        model.config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / _COMPLETE).write_text("1\n", encoding="ascii")
        if directory.exists():
            shutil.rmtree(directory, ignore_errors=True)
        os.rename(staging, directory)
    except OSError:
        if "staging" in locals():
            shutil.rmtree(staging, ignore_errors=True)


def _finish(model: Any, tokenizer: Any) -> LoadedModel:
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model=model, tokenizer=tokenizer)
