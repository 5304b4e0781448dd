"""Agents, models and job bodies for the federated-job tests (no model is loaded)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from common.control import Hardware, Hello
from controlplane.db.models import RegisteredModel
from controlplane.model_assignments import ServingParameters
from controlplane.model_registry import RegisteredModelView
from controlplane.services import ControlPlaneServices
from tests.unit.test_controlplane_api import FakeCertificate
from tests.unit.test_model_assignments import GGUF, SIZE, MiB

CAN_TRAIN = ("llama.cpp", "gguf", "federated-training")


def add_model(
    services: ControlPlaneServices, name: str = "smollm2", version: str = "1", kind: str = ""
) -> RegisteredModelView:
    """A registry row as an import writes it (a LoRA adapter with `kind="adapter"`)."""
    sha256 = hashlib.sha256(f"{name}@{version}".encode()).hexdigest()
    gguf: dict[str, Any] = {**GGUF}
    if kind == "adapter":
        gguf |= {"file_type": "adapter", "adapter_type": "lora", "lora_alpha": 8.0}
    with services.db.session() as session:
        record = RegisteredModel(
            name=name,
            version=version,
            sha256=sha256,
            size_bytes=SIZE,
            chunk_size=4 * MiB,
            chunk_sha256=[sha256] * -(-SIZE // (4 * MiB)),
            gguf=gguf,
            created_at=datetime.now(UTC),
            created_by="test",
        )
        session.add(record)
        session.flush()
        return RegisteredModelView.of(record)


def add_agent(
    services: ControlPlaneServices,
    name: str,
    *,
    site: str = "",
    labels: Mapping[str, str] | None = None,
    capabilities: Sequence[str] = CAN_TRAIN,
    model: RegisteredModelView | None = None,
) -> str:
    """An enrolled agent whose Hello reported `capabilities`; `model` assigned to it."""
    token, _ = services.tokens.create(
        site=site, labels=dict(labels or {}), ttl=timedelta(hours=1), created_by="test"
    )
    agent_id = str(uuid.uuid4())
    with services.db.session() as session:
        grant = services.tokens.consume(session, token, agent_id=agent_id, now=datetime.now(UTC))
        services.fleet.enroll(
            session, agent_id=agent_id, name=name, grant=grant, certificate=FakeCertificate()
        )
    hello = Hello(agent_id, "1.0", Hardware(), capabilities=tuple(capabilities))
    services.fleet.record_hello(agent_id, hello)
    if model is not None:
        services.assignments.assign(
            model.ref,
            target_kind="agent",
            target=agent_id,
            parameters=ServingParameters(alias="smol", context_length=512),
            actor="test",
        )
    return agent_id


def job_body(agents: Sequence[str], **overrides: Any) -> dict[str, Any]:
    return {"model": "smollm2", "agents": list(agents), "dataset": "support", **overrides}
