"""Domain types survive the trip through protobuf and back; unset stays unset."""

from __future__ import annotations

from typing import Any

import pytest

from common.control import Hardware, Hello, LocalModel
from common.inference import (
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    Finished,
    FinishReason,
    ModelInfo,
    SamplingParams,
    TextDelta,
    Usage,
)
from common.proto_convert import (
    chat_request_from_pb,
    chat_request_to_pb,
    completion_request_from_pb,
    completion_request_to_pb,
    event_from_pb,
    event_to_pb,
    hello_from_pb,
    hello_to_pb,
    model_info_from_pb,
    model_info_to_pb,
    sampling_from_pb,
    sampling_to_pb,
)
from outpost.v1 import inference_pb2 as pb

OPTIONAL_FIELDS = ("max_tokens", "temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed")

# Float fields are 32-bit on the wire: these values are exact in float32.
FULL_SAMPLING = SamplingParams(
    max_tokens=128,
    temperature=0.5,
    top_p=0.875,
    top_k=40,
    min_p=0.0625,
    repeat_penalty=1.25,
    seed=2**32 - 1,
    stop=("\n\n", "END", "🙂"),
)


def wire(message: pb.GenerateRequest | pb.ChatRequest) -> bytes:
    return message.SerializeToString()


def test_unset_sampling_stays_unset() -> None:
    message = sampling_to_pb(SamplingParams())
    for name in OPTIONAL_FIELDS:
        assert not message.HasField(name), name
    assert list(message.stop) == []
    assert sampling_from_pb(message) == SamplingParams()


def test_sampling_with_every_field_set_round_trips() -> None:
    message = sampling_to_pb(FULL_SAMPLING)
    for name in OPTIONAL_FIELDS:
        assert message.HasField(name), name
    assert sampling_from_pb(message) == FULL_SAMPLING


@pytest.mark.parametrize("name", OPTIONAL_FIELDS)
def test_zero_values_are_set_not_defaults(name: str) -> None:
    zero: dict[str, Any] = {name: 0}
    params = SamplingParams(**zero)
    message = sampling_to_pb(params)
    assert message.HasField(name)
    resolved = sampling_from_pb(message)
    assert getattr(resolved, name) == 0
    others = {n: getattr(resolved, n) for n in OPTIONAL_FIELDS if n != name}
    assert others == dict.fromkeys(others)


def test_float_fields_keep_float32_precision() -> None:
    resolved = sampling_from_pb(sampling_to_pb(SamplingParams(temperature=0.7, top_p=0.95)))
    assert resolved.temperature == pytest.approx(0.7, rel=1e-6)
    assert resolved.top_p == pytest.approx(0.95, rel=1e-6)


def test_completion_request_round_trips() -> None:
    for sampling in (SamplingParams(), FULL_SAMPLING, SamplingParams(seed=7, stop=("x",))):
        request = CompletionRequest(model="smol", prompt="Once upon a time", sampling=sampling)
        message = completion_request_to_pb(request)
        assert (message.model, message.prompt) == ("smol", "Once upon a time")
        decoded = pb.GenerateRequest.FromString(wire(message))
        assert completion_request_from_pb(decoded) == request


def test_chat_request_round_trips_with_and_without_sampling() -> None:
    messages = (
        ChatMessage("system", "Answer in French."),
        ChatMessage("user", "Hello 🙂"),
        ChatMessage("assistant", "Bonjour"),
        ChatMessage("user", ""),
    )
    for sampling in (SamplingParams(), FULL_SAMPLING, SamplingParams(temperature=0.0)):
        request = ChatRequest(model="qwen", messages=messages, sampling=sampling)
        decoded = pb.ChatRequest.FromString(wire(chat_request_to_pb(request)))
        assert chat_request_from_pb(decoded) == request


def test_only_the_set_field_survives_a_partial_sampling() -> None:
    request = ChatRequest(
        model="m", messages=(ChatMessage("user", "hi"),), sampling=SamplingParams(temperature=0.0)
    )
    sampling = chat_request_from_pb(chat_request_to_pb(request)).sampling
    assert sampling.temperature == 0.0
    assert sampling.max_tokens is None
    assert sampling.top_p is None
    assert sampling.top_k is None
    assert sampling.min_p is None
    assert sampling.repeat_penalty is None
    assert sampling.seed is None
    assert sampling.stop == ()


def test_request_without_sampling_message_has_default_sampling() -> None:
    assert completion_request_from_pb(pb.GenerateRequest(model="m", prompt="p")).sampling == (
        SamplingParams()
    )
    assert chat_request_from_pb(pb.ChatRequest(model="m")) == ChatRequest(
        model="m", messages=(), sampling=SamplingParams()
    )


@pytest.mark.parametrize("text", ["hello", "", " é🙂 ", "\n"])
def test_text_delta_round_trips(text: str) -> None:
    message = event_to_pb(TextDelta(text))
    assert message.finish_reason == pb.FINISH_REASON_UNSPECIFIED
    assert not message.HasField("usage")
    decoded = pb.GenerateResponse.FromString(message.SerializeToString())
    assert event_from_pb(decoded) == TextDelta(text)


@pytest.mark.parametrize(
    ("reason", "pb_reason"),
    [
        (FinishReason.STOP, pb.FINISH_REASON_STOP),
        (FinishReason.LENGTH, pb.FINISH_REASON_LENGTH),
        (FinishReason.CANCELLED, pb.FINISH_REASON_CANCELLED),
    ],
)
def test_finished_round_trips_for_every_reason(reason: FinishReason, pb_reason: int) -> None:
    event = Finished(reason=reason, usage=Usage(prompt_tokens=12, completion_tokens=34))
    message = event_to_pb(event)
    assert message.finish_reason == pb_reason
    assert (message.usage.prompt_tokens, message.usage.completion_tokens) == (12, 34)
    assert message.text == ""
    decoded = pb.GenerateResponse.FromString(message.SerializeToString())
    assert event_from_pb(decoded) == event


def test_every_finish_reason_has_a_wire_value() -> None:
    values = {event_to_pb(Finished(r, Usage(0, 0))).finish_reason for r in FinishReason}
    assert len(values) == len(FinishReason)
    assert pb.FINISH_REASON_UNSPECIFIED not in values


def test_finished_with_zero_usage_is_still_finished() -> None:
    event = Finished(FinishReason.CANCELLED, Usage(0, 0))
    assert event_from_pb(event_to_pb(event)) == event


@pytest.mark.parametrize("ready", [True, False])
def test_model_info_round_trips(ready: bool) -> None:
    info = ModelInfo(
        alias="smol",
        sha256="ab" * 32,
        architecture="llama",
        context_length=8192,
        size_bytes=5 * 2**30,  # more than 32 bits
        ready=ready,
    )
    message = model_info_to_pb(info)
    decoded = pb.ModelInfo.FromString(message.SerializeToString())
    assert model_info_from_pb(decoded) == info


def test_telemetry_batch_round_trip() -> None:
    from datetime import UTC, datetime

    from common.proto_convert import telemetry_batch_from_pb, telemetry_batch_to_pb
    from common.telemetry import Metric, Sample, SequencedSample, TelemetryBatch

    sample = Sample(
        collected_at=datetime(2026, 11, 27, 9, 0, 0, 123000, tzinfo=UTC),
        metrics=(
            Metric("outpost_memory_total_bytes", 1024.0, {}),
            Metric("outpost_cpu_utilization_ratio", 0.5, {"cpu": "total"}),
        ),
        notes=("no NVIDIA driver: test",),
    )
    batch = TelemetryBatch(
        samples=(SequencedSample(7, sample), SequencedSample(8, sample)), dropped=3
    )
    assert telemetry_batch_from_pb(telemetry_batch_to_pb(batch)) == batch


def test_telemetry_sample_with_an_impossible_time_reads_as_ancient() -> None:
    from datetime import UTC, datetime

    from common.proto_convert import telemetry_batch_from_pb
    from outpost.v1 import control_pb2 as cpb

    message = cpb.TelemetryBatch(samples=[cpb.TelemetrySample(seq=1, collected_at_ms=2**62)])
    (item,) = telemetry_batch_from_pb(message).samples
    assert item.sample.collected_at == datetime.min.replace(tzinfo=UTC)


def test_a_desired_state_with_adapters_round_trips() -> None:
    from types import MappingProxyType

    from common.control import AdapterAssignment, DesiredState, ModelAssignment
    from common.proto_convert import desired_state_from_pb, desired_state_to_pb
    from outpost.v1 import control_pb2 as cpb

    adapters = (
        AdapterAssignment("poet", "a" * 64, 3 * 1024**2, "poems", "2"),
        AdapterAssignment("sql", "b" * 64, 468_992, "sql-lora", "1"),
    )
    state = DesiredState(
        generation=12,
        models=(
            ModelAssignment(
                alias="smol",
                context_length=2048,
                gpu_layers=-1,
                queue_depth=8,
                sha256="c" * 64,
                size_bytes=98_362_432,
                model_name="smollm2",
                model_version="1",
                threads=4,
                adapters=adapters,
            ),
            ModelAssignment(alias="local", path="/models/local.gguf"),
        ),
        labels=MappingProxyType({"tier": "gold"}),
    )
    wire_bytes = desired_state_to_pb(state).SerializeToString()
    decoded = desired_state_from_pb(cpb.DesiredState.FromString(wire_bytes))
    assert decoded == state
    assert decoded.models[0].adapters == adapters
    assert decoded.models[1].adapters == ()


def test_a_desired_state_carries_its_policy_or_none() -> None:
    from common.control import DesiredState, PolicyDocument
    from common.proto_convert import desired_state_from_pb, desired_state_to_pb
    from outpost.v1 import control_pb2 as cpb

    policy = PolicyDocument(3, "d" * 64, "version: 1\n# é, 漢字\n")
    with_policy = DesiredState(generation=4, policy=policy)
    wire_bytes = desired_state_to_pb(with_policy).SerializeToString()
    assert desired_state_from_pb(cpb.DesiredState.FromString(wire_bytes)) == with_policy
    without = desired_state_from_pb(cpb.DesiredState.FromString(b""))
    assert without.policy is None
    # An empty document is still a policy on the wire (the agent refuses it, visibly).
    empty = desired_state_to_pb(DesiredState(generation=1, policy=PolicyDocument(1, "", "")))
    decoded = desired_state_from_pb(cpb.DesiredState.FromString(empty.SerializeToString()))
    assert decoded.policy == PolicyDocument(1, "", "")


def test_a_hello_round_trips_with_its_addresses() -> None:
    hello = Hello(
        "a-1",
        "1.2",
        Hardware(hostname="nuc-7", cpu_cores=4),
        capabilities=("gpu",),
        models=(LocalModel("/m.gguf", 10),),
        observed_generation=3,
        peer_address="10.0.0.7:8703",
        inference_address="10.0.0.7:8080",
    )
    assert hello_from_pb(hello_to_pb(hello)) == hello
