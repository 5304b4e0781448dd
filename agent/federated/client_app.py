"""The Flower ClientApp a site runs: trains a LoRA adapter on the local dataset, starting from
the GGUF the agent serves, and sends back only the adapter tensors and counts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from common.federated.adapter_tensors import Adapter, as_float32
from common.federated.flower_messages import (
    ADAPTER_KEY,
    CONFIG_KEY,
    METRICS_KEY,
    NUM_EXAMPLES,
    SITE_KEY,
    RoundSettings,
)

app = ClientApp()


class SiteError(RuntimeError):
    """This site cannot do what the message asks; the reason reaches the control plane."""


def _node_text(context: Context, key: str) -> str:
    value = context.node_config.get(key)
    if not isinstance(value, str) or not value:
        raise SiteError(f"the SuperNode's node config lacks {key!r}")
    return value


def _check_job(message: Message, context: Context) -> RoundSettings:
    settings = RoundSettings.from_config(message.content.config_records.get(CONFIG_KEY))
    own = _node_text(context, "job-id")
    if settings.job_id != own:
        # One SuperLink serves every job: a node trains only for the job it was started for.
        raise SiteError(f"this node takes part in job {own}, not {settings.job_id}")
    return settings


def _model_path(context: Context) -> Path:
    path = Path(_node_text(context, "model-path"))
    try:
        present = path.is_file()
    except OSError as exc:  # e.g. a directory on the way the agent's user may not enter
        raise SiteError(f"the base model at this site cannot be read: {exc.strerror}") from None
    if not present:
        sha = _node_text(context, "base-sha256")
        raise SiteError(f"this site does not have the base model sha256:{sha} (not downloaded)")
    return path


def _dataset(context: Context) -> tuple[Any, Any]:
    """(train, held-out) examples of the site's dataset; SiteError when unusable."""
    from agent.training.datasets import DatasetError, load_dataset, split_examples

    folder = Path(_node_text(context, "dataset-dir"))
    try:
        split = split_examples(load_dataset(folder.parent, folder.name))
    except DatasetError as exc:
        raise SiteError(f"dataset {folder.name!r}: {exc}") from None
    except OSError as exc:  # e.g. a directory on the way the agent's user may not enter
        raise SiteError(f"dataset {folder.name!r} cannot be read: {exc.strerror}") from None
    if not split.heldout:
        raise SiteError(f"dataset {folder.name!r} has one example: nothing to hold out")
    return split.train, split.heldout


def _load_model(context: Context) -> Any:
    """The base as a torch model, converted from the GGUF once per site (torch-cache)."""
    from agent.training.gguf_model import load_gguf_model

    cache = context.node_config.get("torch-cache")
    cache_dir = Path(cache) if isinstance(cache, str) and cache else None
    return load_gguf_model(_model_path(context), threads=_threads(context), cache_dir=cache_dir)


def _converted(context: Context) -> bool:
    """The base is in this site's torch cache already (loading it would only cost time)."""
    from agent.training.gguf_model import is_converted

    cache = context.node_config.get("torch-cache")
    return isinstance(cache, str) and bool(cache) and is_converted(Path(cache))


def _threads(context: Context) -> int:
    value = context.node_config.get("threads", 1)
    return max(1, int(value)) if isinstance(value, int | float) else 1


def _adapter_in(message: Message) -> Adapter:
    record = message.content.array_records.get(ADAPTER_KEY)
    if record is None:
        raise SiteError("the message carries no adapter")
    return as_float32({key: array.numpy() for key, array in record.items()})


def _reply(message: Message, content: RecordDict) -> Message:
    return Message(content=content, reply_to=message)


def _job_asked(message: Message) -> str:
    record = message.content.config_records.get(CONFIG_KEY)
    return str(record.get("job-id", "")) if record is not None else ""


@app.query()
def describe(message: Message, context: Context) -> Message:
    """Which job and agent this node serves, and whether its data and model are usable; cheap
    (no model is loaded), so the ServerApp can pick its nodes among every connected one."""
    site = ConfigRecord(
        {"job-id": _node_text(context, "job-id"), "agent-id": _node_text(context, "agent-id")}
    )
    try:
        _model_path(context)
        train, heldout = _dataset(context)
        if site["job-id"] == _job_asked(message) and not _converted(context):
            _load_model(context)  # converts the base now, not in the first round's time
        site["ready"] = True
        site["reason"] = ""
        metrics = MetricRecord({"train-examples": len(train), "heldout-examples": len(heldout)})
    except SiteError as exc:
        site["ready"] = False
        site["reason"] = str(exc)[:500]
        metrics = MetricRecord({"train-examples": 0, "heldout-examples": 0})
    return _reply(message, RecordDict({SITE_KEY: site, METRICS_KEY: metrics}))


@app.train()
def train(message: Message, context: Context) -> Message:
    from agent.training.lora_training import TrainingConfig, train_adapter

    settings = _check_job(message, context)
    started = time.monotonic()
    examples, _ = _dataset(context)
    loaded = _load_model(context)
    load_s = time.monotonic() - started
    config = TrainingConfig(
        rank=settings.rank,
        alpha=settings.alpha,
        targets=settings.targets,
        learning_rate=settings.learning_rate,
        local_steps=settings.local_steps,
        batch_size=settings.batch_size,
        max_seq_len=settings.max_seq_len,
        seed=settings.seed + settings.server_round,
        threads=_threads(context),
        freeze_a=settings.freeze_a,
    )
    result = train_adapter(loaded.model, loaded.tokenizer, examples, _adapter_in(message), config)
    metrics = MetricRecord(
        {
            NUM_EXAMPLES: result.num_examples,
            "train-loss-first": float(result.metrics.get("train_loss_first", float("nan"))),
            "train-loss-last": float(result.metrics.get("train_loss_last", float("nan"))),
            "train-seconds": float(result.metrics.get("seconds", 0.0)),
            "load-seconds": load_s,
        }
    )
    arrays = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in result.tensors.items()})
    return _reply(message, RecordDict({ADAPTER_KEY: arrays, METRICS_KEY: metrics}))


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Held-out loss of the base model and of the base with the adapter, at this site."""
    from agent.training.lora_training import heldout_loss

    settings = _check_job(message, context)
    _, heldout = _dataset(context)
    loaded = _load_model(context)
    tensors = _adapter_in(message)
    base = heldout_loss(
        loaded.model, loaded.tokenizer, heldout, None, settings.max_seq_len, alpha=settings.alpha
    )
    tuned = heldout_loss(
        loaded.model, loaded.tokenizer, heldout, tensors, settings.max_seq_len, alpha=settings.alpha
    )
    metrics = MetricRecord(
        {NUM_EXAMPLES: len(heldout), "base-heldout-loss": base, "adapter-heldout-loss": tuned}
    )
    return _reply(message, RecordDict({METRICS_KEY: metrics}))
