"""The control plane's Flower SuperLink: a supervised child process bound to 127.0.0.1 only,
with its state in the data directory, and the `flwr` commands that start and stop runs on it.

The SuperLink serves the Fleet, Control and Runtime APIs on one port, and its Control API has
no authentication (whoever reaches it can start runs, that is, run code). So it listens on the
loopback interface only; agents reach its Fleet API through the mutual-TLS relay (fleet_link).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common.federated.flower_env import FLOWER_OFFLINE_ENV, free_loopback_port

log = logging.getLogger(__name__)

CONNECTION = "outpost"  # the name of the SuperLink connection in FLWR_HOME/config.toml
START_TIMEOUT_S = 60.0
COMMAND_TIMEOUT_S = 120.0
STOP_GRACE_S = 10.0
APP_DIR = Path(__file__).resolve().parent / "flower_app"


class SuperLinkError(RuntimeError):
    """The SuperLink did not start, or a `flwr` command failed."""


class SuperLink:
    """Starts `flower-superlink` on 127.0.0.1 and keeps it running (`ensure_running`)."""

    def __init__(self, directory: Path, *, executable_dir: Path | None = None) -> None:
        self.directory = directory
        self._bin = executable_dir or Path(sys.executable).parent
        self._process: subprocess.Popen[bytes] | None = None
        # Chosen once, so that the relay in front of it and a restarted SuperLink agree.
        self.port = free_loopback_port()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            **FLOWER_OFFLINE_ENV,
            "FLWR_HOME": str(self.directory / "flower-home"),
            "PATH": f"{self._bin}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def ensure_running(self) -> None:
        """Starts the SuperLink unless it runs; its database keeps runs across restarts."""
        if self.alive():
            return
        if self._process is not None:
            log.warning(
                "the Flower SuperLink exited (status %s): starting it again",
                self._process.returncode,
            )
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        home = self.directory / "flower-home"
        home.mkdir(exist_ok=True, mode=0o700)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "{self.address}"\ninsecure = true\n',
            encoding="utf-8",
        )
        command = [
            str(self._bin / "flower-superlink"),
            "--insecure",  # loopback only: the agents' TLS ends at the relay
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--database",
            str(self.directory / "superlink.db"),
            "--disable-runtime-dependency-installation",
        ]
        with (self.directory / "superlink.log").open("ab") as log_file:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=self._env(),
                start_new_session=True,  # its ServerApp processes stop with it
            )
        self._wait_listening()
        log.info("Flower SuperLink on %s (127.0.0.1 only; pid %d)", self.address, self._process.pid)

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.alive():
                raise SuperLinkError(
                    f"the Flower SuperLink exited at start; see {self.directory / 'superlink.log'}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1.0),
            ):
                return
            time.sleep(0.2)
        raise SuperLinkError(f"the Flower SuperLink did not listen within {START_TIMEOUT_S:.0f} s")

    def _flwr(self, *args: str) -> dict[str, Any]:
        command = [str(self._bin / "flwr"), *args, "--format", "json"]
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                env=self._env(),
                timeout=COMMAND_TIMEOUT_S,
                cwd=self.directory,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise SuperLinkError(
                f"flwr {args[0]} did not answer in {COMMAND_TIMEOUT_S:.0f} s"
            ) from None
        text = done.stdout.decode("utf-8", "replace")
        try:
            answer: dict[str, Any] = json.loads(text[text.index("{") :])
        except ValueError:
            raise SuperLinkError(
                f"flwr {args[0]} failed (status {done.returncode}): "
                + (done.stderr.decode("utf-8", "replace") or text)[-500:]
            ) from None
        if not answer.get("success", False):
            raise SuperLinkError(f"flwr {args[0]} failed: {answer.get('error-message', answer)}")
        return answer

    def start_run(self, job_dir: Path) -> int:
        """Starts the Flower App on the SuperLink for the job in `job_dir`; the run id."""
        answer = self._flwr("run", str(APP_DIR), CONNECTION, "--run-config", f'job-dir="{job_dir}"')
        return int(answer["run-id"])

    def run_status(self, run_id: int) -> dict[str, Any]:
        """Flower's record of the run: status (e.g. "running", "finished:completed"),
        network-traffic and compute-time."""
        runs = self._flwr("ls", CONNECTION, "--run-id", str(run_id)).get("runs", [])
        if not runs:
            raise SuperLinkError(f"the SuperLink knows no run {run_id}")
        run: dict[str, Any] = runs[0]
        return run

    def stop_run(self, run_id: int) -> None:
        self._flwr("stop", str(run_id), CONNECTION)

    def close(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
