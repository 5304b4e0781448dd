"""`Users`: console users with roles and scrypt passwords: create, list, set a password, disable."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from common.errors import Conflict, InvalidArgument, NotFound
from controlplane.audit import AuditLog, check_actor
from controlplane.auth import Principal, Role
from controlplane.db.database import Database
from controlplane.db.models import ConsoleSession, User, utcnow
from controlplane.desired_state_checks import check_identifier
from controlplane.passwords import DUMMY_HASH, check_password, hash_password, verify_password


@dataclass(frozen=True)
class UserAccount:
    """A user as shown: never the password or its hash."""

    id: int
    name: str
    role: Role
    created_at: datetime
    has_password: bool
    disabled_at: datetime | None


def parse_role(role: object) -> Role:
    """One of the roles, else InvalidArgument naming them."""
    if isinstance(role, str) and role in {r.value for r in Role}:
        return Role(role)
    roles = ", ".join(r.value for r in Role)
    raise InvalidArgument(f"a role is one of {roles}, not {str(role)[:32]!r}")


def _account(user: User) -> UserAccount:
    assert user.id is not None  # stored rows have ids
    return UserAccount(
        id=user.id,
        name=user.name,
        role=Role(user.role),
        created_at=user.created_at,
        has_password=user.password_hash is not None,
        disabled_at=user.disabled_at,
    )


class Users:
    """Every change is audited; a password change or a disable ends the user's console sessions."""

    def __init__(
        self, db: Database, audit: AuditLog, *, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self._db = db
        self._audit = audit
        self._clock = clock

    def create(self, name: str, role: Role | str, password: str, *, actor: str) -> UserAccount:
        """A new user; Conflict when the name is taken (e.g. by an API key's user)."""
        check_identifier(name, "a user name")
        role = parse_role(role)
        check_password(password)
        check_actor(actor)
        password_hash = hash_password(password)
        try:
            with self._db.session() as session:
                if session.exec(select(User).where(User.name == name)).first() is not None:
                    raise Conflict(f"user {name!r} exists: set its password with set-password")
                user = User(
                    name=name,
                    role=role.value,
                    created_at=self._clock(),
                    password_hash=password_hash,
                )
                session.add(user)
                session.flush()
                self._audit.record(
                    session,
                    actor=actor,
                    action="user.create",
                    target=f"user:{name}",
                    detail={"role": role.value},
                )
                return _account(user)
        except IntegrityError as exc:  # created by another request at the same moment
            raise Conflict(f"user {name!r} exists") from exc

    def list(self) -> builtins.list[UserAccount]:
        with self._db.session() as session:
            return [_account(u) for u in session.exec(select(User).order_by(col(User.name)))]

    def get(self, name: str) -> UserAccount:
        with self._db.session() as session:
            return _account(self._user(session, name))

    def set_password(self, name: str, password: str, *, actor: str) -> UserAccount:
        check_password(password)
        check_actor(actor)
        password_hash = hash_password(password)
        with self._db.session() as session:
            user = self._user(session, name)
            user.password_hash = password_hash
            session.add(user)
            self._end_sessions(session, user)
            self._audit.record(
                session, actor=actor, action="user.set_password", target=f"user:{name}"
            )
            return _account(user)

    def disable(self, name: str, *, actor: str) -> UserAccount:
        """The user can no longer log in or use their API keys; idempotent."""
        check_actor(actor)
        with self._db.session() as session:
            user = self._user(session, name)
            if user.disabled_at is None:
                user.disabled_at = self._clock()
                session.add(user)
                self._audit.record(
                    session, actor=actor, action="user.disable", target=f"user:{name}"
                )
            self._end_sessions(session, user)
            return _account(user)

    def authenticate(self, name: str, password: str) -> tuple[int, Principal] | None:
        """(user id, principal) for a right password of an enabled user, else None.

        An unknown user costs one scrypt too, so timing does not tell which names exist."""
        with self._db.session() as session:
            user = session.exec(select(User).where(User.name == name)).first()
            stored = user.password_hash if user is not None else None
            if not verify_password(password, stored or DUMMY_HASH) or stored is None:
                return None
            assert user is not None
            assert user.id is not None
            if user.disabled_at is not None:
                return None
            return user.id, Principal(name=user.name, role=Role(user.role))

    @staticmethod
    def _user(session: Session, name: str) -> User:
        user = session.exec(select(User).where(User.name == name)).first()
        if user is None:
            raise NotFound(f"no user {name[:64]!r}")
        return user

    @staticmethod
    def _end_sessions(session: Session, user: User) -> None:
        session.execute(delete(ConsoleSession).where(col(ConsoleSession.user_id) == user.id))
