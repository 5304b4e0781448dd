from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ItemState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ITEM_STATE_UNSPECIFIED: _ClassVar[ItemState]
    ITEM_STATE_PENDING: _ClassVar[ItemState]
    ITEM_STATE_LOADING: _ClassVar[ItemState]
    ITEM_STATE_READY: _ClassVar[ItemState]
    ITEM_STATE_FAILED: _ClassVar[ItemState]
    ITEM_STATE_DOWNLOADING: _ClassVar[ItemState]
    ITEM_STATE_VERIFYING: _ClassVar[ItemState]
ITEM_STATE_UNSPECIFIED: ItemState
ITEM_STATE_PENDING: ItemState
ITEM_STATE_LOADING: ItemState
ITEM_STATE_READY: ItemState
ITEM_STATE_FAILED: ItemState
ITEM_STATE_DOWNLOADING: ItemState
ITEM_STATE_VERIFYING: ItemState

class FindPeersRequest(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    def __init__(self, sha256: _Optional[str] = ...) -> None: ...

class FindPeersResponse(_message.Message):
    __slots__ = ("addresses",)
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    addresses: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, addresses: _Optional[_Iterable[str]] = ...) -> None: ...

class FindSiteAgentRequest(_message.Message):
    __slots__ = ("agent",)
    AGENT_FIELD_NUMBER: _ClassVar[int]
    agent: str
    def __init__(self, agent: _Optional[str] = ...) -> None: ...

class FindSiteAgentResponse(_message.Message):
    __slots__ = ("agent_id", "inference_address")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    inference_address: str
    def __init__(self, agent_id: _Optional[str] = ..., inference_address: _Optional[str] = ...) -> None: ...

class ManifestRequest(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    def __init__(self, sha256: _Optional[str] = ...) -> None: ...

class ArtifactManifest(_message.Message):
    __slots__ = ("sha256", "size_bytes", "chunk_size", "chunk_sha256")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size_bytes: int
    chunk_size: int
    chunk_sha256: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., chunk_size: _Optional[int] = ..., chunk_sha256: _Optional[_Iterable[str]] = ...) -> None: ...

class FetchRequest(_message.Message):
    __slots__ = ("sha256", "offset", "length")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    offset: int
    length: int
    def __init__(self, sha256: _Optional[str] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class ArtifactChunk(_message.Message):
    __slots__ = ("offset", "data")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class EnrollRequest(_message.Message):
    __slots__ = ("join_token", "csr_pem", "name")
    JOIN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    join_token: str
    csr_pem: bytes
    name: str
    def __init__(self, join_token: _Optional[str] = ..., csr_pem: _Optional[bytes] = ..., name: _Optional[str] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("agent_id", "certificate_pem", "ca_certificate_pem", "mtls_port", "bundle_public_key_pem")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    MTLS_PORT_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_PUBLIC_KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    certificate_pem: bytes
    ca_certificate_pem: bytes
    mtls_port: int
    bundle_public_key_pem: bytes
    def __init__(self, agent_id: _Optional[str] = ..., certificate_pem: _Optional[bytes] = ..., ca_certificate_pem: _Optional[bytes] = ..., mtls_port: _Optional[int] = ..., bundle_public_key_pem: _Optional[bytes] = ...) -> None: ...

class DiscoverRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DiscoverResponse(_message.Message):
    __slots__ = ("mtls_port",)
    MTLS_PORT_FIELD_NUMBER: _ClassVar[int]
    mtls_port: int
    def __init__(self, mtls_port: _Optional[int] = ...) -> None: ...

class RenewRequest(_message.Message):
    __slots__ = ("csr_pem",)
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    csr_pem: bytes
    def __init__(self, csr_pem: _Optional[bytes] = ...) -> None: ...

class RenewResponse(_message.Message):
    __slots__ = ("certificate_pem",)
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    certificate_pem: bytes
    def __init__(self, certificate_pem: _Optional[bytes] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("hello", "status", "telemetry", "usage", "alert_events")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    ALERT_EVENTS_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    status: Status
    telemetry: TelemetryBatch
    usage: UsageBatch
    alert_events: AlertEventBatch
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., status: _Optional[_Union[Status, _Mapping]] = ..., telemetry: _Optional[_Union[TelemetryBatch, _Mapping]] = ..., usage: _Optional[_Union[UsageBatch, _Mapping]] = ..., alert_events: _Optional[_Union[AlertEventBatch, _Mapping]] = ...) -> None: ...

class ControlMessage(_message.Message):
    __slots__ = ("desired_state", "telemetry_ack", "usage_ack", "alert_event_ack")
    DESIRED_STATE_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_ACK_FIELD_NUMBER: _ClassVar[int]
    USAGE_ACK_FIELD_NUMBER: _ClassVar[int]
    ALERT_EVENT_ACK_FIELD_NUMBER: _ClassVar[int]
    desired_state: DesiredState
    telemetry_ack: TelemetryAck
    usage_ack: UsageAck
    alert_event_ack: AlertEventAck
    def __init__(self, desired_state: _Optional[_Union[DesiredState, _Mapping]] = ..., telemetry_ack: _Optional[_Union[TelemetryAck, _Mapping]] = ..., usage_ack: _Optional[_Union[UsageAck, _Mapping]] = ..., alert_event_ack: _Optional[_Union[AlertEventAck, _Mapping]] = ...) -> None: ...

class MetricValue(_message.Message):
    __slots__ = ("name", "value", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    labels: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class TelemetrySample(_message.Message):
    __slots__ = ("seq", "collected_at_ms", "metrics", "notes")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    COLLECTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    seq: int
    collected_at_ms: int
    metrics: _containers.RepeatedCompositeFieldContainer[MetricValue]
    notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, seq: _Optional[int] = ..., collected_at_ms: _Optional[int] = ..., metrics: _Optional[_Iterable[_Union[MetricValue, _Mapping]]] = ..., notes: _Optional[_Iterable[str]] = ...) -> None: ...

class TelemetryBatch(_message.Message):
    __slots__ = ("samples", "dropped")
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    samples: _containers.RepeatedCompositeFieldContainer[TelemetrySample]
    dropped: int
    def __init__(self, samples: _Optional[_Iterable[_Union[TelemetrySample, _Mapping]]] = ..., dropped: _Optional[int] = ...) -> None: ...

class TelemetryAck(_message.Message):
    __slots__ = ("acked_seq",)
    ACKED_SEQ_FIELD_NUMBER: _ClassVar[int]
    acked_seq: int
    def __init__(self, acked_seq: _Optional[int] = ...) -> None: ...

class UsageAttempt(_message.Message):
    __slots__ = ("target", "outcome", "reason", "latency_ms")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    target: str
    outcome: str
    reason: str
    latency_ms: float
    def __init__(self, target: _Optional[str] = ..., outcome: _Optional[str] = ..., reason: _Optional[str] = ..., latency_ms: _Optional[float] = ...) -> None: ...

class UsageRecord(_message.Message):
    __slots__ = ("seq", "at_us", "request_id", "key_id", "team", "role", "level", "route", "target", "outcome", "reason", "detectors", "attempts", "prompt_tokens", "completion_tokens", "latency_ms", "cost_nanos", "policy_digest", "prompt", "forwarded")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    AT_US_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    TEAM_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETECTORS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    COST_NANOS_FIELD_NUMBER: _ClassVar[int]
    POLICY_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    FORWARDED_FIELD_NUMBER: _ClassVar[int]
    seq: int
    at_us: int
    request_id: str
    key_id: str
    team: str
    role: str
    level: str
    route: str
    target: str
    outcome: str
    reason: str
    detectors: _containers.RepeatedScalarFieldContainer[str]
    attempts: _containers.RepeatedCompositeFieldContainer[UsageAttempt]
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    cost_nanos: int
    policy_digest: str
    prompt: str
    forwarded: bool
    def __init__(self, seq: _Optional[int] = ..., at_us: _Optional[int] = ..., request_id: _Optional[str] = ..., key_id: _Optional[str] = ..., team: _Optional[str] = ..., role: _Optional[str] = ..., level: _Optional[str] = ..., route: _Optional[str] = ..., target: _Optional[str] = ..., outcome: _Optional[str] = ..., reason: _Optional[str] = ..., detectors: _Optional[_Iterable[str]] = ..., attempts: _Optional[_Iterable[_Union[UsageAttempt, _Mapping]]] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., latency_ms: _Optional[float] = ..., cost_nanos: _Optional[int] = ..., policy_digest: _Optional[str] = ..., prompt: _Optional[str] = ..., forwarded: bool = ...) -> None: ...

class UsageBatch(_message.Message):
    __slots__ = ("records", "dropped")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[UsageRecord]
    dropped: int
    def __init__(self, records: _Optional[_Iterable[_Union[UsageRecord, _Mapping]]] = ..., dropped: _Optional[int] = ...) -> None: ...

class UsageAck(_message.Message):
    __slots__ = ("acked_seq",)
    ACKED_SEQ_FIELD_NUMBER: _ClassVar[int]
    acked_seq: int
    def __init__(self, acked_seq: _Optional[int] = ...) -> None: ...

class AlertEventRecord(_message.Message):
    __slots__ = ("seq", "at_us", "rule", "metric", "scope", "key", "state", "value", "threshold", "op", "action", "reason")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    AT_US_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    seq: int
    at_us: int
    rule: str
    metric: str
    scope: str
    key: str
    state: str
    value: float
    threshold: float
    op: str
    action: str
    reason: str
    def __init__(self, seq: _Optional[int] = ..., at_us: _Optional[int] = ..., rule: _Optional[str] = ..., metric: _Optional[str] = ..., scope: _Optional[str] = ..., key: _Optional[str] = ..., state: _Optional[str] = ..., value: _Optional[float] = ..., threshold: _Optional[float] = ..., op: _Optional[str] = ..., action: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class AlertEventBatch(_message.Message):
    __slots__ = ("events", "dropped")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AlertEventRecord]
    dropped: int
    def __init__(self, events: _Optional[_Iterable[_Union[AlertEventRecord, _Mapping]]] = ..., dropped: _Optional[int] = ...) -> None: ...

class AlertEventAck(_message.Message):
    __slots__ = ("acked_seq",)
    ACKED_SEQ_FIELD_NUMBER: _ClassVar[int]
    acked_seq: int
    def __init__(self, acked_seq: _Optional[int] = ...) -> None: ...

class Hardware(_message.Message):
    __slots__ = ("hostname", "os", "cpu_model", "cpu_cores", "memory_bytes")
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    CPU_MODEL_FIELD_NUMBER: _ClassVar[int]
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    os: str
    cpu_model: str
    cpu_cores: int
    memory_bytes: int
    def __init__(self, hostname: _Optional[str] = ..., os: _Optional[str] = ..., cpu_model: _Optional[str] = ..., cpu_cores: _Optional[int] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class LocalModel(_message.Message):
    __slots__ = ("path", "size_bytes")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    path: str
    size_bytes: int
    def __init__(self, path: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("agent_id", "version", "hardware", "capabilities", "models", "observed_generation", "peer_address", "inference_address")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HARDWARE_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_GENERATION_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    version: str
    hardware: Hardware
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    models: _containers.RepeatedCompositeFieldContainer[LocalModel]
    observed_generation: int
    peer_address: str
    inference_address: str
    def __init__(self, agent_id: _Optional[str] = ..., version: _Optional[str] = ..., hardware: _Optional[_Union[Hardware, _Mapping]] = ..., capabilities: _Optional[_Iterable[str]] = ..., models: _Optional[_Iterable[_Union[LocalModel, _Mapping]]] = ..., observed_generation: _Optional[int] = ..., peer_address: _Optional[str] = ..., inference_address: _Optional[str] = ...) -> None: ...

class ModelAssignment(_message.Message):
    __slots__ = ("alias", "path", "context_length", "gpu_layers", "queue_depth", "sha256", "size_bytes", "model_name", "model_version", "threads", "adapters")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    GPU_LAYERS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    alias: str
    path: str
    context_length: int
    gpu_layers: int
    queue_depth: int
    sha256: str
    size_bytes: int
    model_name: str
    model_version: str
    threads: int
    adapters: _containers.RepeatedCompositeFieldContainer[AdapterAssignment]
    def __init__(self, alias: _Optional[str] = ..., path: _Optional[str] = ..., context_length: _Optional[int] = ..., gpu_layers: _Optional[int] = ..., queue_depth: _Optional[int] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., threads: _Optional[int] = ..., adapters: _Optional[_Iterable[_Union[AdapterAssignment, _Mapping]]] = ...) -> None: ...

class AdapterAssignment(_message.Message):
    __slots__ = ("name", "sha256", "size_bytes", "registry_name", "registry_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_NAME_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    sha256: str
    size_bytes: int
    registry_name: str
    registry_version: str
    def __init__(self, name: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., registry_name: _Optional[str] = ..., registry_version: _Optional[str] = ...) -> None: ...

class DesiredState(_message.Message):
    __slots__ = ("generation", "models", "labels", "policy", "inference_keys", "federated_tasks")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_KEYS_FIELD_NUMBER: _ClassVar[int]
    FEDERATED_TASKS_FIELD_NUMBER: _ClassVar[int]
    generation: int
    models: _containers.RepeatedCompositeFieldContainer[ModelAssignment]
    labels: _containers.ScalarMap[str, str]
    policy: PolicyDocument
    inference_keys: InferenceKeySet
    federated_tasks: _containers.RepeatedCompositeFieldContainer[FederatedTask]
    def __init__(self, generation: _Optional[int] = ..., models: _Optional[_Iterable[_Union[ModelAssignment, _Mapping]]] = ..., labels: _Optional[_Mapping[str, str]] = ..., policy: _Optional[_Union[PolicyDocument, _Mapping]] = ..., inference_keys: _Optional[_Union[InferenceKeySet, _Mapping]] = ..., federated_tasks: _Optional[_Iterable[_Union[FederatedTask, _Mapping]]] = ...) -> None: ...

class FederatedTask(_message.Message):
    __slots__ = ("job_id", "dataset", "base_sha256", "fleet_port", "threads", "nice")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    BASE_SHA256_FIELD_NUMBER: _ClassVar[int]
    FLEET_PORT_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    NICE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    dataset: str
    base_sha256: str
    fleet_port: int
    threads: int
    nice: int
    def __init__(self, job_id: _Optional[str] = ..., dataset: _Optional[str] = ..., base_sha256: _Optional[str] = ..., fleet_port: _Optional[int] = ..., threads: _Optional[int] = ..., nice: _Optional[int] = ...) -> None: ...

class InferenceKeySet(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[InferenceKeyGrant]
    def __init__(self, keys: _Optional[_Iterable[_Union[InferenceKeyGrant, _Mapping]]] = ...) -> None: ...

class InferenceKeyGrant(_message.Message):
    __slots__ = ("key_id", "key_hash", "role", "team")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_HASH_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TEAM_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    key_hash: str
    role: str
    team: str
    def __init__(self, key_id: _Optional[str] = ..., key_hash: _Optional[str] = ..., role: _Optional[str] = ..., team: _Optional[str] = ...) -> None: ...

class PolicyDocument(_message.Message):
    __slots__ = ("version", "digest", "document")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    version: int
    digest: str
    document: str
    def __init__(self, version: _Optional[int] = ..., digest: _Optional[str] = ..., document: _Optional[str] = ...) -> None: ...

class ItemStatus(_message.Message):
    __slots__ = ("kind", "name", "state", "error", "sha256", "bytes_done", "bytes_total", "rate_bytes_per_s", "serving_sha256")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    RATE_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    SERVING_SHA256_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    state: ItemState
    error: str
    sha256: str
    bytes_done: int
    bytes_total: int
    rate_bytes_per_s: float
    serving_sha256: str
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[_Union[ItemState, str]] = ..., error: _Optional[str] = ..., sha256: _Optional[str] = ..., bytes_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., rate_bytes_per_s: _Optional[float] = ..., serving_sha256: _Optional[str] = ...) -> None: ...

class Status(_message.Message):
    __slots__ = ("observed_generation", "items")
    OBSERVED_GENERATION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    observed_generation: int
    items: _containers.RepeatedCompositeFieldContainer[ItemStatus]
    def __init__(self, observed_generation: _Optional[int] = ..., items: _Optional[_Iterable[_Union[ItemStatus, _Mapping]]] = ...) -> None: ...
