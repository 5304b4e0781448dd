"""`ConsoleSessions`: server-side logins in the database, found by the sha256 of a random id."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, or_
from sqlmodel import Session, col, select

from controlplane.auth import Principal, Role
from controlplane.db.database import Database
from controlplane.db.models import ConsoleSession, User

SESSION_ID_BYTES = 32  # 256 bits
MAX_SESSION_ID_CHARS = 64
LAST_SEEN_RESOLUTION = timedelta(seconds=30)


def session_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("ascii")).hexdigest()


def csrf_token_for(session_id: str) -> str:
    """The session's CSRF token: derived from its secret id, so it is never stored."""
    return hmac.new(session_id.encode("ascii"), b"outpost console csrf", "sha256").hexdigest()


@dataclass(frozen=True)
class ConsoleLogin:
    """An authenticated console request: who, and the CSRF token its forms carry."""

    principal: Principal
    session_id: str
    csrf_token: str


class ConsoleSessions:
    """A session ends `idle` after its last use or `lifetime` after login, whichever is first;
    a disabled user's sessions end at once."""

    def __init__(
        self,
        db: Database,
        *,
        idle: timedelta,
        lifetime: timedelta,
        clock: Callable[[], datetime],
    ) -> None:
        self._db = db
        self._idle = idle
        self._lifetime = lifetime
        self._clock = clock

    def start(self, user_id: int) -> str:
        """A new session for the user; answers its id (for the cookie), which is not kept."""
        session_id = secrets.token_urlsafe(SESSION_ID_BYTES)
        now = self._clock()
        with self._db.session() as session:
            self._purge(session, now)
            session.add(
                ConsoleSession(
                    id_hash=session_hash(session_id),
                    user_id=user_id,
                    created_at=now,
                    last_seen_at=now,
                    expires_at=now + self._lifetime,
                )
            )
        return session_id

    def resume(self, session_id: str, *, touch: bool = True) -> ConsoleLogin | None:
        """The session's login, or None for a malformed, unknown, expired or disabled one.

        `touch` False (a page's background refresh): the use does not keep the session from
        going idle, so an unattended open page still logs out."""
        if (
            not session_id
            or len(session_id) > MAX_SESSION_ID_CHARS
            or not session_id.isascii()
            or not session_id.isprintable()
        ):
            return None
        now = self._clock()
        with self._db.session() as session:
            row = session.exec(
                select(ConsoleSession, User)
                .join(User, col(User.id) == col(ConsoleSession.user_id))
                .where(ConsoleSession.id_hash == session_hash(session_id))
            ).first()
            if row is None:
                return None
            record, user = row
            if (
                record.expires_at <= now
                or record.last_seen_at + self._idle <= now
                or user.disabled_at is not None
            ):
                session.delete(record)
                return None
            if touch and now - record.last_seen_at >= LAST_SEEN_RESOLUTION:
                record.last_seen_at = now
                session.add(record)
            principal = Principal(name=user.name, role=Role(user.role))
        return ConsoleLogin(principal, session_id, csrf_token_for(session_id))

    def end(self, session_id: str) -> None:
        if not session_id.isascii():
            return
        with self._db.session() as session:
            session.execute(
                delete(ConsoleSession).where(
                    col(ConsoleSession.id_hash) == session_hash(session_id)
                )
            )

    def _purge(self, session: Session, now: datetime) -> None:
        session.execute(
            delete(ConsoleSession).where(
                or_(
                    col(ConsoleSession.expires_at) <= now,
                    col(ConsoleSession.last_seen_at) <= now - self._idle,
                )
            )
        )
