"""`Role`, `Principal` and `ApiKeys`: who calls the REST API, and what they may do."""

from __future__ import annotations

import builtins
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from common.errors import NotFound
from controlplane.audit import AuditLog, check_actor
from controlplane.db.database import Database
from controlplane.db.models import ApiKey, User, utcnow
from controlplane.desired_state_checks import check_identifier

KEY_PREFIX = "opk_"
KEY_PATTERN = re.compile(r"opk_[A-Za-z0-9_-]{40}")
SHOWN_PREFIX_CHARS = 8
LAST_USED_RESOLUTION = timedelta(minutes=1)
INITIAL_ADMIN = "admin"


class Role(StrEnum):
    ADMIN = "admin"  # everything, including users and keys
    OPERATOR = "operator"  # changes the fleet: tokens, agents, desired state
    ANALYST = "analyst"  # reads everything, changes nothing
    VIEWER = "viewer"  # reads the fleet

    def can_change(self) -> bool:
        return self in (Role.ADMIN, Role.OPERATOR)

    def is_admin(self) -> bool:
        return self is Role.ADMIN


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key(prefix: str = KEY_PREFIX) -> str:
    """`prefix` + 40 URL-safe random characters (240 bits)."""
    return prefix + secrets.token_urlsafe(30)


class ApiKeys:
    """API keys (`opk_` + 40 URL-safe characters); only their sha256 is stored."""

    def __init__(
        self, db: Database, audit: AuditLog, *, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self._db = db
        self._audit = audit
        self._clock = clock

    def create(self, name: str, role: Role, *, actor: str = "system") -> tuple[str, ApiKey]:
        """A new key for user `name` (created with `role` if new); the key is not kept."""
        check_identifier(name, "a user name")
        role = Role(role)
        check_actor(actor)
        with self._db.session() as session:
            key, record = self._create(session, name, role)
            self._audit.record(
                session,
                actor=actor,
                action="api_key.create",
                target=f"user:{name}",
                detail={"key_id": record.id, "prefix": record.prefix, "role": role.value},
            )
        return key, record

    def authenticate(self, key: str) -> Principal | None:
        """The key's principal, or None for a malformed, unknown or revoked key.

        The lookup is by the key's sha256, so how long it takes says nothing about how much
        of a guessed key was right.
        """
        if not isinstance(key, str) or KEY_PATTERN.fullmatch(key) is None:
            return None
        key_hash = hash_key(key)
        with self._db.session() as session:
            row = session.exec(
                select(ApiKey, User)
                .join(User, col(User.id) == col(ApiKey.user_id))
                .where(ApiKey.key_hash == key_hash)
            ).first()
            if row is None:
                return None
            record, user = row
            if not hmac.compare_digest(record.key_hash, key_hash) or record.revoked_at is not None:
                return None
            if user.disabled_at is not None:  # `outpost users disable`
                return None
            now = self._clock()
            if record.last_used_at is None or now - record.last_used_at >= LAST_USED_RESOLUTION:
                record.last_used_at = now
                session.add(record)
            return Principal(name=user.name, role=Role(record.role))

    def revoke(self, key_id: int, *, actor: str = "system") -> None:
        check_actor(actor)
        with self._db.session() as session:
            record = session.get(ApiKey, key_id)
            if record is None:
                raise NotFound(f"no API key {key_id}")
            if record.revoked_at is not None:
                return
            record.revoked_at = self._clock()
            session.add(record)
            self._audit.record(
                session,
                actor=actor,
                action="api_key.revoke",
                target=f"api_key:{key_id}",
                detail={"prefix": record.prefix},
            )

    def list(self, *, include_revoked: bool = False) -> builtins.list[ApiKey]:
        statement = select(ApiKey).order_by(col(ApiKey.id))
        if not include_revoked:
            statement = statement.where(col(ApiKey.revoked_at).is_(None))
        with self._db.session() as session:
            return builtins.list(session.exec(statement).all())

    def ensure_initial_admin(self) -> str | None:
        """On an empty database: user "admin" with an admin key, returned in plain text.

        Returns None once any user exists, so the key is shown exactly once.
        """
        try:
            with self._db.session() as session:
                users = session.exec(select(func.count()).select_from(User)).one()
                if users:
                    return None
                key, record = self._create(session, INITIAL_ADMIN, Role.ADMIN)
                self._audit.record(
                    session,
                    actor="system",
                    action="api_key.create",
                    target=f"user:{INITIAL_ADMIN}",
                    detail={"key_id": record.id, "prefix": record.prefix, "role": "admin"},
                )
        except IntegrityError:  # another process created it at the same moment
            return None
        return key

    def _create(self, session: Session, name: str, role: Role) -> tuple[str, ApiKey]:
        now = self._clock()
        user = session.exec(select(User).where(User.name == name)).first()
        if user is None:
            user = User(name=name, role=role.value, created_at=now)
            session.add(user)
            session.flush()
        assert user.id is not None  # assigned by the flush
        key = new_key()
        record = ApiKey(
            key_hash=hash_key(key),
            prefix=key[:SHOWN_PREFIX_CHARS],
            user_id=user.id,
            role=role.value,
            created_at=now,
        )
        session.add(record)
        session.flush()
        return key, record
