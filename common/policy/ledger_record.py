"""One usage-ledger row per request: who, level, route and why, attempts, tokens, latency, cost."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from common.policy.dispatch import AttemptRecord
from common.policy.policy_model import Policy
from common.policy.routing import Caller, Decision

# Fields of text the ledger keeps are cut to this many characters (reasons quote names only).
MAX_REASON_CHARS = 500


@dataclass(frozen=True)
class AttemptSummary:
    target: str
    outcome: str  # common.policy.dispatch.Outcome's value
    reason: str
    latency_ms: float


@dataclass(frozen=True)
class LedgerRecord:
    """What the ledger stores of one request. No prompt text unless the policy's
    `ledger.store_prompts` is on; detector findings by name only, never their values."""

    at: datetime  # UTC, when the request arrived
    request_id: str
    key_id: str
    team: str
    role: str
    level: str
    route: str | None
    target: str | None  # the target that answered; None when none did
    outcome: str  # "ok", "refused" (by the policy or a budget) or "failed" (every target)
    reason: str  # why it was refused or failed, or why its route was taken
    detectors: tuple[str, ...]  # names of the detectors that fired, each once, sorted
    attempts: tuple[AttemptSummary, ...]
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    cost_nanos: int  # see common.policy.costs (integer nano-units of the prices' currency)
    policy_digest: str
    prompt: str | None = None  # only with ledger.store_prompts
    # Answered by forwarding to another agent (a site_agent target; the gateway's local
    # targets): that agent records the request too, and its row is the one reports count.
    forwarded: bool = False


def ledger_record(
    *,
    at: datetime,
    request_id: str,
    caller: Caller,
    decision: Decision,
    attempts: Sequence[AttemptRecord],
    answered_by: str | None,
    refusal: str = "",
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    latency_ms: float = 0.0,
    cost_nanos: int = 0,
    policy: Policy | None = None,
    parts: Sequence[str] = (),
    forwarded: bool = False,
) -> LedgerRecord:
    """The row for one request. `refusal`: a refusal that came after the decision (a budget);
    the decision's own refusal is taken from it. `parts` are kept only when the policy says so."""
    if prompt_tokens < 0 or completion_tokens < 0 or cost_nanos < 0 or not latency_ms >= 0:
        raise ValueError("tokens, cost and latency cannot be negative")
    refused = decision.refusal or refusal
    if refused:
        outcome, reason = "refused", refused
    elif answered_by is None:
        outcome = "failed"
        reason = "; ".join(f"{a.target}: {a.outcome.value} ({a.reason})" for a in attempts)
        reason = reason or "no target was tried"
    else:
        outcome = "ok"
        reason = "; ".join(decision.classification.reasons)
    store = policy is not None and policy.ledger.store_prompts
    return LedgerRecord(
        at=at,
        request_id=request_id,
        key_id=caller.key_id,
        team=caller.team,
        role=caller.role,
        level=decision.level,
        route=decision.route,
        target=answered_by,
        outcome=outcome,
        reason=_clip(reason),
        detectors=tuple(sorted({f.finding.detector for f in decision.classification.findings})),
        attempts=tuple(
            AttemptSummary(a.target, a.outcome.value, _clip(a.reason), a.latency_s * 1000)
            for a in attempts
        ),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        latency_ms=latency_ms,
        cost_nanos=cost_nanos,
        policy_digest=decision.policy_digest,
        prompt="\n\n".join(parts) if store else None,
        forwarded=forwarded,
    )


def _clip(text: str) -> str:
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"
