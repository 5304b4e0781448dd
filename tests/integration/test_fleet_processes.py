"""The admin's and operator's commands as real processes: `outpost serve`, `outpost tokens
create`, `outpost-agent run`, `outpost agents list --json`."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.controlplane_harness import (
    RunningControlPlane,
    controlplane_settings,
    managed_agent,
    wait_until,
)
from tests.process_harness import LoggedProcess


def agent_run(state_dir: Path, *enroll: str) -> list[str]:
    """`outpost-agent run` on free ports; `enroll` adds the first-start flags."""
    return [sys.executable, "-m", "agent.cli", "run", "--state-dir", str(state_dir),
            "--grpc-port", "0", "--http-port", "0", *enroll]  # fmt: skip


def enroll_flags(control_plane: str, token: str, fingerprint: str) -> list[str]:
    return ["--control-plane", control_plane, "--join-token", token,
            "--ca-fingerprint", fingerprint]  # fmt: skip


def outpost(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controlplane.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@dataclass
class ControlPlaneProcess:
    """`outpost serve` as a child process, with what its log told about it."""

    process: LoggedProcess
    data_dir: Path
    fingerprint: str
    grpc_port: int
    env: dict[str, str]  # OUTPOST_URL and OUTPOST_API_KEY for the `outpost` command


@pytest.fixture
def control_plane(tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    data_dir = tmp_path / "cp"
    process = LoggedProcess(
        [sys.executable, "-m", "controlplane.cli", "serve", "--data-dir", str(data_dir),
         "--http-port", "0", "--grpc-port", "0", "--mtls-port", "0", "--fleet-port", "0"]
    )  # fmt: skip
    try:
        fingerprint = process.wait_for(r"sha256 fingerprint ([0-9a-f]{64})").group(1)
        http_port = process.wait_for(r"REST API on http://127\.0\.0\.1:(\d+)").group(1)
        grpc_port = process.wait_for(r"agents enroll on 127\.0\.0\.1:(\d+)").group(1)
        env = {
            **os.environ,
            "OUTPOST_URL": f"http://127.0.0.1:{http_port}",
            "OUTPOST_API_KEY": (data_dir / "admin-api-key").read_text().strip(),
        }
        yield ControlPlaneProcess(process, data_dir, fingerprint, int(grpc_port), env)
    finally:
        process.stop()


def test_admin_enrolls_an_agent_with_the_commands(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    cp = control_plane
    fingerprint, grpc_port, env = cp.fingerprint, cp.grpc_port, cp.env
    key_file = cp.data_dir / "admin-api-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert str(key_file) in "".join(cp.process.lines)

    created = outpost("tokens", "create", "--site", "branch-3", "--label", "floor=2", env=env)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("opj_")

    agent = LoggedProcess(
        agent_run(tmp_path / "agent", *enroll_flags(f"127.0.0.1:{grpc_port}", token, fingerprint))
    )
    try:
        agent.wait_for(r"enrolled as agent ([0-9a-f-]{36})")

        def listed() -> list[dict[str, object]]:
            result = outpost("agents", "list", "--json", env=env)
            assert result.returncode == 0, result.stderr
            agents: list[dict[str, object]] = json.loads(result.stdout)
            return agents

        wait_until(
            lambda: [a["state"] for a in listed()] == ["connected"], "the agent shows as connected"
        )
        (row,) = listed()
        assert row["site"] == "branch-3"
        assert row["labels"] == {"floor": "2"}
        assert row["observed_generation"] == 1  # the token's labels are its first desired state
        assert agent.stop() == 0
    finally:
        agent.stop()

    # A second start needs only the state directory.
    again = LoggedProcess(agent_run(tmp_path / "agent"))
    try:
        again.wait_for(r"agent .* connected|desired state generation 1 received")
    finally:
        assert again.stop() == 0


def test_reused_token_stops_the_agent_with_a_clear_error(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    cp = control_plane
    fingerprint, grpc_port, env = cp.fingerprint, cp.grpc_port, cp.env
    token = outpost("tokens", "create", env=env).stdout.strip()
    address = f"127.0.0.1:{grpc_port}"
    args = enroll_flags(address, token, fingerprint)
    first = LoggedProcess(agent_run(tmp_path / "a1", *args))
    first.wait_for(r"enrolled as agent")
    first.stop()
    second = subprocess.run(
        agent_run(tmp_path / "a2", *args),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert second.returncode == 2
    assert "join token is used" in second.stderr
    wrong_pin = subprocess.run(
        agent_run(tmp_path / "a3", *enroll_flags(address, token, "0" * 64)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert wrong_pin.returncode == 2
    assert "0" * 64 in wrong_pin.stderr or "fingerprint" in wrong_pin.stderr


def test_agent_notices_a_frozen_control_plane_within_30_seconds(
    control_plane: ControlPlaneProcess, tmp_path: Path
) -> None:
    cp = control_plane
    fingerprint, grpc_port, env = cp.fingerprint, cp.grpc_port, cp.env
    token = outpost("tokens", "create", env=env).stdout.strip()
    running, companion = managed_agent(
        tmp_path / "agent", f"127.0.0.1:{grpc_port}", token, fingerprint
    )
    with running:
        wait_until(companion.link.connected.is_set, "the agent is connected")
        os.kill(cp.process.process.pid, signal.SIGSTOP)  # no FIN, no RST: only keepalive can tell
        try:
            started = time.monotonic()
            wait_until(
                lambda: not companion.link.connected.is_set(), "the agent notices", timeout=30
            )
            noticed_after = time.monotonic() - started
        finally:
            os.kill(cp.process.process.pid, signal.SIGCONT)
        assert noticed_after < 30
        wait_until(companion.link.connected.is_set, "the agent reconnects", timeout=60)


def test_control_plane_notices_a_frozen_agent_within_30_seconds(tmp_path: Path) -> None:
    with RunningControlPlane(controlplane_settings(tmp_path / "cp", None)) as cp:
        agent = LoggedProcess(
            agent_run(
                tmp_path / "agent",
                *enroll_flags(cp.enroll_address, cp.create_token(), cp.fingerprint),
            )
        )
        try:
            agent_id = agent.wait_for(r"enrolled as agent ([0-9a-f-]{36})").group(1)
            assert cp.server.services is not None
            fleet = cp.server.services.fleet
            wait_until(lambda: fleet.get(agent_id).state == "connected", "the agent is connected")
            os.kill(agent.process.pid, signal.SIGSTOP)
            try:
                wait_until(
                    lambda: fleet.get(agent_id).state == "disconnected",
                    "the control plane notices",
                    timeout=30,
                )
            finally:
                os.kill(agent.process.pid, signal.SIGCONT)
            wait_until(lambda: fleet.get(agent_id).state == "connected", "the agent is back", 60)
        finally:
            agent.stop()
