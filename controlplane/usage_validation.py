"""What the control plane accepts of a usage-ledger row: values checked, texts clipped."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from common.policy.costs import MAX_TOKENS, NANOS_PER_UNIT
from common.policy.ledger_record import LedgerRecord
from common.usage_batch import MAX_PROMPT_CHARS
from controlplane.db.models import ID_CHARS, REASON_CHARS, REQUEST_ID_CHARS

# Reasons a row is turned away (counted in UsageIngestResult.rejected).
BAD_SEQUENCE_NUMBER = "bad sequence number"
BAD_TIME = "bad time"
FROM_THE_FUTURE = "from the future"
TOO_OLD = "too old"
BAD_OUTCOME = "bad outcome"
OUT_OF_RANGE = "tokens or cost out of range"
BATCH_TOO_LARGE = "batch too large"

OUTCOMES = ("ok", "refused", "failed")
MAX_SEQ = 2**63 - 1  # the seq column is a signed 64-bit integer
FUTURE_TOLERANCE = timedelta(minutes=5)  # clock skew a row's time may have
MAX_AGE = timedelta(days=400)  # an agent offline longer than this has lost its ledger anyway
# One request costs at most 10^4 of the currency: sums over 10^14 rows still fit 64 bits.
MAX_REQUEST_COST_NANOS = 10_000 * NANOS_PER_UNIT
MAX_LATENCY_MS = 86_400_000.0  # a day
MAX_DETECTORS = 64  # as many as a policy may have
MAX_ATTEMPTS = 64  # every target of a policy once
OUTCOME_CHARS = 16
DIGEST_CHARS = 64


def clean_text(text: object, limit: int) -> str:
    """Text as a database takes it: a string, no NUL, valid UTF-8, at most `limit` chars."""
    value = text if isinstance(text, str) else ""
    value = value[:limit].replace("\x00", "\N{REPLACEMENT CHARACTER}")
    return value.encode("utf-8", "replace").decode("utf-8")


def _optional(text: str | None, limit: int) -> str | None:
    return None if text is None else clean_text(text, limit)


def _latency(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0.0
    return min(max(float(value), 0.0), MAX_LATENCY_MS)


def _count(value: object, limit: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        return None
    return value


def rejection(record: LedgerRecord, now: datetime) -> str | None:
    """Why the row cannot be stored (None: it can): its time, outcome, tokens or cost."""
    at = record.at
    if not isinstance(at, datetime) or at.tzinfo is None:
        return BAD_TIME
    if at > now + FUTURE_TOLERANCE:
        return FROM_THE_FUTURE
    if at < now - MAX_AGE:
        return TOO_OLD
    if record.outcome not in OUTCOMES:
        return BAD_OUTCOME
    counts = (
        _count(record.prompt_tokens, MAX_TOKENS),
        _count(record.completion_tokens, MAX_TOKENS),
        _count(record.cost_nanos, MAX_REQUEST_COST_NANOS),
    )
    if any(count is None for count in counts):
        return OUT_OF_RANGE
    return None


def row_values(record: LedgerRecord) -> dict[str, Any]:
    """The columns of an accepted row (see `rejection`), every text clipped to its column."""
    at = record.at.astimezone(UTC)
    detectors = dict.fromkeys(clean_text(d, ID_CHARS) for d in record.detectors[:MAX_DETECTORS])
    return {
        "at": at,
        "day": at.date().isoformat(),
        "request_id": clean_text(record.request_id, REQUEST_ID_CHARS),
        "key_id": clean_text(record.key_id, ID_CHARS),
        "team": clean_text(record.team, ID_CHARS),
        "role": clean_text(record.role, ID_CHARS),
        "level": clean_text(record.level, ID_CHARS),
        "route": _optional(record.route, ID_CHARS),
        "target": _optional(record.target, ID_CHARS),
        "outcome": record.outcome,
        "reason": clean_text(record.reason, REASON_CHARS),
        "detectors": list(detectors),
        "attempts": [
            {
                "target": clean_text(a.target, ID_CHARS),
                "outcome": clean_text(a.outcome, OUTCOME_CHARS),
                "reason": clean_text(a.reason, REASON_CHARS),
                "latency_ms": _latency(a.latency_ms),
            }
            for a in record.attempts[:MAX_ATTEMPTS]
        ],
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "latency_ms": _latency(record.latency_ms),
        "cost_nanos": record.cost_nanos,
        "policy_digest": clean_text(record.policy_digest, DIGEST_CHARS),
        "prompt": _optional(record.prompt, MAX_PROMPT_CHARS),
        "forwarded": record.forwarded is True,
    }
