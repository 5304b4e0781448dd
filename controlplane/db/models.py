"""SQLModel tables of the control plane; every datetime is timezone-aware UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Index,
    Integer,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

# Stable constraint names on every database, so later migrations can name what they change.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

NAME_CHARS = 255  # free-text names (agents, actors, targets)
ID_CHARS = 63  # identifiers: sites, label keys and values, user names


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in, timezone-aware UTC out, on SQLite too (which stores naive text).

    Naive datetimes are refused: a wall-clock time without a zone is a bug waiting to happen.
    """

    impl = DateTime
    cache_ok = True

    def __init__(self) -> None:
        super().__init__(timezone=True)

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ValueError(f"expected a timezone-aware datetime, got {value!r}")
        value = value.astimezone(UTC)
        # SQLite compares the stored text: store every value as naive UTC in one format.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class AgentState(StrEnum):
    ENROLLED = "enrolled"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    REVOKED = "revoked"


class Outcome(StrEnum):
    OK = "ok"
    DENIED = "denied"
    ERROR = "error"


def _in(column: str, values: type[StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class Agent(SQLModel, table=True):
    __tablename__ = "agents"
    __table_args__ = (CheckConstraint(_in("state", AgentState), name="state"),)

    id: str = Field(primary_key=True, max_length=36)  # UUID, lowercase canonical form
    name: str = Field(max_length=NAME_CHARS)
    site: str = Field(default="", max_length=ID_CHARS, index=True)
    labels: dict[str, str] = Field(default_factory=dict, sa_type=JSON)
    state: str = Field(default=AgentState.ENROLLED.value, max_length=16)
    version: str = Field(default="", max_length=NAME_CHARS)
    hardware: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    observed_generation: int = 0
    desired_generation: int = 0
    # [{"kind", "name", "state", "error", "sha256", "bytes_done", "bytes_total",
    #   "rate_bytes_per_s", "serving_sha256"}], as the agent last reported them
    status_items: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON)
    # HOST:PORT where the agent serves verified artifacts to its site's peers ("": it does not)
    peer_address: str = Field(default="", max_length=NAME_CHARS)
    inference_address: str = Field(default="", max_length=NAME_CHARS)
    # What its last Hello said it can do, e.g. "federated-training" or
    # "no-federated-training: <reason>" (at most 64 strings of at most 200 characters)
    capabilities: list[str] = Field(default_factory=list, sa_type=JSON)
    enrolled_at: datetime = Field(sa_type=UtcDateTime)
    last_seen_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class JoinToken(SQLModel, table=True):
    __tablename__ = "join_tokens"

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(max_length=64, unique=True, index=True)  # sha256, lowercase hex
    site: str = Field(default="", max_length=ID_CHARS)
    labels: dict[str, str] = Field(default_factory=dict, sa_type=JSON)
    created_by: str = Field(max_length=NAME_CHARS)
    created_at: datetime = Field(sa_type=UtcDateTime)
    expires_at: datetime = Field(sa_type=UtcDateTime)
    used_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    used_by_agent_id: str | None = Field(default=None, max_length=36)


class Certificate(SQLModel, table=True):
    __tablename__ = "certificates"

    serial: str = Field(primary_key=True, max_length=64)  # lowercase hex
    agent_id: str = Field(foreign_key="agents.id", index=True, max_length=36)
    not_before: datetime = Field(sa_type=UtcDateTime)
    not_after: datetime = Field(sa_type=UtcDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    pem: str = Field(sa_type=Text)


class DesiredStateRecord(SQLModel, table=True):
    """One generation of one agent's desired state; the highest generation is current."""

    __tablename__ = "desired_states"

    agent_id: str = Field(primary_key=True, foreign_key="agents.id", max_length=36)
    generation: int = Field(primary_key=True)
    # {"models": [{"alias", "path", "context_length", "gpu_layers", "queue_depth"}],
    #  "labels": {key: value}}
    spec: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    created_at: datetime = Field(sa_type=UtcDateTime)
    created_by: str = Field(max_length=NAME_CHARS)


class AuditEvent(SQLModel, table=True):
    __tablename__ = "audit_events"
    __table_args__ = (CheckConstraint(_in("outcome", Outcome), name="outcome"),)

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(sa_type=UtcDateTime, index=True)
    actor: str = Field(max_length=NAME_CHARS)
    action: str = Field(max_length=64)
    target: str = Field(max_length=NAME_CHARS)
    outcome: str = Field(default=Outcome.OK.value, max_length=16)
    detail: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=ID_CHARS, unique=True)
    role: str = Field(max_length=16)
    created_at: datetime = Field(sa_type=UtcDateTime)
    # scrypt$N$r$p$salt$hash (controlplane/passwords.py); None: no console login
    password_hash: str | None = Field(default=None, max_length=255)
    disabled_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class ConsoleSession(SQLModel, table=True):
    """A console login; the cookie holds a random id, only its sha256 is stored."""

    __tablename__ = "console_sessions"

    id_hash: str = Field(primary_key=True, max_length=64)  # sha256, lowercase hex
    user_id: int = Field(foreign_key="users.id", index=True)
    created_at: datetime = Field(sa_type=UtcDateTime)
    last_seen_at: datetime = Field(sa_type=UtcDateTime)
    expires_at: datetime = Field(sa_type=UtcDateTime)  # absolute: a login lasts no longer


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: int | None = Field(default=None, primary_key=True)
    key_hash: str = Field(max_length=64, unique=True, index=True)  # sha256, lowercase hex
    prefix: str = Field(max_length=8)  # the key's first 8 characters, to recognise it by
    user_id: int = Field(foreign_key="users.id", index=True)
    role: str = Field(max_length=16)
    created_at: datetime = Field(sa_type=UtcDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    last_used_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


# -- telemetry ----------------------------------------------------------------------------

METRIC_NAME_CHARS = 128
LABELS_KEY_CHARS = 512


class TelemetrySampleRecord(SQLModel, table=True):
    """One sample an agent sent, stored once per (agent, seq): the record replays dedupe on.

    Kept as long as its raw points (`raw_retention`); a replay of an older sample is refused
    as too old, so deleting the record cannot let it in twice.
    """

    __tablename__ = "telemetry_samples"
    __table_args__ = (
        # The agent's samples by time (latest sample); also serves the foreign key.
        Index("ix_telemetry_samples_agent_id_collected_at", "agent_id", "collected_at"),
    )

    agent_id: str = Field(primary_key=True, foreign_key="agents.id", max_length=36)
    seq: int = Field(
        primary_key=True, sa_type=BigInteger, sa_column_kwargs={"autoincrement": False}
    )
    collected_at: datetime = Field(sa_type=UtcDateTime, index=True)  # index: retention
    received_at: datetime = Field(sa_type=UtcDateTime)
    notes: list[str] = Field(default_factory=list, sa_type=JSON)


class MetricPoint(SQLModel, table=True):
    """One raw reading of one sample; rolled up into `MetricRollup` after `raw_retention`."""

    __tablename__ = "metric_points"
    __table_args__ = (Index("ix_metric_points_agent_id_name_ts", "agent_id", "name", "ts"),)

    # 64-bit on PostgreSQL; SQLite autoincrements only a column typed exactly INTEGER.
    id: int | None = Field(
        default=None, primary_key=True, sa_type=BigInteger().with_variant(Integer(), "sqlite")
    )
    agent_id: str = Field(max_length=36)
    seq: int = Field(sa_type=BigInteger)  # the sample it came in
    name: str = Field(max_length=METRIC_NAME_CHARS)
    labels: dict[str, str] = Field(default_factory=dict, sa_type=JSON)
    labels_key: str = Field(max_length=LABELS_KEY_CHARS)  # canonical form of labels
    ts: datetime = Field(sa_type=UtcDateTime, index=True)  # index: retention
    value: float


class MetricRollup(SQLModel, table=True):
    """Count, sum, minimum and maximum of one series over one minute (UTC), from raw points."""

    __tablename__ = "metric_rollups"

    agent_id: str = Field(primary_key=True, max_length=36)
    name: str = Field(primary_key=True, max_length=METRIC_NAME_CHARS)
    labels_key: str = Field(primary_key=True, max_length=LABELS_KEY_CHARS)
    minute: datetime = Field(primary_key=True, sa_type=UtcDateTime, index=True)  # index: retention
    labels: dict[str, str] = Field(default_factory=dict, sa_type=JSON)
    count: int = Field(sa_type=BigInteger)
    total: float
    minimum: float
    maximum: float


class TelemetryCounters(SQLModel, table=True):
    """Per agent, what ingestion did with its telemetry since it enrolled."""

    __tablename__ = "telemetry_counters"

    agent_id: str = Field(primary_key=True, foreign_key="agents.id", max_length=36)
    received: int = Field(default=0, sa_type=BigInteger)  # samples in its batches
    stored: int = Field(default=0, sa_type=BigInteger)  # samples stored
    duplicates: int = Field(default=0, sa_type=BigInteger)  # samples already stored
    rejected: int = Field(default=0, sa_type=BigInteger)  # samples, metrics turned away for good
    dropped_by_agent: int = Field(default=0, sa_type=BigInteger)  # lost in the agent's buffer
    last_sample_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


# -- model registry -----------------------------------------------------------------------


class RegisteredModel(SQLModel, table=True):
    """One version of one model, stored once by content (sha256) in the control plane's store."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_models_name_version"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=ID_CHARS)
    version: str = Field(max_length=ID_CHARS)
    sha256: str = Field(max_length=64, index=True)  # lowercase hex
    size_bytes: int = Field(sa_type=BigInteger)
    chunk_size: int
    chunk_sha256: list[str] = Field(default_factory=list, sa_type=JSON)
    # What the GGUF header says: architecture, parameters, quantization, context_length,
    # chat_template, license, block_count, head_count, head_count_kv, embedding_length, ...
    gguf: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    created_at: datetime = Field(sa_type=UtcDateTime)
    created_by: str = Field(max_length=NAME_CHARS)


class ModelAssignmentRecord(SQLModel, table=True):
    """A registered model served under `alias` by an agent, every agent of a site, or every
    agent whose labels match a selector."""

    __tablename__ = "model_assignments"
    __table_args__ = (
        UniqueConstraint(
            "target_kind", "target", "alias", name="uq_model_assignments_target_kind_target_alias"
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="models.id", index=True)
    target_kind: str = Field(max_length=16)  # "agent", "site" or "selector"
    # an agent id, a site name, or a selector in canonical form "k=v,k2=v2" (sorted keys)
    target: str = Field(max_length=NAME_CHARS)
    alias: str = Field(max_length=ID_CHARS)
    context_length: int
    gpu_layers: int
    threads: int
    queue_depth: int
    created_at: datetime = Field(sa_type=UtcDateTime)
    created_by: str = Field(max_length=NAME_CHARS)
    # LoRA adapters served with the model: the name requests use ("alias:name") -> the id of a
    # registered adapter. No foreign key: deleting one checks these (model_registry.delete).
    adapters: dict[str, int] = Field(default_factory=dict, sa_type=JSON)


# -- routing policy -----------------------------------------------------------------------


class RoutingPolicyRecord(SQLModel, table=True):
    """One applied version of the routing policy; the highest version is the live one."""

    __tablename__ = "routing_policies"

    version: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    digest: str = Field(max_length=64, index=True)  # sha256 of the canonical form, lowercase hex
    document: str = Field(sa_type=Text)  # the YAML or JSON text as it was applied
    created_at: datetime = Field(sa_type=UtcDateTime)
    created_by: str = Field(max_length=NAME_CHARS)


# -- inference keys -----------------------------------------------------------------------


class InferenceKeyRecord(SQLModel, table=True):
    """A key callers of the OpenAI endpoints present: a routing role and a team, pushed to every
    agent by hash. Revoked keys stay (revoked_at set) so the audit trail can name them."""

    __tablename__ = "inference_keys"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=ID_CHARS)
    prefix: str = Field(max_length=8)  # the key's first 8 characters, to recognise it by
    key_hash: str = Field(max_length=64, unique=True, index=True)  # sha256, lowercase hex
    routing_role: str = Field(max_length=ID_CHARS)
    team: str = Field(max_length=ID_CHARS)
    created_at: datetime = Field(sa_type=UtcDateTime)
    created_by: str = Field(max_length=NAME_CHARS)
    revoked_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


# -- usage ledger -------------------------------------------------------------------------

USAGE_SOURCE_CHARS = 36  # an agent id (UUID) or "gateway"
REQUEST_ID_CHARS = 128
REASON_CHARS = 500  # common.policy.ledger_record.MAX_REASON_CHARS


class UsageRecordRow(SQLModel, table=True):
    """One routed request (answered, refused or failed) as the usage ledger keeps it: agents'
    rows stored once per (source, seq); the gateway's own rows have no seq."""

    __tablename__ = "usage_records"
    __table_args__ = (
        UniqueConstraint("source", "seq", name="uq_usage_records_source_seq"),
        CheckConstraint("outcome IN ('ok', 'refused', 'failed')", name="outcome"),
        Index("ix_usage_records_team_at", "team", "at"),
    )

    # 64-bit on PostgreSQL; SQLite autoincrements only a column typed exactly INTEGER.
    id: int | None = Field(
        default=None, primary_key=True, sa_type=BigInteger().with_variant(Integer(), "sqlite")
    )
    source: str = Field(max_length=USAGE_SOURCE_CHARS)
    seq: int | None = Field(default=None, sa_type=BigInteger)
    at: datetime = Field(sa_type=UtcDateTime, index=True)
    day: str = Field(max_length=10)  # at's UTC date, YYYY-MM-DD: the report's day buckets
    received_at: datetime = Field(sa_type=UtcDateTime)
    request_id: str = Field(max_length=REQUEST_ID_CHARS)
    key_id: str = Field(max_length=ID_CHARS)
    team: str = Field(max_length=ID_CHARS)
    role: str = Field(max_length=ID_CHARS)
    level: str = Field(max_length=ID_CHARS)
    route: str | None = Field(default=None, max_length=ID_CHARS)
    target: str | None = Field(default=None, max_length=ID_CHARS)
    outcome: str = Field(max_length=16)
    reason: str = Field(max_length=REASON_CHARS)
    detectors: list[str] = Field(default_factory=list, sa_type=JSON)
    # [{"target", "outcome", "reason", "latency_ms"}], in the order they were tried
    attempts: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON)
    prompt_tokens: int = Field(sa_type=BigInteger)
    completion_tokens: int = Field(sa_type=BigInteger)
    latency_ms: float
    cost_nanos: int = Field(sa_type=BigInteger)  # nano-units of the prices' currency
    policy_digest: str = Field(max_length=64)
    prompt: str | None = Field(default=None, sa_type=Text)
    # Answered by forwarding to another agent, whose own row counts the request in reports.
    forwarded: bool = False


ALERT_STATES = ("firing", "cleared")


class AlertEventRow(SQLModel, table=True):
    """An alert rule that started or stopped firing for one scope key, at an agent (stored once
    per (source, seq)) or at the gateway (no seq)."""

    __tablename__ = "alert_events"
    __table_args__ = (
        UniqueConstraint("source", "seq", name="uq_alert_events_source_seq"),
        CheckConstraint("state IN ('firing', 'cleared')", name="state"),
        Index("ix_alert_events_source_rule_scope_key", "source", "rule", "scope_key"),
    )

    id: int | None = Field(
        default=None, primary_key=True, sa_type=BigInteger().with_variant(Integer(), "sqlite")
    )
    source: str = Field(max_length=USAGE_SOURCE_CHARS)  # an agent id or "gateway"
    seq: int | None = Field(default=None, sa_type=BigInteger)
    at: datetime = Field(sa_type=UtcDateTime, index=True)
    received_at: datetime = Field(sa_type=UtcDateTime)
    rule: str = Field(max_length=ID_CHARS)
    metric: str = Field(max_length=32)
    scope: str = Field(max_length=16)
    scope_key: str = Field(max_length=ID_CHARS)  # the target, team or key; "*" for scope all
    state: str = Field(max_length=16)
    value: float
    threshold: float
    op: str = Field(max_length=4)
    action: str = Field(max_length=32)
    reason: str = Field(max_length=REASON_CHARS)


# -- federated fine-tuning ----------------------------------------------------------------


class FederatedJobState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    EVALUATING = "evaluating"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FL_REASON_CHARS = 1000


class FederatedJobRecord(SQLModel, table=True):
    """A federated LoRA fine-tuning job: its validated spec, planned participants and state."""

    __tablename__ = "fl_jobs"
    __table_args__ = (CheckConstraint(_in("state", FederatedJobState), name="state"),)

    id: str = Field(primary_key=True, max_length=36)  # UUID4, lowercase canonical form
    # the base model as resolved when the job was created: {"id", "name", "version", "sha256"};
    # no foreign key (a finished job does not keep its base model registered)
    model_id: int = Field(index=True)
    model: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    spec: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)  # FederatedJobSpec.to_json()
    state: str = Field(default=FederatedJobState.PENDING.value, max_length=16, index=True)
    current_round: int = 0
    reason: str = Field(default="", max_length=FL_REASON_CHARS)
    adapter_model_id: int | None = None  # the registered adapter once the job succeeded
    flower_run_id: str | None = Field(default=None, max_length=32)  # decimal text (a uint64)
    # [{"agent_id", "name", "site", "dataset"}]
    participants: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON)
    # [{"agent_id", "name", "site", "reason"}]
    skipped: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON)
    metrics: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)  # when it succeeded
    created_by: str = Field(max_length=NAME_CHARS)
    created_at: datetime = Field(sa_type=UtcDateTime, index=True)
    started_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    updated_at: datetime = Field(sa_type=UtcDateTime)


class FederatedRoundRecord(SQLModel, table=True):
    """One phase ("train" or "evaluate") of one round of a federated job, as the runner saw it."""

    __tablename__ = "fl_rounds"
    __table_args__ = (CheckConstraint("phase IN ('train', 'evaluate')", name="phase"),)

    job_id: str = Field(primary_key=True, foreign_key="fl_jobs.id", max_length=36)
    round: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    phase: str = Field(primary_key=True, max_length=16)
    started_at: datetime = Field(sa_type=UtcDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    participants: list[str] = Field(default_factory=list, sa_type=JSON)  # agent ids
    dropped: dict[str, str] = Field(default_factory=dict, sa_type=JSON)  # agent id -> reason
    # agent id -> {"train_loss", "heldout_loss", "examples"} (a loss is null when unknown)
    sites: dict[str, dict[str, Any]] = Field(default_factory=dict, sa_type=JSON)
    bytes_down: int = Field(default=0, sa_type=BigInteger)
    bytes_up: int = Field(default=0, sa_type=BigInteger)
    wall_s: float = 0.0
    train_s: float = 0.0  # the longest local training of the round
    aggregate: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
