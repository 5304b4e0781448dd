"""`JoinTokens`: single-use, expiring join tokens; only their sha256 is stored."""

from __future__ import annotations

import builtins
import hashlib
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlmodel import Session, col, select

from common.errors import InvalidArgument, NotFound, OutpostError
from controlplane.audit import AuditLog, check_actor
from controlplane.db.database import Database
from controlplane.db.models import ID_CHARS, JoinToken, utcnow
from controlplane.desired_state_checks import IDENTIFIER, check_agent_id, check_labels

TOKEN_PREFIX = "opj_"
TOKEN_PATTERN = re.compile(r"opj_[A-Za-z0-9_-]{32}")
MIN_TTL = timedelta(minutes=1)
MAX_TTL = timedelta(days=30)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class TokenGrant:
    """What a consumed token gives the agent that used it."""

    token_id: int
    site: str
    labels: dict[str, str]


class InvalidJoinToken(OutpostError):
    """A join token that cannot be used; `reason` is "malformed", "unknown", "expired" or "used"."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"join token is {reason}")
        self.reason = reason


class TokenAlreadyUsed(OutpostError):
    """A used join token cannot be revoked: it stays as the record of the enrollment."""


class JoinTokens:
    def __init__(
        self, db: Database, audit: AuditLog, *, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self._db = db
        self._audit = audit
        self._clock = clock

    def create(
        self, *, site: str, labels: Mapping[str, str], ttl: timedelta, created_by: str
    ) -> tuple[str, JoinToken]:
        """A new token (`opj_` + 32 URL-safe characters) and its record; the token is not kept."""
        if not isinstance(site, str) or not (site == "" or IDENTIFIER.fullmatch(site)):
            raise InvalidArgument(
                f"site must be at most {ID_CHARS} characters of A-Z a-z 0-9 . _ -"
            )
        checked = check_labels(labels)
        check_actor(created_by)
        if not isinstance(ttl, timedelta) or not MIN_TTL <= ttl <= MAX_TTL:
            raise InvalidArgument("a join token's lifetime must be between 1 minute and 30 days")
        token = TOKEN_PREFIX + secrets.token_urlsafe(24)
        now = self._clock()
        record = JoinToken(
            token_hash=hash_token(token),
            site=site,
            labels=checked,
            created_by=created_by,
            created_at=now,
            expires_at=now + ttl,
        )
        with self._db.session() as session:
            session.add(record)
            session.flush()
            self._audit.record(
                session,
                actor=created_by,
                action="token.create",
                target=f"token:{record.id}",
                detail={
                    "site": site,
                    "labels": checked,
                    "expires_at": record.expires_at.isoformat(),
                },
            )
        return token, record

    def consume(self, session: Session, token: str, *, agent_id: str, now: datetime) -> TokenGrant:
        """Marks the token used by `agent_id`, in the caller's transaction; exactly one wins.

        One conditional UPDATE decides: of any number of concurrent consumers only one sees
        a row updated; the others are told "used" (or "expired"/"unknown").
        """
        check_agent_id(agent_id)
        if not isinstance(token, str) or TOKEN_PATTERN.fullmatch(token) is None:
            raise InvalidJoinToken("malformed")
        token_hash = hash_token(token)
        claim = (
            update(JoinToken)
            .where(
                col(JoinToken.token_hash) == token_hash,
                col(JoinToken.used_at).is_(None),
                col(JoinToken.expires_at) > now,
            )
            .values(used_at=now, used_by_agent_id=agent_id)
            .execution_options(synchronize_session=False)
        )
        claimed = session.exec(claim).rowcount
        record = session.exec(
            select(JoinToken)
            .where(JoinToken.token_hash == token_hash)
            .execution_options(populate_existing=True)  # the UPDATE bypassed the identity map
        ).first()
        if claimed != 1 or record is None or record.id is None:
            if record is None:
                raise InvalidJoinToken("unknown")
            raise InvalidJoinToken("used" if record.used_at is not None else "expired")
        return TokenGrant(token_id=record.id, site=record.site, labels=dict(record.labels))

    def list(self, include_used: bool = False) -> builtins.list[JoinToken]:
        """Oldest first; without `include_used`, only tokens nobody has used (expired ones too)."""
        statement = select(JoinToken).order_by(col(JoinToken.created_at), col(JoinToken.id))
        if not include_used:
            statement = statement.where(col(JoinToken.used_at).is_(None))
        with self._db.session() as session:
            return builtins.list(session.exec(statement).all())

    def revoke(self, token_id: int, *, actor: str = "system") -> None:
        """Deletes a token nobody has used yet; a used one stays as the record of its use."""
        with self._db.session() as session:
            record = session.get(JoinToken, token_id)
            if record is None:
                raise NotFound(f"no join token {token_id}")
            if record.used_at is not None:
                raise TokenAlreadyUsed(f"join token {token_id} was already used")
            session.delete(record)
            self._audit.record(
                session,
                actor=actor,
                action="token.revoke",
                target=f"token:{token_id}",
                detail={"site": record.site},
            )
