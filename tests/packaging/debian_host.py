"""The Debian package on this test machine: build it, dpkg it, run its unit's ExecStart."""

from __future__ import annotations

import os
import pwd
import shlex
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.packaging.unit_files import REPO, unit_sections
from tests.process_harness import LoggedProcess

BUILD_SCRIPT = REPO / "packaging" / "build_deb.py"
WHEELHOUSE = REPO / "dist" / "wheelhouse"
PACKAGE = "outpost-agent"
UNIT_PATH = Path("/lib/systemd/system/outpost-agent.service")
CONFIG_PATH = Path("/etc/outpost/agent.toml")
STATE_DIR = Path("/var/lib/outpost-agent")
CACHE_DIR = Path("/var/cache/outpost-agent")
ENVIRONMENT_DIR = Path("/opt/outpost-agent")
ENABLED_LINK = Path("/etc/systemd/system/multi-user.target.wants/outpost-agent.service")
# systemd's specifiers the unit uses, for the system manager
SPECIFIERS = {"%S": "/var/lib", "%C": "/var/cache", "%%": "%"}


def run(*command: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True)
    if check:
        assert result.returncode == 0, f"{command}: {result.stdout}\n{result.stderr}"
    return result


def build_deb(version: str, out_dir: Path, wheelhouse: Path = WHEELHOUSE) -> Path:
    """`packaging/build_deb.py` as `make deb` runs it, with gzip (faster than xz)."""
    built = run(
        sys.executable, BUILD_SCRIPT, "--version", version, "--out", out_dir,
        "--wheelhouse", wheelhouse, "--compression", "gzip",
    )  # fmt: skip
    return Path(built.stdout.strip())


def installed_version() -> str | None:
    """The installed package's version; None when it is not installed (or only its config
    remains after a remove)."""
    shown = run("dpkg-query", "-W", "-f=${Status} ${Version}", PACKAGE, check=False)
    if shown.returncode != 0 or not shown.stdout.startswith("install ok installed"):
        return None
    return shown.stdout.split()[-1]


def is_known_to_dpkg() -> bool:
    """Installed, or removed with its config kept."""
    return run("dpkg-query", "-W", PACKAGE, check=False).returncode == 0


def unit_directives(path: Path = UNIT_PATH) -> dict[str, list[str]]:
    """The installed unit's [Service] directives, each with all its values in order."""
    return unit_sections(path)["Service"]


def _expand(text: str) -> str:
    for specifier, value in SPECIFIERS.items():
        text = text.replace(specifier, value)
    return text


class NotifyListener:
    """An abstract-namespace datagram socket, as systemd's NOTIFY_SOCKET (an abstract name
    needs no file permissions, so the agent's user reaches it)."""

    def __init__(self) -> None:
        self.address = f"@outpost-test-{uuid.uuid4().hex}"
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind("\0" + self.address[1:])
        self.messages: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._receive, daemon=True).start()

    def _receive(self) -> None:
        while True:
            try:
                data = self._socket.recv(4096)
            except OSError:
                return
            with self._changed:
                self.messages.extend(data.decode().splitlines())
                self._changed.notify_all()

    def wait_for(self, message: str, timeout: float = 120) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: message in self.messages, timeout):
                raise TimeoutError(f"{message} not notified; got {self.messages}")

    def close(self) -> None:
        self._socket.close()


@contextmanager
def unit_process(notify: NotifyListener) -> Iterator[LoggedProcess]:
    """The installed unit's ExecStart as systemd would start it (no systemd runs here): as its
    User and Group, with its Environment= and NOTIFY_SOCKET; SIGTERM on exit."""
    service = unit_directives()
    user = pwd.getpwnam(service["User"][0])
    assert service["Group"] == [user.pw_name]
    environment = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "NOTIFY_SOCKET": notify.address}
    for assignments in service.get("Environment", []):
        for assignment in shlex.split(assignments):
            name, _, value = assignment.partition("=")
            environment[name] = _expand(value)
    command = [
        "setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
        "--no-new-privs", "--", *shlex.split(_expand(service["ExecStart"][0])),
    ]  # fmt: skip
    process = LoggedProcess(command, env=environment)
    try:
        yield process
    finally:
        process.stop()


def purge_leftovers() -> None:
    """An earlier, interrupted run's installation goes, so each run starts from nothing."""
    if is_known_to_dpkg():
        run("dpkg", "--purge", PACKAGE)


def require_root() -> None:
    assert os.geteuid() == 0, "the Debian package tests install it with dpkg: run them as root"
