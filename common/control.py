"""Control-plane/agent domain types: desired state, hello, status; free of protobuf."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType


class ItemState(StrEnum):
    PENDING = "pending"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"


@dataclass(frozen=True)
class AdapterAssignment:
    """A LoRA adapter from the registry, served with a model; a request names it "alias:name"."""

    name: str
    sha256: str  # lowercase hex
    size_bytes: int = 0
    registry_name: str = ""
    registry_version: str = ""


@dataclass(frozen=True)
class ModelAssignment:
    """One model an agent should serve, addressed by alias: a registry model (`sha256` set;
    the agent fetches and verifies it, `path` is empty) or a file on the agent (`path`)."""

    alias: str
    path: str = ""
    context_length: int = 4096
    gpu_layers: int = 0
    queue_depth: int = 16
    sha256: str = ""  # lowercase hex
    size_bytes: int = 0
    model_name: str = ""
    model_version: str = ""
    threads: int = 0  # 0: one per CPU core
    adapters: tuple[AdapterAssignment, ...] = ()  # registry models only


MAX_FEDERATED_TASKS = 8  # federated jobs one agent takes part in at once


@dataclass(frozen=True)
class FederatedTask:
    """A federated fine-tuning job this agent takes part in: it runs a Flower SuperNode that
    trains on the local `dataset`, starting from the GGUF named by `base_sha256`."""

    job_id: str
    dataset: str  # a directory name under the agent's datasets directory
    base_sha256: str  # lowercase hex
    fleet_port: int  # the control plane's Fleet API relay (mutual TLS), on its host
    threads: int = 1  # CPU threads for training
    nice: int = 10  # the training processes' nice value (0-19)


@dataclass(frozen=True)
class PolicyDocument:
    """One applied version of the organisation's routing policy, as its author wrote it."""

    version: int  # 1, 2, ... in the order versions were applied
    digest: str  # sha256 (hex) of the policy's canonical form (`Policy.digest`)
    document: str  # the YAML or JSON text


@dataclass(frozen=True)
class InferenceKeyGrant:
    """One live inference key as agents know it: by its sha256, never the key itself."""

    key_id: str  # the control plane's id of the key (decimal)
    key_hash: str  # sha256 (lowercase hex) of the key
    role: str  # the routing policy's role
    team: str


@dataclass(frozen=True)
class DesiredState:
    """A complete, versioned snapshot of what one agent should run."""

    generation: int
    models: tuple[ModelAssignment, ...] = ()
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # The live routing policy; None: none has been applied (the agent keeps the one it has).
    policy: PolicyDocument | None = None
    # Every live inference key; None: the control plane sent no set (the agent keeps its own).
    inference_keys: tuple[InferenceKeyGrant, ...] | None = None
    # Federated fine-tuning jobs to take part in now (one SuperNode each).
    federated_tasks: tuple[FederatedTask, ...] = ()


@dataclass(frozen=True)
class Hardware:
    hostname: str = ""
    os: str = ""
    cpu_model: str = ""
    cpu_cores: int = 0
    memory_bytes: int = 0


@dataclass(frozen=True)
class LocalModel:
    path: str
    size_bytes: int


@dataclass(frozen=True)
class Hello:
    agent_id: str
    version: str
    hardware: Hardware
    capabilities: tuple[str, ...] = ()
    models: tuple[LocalModel, ...] = ()
    observed_generation: int = 0
    peer_address: str = ""  # HOST:PORT of its ArtifactService for peers; empty: none
    inference_address: str = ""  # HOST:PORT of its OpenAI HTTP port for forwarded requests


@dataclass(frozen=True)
class ItemStatus:
    kind: str
    name: str
    state: ItemState
    error: str = ""
    sha256: str = ""  # the artifact the item is about (registry models)
    bytes_done: int = 0  # downloading: verified bytes so far
    bytes_total: int = 0
    rate_bytes_per_s: float = 0.0
    serving_sha256: str = ""  # the version served meanwhile (rollout, rollback)


@dataclass(frozen=True)
class AgentStatus:
    observed_generation: int
    items: tuple[ItemStatus, ...] = ()


@dataclass(frozen=True)
class Enrollment:
    """What the control plane hands an agent that enrolled."""

    agent_id: str
    certificate_pem: bytes
    ca_certificate_pem: bytes
    mtls_port: int
    bundle_public_key_pem: bytes = b""
