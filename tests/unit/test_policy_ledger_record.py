"""Ledger rows from decisions and attempts: outcomes, reasons, no prompt text unless asked."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from common.policy.dispatch import AttemptRecord, Outcome
from common.policy.document import load_policy
from common.policy.ledger_record import MAX_REASON_CHARS, ledger_record
from common.policy.policy_model import Ledger, Policy
from common.policy.routing import Caller, PolicyEngine

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "routing-policy.yaml"
AT = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
CARD = "4111 1111 1111 1111"


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(EXAMPLE)


def test_an_answered_request_names_its_route_target_detectors_and_no_prompt(
    policy: Policy,
) -> None:
    caller = Caller("developer", team="support", key_id="k1")
    parts = [f"refund {CARD}", "thanks"]
    decision = PolicyEngine(policy).decide(parts, caller)
    attempts = [
        AttemptRecord("site-big", Outcome.TIMEOUT, "no answer within 120 s", 120.0),
        AttemptRecord("local-smol", Outcome.OK, "", 0.25),
    ]
    record = ledger_record(
        at=AT,
        request_id="r1",
        caller=caller,
        decision=decision,
        attempts=attempts,
        answered_by="local-smol",
        prompt_tokens=12,
        completion_tokens=30,
        latency_ms=120_250.0,
        cost_nanos=1_234,
        policy=policy,
        parts=parts,
    )
    assert (record.outcome, record.level, record.route, record.target) == (
        "ok",
        "confidential",
        "confidential-on-premises",
        "local-smol",
    )
    assert record.detectors == ("payment-cards",)
    assert [(a.target, a.outcome, a.latency_ms) for a in record.attempts] == [
        ("site-big", "timeout", 120_000.0),
        ("local-smol", "ok", 250.0),
    ]
    assert "detector payment-cards found payment_card" in record.reason
    assert record.prompt is None
    assert CARD not in repr(record)
    assert (record.team, record.key_id, record.policy_digest) == ("support", "k1", policy.digest)


def test_refusals_and_failures_say_why(policy: Policy) -> None:
    engine = PolicyEngine(policy)
    refused = engine.decide(["SSN 123-45-6789"], Caller("developer"))
    row = ledger_record(
        at=AT, request_id="r2", caller=Caller("developer"), decision=refused, attempts=[],
        answered_by=None,
    )  # fmt: skip
    assert (row.outcome, row.target) == ("refused", None)
    assert row.reason.startswith("role developer may not send restricted data")

    allowed = engine.decide(["hello"], Caller("admin"))
    over = ledger_record(
        at=AT, request_id="r3", caller=Caller("admin"), decision=allowed, attempts=[],
        answered_by=None, refusal="team research over its daily budget",
    )  # fmt: skip
    assert (over.outcome, over.reason) == ("refused", "team research over its daily budget")

    failed = ledger_record(
        at=AT,
        request_id="r4",
        caller=Caller("admin"),
        decision=allowed,
        attempts=[AttemptRecord("cloud-large", Outcome.ERROR, "HTTP 503" * 200, 0.1)],
        answered_by=None,
    )
    assert failed.outcome == "failed"
    assert failed.reason.startswith("cloud-large: error (HTTP 503")
    assert len(failed.reason) == MAX_REASON_CHARS
    assert len(failed.attempts[0].reason) == MAX_REASON_CHARS


def test_prompts_are_kept_only_when_the_policy_turns_it_on(policy: Policy) -> None:
    keeping = replace(policy, ledger=Ledger(store_prompts=True))
    decision = PolicyEngine(keeping).decide(["hello", "world"], Caller("admin"))
    record = ledger_record(
        at=AT, request_id="r5", caller=Caller("admin"), decision=decision, attempts=[],
        answered_by="cloud-large", policy=keeping, parts=["hello", "world"],
    )  # fmt: skip
    assert record.prompt == "hello\n\nworld"


@pytest.mark.parametrize(
    "bad",
    [
        {"prompt_tokens": -1},
        {"completion_tokens": -5},
        {"cost_nanos": -1},
        {"latency_ms": float("nan")},
        {"latency_ms": -0.5},
    ],
)
def test_negative_or_nan_figures_are_refused(policy: Policy, bad: dict[str, float]) -> None:
    decision = PolicyEngine(policy).decide(["hello"], Caller("admin"))
    with pytest.raises(ValueError, match="cannot be negative"):
        ledger_record(
            at=AT, request_id="r", caller=Caller("admin"), decision=decision, attempts=[],
            answered_by="cloud-large", **bad,  # type: ignore[arg-type]
        )  # fmt: skip
