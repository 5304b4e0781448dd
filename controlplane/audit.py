"""`AuditLog`: who did what to which object, and whether it was allowed."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from common.errors import InvalidArgument
from controlplane.db.database import Database
from controlplane.db.models import NAME_CHARS, AuditEvent, Outcome, utcnow

MAX_LIMIT = 1000


def check_actor(actor: object) -> str:
    """Who makes a change: 1 to 255 printable characters, stored verbatim."""
    if not isinstance(actor, str) or not 1 <= len(actor) <= NAME_CHARS or not actor.isprintable():
        raise InvalidArgument(f"an actor must be 1 to {NAME_CHARS} printable characters")
    return actor


def _clip(value: str, limit: int) -> str:
    value = value.replace("\x00", "\N{REPLACEMENT CHARACTER}")  # PostgreSQL text cannot hold NUL
    return value if len(value) <= limit else value[: limit - 1] + "…"


class AuditLog:
    def __init__(self, db: Database, *, clock: Callable[[], datetime] = utcnow) -> None:
        self._db = db
        self._clock = clock

    def record(
        self,
        session: Session,
        *,
        actor: str,
        action: str,
        target: str,
        outcome: str = "ok",
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Adds an event to the caller's transaction: it is kept only if the change is."""
        session.add(self._event(actor, action, target, outcome, detail))

    def record_now(
        self,
        *,
        actor: str,
        action: str,
        target: str,
        outcome: str = "ok",
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Records an event in its own transaction: for denials, whose transaction is gone.

        Call it outside any session of the same database (see `Database`).
        """
        with self._db.session() as session:
            self.record(
                session, actor=actor, action=action, target=target, outcome=outcome, detail=detail
            )

    def list(
        self, limit: int = 100, offset: int = 0, *, target: str | None = None
    ) -> builtins.list[AuditEvent]:
        """Newest first; only the events about `target` (e.g. "agent:<id>") when given."""
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidArgument(f"limit must be between 1 and {MAX_LIMIT}")
        if offset < 0:
            raise InvalidArgument("offset must not be negative")
        with self._db.session() as session:
            statement = select(AuditEvent)
            if target is not None:
                statement = statement.where(AuditEvent.target == target)
            statement = (
                statement.order_by(col(AuditEvent.at).desc(), col(AuditEvent.id).desc())
                .offset(offset)
                .limit(limit)
            )
            return builtins.list(session.exec(statement).all())

    def _event(
        self, actor: str, action: str, target: str, outcome: str, detail: dict[str, Any] | None
    ) -> AuditEvent:
        if outcome not in set(Outcome):
            raise ValueError(f"audit outcome must be one of {[o.value for o in Outcome]}")
        # Strings are stored verbatim up to the column sizes; longer ones are clipped rather
        # than lost, since an audit record that fails to be written hides what happened.
        return AuditEvent(
            at=self._clock(),
            actor=_clip(actor, NAME_CHARS),
            action=_clip(action, 64),
            target=_clip(target, NAME_CHARS),
            outcome=outcome,
            detail=dict(detail or {}),
        )
