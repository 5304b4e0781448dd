"""Console users: scrypt passwords, the `Users` service and `outpost users` over the REST API."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from common.embedded_http import bind_listener, embedded_server
from common.errors import Conflict, InvalidArgument, NotFound
from controlplane.api.app import create_app
from controlplane.auth import Role
from controlplane.db.database import Database
from controlplane.db.models import AuditEvent, ConsoleSession, User
from controlplane.passwords import hash_password, verify_password
from controlplane.services import ControlPlaneServices
from tests.cli_calls import run

PASSWORD = "correct horse battery"


def test_a_hash_is_salted_and_verifies_only_its_password() -> None:
    first, second = hash_password(PASSWORD), hash_password(PASSWORD)
    assert first != second  # per-password salt
    assert first.startswith("scrypt$")
    assert PASSWORD not in first
    assert verify_password(PASSWORD, first)
    assert not verify_password(PASSWORD + "x", first)
    assert not verify_password(PASSWORD, "scrypt$1$2$garbage")
    assert not verify_password(PASSWORD, "md5$" + first)


@pytest.fixture
def services(tmp_path: Path) -> Iterator[ControlPlaneServices]:
    db = Database(f"sqlite:///{tmp_path / 'outpost.db'}")
    db.migrate()
    yield ControlPlaneServices.build(db)
    db.dispose()


def test_create_authenticate_and_refuse(services: ControlPlaneServices) -> None:
    users = services.users
    account = users.create("alice", "operator", PASSWORD, actor="root")
    assert account.role is Role.OPERATOR
    assert account.has_password
    found = users.authenticate("alice", PASSWORD)
    assert found is not None
    assert found[1].name == "alice"
    assert found[1].role is Role.OPERATOR
    assert users.authenticate("alice", "wrong password!!") is None
    assert users.authenticate("nobody", PASSWORD) is None
    with pytest.raises(Conflict):
        users.create("alice", "viewer", PASSWORD, actor="root")


@pytest.mark.parametrize(
    ("name", "role", "password"),
    [
        ("<script>", "viewer", PASSWORD),
        ("bob", "superuser", PASSWORD),
        ("bob", "viewer", "short"),
        ("bob", "viewer", "x" * 1025),
        ("bob", "viewer", "line\nbreak in it"),
    ],
)
def test_bad_users_are_refused(
    services: ControlPlaneServices, name: str, role: str, password: str
) -> None:
    with pytest.raises(InvalidArgument):
        services.users.create(name, role, password, actor="root")
    assert services.users.list() == []


def test_a_new_password_or_a_disable_ends_sessions_and_logins(
    services: ControlPlaneServices,
) -> None:
    users = services.users
    account = users.create("carol", "viewer", PASSWORD, actor="root")

    def add_session(tag: str) -> None:
        now = datetime.now(UTC)
        with services.db.session() as session:
            session.add(
                ConsoleSession(
                    id_hash=tag * 64,
                    user_id=account.id,
                    created_at=now,
                    last_seen_at=now,
                    expires_at=now + timedelta(hours=1),
                )
            )

    def sessions() -> int:
        with services.db.session() as session:
            return len(session.exec(select(ConsoleSession)).all())

    add_session("a")
    users.set_password("carol", "another long password", actor="root")
    assert sessions() == 0
    assert users.authenticate("carol", PASSWORD) is None
    assert users.authenticate("carol", "another long password") is not None
    add_session("b")
    users.disable("carol", actor="root")
    assert sessions() == 0
    assert users.authenticate("carol", "another long password") is None
    with pytest.raises(NotFound):
        users.disable("nobody", actor="root")


def test_a_disabled_users_api_keys_stop_working(services: ControlPlaneServices) -> None:
    key, _ = services.api_keys.create("dave", Role.OPERATOR)
    assert services.api_keys.authenticate(key) is not None
    services.users.disable("dave", actor="root")
    assert services.api_keys.authenticate(key) is None


@dataclass
class Server:
    url: str
    services: ControlPlaneServices
    admin_key: str
    viewer_key: str


@pytest.fixture
def server(services: ControlPlaneServices) -> Iterator[Server]:
    admin_key, _ = services.api_keys.create("root", Role.ADMIN)
    viewer_key, _ = services.api_keys.create("watcher", Role.VIEWER)
    sock = bind_listener("127.0.0.1", 0)
    http = embedded_server(create_app(services, max_request_bytes=64 * 1024))
    thread = threading.Thread(
        target=lambda: asyncio.run(http.serve(sockets=[sock])), name="rest", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not http.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the REST server did not start")
        time.sleep(0.01)
    try:
        yield Server(f"http://127.0.0.1:{sock.getsockname()[1]}", services, admin_key, viewer_key)
    finally:
        http.should_exit = True
        thread.join(10)
        sock.close()


def cli_args(server: Server, *argv: str, key: str | None = None) -> list[str]:
    return ["--url", server.url, "--api-key", key or server.admin_key, *argv]


def test_cli_creates_lists_resets_and_disables_users(
    server: Server, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    status, out, err = run(capsys, *cli_args(server, "users", "create", "erin", "--role", "admin"))
    assert status == 0, err
    generated = out.strip()
    assert len(generated) >= 20
    assert "only this once" in err
    assert server.services.users.authenticate("erin", generated) is not None

    monkeypatch.setattr("sys.stdin", io.StringIO("my chosen password\n"))
    argv = cli_args(server, "users", "create", "frank", "--role", "viewer", "--password-stdin")
    status, out, err = run(capsys, *argv)
    assert status == 0, err
    assert out == ""
    assert "my chosen password" not in err
    assert server.services.users.authenticate("frank", "my chosen password") is not None

    status, out, _ = run(capsys, *cli_args(server, "users", "list"))
    assert status == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert rows["erin"][1:3] == ["admin", "set"]
    assert rows["root"][2] == "-"  # an API-key user without a password
    assert generated not in out

    status, out, _ = run(capsys, *cli_args(server, "users", "set-password", "frank"))
    assert status == 0
    assert server.services.users.authenticate("frank", out.strip()) is not None
    assert server.services.users.authenticate("frank", "my chosen password") is None

    status, _, err = run(capsys, *cli_args(server, "users", "disable", "frank"))
    assert status == 0
    assert "disabled" in err
    assert server.services.users.authenticate("frank", out.strip()) is None

    with server.services.db.session() as session:
        events = session.exec(select(AuditEvent).where(AuditEvent.target == "user:frank")).all()
        assert [e.action for e in events] == ["user.create", "user.set_password", "user.disable"]
        assert not any("password" in str(e.detail) for e in events)
        stored = session.exec(select(User).where(User.name == "frank")).one().password_hash
    assert stored is not None
    assert "my chosen password" not in stored


def test_cli_refuses_non_admins_and_bad_input(
    server: Server, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = cli_args(server, "users", "create", "gina", "--role", "admin", key=server.viewer_key)
    status, _, err = run(capsys, *argv)
    assert status == 1
    assert "admin only" in err
    status, _, err = run(capsys, *cli_args(server, "users", "list", key=server.viewer_key))
    assert status == 1
    assert "admin only" in err
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    argv = cli_args(server, "users", "create", "gina", "--role", "admin", "--password-stdin")
    status, _, err = run(capsys, *argv)
    assert status == 1
    assert "12 to 1024" in err
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    status, _, err = run(capsys, *argv)
    assert status == 2
    assert "no password" in err
    status, _, err = run(capsys, *cli_args(server, "users", "create", "x", "--role", "king"))
    assert status == 2
    status, _, err = run(capsys, *cli_args(server, "users", "disable", "nobody"))
    assert status == 1
    assert "no user" in err
    assert [u.name for u in server.services.users.list()] == ["root", "watcher"]
