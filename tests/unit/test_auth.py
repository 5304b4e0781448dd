"""API keys and roles: creation, authentication, revocation, and the first admin key."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import col, select

from common.errors import InvalidArgument, NotFound
from controlplane.auth import ApiKeys, Principal, Role
from controlplane.db.database import Database
from controlplane.db.models import ApiKey, AuditEvent, User
from controlplane.services import ControlPlaneServices

T0 = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keys(database: Database, clock: Clock) -> ApiKeys:
    return ControlPlaneServices.build(database, clock=clock).api_keys


def stored_key(database: Database, key_id: int | None) -> ApiKey:
    with database.session() as session:
        record = session.get(ApiKey, key_id)
    assert record is not None
    return record


@pytest.mark.parametrize(
    ("role", "can_change", "is_admin"),
    [
        (Role.ADMIN, True, True),
        (Role.OPERATOR, True, False),
        (Role.ANALYST, False, False),
        (Role.VIEWER, False, False),
    ],
)
def test_roles(role: Role, can_change: bool, is_admin: bool) -> None:
    assert role.can_change() is can_change
    assert role.is_admin() is is_admin
    assert Role(role.value) is role


def test_a_new_key_authenticates_as_its_user_and_role(database: Database, keys: ApiKeys) -> None:
    key, record = keys.create("ops-team", Role.OPERATOR, actor="admin")
    assert key.startswith("opk_")
    assert len(key) == 44
    assert record.prefix == key[:8]
    assert record.key_hash == hashlib.sha256(key.encode()).hexdigest()
    with database.engine.connect() as connection:
        for table in ("api_keys", "users", "audit_events"):
            rows = connection.exec_driver_sql(f"SELECT * FROM {table}").all()
            assert all(key not in str(value) for row in rows for value in row)
    assert keys.authenticate(key) == Principal(name="ops-team", role=Role.OPERATOR)

    second, _ = keys.create("ops-team", Role.VIEWER)  # another key for the same user
    assert second != key
    assert keys.authenticate(second) == Principal(name="ops-team", role=Role.VIEWER)
    with database.session() as session:
        assert len(session.exec(select(User)).all()) == 1
        events = session.exec(select(AuditEvent).order_by(col(AuditEvent.id))).all()
    assert [(e.actor, e.action, e.target) for e in events] == [
        ("admin", "api_key.create", "user:ops-team"),
        ("system", "api_key.create", "user:ops-team"),
    ]


@pytest.mark.parametrize(
    "candidate",
    [
        "",
        "opk_",
        "opj_" + "a" * 40,  # a join token's prefix
        "Bearer opk_" + "a" * 40,
        "opk_" + "a" * 39,
        "opk_" + "a" * 41,
        "opk_" + "a" * 39 + "\n",
        "opk_" + "ä" * 40,
        "opk_" + "a" * 10_000,
    ],
    ids=lambda k: repr(k[:20]),
)
def test_malformed_keys_are_refused(keys: ApiKeys, candidate: str) -> None:
    keys.create("someone", Role.ADMIN)
    assert keys.authenticate(candidate) is None


def test_a_wrong_prefix_on_a_real_key_is_refused(keys: ApiKeys) -> None:
    key, _ = keys.create("someone", Role.ADMIN)
    assert keys.authenticate("opj_" + key[4:]) is None
    assert keys.authenticate(key.upper()) is None
    assert keys.authenticate(key) is not None


def test_an_unknown_key_is_refused(keys: ApiKeys) -> None:
    key, _ = keys.create("someone", Role.ADMIN)
    unknown = key[:-1] + ("A" if key[-1] != "A" else "B")
    assert keys.authenticate(unknown) is None


def test_a_revoked_key_is_refused(database: Database, keys: ApiKeys) -> None:
    key, record = keys.create("someone", Role.ADMIN)
    other, _ = keys.create("someone", Role.ADMIN)
    assert record.id is not None
    keys.revoke(record.id, actor="admin")
    assert keys.authenticate(key) is None
    assert keys.authenticate(other) is not None
    assert stored_key(database, record.id).revoked_at == T0
    assert [k.prefix for k in keys.list()] == [other[:8]]
    assert len(keys.list(include_revoked=True)) == 2
    keys.revoke(record.id, actor="admin")  # again: no change, no second audit event
    with database.session() as session:
        actions = [e.action for e in session.exec(select(AuditEvent)).all()]
    assert actions.count("api_key.revoke") == 1
    with pytest.raises(NotFound):
        keys.revoke(12345, actor="admin")


def test_last_used_is_updated_at_most_once_a_minute(
    database: Database, keys: ApiKeys, clock: Clock
) -> None:
    key, record = keys.create("someone", Role.VIEWER)
    assert record.last_used_at is None
    assert keys.authenticate(key) is not None
    assert stored_key(database, record.id).last_used_at == T0
    clock.now = T0 + timedelta(seconds=59)
    assert keys.authenticate(key) is not None
    assert stored_key(database, record.id).last_used_at == T0
    clock.now = T0 + timedelta(seconds=60)
    assert keys.authenticate(key) is not None
    assert stored_key(database, record.id).last_used_at == T0 + timedelta(seconds=60)


@pytest.mark.parametrize("name", ["", "a b", "x" * 64, "'; DROP TABLE users; --", "zoë", "a\nb"])
def test_hostile_user_names_are_refused(database: Database, keys: ApiKeys, name: str) -> None:
    with pytest.raises(InvalidArgument):
        keys.create(name, Role.ADMIN)
    with database.session() as session:
        assert session.exec(select(User)).all() == []


def test_the_initial_admin_key_is_made_once(database: Database, keys: ApiKeys) -> None:
    key = keys.ensure_initial_admin()
    assert key is not None
    assert keys.authenticate(key) == Principal(name="admin", role=Role.ADMIN)
    assert keys.ensure_initial_admin() is None
    assert keys.ensure_initial_admin() is None
    with database.session() as session:
        assert [u.name for u in session.exec(select(User)).all()] == ["admin"]
        assert len(session.exec(select(ApiKey)).all()) == 1


def test_no_initial_admin_once_any_user_exists(database: Database, keys: ApiKeys) -> None:
    keys.create("alice", Role.VIEWER)
    assert keys.ensure_initial_admin() is None
    with database.session() as session:
        assert [u.name for u in session.exec(select(User)).all()] == ["alice"]
