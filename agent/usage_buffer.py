"""`state_dir/usage.sqlite3`: the agent's usage-ledger rows until the control plane has them."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.telemetry.sequenced_buffer import SequencedBuffer, SequencedBufferError, typed
from common.policy.budgets import SettledUsage
from common.policy.ledger_record import AttemptSummary, LedgerRecord
from common.usage_batch import MAX_PROMPT_CHARS

USAGE_FILE = "usage.sqlite3"
DEFAULT_MAX_RECORDS = 50_000  # rows not acked yet; beyond, the oldest are dropped and counted
DEFAULT_MAX_SETTLED = 200_000  # the month's settled requests kept for budget replay


class UsageBufferError(SequencedBufferError):
    """The usage buffer's database is damaged or unusable; the message names the file."""


class UsageBuffer(SequencedBuffer[LedgerRecord]):
    """Ledger rows not acknowledged yet (see SequencedBuffer), and, in a second table, what each
    settled request used (time, team, key, tokens, cost) for `settled_since`: a restarted agent
    replays the month's spend into its budgets, acked or not. That table keeps at most
    `max_settled` rows (the newest); older months are deleted when read."""

    TABLE = "records"
    NOUN = "record"
    KIND = "usage buffer"
    EXTRA_SCHEMA = (
        "CREATE TABLE IF NOT EXISTS settled (seq INTEGER PRIMARY KEY, at REAL NOT NULL,"
        " team TEXT NOT NULL, user TEXT NOT NULL, tokens INTEGER NOT NULL,"
        " cost_nanos INTEGER NOT NULL)",
    )
    error = UsageBufferError

    def __init__(
        self,
        state_dir: Path,
        *,
        max_records: int = DEFAULT_MAX_RECORDS,
        max_settled: int = DEFAULT_MAX_SETTLED,
    ) -> None:
        if max_settled < 1:
            raise ValueError(f"max_settled must be at least 1, not {max_settled}")
        self.max_settled = max_settled
        super().__init__(state_dir / USAGE_FILE, max_items=max_records)

    def encode(self, item: LedgerRecord) -> str:
        return json.dumps(_document(item), separators=(",", ":"))

    def decode(self, raw: bytes) -> LedgerRecord:
        return _record(typed(json.loads(raw), dict, "the record"))

    def stored(
        self, connection: sqlite3.Connection, rows: Sequence[tuple[int, LedgerRecord]]
    ) -> None:
        settled = [(seq, r) for seq, r in rows if r.outcome != "refused"]  # refusals never held
        if not settled:
            return
        connection.executemany(
            "INSERT OR REPLACE INTO settled VALUES (?, ?, ?, ?, ?, ?)",
            [
                (seq, r.at.timestamp(), r.team, r.key_id,
                 r.prompt_tokens + r.completion_tokens, r.cost_nanos)
                for seq, r in settled
            ],
        )  # fmt: skip
        connection.execute(
            "DELETE FROM settled WHERE seq <= ?", (settled[-1][0] - self.max_settled,)
        )

    def settled_since(self, start: datetime) -> list[SettledUsage]:
        """The settled requests that arrived at or after `start` (oldest first), as the budget
        tracker replays them; rows from before `start` are deleted."""
        since = start.timestamp()
        with self._using("reading settled usage") as connection:
            connection.execute("DELETE FROM settled WHERE at < ?", (since,))
            rows = connection.execute(
                "SELECT at, team, user, tokens, cost_nanos FROM settled ORDER BY seq"
            ).fetchall()
        usages = []
        for at, team, user, tokens, cost in rows:
            if isinstance(at, float) and all(isinstance(v, str) for v in (team, user)):
                usages.append(SettledUsage(at, team, user, int(tokens), int(cost)))
        return usages


def month_start(now: datetime) -> datetime:
    """The first instant of `now`'s UTC calendar month."""
    return now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _document(record: LedgerRecord) -> dict[str, Any]:
    prompt = record.prompt
    if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
        record = replace(record, prompt=prompt[:MAX_PROMPT_CHARS])
    return {
        "at": record.at.isoformat(),
        "request_id": record.request_id,
        "key_id": record.key_id,
        "team": record.team,
        "role": record.role,
        "level": record.level,
        "route": record.route,
        "target": record.target,
        "outcome": record.outcome,
        "reason": record.reason,
        "detectors": list(record.detectors),
        "attempts": [[a.target, a.outcome, a.reason, a.latency_ms] for a in record.attempts],
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "latency_ms": record.latency_ms,
        "cost_nanos": record.cost_nanos,
        "policy_digest": record.policy_digest,
        "prompt": record.prompt,
        "forwarded": record.forwarded,
    }


def _text(document: dict[str, Any], key: str) -> str:
    return typed(document.get(key), str, key)


def _optional_text(document: dict[str, Any], key: str) -> str | None:
    value = document.get(key)
    return None if value is None else typed(value, str, key)


def _count(document: dict[str, Any], key: str) -> int:
    value = document.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"{key} is {value!r}, not a count")
    return value


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} is {type(value).__name__}, not a number")
    return float(value)


def _attempt(item: object) -> AttemptSummary:
    target, outcome, reason, latency = typed(item, list, "an attempt")
    if not all(isinstance(text, str) for text in (target, outcome, reason)):
        raise TypeError("an attempt's target, outcome or reason is not a string")
    return AttemptSummary(target, outcome, reason, _number(latency, "an attempt's latency"))


def _record(document: dict[str, Any]) -> LedgerRecord:
    at = datetime.fromisoformat(_text(document, "at"))
    if at.tzinfo is None:
        raise ValueError("the record's time has no time zone")
    detectors = typed(document.get("detectors"), list, "detectors")
    if not all(isinstance(name, str) for name in detectors):
        raise TypeError("a detector name is not a string")
    return LedgerRecord(
        at=at.astimezone(UTC),
        request_id=_text(document, "request_id"),
        key_id=_text(document, "key_id"),
        team=_text(document, "team"),
        role=_text(document, "role"),
        level=_text(document, "level"),
        route=_optional_text(document, "route"),
        target=_optional_text(document, "target"),
        outcome=_text(document, "outcome"),
        reason=_text(document, "reason"),
        detectors=tuple(detectors),
        attempts=tuple(_attempt(a) for a in typed(document.get("attempts"), list, "attempts")),
        prompt_tokens=_count(document, "prompt_tokens"),
        completion_tokens=_count(document, "completion_tokens"),
        latency_ms=_number(document.get("latency_ms"), "latency_ms"),
        cost_nanos=_count(document, "cost_nanos"),
        policy_digest=_text(document, "policy_digest"),
        prompt=_optional_text(document, "prompt"),
        forwarded=typed(document.get("forwarded", False), bool, "forwarded"),  # absent: older
    )
