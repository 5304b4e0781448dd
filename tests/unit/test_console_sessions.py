"""Console sessions (idle and absolute expiry, only a hash stored) and the login limiter."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from controlplane.console.login_routes import LoginLimiter
from controlplane.console.sessions import ConsoleSessions, csrf_token_for, session_hash
from controlplane.db.database import Database
from controlplane.db.models import ConsoleSession
from controlplane.services import ControlPlaneServices

IDLE, LIFETIME = timedelta(minutes=30), timedelta(hours=12)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[ControlPlaneServices, ConsoleSessions, Clock, int]]:
    db = Database(f"sqlite:///{tmp_path / 'outpost.db'}")
    db.migrate()
    clock = Clock()
    services = ControlPlaneServices.build(db, clock=clock)
    user = services.users.create("ada", "admin", "a long test password", actor="test")
    yield services, ConsoleSessions(db, idle=IDLE, lifetime=LIFETIME, clock=clock), clock, user.id
    db.dispose()


World = tuple[ControlPlaneServices, ConsoleSessions, Clock, int]


def test_only_the_ids_hash_is_stored_and_the_csrf_token_is_per_session(world: World) -> None:
    services, sessions, _, user_id = world
    first, second = sessions.start(user_id), sessions.start(user_id)
    with services.db.session() as session:
        stored = {row.id_hash for row in session.exec(select(ConsoleSession))}
    assert stored == {session_hash(first), session_hash(second)}
    login = sessions.resume(first)
    assert login is not None
    assert login.principal.name == "ada"
    assert login.csrf_token == csrf_token_for(first) != csrf_token_for(second)


def test_a_session_ends_when_idle(world: World) -> None:
    _, sessions, clock, user_id = world
    session_id = sessions.start(user_id)
    clock.now += IDLE - timedelta(seconds=1)
    assert sessions.resume(session_id) is not None  # use keeps it alive
    clock.now += IDLE - timedelta(seconds=1)
    assert sessions.resume(session_id) is not None
    clock.now += IDLE
    assert sessions.resume(session_id) is None


def test_background_refreshes_do_not_keep_a_session_alive(world: World) -> None:
    _, sessions, clock, user_id = world
    session_id = sessions.start(user_id)
    for _ in range(3):
        clock.now += IDLE / 3 - timedelta(seconds=1)
        assert sessions.resume(session_id, touch=False) is not None
    clock.now += timedelta(seconds=10)
    assert sessions.resume(session_id, touch=False) is None  # idle since the login


def test_a_session_ends_at_its_absolute_expiry_however_busy(world: World) -> None:
    _, sessions, clock, user_id = world
    session_id = sessions.start(user_id)
    ends = clock.now + LIFETIME
    while clock.now + timedelta(minutes=20) < ends:
        clock.now += timedelta(minutes=20)
        assert sessions.resume(session_id) is not None
    clock.now = ends  # used less than 20 minutes ago: not idle, but too old
    assert sessions.resume(session_id) is None


@pytest.mark.parametrize("session_id", ["", "x" * 65, "é", "a\nb", "unknown"])
def test_malformed_or_unknown_ids_are_no_session(world: World, session_id: str) -> None:
    assert world[1].resume(session_id) is None


def test_ending_or_disabling_ends_the_session(world: World) -> None:
    services, sessions, _, user_id = world
    first, second = sessions.start(user_id), sessions.start(user_id)
    sessions.end(first)
    assert sessions.resume(first) is None
    assert sessions.resume(second) is not None
    services.users.disable("ada", actor="test")
    assert sessions.resume(second) is None


def test_the_limiter_counts_per_name_and_per_address_within_its_window() -> None:
    now = [0.0]
    limiter = LoginLimiter(3, 300, clock=lambda: now[0])
    for _ in range(3):
        assert not limiter.blocked("ada", "10.0.0.1")
        limiter.failed("ada", "10.0.0.1")
    assert limiter.blocked("ada", "10.0.0.2")  # the name, from anywhere
    assert limiter.blocked("bob", "10.0.0.1")  # the address, for any name
    assert not limiter.blocked("bob", "10.0.0.2")
    now[0] += 301
    assert not limiter.blocked("ada", "10.0.0.1")
