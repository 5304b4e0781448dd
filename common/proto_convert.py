"""The one place protobuf messages become domain types and back; nothing else imports *_pb2."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import MappingProxyType

from common.alert_batch import AlertEventBatch, SequencedAlertEvent
from common.artifacts import ArtifactManifest
from common.control import (
    MAX_FEDERATED_TASKS,
    AdapterAssignment,
    AgentStatus,
    DesiredState,
    Enrollment,
    FederatedTask,
    Hardware,
    Hello,
    InferenceKeyGrant,
    ItemState,
    ItemStatus,
    LocalModel,
    ModelAssignment,
    PolicyDocument,
)
from common.errors import InvalidArgument
from common.inference import (
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    Finished,
    FinishReason,
    GenerationEvent,
    ModelInfo,
    SamplingParams,
    TextDelta,
    Usage,
)
from common.inference_key_grants import MAX_INFERENCE_KEYS
from common.policy.alert_notify import AlertEvent
from common.policy.ledger_record import AttemptSummary, LedgerRecord
from common.telemetry import Metric, Sample, SequencedSample, TelemetryBatch
from common.usage_batch import SequencedRecord, UsageBatch
from outpost.v1 import control_pb2 as cpb
from outpost.v1 import inference_pb2 as pb

_FINISH_TO_PB = {
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.CANCELLED: pb.FINISH_REASON_CANCELLED,
}
_FINISH_FROM_PB = {v: k for k, v in _FINISH_TO_PB.items()}


def sampling_from_pb(message: pb.SamplingParams) -> SamplingParams:
    """Unset optional fields become None, so the agent's defaults apply."""
    has = message.HasField
    return SamplingParams(
        max_tokens=message.max_tokens if has("max_tokens") else None,
        temperature=message.temperature if has("temperature") else None,
        top_p=message.top_p if has("top_p") else None,
        top_k=message.top_k if has("top_k") else None,
        min_p=message.min_p if has("min_p") else None,
        repeat_penalty=message.repeat_penalty if has("repeat_penalty") else None,
        seed=message.seed if has("seed") else None,
        stop=tuple(message.stop),
    )


def sampling_to_pb(params: SamplingParams) -> pb.SamplingParams:
    message = pb.SamplingParams(stop=list(params.stop))
    for name in ("max_tokens", "temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed"):
        value = getattr(params, name)
        if value is not None:
            setattr(message, name, value)
    return message


def completion_request_from_pb(message: pb.GenerateRequest) -> CompletionRequest:
    return CompletionRequest(
        model=message.model, prompt=message.prompt, sampling=sampling_from_pb(message.sampling)
    )


def completion_request_to_pb(request: CompletionRequest) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        model=request.model, prompt=request.prompt, sampling=sampling_to_pb(request.sampling)
    )


def chat_request_from_pb(message: pb.ChatRequest) -> ChatRequest:
    return ChatRequest(
        model=message.model,
        messages=tuple(ChatMessage(role=m.role, content=m.content) for m in message.messages),
        sampling=sampling_from_pb(message.sampling),
    )


def chat_request_to_pb(request: ChatRequest) -> pb.ChatRequest:
    return pb.ChatRequest(
        model=request.model,
        messages=[pb.ChatMessage(role=m.role, content=m.content) for m in request.messages],
        sampling=sampling_to_pb(request.sampling),
    )


def event_to_pb(event: GenerationEvent) -> pb.GenerateResponse:
    if isinstance(event, TextDelta):
        return pb.GenerateResponse(text=event.text)
    return pb.GenerateResponse(
        finish_reason=_FINISH_TO_PB[event.reason],
        usage=pb.Usage(
            prompt_tokens=event.usage.prompt_tokens,
            completion_tokens=event.usage.completion_tokens,
        ),
    )


def event_from_pb(message: pb.GenerateResponse) -> GenerationEvent:
    if message.finish_reason == pb.FINISH_REASON_UNSPECIFIED:
        return TextDelta(message.text)
    return Finished(
        reason=_FINISH_FROM_PB[message.finish_reason],
        usage=Usage(message.usage.prompt_tokens, message.usage.completion_tokens),
    )


def model_info_to_pb(info: ModelInfo) -> pb.ModelInfo:
    return pb.ModelInfo(
        alias=info.alias,
        sha256=info.sha256,
        architecture=info.architecture,
        context_length=info.context_length,
        size_bytes=info.size_bytes,
        ready=info.ready,
    )


def model_info_from_pb(message: pb.ModelInfo) -> ModelInfo:
    return ModelInfo(
        alias=message.alias,
        sha256=message.sha256,
        architecture=message.architecture,
        context_length=message.context_length,
        size_bytes=message.size_bytes,
        ready=message.ready,
    )


# --- control plane <-> agent --------------------------------------------------------------

_ITEM_STATE_TO_PB = {
    ItemState.PENDING: cpb.ITEM_STATE_PENDING,
    ItemState.LOADING: cpb.ITEM_STATE_LOADING,
    ItemState.READY: cpb.ITEM_STATE_READY,
    ItemState.FAILED: cpb.ITEM_STATE_FAILED,
    ItemState.DOWNLOADING: cpb.ITEM_STATE_DOWNLOADING,
    ItemState.VERIFYING: cpb.ITEM_STATE_VERIFYING,
}
_ITEM_STATE_FROM_PB = {v: k for k, v in _ITEM_STATE_TO_PB.items()}


def desired_state_to_pb(state: DesiredState) -> cpb.DesiredState:
    return cpb.DesiredState(
        generation=state.generation,
        models=[
            cpb.ModelAssignment(
                alias=m.alias,
                path=m.path,
                context_length=m.context_length,
                gpu_layers=m.gpu_layers,
                queue_depth=m.queue_depth,
                sha256=m.sha256,
                size_bytes=m.size_bytes,
                model_name=m.model_name,
                model_version=m.model_version,
                threads=m.threads,
                adapters=[
                    cpb.AdapterAssignment(
                        name=a.name,
                        sha256=a.sha256,
                        size_bytes=a.size_bytes,
                        registry_name=a.registry_name,
                        registry_version=a.registry_version,
                    )
                    for a in m.adapters
                ],
            )
            for m in state.models
        ],
        labels=dict(state.labels),
        policy=_policy_to_pb(state.policy),
        inference_keys=_keys_to_pb(state.inference_keys),
        federated_tasks=[
            cpb.FederatedTask(
                job_id=t.job_id,
                dataset=t.dataset,
                base_sha256=t.base_sha256,
                fleet_port=t.fleet_port,
                threads=t.threads,
                nice=t.nice,
            )
            for t in state.federated_tasks
        ],
    )


def _keys_to_pb(keys: tuple[InferenceKeyGrant, ...] | None) -> cpb.InferenceKeySet | None:
    if keys is None:
        return None
    return cpb.InferenceKeySet(
        keys=[
            cpb.InferenceKeyGrant(key_id=k.key_id, key_hash=k.key_hash, role=k.role, team=k.team)
            for k in keys
        ]
    )


def _keys_from_pb(message: cpb.DesiredState) -> tuple[InferenceKeyGrant, ...] | None:
    """The set as sent, at most MAX_INFERENCE_KEYS (else InvalidArgument); the agent checks
    the rest (`agent.inference_keys`: a bad set is reported, the last one stays)."""
    if not message.HasField("inference_keys"):
        return None
    if len(message.inference_keys.keys) > MAX_INFERENCE_KEYS:
        raise InvalidArgument(f"more than {MAX_INFERENCE_KEYS} inference keys")
    return tuple(
        InferenceKeyGrant(key_id=k.key_id, key_hash=k.key_hash, role=k.role, team=k.team)
        for k in message.inference_keys.keys
    )


def _policy_to_pb(policy: PolicyDocument | None) -> cpb.PolicyDocument | None:
    if policy is None:
        return None
    return cpb.PolicyDocument(
        version=policy.version, digest=policy.digest, document=policy.document
    )


def _policy_from_pb(message: cpb.DesiredState) -> PolicyDocument | None:
    """The document as sent: the agent checks its size and validity (`agent.policy_state`)."""
    if not message.HasField("policy"):
        return None
    policy = message.policy
    return PolicyDocument(version=policy.version, digest=policy.digest, document=policy.document)


def _federated_tasks_from_pb(message: cpb.DesiredState) -> tuple[FederatedTask, ...]:
    """The tasks as sent, at most MAX_FEDERATED_TASKS (else InvalidArgument); the agent checks
    each task's fields before it starts anything."""
    if len(message.federated_tasks) > MAX_FEDERATED_TASKS:
        raise InvalidArgument(f"more than {MAX_FEDERATED_TASKS} federated tasks")
    return tuple(
        FederatedTask(
            job_id=t.job_id,
            dataset=t.dataset,
            base_sha256=t.base_sha256,
            fleet_port=t.fleet_port,
            threads=t.threads,
            nice=t.nice,
        )
        for t in message.federated_tasks
    )


def desired_state_from_pb(message: cpb.DesiredState) -> DesiredState:
    return DesiredState(
        generation=message.generation,
        models=tuple(
            ModelAssignment(
                alias=m.alias,
                path=m.path,
                context_length=m.context_length,
                gpu_layers=m.gpu_layers,
                queue_depth=m.queue_depth,
                sha256=m.sha256,
                size_bytes=m.size_bytes,
                model_name=m.model_name,
                model_version=m.model_version,
                threads=m.threads,
                adapters=tuple(
                    AdapterAssignment(
                        name=a.name,
                        sha256=a.sha256,
                        size_bytes=a.size_bytes,
                        registry_name=a.registry_name,
                        registry_version=a.registry_version,
                    )
                    for a in m.adapters
                ),
            )
            for m in message.models
        ),
        labels=MappingProxyType(dict(message.labels)),
        policy=_policy_from_pb(message),
        inference_keys=_keys_from_pb(message),
        federated_tasks=_federated_tasks_from_pb(message),
    )


def hello_to_pb(hello: Hello) -> cpb.Hello:
    hw = hello.hardware
    return cpb.Hello(
        agent_id=hello.agent_id,
        version=hello.version,
        hardware=cpb.Hardware(
            hostname=hw.hostname,
            os=hw.os,
            cpu_model=hw.cpu_model,
            cpu_cores=hw.cpu_cores,
            memory_bytes=hw.memory_bytes,
        ),
        capabilities=list(hello.capabilities),
        models=[cpb.LocalModel(path=m.path, size_bytes=m.size_bytes) for m in hello.models],
        observed_generation=hello.observed_generation,
        peer_address=hello.peer_address,
        inference_address=hello.inference_address,
    )


def hello_from_pb(message: cpb.Hello) -> Hello:
    hw = message.hardware
    return Hello(
        agent_id=message.agent_id,
        version=message.version,
        hardware=Hardware(
            hostname=hw.hostname,
            os=hw.os,
            cpu_model=hw.cpu_model,
            cpu_cores=hw.cpu_cores,
            memory_bytes=hw.memory_bytes,
        ),
        capabilities=tuple(message.capabilities),
        models=tuple(LocalModel(path=m.path, size_bytes=m.size_bytes) for m in message.models),
        observed_generation=message.observed_generation,
        peer_address=message.peer_address,
        inference_address=message.inference_address,
    )


def status_to_pb(status: AgentStatus) -> cpb.Status:
    return cpb.Status(
        observed_generation=status.observed_generation,
        items=[
            cpb.ItemStatus(
                kind=i.kind,
                name=i.name,
                state=_ITEM_STATE_TO_PB[i.state],
                error=i.error,
                sha256=i.sha256,
                bytes_done=i.bytes_done,
                bytes_total=i.bytes_total,
                rate_bytes_per_s=i.rate_bytes_per_s,
                serving_sha256=i.serving_sha256,
            )
            for i in status.items
        ],
    )


def status_from_pb(message: cpb.Status) -> AgentStatus:
    """Raises InvalidArgument for an item state the agent must not send (unspecified/unknown)."""
    items = []
    for item in message.items:
        state = _ITEM_STATE_FROM_PB.get(item.state)
        if state is None:
            raise InvalidArgument(f"status item {item.name!r} has no valid state")
        items.append(
            ItemStatus(
                kind=item.kind,
                name=item.name,
                state=state,
                error=item.error,
                sha256=item.sha256,
                bytes_done=item.bytes_done,
                bytes_total=item.bytes_total,
                rate_bytes_per_s=item.rate_bytes_per_s,
                serving_sha256=item.serving_sha256,
            )
        )
    return AgentStatus(observed_generation=message.observed_generation, items=tuple(items))


def enrollment_to_pb(enrollment: Enrollment) -> cpb.EnrollResponse:
    return cpb.EnrollResponse(
        agent_id=enrollment.agent_id,
        certificate_pem=enrollment.certificate_pem,
        ca_certificate_pem=enrollment.ca_certificate_pem,
        mtls_port=enrollment.mtls_port,
        bundle_public_key_pem=enrollment.bundle_public_key_pem,
    )


def enrollment_from_pb(message: cpb.EnrollResponse) -> Enrollment:
    return Enrollment(
        agent_id=message.agent_id,
        certificate_pem=message.certificate_pem,
        ca_certificate_pem=message.ca_certificate_pem,
        mtls_port=message.mtls_port,
        bundle_public_key_pem=message.bundle_public_key_pem,
    )


# --- artifacts --------------------------------------------------------------------------


def manifest_to_pb(manifest: ArtifactManifest) -> cpb.ArtifactManifest:
    return cpb.ArtifactManifest(
        sha256=manifest.sha256,
        size_bytes=manifest.size_bytes,
        chunk_size=manifest.chunk_size,
        chunk_sha256=list(manifest.chunk_sha256),
    )


def manifest_from_pb(message: cpb.ArtifactManifest) -> ArtifactManifest:
    """Raises InvalidArgument when the manifest is inconsistent (chunk count, digests)."""
    return ArtifactManifest(
        sha256=message.sha256,
        size_bytes=message.size_bytes,
        chunk_size=message.chunk_size,
        chunk_sha256=tuple(message.chunk_sha256),
    )


# --- telemetry --------------------------------------------------------------------------


def telemetry_batch_to_pb(batch: TelemetryBatch) -> cpb.TelemetryBatch:
    return cpb.TelemetryBatch(
        samples=[
            cpb.TelemetrySample(
                seq=item.seq,
                collected_at_ms=round(item.sample.collected_at.timestamp() * 1000),
                metrics=[
                    cpb.MetricValue(name=m.name, value=m.value, labels=dict(m.labels))
                    for m in item.sample.metrics
                ],
                notes=list(item.sample.notes),
            )
            for item in batch.samples
        ],
        dropped=batch.dropped,
    )


_IMPOSSIBLE_TIME = datetime.min.replace(tzinfo=UTC)


def telemetry_batch_from_pb(message: cpb.TelemetryBatch) -> TelemetryBatch:
    """A time no clock can hold becomes datetime.min, which the store rejects as too old."""
    samples = []
    for sample in message.samples:
        try:
            collected_at = datetime.fromtimestamp(sample.collected_at_ms / 1000, UTC)
        except (OverflowError, OSError, ValueError):
            collected_at = _IMPOSSIBLE_TIME
        metrics = tuple(Metric(m.name, m.value, dict(m.labels)) for m in sample.metrics)
        samples.append(
            SequencedSample(
                seq=sample.seq,
                sample=Sample(
                    collected_at=collected_at, metrics=metrics, notes=tuple(sample.notes)
                ),
            )
        )
    return TelemetryBatch(samples=tuple(samples), dropped=message.dropped)


# --- usage ledger -----------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def usage_batch_to_pb(batch: UsageBatch) -> cpb.UsageBatch:
    return cpb.UsageBatch(
        records=[_usage_record_to_pb(item.seq, item.record) for item in batch.records],
        dropped=batch.dropped,
    )


def _usage_record_to_pb(seq: int, record: LedgerRecord) -> cpb.UsageRecord:
    message = cpb.UsageRecord(
        seq=seq,
        at_us=(record.at - _EPOCH) // timedelta(microseconds=1),
        request_id=record.request_id,
        key_id=record.key_id,
        team=record.team,
        role=record.role,
        level=record.level,
        outcome=record.outcome,
        reason=record.reason,
        detectors=list(record.detectors),
        attempts=[
            cpb.UsageAttempt(
                target=a.target, outcome=a.outcome, reason=a.reason, latency_ms=a.latency_ms
            )
            for a in record.attempts
        ],
        prompt_tokens=record.prompt_tokens,
        completion_tokens=record.completion_tokens,
        latency_ms=record.latency_ms,
        cost_nanos=record.cost_nanos,
        policy_digest=record.policy_digest,
        forwarded=record.forwarded,
    )
    if record.route is not None:
        message.route = record.route
    if record.target is not None:
        message.target = record.target
    if record.prompt is not None:
        message.prompt = record.prompt
    return message


def usage_batch_from_pb(message: cpb.UsageBatch) -> UsageBatch:
    """Values as sent (the control plane's store checks and clips them); a time no clock can
    hold becomes datetime.min, which the store rejects as too old."""
    records = []
    for item in message.records:
        try:
            at = _EPOCH + timedelta(microseconds=item.at_us)
        except OverflowError:
            at = _IMPOSSIBLE_TIME
        record = LedgerRecord(
            at=at,
            request_id=item.request_id,
            key_id=item.key_id,
            team=item.team,
            role=item.role,
            level=item.level,
            route=item.route if item.HasField("route") else None,
            target=item.target if item.HasField("target") else None,
            outcome=item.outcome,
            reason=item.reason,
            detectors=tuple(item.detectors),
            attempts=tuple(
                AttemptSummary(a.target, a.outcome, a.reason, a.latency_ms) for a in item.attempts
            ),
            prompt_tokens=item.prompt_tokens,
            completion_tokens=item.completion_tokens,
            latency_ms=item.latency_ms,
            cost_nanos=item.cost_nanos,
            policy_digest=item.policy_digest,
            prompt=item.prompt if item.HasField("prompt") else None,
            forwarded=item.forwarded,
        )
        records.append(SequencedRecord(seq=item.seq, record=record))
    return UsageBatch(records=tuple(records), dropped=message.dropped)


# --- alert events -----------------------------------------------------------------------


def alert_event_batch_to_pb(batch: AlertEventBatch) -> cpb.AlertEventBatch:
    return cpb.AlertEventBatch(
        events=[
            cpb.AlertEventRecord(
                seq=item.seq,
                at_us=round(item.event.at * 1_000_000),
                rule=item.event.rule,
                metric=item.event.metric,
                scope=item.event.scope,
                key=item.event.key,
                state=item.event.state,
                value=item.event.value,
                threshold=item.event.threshold,
                op=item.event.op,
                action=item.event.action,
                reason=item.event.reason,
            )
            for item in batch.events
        ],
        dropped=batch.dropped,
    )


def alert_event_batch_from_pb(message: cpb.AlertEventBatch) -> AlertEventBatch:
    """Values as sent (the control plane's store checks and clips them): `state` may be any
    text here, though the type says firing or cleared."""
    events = tuple(
        SequencedAlertEvent(
            seq=item.seq,
            event=AlertEvent(
                rule=item.rule,
                metric=item.metric,
                scope=item.scope,
                key=item.key,
                value=item.value,
                threshold=item.threshold,
                op=item.op,
                action=item.action,
                at=item.at_us / 1_000_000,
                state=item.state,  # type: ignore[arg-type]
                reason=item.reason,
            ),
        )
        for item in message.events
    )
    return AlertEventBatch(events=events, dropped=message.dropped)
