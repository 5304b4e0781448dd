"""A real `outpost-agent serve` under a stand-in for systemd: READY=1, watchdog, STOPPING=1."""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.process_harness import LoggedProcess

pytestmark = pytest.mark.model

START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


class ServiceManager:
    """The notification socket systemd would give a Type=notify service (abstract name)."""

    def __init__(self) -> None:
        self.name = f"@outpost-test-{uuid.uuid4().hex}"
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind("\0" + self.name[1:])
        self.messages: list[list[str]] = []

    def receive_until(self, assignment: str, timeout: float) -> list[list[str]]:
        """Datagrams up to and including the first holding `assignment`, each split into its
        assignments; raises TimeoutError when it does not come within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        received: list[list[str]] = []
        while True:
            self.socket.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                datagram = self.socket.recv(65536).decode().split("\n")
            except TimeoutError:
                raise TimeoutError(f"no {assignment} within {timeout} s: {received}") from None
            received.append(datagram)
            self.messages.append(datagram)
            if assignment in datagram:
                return received

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def manager() -> Iterator[ServiceManager]:
    bound = ServiceManager()
    yield bound
    bound.close()


def test_agent_notifies_ready_feeds_the_watchdog_and_says_stopping(
    manager: ServiceManager, demo_model: Path
) -> None:
    env = {**os.environ, "NOTIFY_SOCKET": manager.name, "WATCHDOG_USEC": "1000000"}
    env.pop("WATCHDOG_PID", None)
    agent = LoggedProcess(
        [
            *(sys.executable, "-m", "agent.cli", "serve", "--model", str(demo_model)),
            *("--alias", "smol", "--context-length", "512", "--threads", "2"),
            *("--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0"),
        ],
        env=env,
    )
    try:
        before_ready = manager.receive_until("READY=1", START_TIMEOUT_S)
        # READY=1 means usable: at this moment the readiness endpoint already says so.
        http_port = int(agent.wait_for(r"HTTP listening on http://127\.0\.0\.1:(\d+)").group(1))
        readyz = httpx.get(f"http://127.0.0.1:{http_port}/readyz", timeout=10)
        assert readyz.status_code == 200, readyz.text
        ready = before_ready[-1]
        assert ready[0] == "READY=1"
        status = next(a for a in ready if a.startswith("STATUS="))
        assert "serving smol" in status
        assert f"HTTP {http_port}" in status

        # WATCHDOG_USEC=1 s: a ping every half second, from the serving agent's event loop.
        for _ in range(2):
            assert manager.receive_until("WATCHDOG=1", 5.0)[-1] == ["WATCHDOG=1"]
        assert agent.process.poll() is None
    finally:
        exit_code = agent.stop()  # SIGTERM, as systemctl stop sends
    stopping = manager.receive_until("STOPPING=1", STOP_TIMEOUT_S)[-1]
    assert stopping[0] == "STOPPING=1"
    assert exit_code == 0, "".join(agent.lines)
    everything = [a for datagram in manager.messages for a in datagram]
    assert everything.count("READY=1") == 1
    assert everything.count("STOPPING=1") == 1
    assert all(a.split("=")[0] in {"READY", "STATUS", "WATCHDOG", "STOPPING"} for a in everything)
