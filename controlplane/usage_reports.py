"""Reports over the usage ledger: spend by group and day, sensitive share, cloud savings, rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, or_, select
from sqlmodel import col

from common.errors import InvalidArgument
from common.policy.costs import NANOS_PER_UNIT, CloudPrice
from common.policy.policy_model import CloudTarget, Policy
from controlplane.db.database import Database, table_of
from controlplane.db.models import UsageRecordRow

# What spend can be grouped by: the row's columns of those names.
GROUPS = ("team", "route", "target", "level", "role", "source", "outcome")
MAX_GROUPS = 10_000  # rows of one spend report; more are cut (`truncated`)


@dataclass(frozen=True)
class Window:
    """[since, until) in UTC; since < until."""

    since: datetime
    until: datetime

    def __post_init__(self) -> None:
        if self.since >= self.until:
            raise InvalidArgument("'since' must be before 'until'")


@dataclass(frozen=True)
class Totals:
    requests: int = 0
    answered: int = 0
    refused: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_nanos: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Totals) -> Totals:
        return Totals(
            self.requests + other.requests,
            self.answered + other.answered,
            self.refused + other.refused,
            self.failed + other.failed,
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cost_nanos + other.cost_nanos,
        )


@dataclass(frozen=True)
class SpendGroup:
    key: dict[str, str | None]  # group_by name (and "day") -> value
    totals: Totals


@dataclass(frozen=True)
class CloudEquivalent:
    target: str
    model: str
    cost_nanos: int  # what the window's tokens would have cost there


def _in(window: Window) -> ColumnElement[bool]:
    at = col(UsageRecordRow.at)
    return and_(at >= window.since, at < window.until)


def _counted(window: Window) -> ColumnElement[bool]:
    """The rows in the window that count a request: not the forwarding side's row of a request
    another agent answered (that agent's own row counts it, with its tokens and cost)."""
    return and_(_in(window), col(UsageRecordRow.forwarded).is_(False))


def _aggregates() -> list[Any]:
    """Counts and sums of a group. Cost is summed as whole units and the remainder in nano-units
    apart: neither sum can overflow 64 bits (SQLite's SUM fails rather than widen)."""
    outcome, cost = col(UsageRecordRow.outcome), col(UsageRecordRow.cost_nanos)
    return [
        func.count(),
        func.sum(case((outcome == "ok", 1), else_=0)),
        func.sum(case((outcome == "refused", 1), else_=0)),
        func.sum(case((outcome == "failed", 1), else_=0)),
        func.sum(col(UsageRecordRow.prompt_tokens)),
        func.sum(col(UsageRecordRow.completion_tokens)),
        func.sum(cost // NANOS_PER_UNIT),
        func.sum(cost % NANOS_PER_UNIT),
    ]


def _totals(values: Sequence[Any]) -> Totals:
    count, ok, refused, failed, prompt, completion, whole, rest = (int(v or 0) for v in values)
    return Totals(count, ok, refused, failed, prompt, completion, whole * NANOS_PER_UNIT + rest)


def check_group_by(names: Sequence[str]) -> tuple[str, ...]:
    """Known, distinct group names (1 to 3), else InvalidArgument naming the known ones."""
    if not 1 <= len(names) <= 3:
        raise InvalidArgument("'group_by' takes 1 to 3 names, e.g. team or team,route")
    for name in names:
        if name not in GROUPS:
            raise InvalidArgument(
                f"unknown group_by {name[:64]!r}: use one or more of {', '.join(GROUPS)}"
            )
    if len(set(names)) != len(names):
        raise InvalidArgument("'group_by' names a column twice")
    return tuple(names)


class UsageReports:
    """Read-only queries; the same statements on SQLite and PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._table = table_of(UsageRecordRow)

    def totals(self, window: Window) -> Totals:
        with self._db.session() as session:
            statement = select(*_aggregates()).where(_counted(window))
            row = session.connection().execute(statement).one()
        return _totals(row)

    def spend(
        self, window: Window, group_by: Sequence[str], *, by_day: bool = False
    ) -> tuple[list[SpendGroup], bool]:
        """Totals per group (and UTC day), ordered by the group's values; True when more than
        MAX_GROUPS groups were found (the first MAX_GROUPS are answered)."""
        names = [*check_group_by(group_by), *(["day"] if by_day else [])]
        keys = [self._table.c[name] for name in names]
        statement = (
            select(*keys, *_aggregates())
            .where(_counted(window))
            .group_by(*keys)
            .order_by(*keys)
            .limit(MAX_GROUPS + 1)
        )
        with self._db.session() as session:
            rows = session.connection().execute(statement).all()
        groups = [
            SpendGroup(dict(zip(names, row[: len(names)], strict=True)), _totals(row[len(names) :]))
            for row in rows[:MAX_GROUPS]
        ]
        return groups, len(rows) > MAX_GROUPS

    def by_level(self, window: Window) -> dict[str, Totals]:
        level = col(UsageRecordRow.level)
        statement = select(level, *_aggregates()).where(_counted(window)).group_by(level)
        with self._db.session() as session:
            rows = session.connection().execute(statement).all()
        return {row[0]: _totals(row[1:]) for row in rows}

    def records(
        self,
        window: Window,
        *,
        limit: int,
        before: tuple[datetime, int] | None = None,
        filters: dict[str, str | bool] | None = None,
    ) -> list[UsageRecordRow]:
        """Rows newest first (by time, then id), forwarded ones too; `before` (time, id)
        continues a page; `filters`: column name -> value."""
        at, row_id = col(UsageRecordRow.at), col(UsageRecordRow.id)
        statement = select(UsageRecordRow).where(_in(window))
        for name, value in (filters or {}).items():
            statement = statement.where(self._table.c[name] == value)
        if before is not None:
            statement = statement.where(
                or_(at < before[0], and_(at == before[0], row_id < before[1]))
            )
        statement = statement.order_by(at.desc(), row_id.desc()).limit(limit)
        with self._db.session() as session:
            return [UsageRecordRow.model_validate(r) for r in session.scalars(statement)]


def cloud_equivalents(policy: Policy, prompt_tokens: int, completion_tokens: int) -> list[
    CloudEquivalent
]:  # fmt: skip
    """What the tokens would have cost on each cloud target of the policy, rounded up once."""
    found = []
    for target in policy.targets:
        if isinstance(target, CloudTarget):
            price = CloudPrice.of(target)
            total = price.per_input * prompt_tokens + price.per_output * completion_tokens
            found.append(CloudEquivalent(target.name, target.model, -(-total // price.denominator)))
    return found
