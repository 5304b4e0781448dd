"""`FederatedJobSpec`: defaults, the round trip through JSON, and a clear error for every bad
field (types, ranges, unknown keys, hostile strings, oversized bodies)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from common.errors import InvalidArgument
from controlplane.federated.job_spec import (
    MAX_SPEC_BYTES,
    FederatedJobSpec,
    LoraSpec,
    PrivacySpec,
    job_spec_from,
    parse_job_spec,
)

AGENT = "6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f"
MINIMAL: dict[str, Any] = {"model": "smollm2", "agents": [AGENT], "dataset": "support"}


def refused(document: object) -> str:
    with pytest.raises(InvalidArgument) as caught:
        job_spec_from(document)
    return str(caught.value)


def test_defaults() -> None:
    spec = job_spec_from(MINIMAL)
    assert spec == FederatedJobSpec(model="smollm2", dataset="support", agents=(AGENT,))
    assert (spec.rounds, spec.local_steps, spec.batch_size, spec.max_seq_len) == (3, 20, 4, 128)
    assert spec.learning_rate == 1e-3
    assert spec.lora == LoraSpec(rank=8, alpha=16.0, targets=("q_proj", "v_proj"))
    assert (spec.aggregation, spec.min_participants, spec.participant_wait_s) == (
        "fedavg",
        None,
        300,
    )
    assert spec.min_heldout_loss_drop_pct == 1.0
    assert spec.differential_privacy is None
    assert spec.secure_aggregation is False
    assert (spec.threads, spec.nice) == (1, 10)
    assert (spec.deploy_alias, spec.adapter_name) == (None, None)
    assert spec.participant_kind == "agents"


def test_every_field_round_trips_through_json() -> None:
    document = {
        "model": "sha256:" + "a" * 64,
        "labels": {"tier": "branch", "region": "eu"},
        "dataset": "support",
        "datasets": {"berlin": "tickets_de", "paris": "tickets.fr"},
        "rounds": 100,
        "local_steps": 10_000,
        "batch_size": 64,
        "max_seq_len": 16,
        "learning_rate": 1,
        "lora": {"rank": 64, "alpha": 1024, "targets": ["v_proj", "down_proj", "q_proj"]},
        "aggregation": "frozen-a",
        "min_participants": 2,
        "participant_wait_s": 86_400,
        "gate": {"min_heldout_loss_drop_pct": 0},
        "differential_privacy": {"noise_multiplier": 0, "clipping_norm": 1e6},
        "secure_aggregation": False,
        "training": {"threads": 256, "nice": 19},
        "deploy": {"alias": "smol", "adapter_name": "support-v1"},
    }
    spec = job_spec_from(document)
    assert spec.labels == {"tier": "branch", "region": "eu"}
    assert spec.lora.targets == ("q_proj", "v_proj", "down_proj")  # the canonical order
    assert spec.differential_privacy == PrivacySpec(0.0, 1e6)
    assert spec.dataset_for("berlin") == "tickets_de"
    assert spec.dataset_for("rome") == "support"
    assert spec.dataset_for("") == "support"
    assert job_spec_from(spec.to_json()) == spec
    assert parse_job_spec(json.dumps(spec.to_json()).encode()) == spec
    assert job_spec_from({**MINIMAL, "site": None, "labels": None}).agents == (AGENT,)
    site = job_spec_from({"model": "m@2", "site": "berlin-1", "dataset": "d"})
    assert (site.participant_kind, site.site) == ("site", "berlin-1")
    assert job_spec_from(site.to_json()) == site


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": None}, "'model' must be a registry reference"),
        ({"model": ""}, "'model' must be a registry reference"),
        ({"model": "m\x00"}, "'model' must be a registry reference"),
        ({"model": "m" * 201}, "'model' must be a registry reference"),
        ({"agents": []}, "1 to 64 agent ids"),
        ({"agents": AGENT}, "1 to 64 agent ids"),
        ({"agents": [AGENT] * 65}, "1 to 64 agent ids"),
        ({"agents": [AGENT, AGENT]}, "more than once"),
        ({"agents": [AGENT.upper()]}, "is not an agent id"),
        ({"agents": ["../../etc/passwd"]}, "is not an agent id"),
        ({"agents": [7]}, "is not an agent id"),
        ({"site": "berlin"}, "exactly one of 'agents'"),
        ({"agents": None}, "got none"),
        ({"dataset": ""}, "a dataset name"),
        ({"dataset": "."}, "cannot be '.'"),
        ({"dataset": ".."}, "cannot be '..'"),
        ({"dataset": "../secrets"}, "a dataset name"),
        ({"dataset": "/etc"}, "a dataset name"),
        ({"dataset": "a" * 64}, "a dataset name"),
        ({"dataset": "tab\there"}, "a dataset name"),
        ({"dataset": "ünïcode"}, "a dataset name"),
        ({"dataset": 5}, "a dataset name"),
        ({"datasets": []}, "'datasets' must be an object"),
        ({"datasets": {"berlin": ".."}}, "cannot be '..'"),
        ({"datasets": {"bad site": "d"}}, "'datasets': a site"),
        ({"datasets": {f"s{i}": "d" for i in range(65)}}, "more than 64 sites"),
        ({"rounds": 0}, "'rounds' must be between 1 and 100, got 0"),
        ({"rounds": 101}, "'rounds' must be between 1 and 100"),
        ({"rounds": 2.5}, "'rounds' must be a whole number"),
        ({"rounds": True}, "'rounds' must be a whole number"),
        ({"rounds": "3"}, "'rounds' must be a whole number"),
        ({"local_steps": 10_001}, "'local_steps' must be between 1 and 10000"),
        ({"batch_size": 0}, "'batch_size' must be between 1 and 64"),
        ({"max_seq_len": 15}, "'max_seq_len' must be between 16 and 4096"),
        ({"max_seq_len": 4097}, "'max_seq_len' must be between 16 and 4096"),
        ({"learning_rate": 0}, "'learning_rate' must be more than 0"),
        ({"learning_rate": -1e-3}, "'learning_rate' must be more than 0"),
        ({"learning_rate": 1.5}, "at most 1"),
        ({"learning_rate": 10**400}, "'learning_rate' must be more than 0"),
        ({"learning_rate": "0.1"}, "'learning_rate' must be a number"),
        ({"lora": 8}, "'lora' must be an object"),
        ({"lora": {"rank": 0}}, "'lora.rank' must be between 1 and 64"),
        ({"lora": {"rank": 65}}, "'lora.rank' must be between 1 and 64"),
        ({"lora": {"alpha": 0}}, "'lora.alpha' must be more than 0"),
        ({"lora": {"alpha": 1025}}, "at most 1024"),
        ({"lora": {"targets": []}}, "'lora.targets' must be a non-empty list"),
        ({"lora": {"targets": "q_proj"}}, "'lora.targets' must be a non-empty list"),
        ({"lora": {"targets": ["lm_head"]}}, "'lm_head' is not one of"),
        ({"lora": {"targets": ["q_proj", "q_proj"]}}, "more than once"),
        ({"lora": {"dropout": 0.1}}, "unknown field 'lora.dropout'"),
        ({"aggregation": "median"}, "'aggregation' must be one of fedavg, frozen-a"),
        ({"aggregation": None}, "'aggregation' must be one of"),
        ({"min_participants": 0}, "'min_participants' must be between 1 and 64"),
        ({"min_participants": 65}, "'min_participants' must be between 1 and 64"),
        ({"participant_wait_s": 9}, "'participant_wait_s' must be between 10 and 86400"),
        ({"participant_wait_s": 86_401}, "'participant_wait_s' must be between 10 and 86400"),
        ({"gate": {"min_heldout_loss_drop_pct": -1}}, "must be at least 0 and at most 100"),
        ({"gate": {"min_heldout_loss_drop_pct": 101}}, "at most 100"),
        ({"gate": {"max_loss": 1}}, "unknown field 'gate.max_loss'"),
        ({"differential_privacy": True}, "'differential_privacy' must be null or an object"),
        ({"differential_privacy": {"noise_multiplier": 1}}, "clipping_norm' is required"),
        (
            {"differential_privacy": {"noise_multiplier": -1, "clipping_norm": 1}},
            "'differential_privacy.noise_multiplier' must be at least 0",
        ),
        (
            {"differential_privacy": {"noise_multiplier": 101, "clipping_norm": 1}},
            "at most 100",
        ),
        (
            {"differential_privacy": {"noise_multiplier": 1, "clipping_norm": 0}},
            "'differential_privacy.clipping_norm' must be more than 0",
        ),
        (
            {"differential_privacy": {"noise_multiplier": 1, "clipping_norm": 2e6}},
            "at most 1e+06",
        ),
        (
            {"differential_privacy": {"noise_multiplier": 1, "clipping_norm": 1, "delta": 1}},
            "unknown field 'differential_privacy.delta'",
        ),
        ({"secure_aggregation": "yes"}, "'secure_aggregation' must be true or false"),
        ({"secure_aggregation": 1}, "'secure_aggregation' must be true or false"),
        ({"secure_aggregation": True}, "secure_aggregation is not available: Flower 1.42"),
        ({"training": {"threads": 0}}, "'training.threads' must be between 1 and 256"),
        ({"training": {"threads": 257}}, "'training.threads' must be between 1 and 256"),
        ({"training": {"nice": -1}}, "'training.nice' must be between 0 and 19"),
        ({"training": {"nice": 20}}, "'training.nice' must be between 0 and 19"),
        ({"training": {"gpu": True}}, "unknown field 'training.gpu'"),
        ({"deploy": {"alias": "no spaces"}}, "'deploy.alias'"),
        ({"deploy": {"adapter_name": "x" * 64}}, "'deploy.adapter_name'"),
        ({"deploy": {"adapter_name": "<script>"}}, "'deploy.adapter_name'"),
        ({"deploy": {"rollout": "now"}}, "unknown field 'deploy.rollout'"),
        ({"epochs": 3}, "unknown field 'epochs'"),
    ],
)
def test_each_bad_field_is_named(change: dict[str, Any], message: str) -> None:
    assert message in refused({**MINIMAL, **change})


def test_labels_and_site_must_be_valid_selectors() -> None:
    base = {"model": "m", "dataset": "d"}
    assert "'labels' must be an object of at least one" in refused({**base, "labels": {}})
    assert "'labels' must be an object of at least one" in refused({**base, "labels": ["a"]})
    assert "'labels':" in refused({**base, "labels": {"k": "v w"}})
    assert "'labels':" in refused({**base, "labels": {"k": 1}})
    assert "'site' must be 1 to 63 characters" in refused({**base, "site": "a/b"})
    assert "'site' must be 1 to 63 characters" in refused({**base, "site": ""})


def test_required_fields_and_shape() -> None:
    assert "'model' is required" in refused({"agents": [AGENT], "dataset": "d"})
    assert "'dataset' is required" in refused({"model": "m", "agents": [AGENT]})
    assert "must be a JSON object" in refused([MINIMAL])
    unknown = refused({**MINIMAL, "x" * 500: 1})
    assert len(unknown) < 400  # an unknown key is shown clipped


def test_bodies_bad_json_and_size() -> None:
    assert parse_job_spec(json.dumps(MINIMAL).encode()).agents == (AGENT,)
    for body, message in [
        (b"", "request body is empty"),
        (b"  ", "request body is empty"),
        (b"{", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[" * 10_000, "not valid JSON"),
        (json.dumps({**MINIMAL, "learning_rate": "x"}).replace('"x"', "NaN").encode(), "NaN"),
        (b'{"model": "m", "rounds": Infinity}', "Infinity"),
        (b" " * (MAX_SPEC_BYTES + 1), f"at most {MAX_SPEC_BYTES} bytes"),
    ]:
        with pytest.raises(InvalidArgument) as caught:
            parse_job_spec(body)
        assert message in str(caught.value), body[:40]
    padded = json.dumps({**MINIMAL, "dataset": "d" * 64}).encode()
    assert len(padded) < MAX_SPEC_BYTES
    with pytest.raises(InvalidArgument, match="dataset name"):
        parse_job_spec(padded)
