"""How a desired state is stored: the JSON spec of one generation, and the state it gives."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from types import MappingProxyType
from typing import Any

from sqlmodel import Session, col, select

from common.control import (
    AdapterAssignment,
    DesiredState,
    FederatedTask,
    InferenceKeyGrant,
    ModelAssignment,
    PolicyDocument,
)
from controlplane.db.models import RoutingPolicyRecord


def spec_of(
    models: Sequence[ModelAssignment],
    labels: Mapping[str, str],
    policy: PolicyDocument | None,
    keys_revision: int = 0,
    federated_tasks: Sequence[FederatedTask] = (),
) -> dict[str, Any]:
    # The policy by version only: its document is stored once, in routing_policies; the
    # inference keys by revision only: they are stored once, in inference_keys.
    return {
        "models": [asdict(m) for m in models],
        "labels": dict(labels),
        "policy_version": policy.version if policy is not None else 0,
        "inference_keys_revision": keys_revision,
        "federated_tasks": [asdict(t) for t in federated_tasks],
    }


def state_of(
    generation: int,
    spec: Mapping[str, Any],
    policy: PolicyDocument | None,
    keys: tuple[InferenceKeyGrant, ...] | None,
) -> DesiredState:
    models = tuple(_model(m) for m in spec.get("models", ()))
    labels = MappingProxyType(dict(spec.get("labels", {})))
    return DesiredState(
        generation=generation,
        models=models,
        labels=labels,
        policy=policy,
        inference_keys=keys,
        federated_tasks=federated_tasks_of(spec),
    )


def federated_tasks_of(spec: Mapping[str, Any]) -> tuple[FederatedTask, ...]:
    """The federated tasks a stored spec names (none in specs written before they existed)."""
    return tuple(FederatedTask(**t) for t in spec.get("federated_tasks", ()))


def policy_document(record: RoutingPolicyRecord | None) -> PolicyDocument | None:
    if record is None:
        return None
    return PolicyDocument(record.version, record.digest, record.document)


def live_policy(session: Session) -> PolicyDocument | None:
    """The newest applied routing policy, None before the first one."""
    record = session.exec(
        select(RoutingPolicyRecord).order_by(col(RoutingPolicyRecord.version).desc()).limit(1)
    ).first()
    return policy_document(record)


def _model(stored: Mapping[str, Any]) -> ModelAssignment:
    adapters = tuple(AdapterAssignment(**a) for a in stored.get("adapters", ()))
    return ModelAssignment(**{**stored, "adapters": adapters})
