"""The `outpost` command against a real REST server (uvicorn on 127.0.0.1, port 0)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from common.embedded_http import bind_listener, embedded_server
from controlplane import cli
from controlplane.api.app import create_app
from controlplane.auth import Role
from controlplane.db.database import Database
from controlplane.services import ControlPlaneServices
from tests.unit.test_controlplane_api import enroll


@dataclass
class Server:
    url: str
    services: ControlPlaneServices
    admin_key: str
    operator_key: str


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    db = Database(f"sqlite:///{tmp_path / 'outpost.db'}")
    db.migrate()
    services = ControlPlaneServices.build(db)
    admin_key, _ = services.api_keys.create("root", Role.ADMIN)
    operator_key, _ = services.api_keys.create("ops", Role.OPERATOR)
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
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        yield Server(url, services, admin_key, operator_key)
    finally:
        http.should_exit = True
        thread.join(10)
        sock.close()
        db.dispose()


def run(
    capsys: pytest.CaptureFixture[str], *argv: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    status = cli.main(list(argv), environ=env or {})
    out, err = capsys.readouterr()
    return status, out, err


def admin(server: Server, *argv: str) -> list[str]:
    return ["--url", server.url, "--api-key", server.admin_key, *argv]


def test_tokens_create_prints_only_the_token(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(
        capsys, *admin(server, "tokens", "create", "--site", "berlin", "--label", "tier=gold")
    )
    assert status == 0, err
    token = out.strip()
    assert token.startswith("opj_")
    assert "\n" not in token
    assert "shown only this once" in err
    [row] = server.services.tokens.list()
    assert (row.site, row.labels) == ("berlin", {"tier": "gold"})


def test_tokens_create_json_and_ttl(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, *admin(server, "tokens", "create", "--ttl", "90m", "--json"))
    assert status == 0
    created = json.loads(out)
    assert created["token"].startswith("opj_")
    expires = datetime.fromisoformat(created["expires_at"].replace("Z", "+00:00"))
    assert timedelta(minutes=89) < expires - datetime.now(UTC) <= timedelta(minutes=90)
    status, out, _ = run(capsys, *admin(server, "tokens", "list", "--json"))
    assert status == 0
    assert created["token"] not in out
    assert [t["id"] for t in json.loads(out)] == [created["id"]]
    assert run(capsys, *admin(server, "tokens", "revoke", str(created["id"])))[0] == 0
    assert server.services.tokens.list() == []


def test_agents_list_show_label_assign(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    agent_id = enroll(server.services, "edge-berlin", site="berlin", labels={"tier": "gold"})
    status, out, _ = run(capsys, *admin(server, "agents", "list", "--json"))
    assert status == 0
    [agent] = json.loads(out)
    assert agent["id"] == agent_id
    assert agent["name"] == "edge-berlin"
    assert (agent["site"], agent["labels"], agent["state"]) == (
        "berlin",
        {"tier": "gold"},
        "enrolled",
    )
    assert agent["observed_generation"] == 0
    status, out, _ = run(capsys, *admin(server, "agents", "list"))
    assert status == 0
    assert "edge-berlin" in out
    assert "tier=gold" in out
    assert "0/1" in out

    status, _, err = run(capsys, *admin(server, "agents", "label", agent_id, "zone=a", "tier-"))
    assert status == 0, err
    assert server.services.fleet.get(agent_id).labels == {"zone": "a"}

    model = "chat=/models/chat,v2.gguf,context_length=2048,gpu_layers=-1"
    status, out, err = run(capsys, *admin(server, "agents", "assign", agent_id, "--model", model))
    assert status == 0, err
    [assigned] = server.services.desired.current(agent_id).models
    assert (assigned.alias, assigned.path) == ("chat", "/models/chat,v2.gguf")
    assert (assigned.context_length, assigned.gpu_layers, assigned.queue_depth) == (2048, -1, 16)

    status, out, _ = run(capsys, *admin(server, "agents", "show", agent_id, "--json"))
    shown = json.loads(out)
    assert shown["desired_state"]["models"][0]["alias"] == "chat"
    status, out, _ = run(capsys, *admin(server, "agents", "show", agent_id))
    assert status == 0
    assert "/models/chat,v2.gguf" in out
    assert "zone=a" in out

    assert run(capsys, *admin(server, "agents", "revoke", agent_id))[0] == 0
    assert server.services.fleet.get(agent_id).revoked_at is not None


def test_http_errors_print_the_message_and_exit_1(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    agent_id = enroll(server.services)
    operator = ["--url", server.url, "--api-key", server.operator_key]
    status, out, err = run(capsys, *operator, "agents", "revoke", agent_id)
    assert status == 1
    assert out == ""
    assert err.startswith("outpost: error: role 'operator' is not allowed")
    status, _, err = run(capsys, *admin(server, "agents", "show", "0" * 8))
    assert status == 1
    assert "no agent 00000000" in err
    status, _, err = run(capsys, "--url", server.url, "--api-key", "opk_wrong", "agents", "list")
    assert status == 1
    assert "unknown or revoked API key" in err
    bad = "m=relative.gguf"
    status, _, err = run(capsys, *admin(server, "agents", "assign", agent_id, "--model", bad))
    assert status == 1
    assert "models[0].path" in err


def test_connection_errors_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    sock = bind_listener("127.0.0.1", 0)  # bound, then closed: nobody listens there
    port = sock.getsockname()[1]
    sock.close()
    url = f"http://127.0.0.1:{port}"
    status, _, err = run(capsys, "--url", url, "--api-key", "k", "agents", "list")
    assert status == 1
    assert err.startswith(f"outpost: error: cannot reach the control plane at {url}")


@pytest.mark.parametrize(
    "argv",
    [
        ["tokens", "create", "--ttl", "5x"],
        ["tokens", "create", "--ttl", "0h"],
        ["tokens", "create", "--label", "novalue"],
        ["agents", "label", "some-id"],
        ["agents", "assign", "some-id"],
        ["agents", "assign", "some-id", "--model", "no-path"],
        ["agents", "assign", "some-id", "--model", "m=/p,queue_depth=1,queue_depth=2"],
        ["agents", "frobnicate"],
        ["--url", "ftp://host", "agents", "list"],
        ["agents", "show", "../tokens"],
    ],
)
def test_bad_command_lines_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, *argv, env={"OUTPOST_API_KEY": "k"})
    assert status == 2
    assert "error" in err


def test_a_missing_api_key_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "agents", "list")
    assert status == 2
    assert "OUTPOST_API_KEY" in err


def test_environment_fallbacks_and_flag_precedence(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"OUTPOST_URL": server.url, "OUTPOST_API_KEY": server.admin_key}
    status, out, _ = run(capsys, "agents", "list", "--json", env=env)
    assert status == 0
    assert json.loads(out) == []
    wrong = {"OUTPOST_URL": server.url, "OUTPOST_API_KEY": "opk_" + "x" * 40}
    assert run(capsys, "agents", "list", env=wrong)[0] == 1
    status, _, _ = run(capsys, "--api-key", server.admin_key, "agents", "list", env=wrong)
    assert status == 0
    # Global options after the subcommand work too.
    status, _, _ = run(capsys, "agents", "list", "--api-key", server.admin_key, env=wrong)
    assert status == 0


def test_serve_options_become_settings(tmp_path: Path) -> None:
    args = cli.build_parser().parse_args(
        [
            *("serve", "--data-dir", str(tmp_path), "--db", "postgresql://db/outpost"),
            *("--host", "0.0.0.0", "--http-port", "0", "--grpc-port", "9701"),
            *(
                "--mtls-port",
                "9702",
                "--advertise-host",
                "cp.example",
                "--advertise-host",
                "10.0.0.5",
            ),
            *("--insecure", "--log-level", "debug"),
        ]
    )
    settings = cli.build_settings(args)
    assert settings.data_dir == tmp_path
    assert settings.database_url == "postgresql://db/outpost"
    assert (settings.host, settings.http_port, settings.grpc_port, settings.mtls_port) == (
        "0.0.0.0",
        0,
        9701,
        9702,
    )
    assert settings.advertise_hosts == ("cp.example", "10.0.0.5")
    assert settings.insecure
    assert settings.log_level == "DEBUG"
    defaults = cli.build_settings(cli.build_parser().parse_args(["serve", "--data-dir", "d"]))
    assert (defaults.http_port, defaults.grpc_port, defaults.mtls_port) == (8700, 8701, 8702)
    assert defaults.advertise_hosts == ("localhost", "127.0.0.1")
    assert not defaults.insecure


@pytest.mark.parametrize(
    "argv",
    [
        ["serve"],
        ["serve", "--data-dir", "d", "--http-port", "70000"],
        ["serve", "--data-dir", "d", "--log-level", "chatty"],
        ["serve", "--data-dir", "d", "--http-port", "9000", "--grpc-port", "9000"],
    ],
)
def test_bad_serve_options_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv, environ={}) == 2
    assert "error" in capsys.readouterr().err
