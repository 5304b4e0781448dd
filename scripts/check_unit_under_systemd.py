"""Runs the installed outpost-agent unit under a real systemd, booted as PID 1 of new namespaces."""

# On a machine (or container) without a running systemd, as root with CAP_SYS_ADMIN:
#   .venv/bin/python scripts/check_unit_under_systemd.py dist/outpost-agent_0.1.0-1_amd64.deb
# It installs the package, boots systemd in new PID, mount and UTS namespaces with private
# /run, /tmp and /var/tmp and with everything sysinit.target wants masked (no tmpfiles, which
# would empty the host's /tmp, no udev), starts the unit with systemctl, enrolls it at a
# control plane on 127.0.0.1, assigns the demo model and checks that the sandboxed agent
# serves it, that systemd receives the watchdog pings and that it stops cleanly; then kills
# that systemd and purges the package. Not part of the test suite: it needs privileges a test
# machine may not give (docs/systemd.md has its output).

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.demo_model import default_cache_dir, ensure_demo_model
from tests.controlplane_harness import (
    RunningControlPlane,
    controlplane_settings,
    wait_until,
)

BOOT = r"""
set -eu
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /var/tmp
mkdir -p /run/systemd/system
for unit in $(ls /lib/systemd/system/sysinit.target.wants/ \
                 /etc/systemd/system/sysinit.target.wants/ 2>/dev/null \
              | grep -v ':' | grep -v '^systemd-journald.service$') \
            systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket \
            systemd-tmpfiles-setup.service systemd-tmpfiles-setup-dev.service \
            systemd-tmpfiles-clean.timer; do
    ln -sf /dev/null "/run/systemd/system/$unit"
done
printf '[Unit]\nDescription=Nothing but what is started\nDefaultDependencies=no\n' \
    > /run/systemd/system/outpost-check.target
exec /lib/systemd/systemd --system --unit=outpost-check.target
"""
SHOWN = "ActiveState,SubState,Result,StatusText,NRestarts,WatchdogUSec,ExecMainStatus"
AGENT_HTTP = "http://127.0.0.1:8080"  # the package's default config


@contextmanager
def booted_systemd() -> Iterator[int]:
    """systemd as PID 1 of new namespaces; answers its pid as this namespace sees it."""
    booted = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount", "--uts", "--mount-proc", "sh", "-c", BOOT],
        start_new_session=True,
    )
    try:
        wait_until(lambda: _systemd_pid(booted.pid) is not None, "systemd is up", 30)
        pid = _systemd_pid(booted.pid)
        assert pid is not None
        wait_until(lambda: _in(pid, "systemctl", "is-system-running") == "running", "running")
        yield pid
    finally:
        systemd = _systemd_pid(booted.pid)
        if systemd is not None:
            os.kill(systemd, 9)  # PID 1 of the namespace: everything in it goes with it
        booted.wait(30)


def _systemd_pid(unshare_pid: int) -> int | None:
    children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children")
    try:
        pids = children.read_text().split()
    except OSError:
        return None
    if not pids or Path(f"/proc/{pids[0]}/exe").resolve().name != "systemd":
        return None
    return int(pids[0])


def _in(pid: int, *command: str) -> str:
    done = subprocess.run(["nsenter", "-t", str(pid), "-m", "-p", *command], capture_output=True)
    return (done.stdout + done.stderr).decode().strip()


def _show(pid: int) -> dict[str, str]:
    lines = _in(pid, "systemctl", "show", "-p", SHOWN, "outpost-agent").splitlines()
    return dict(line.split("=", 1) for line in lines)


def _serves_smol() -> bool:
    try:
        models = httpx.get(f"{AGENT_HTTP}/v1/models", timeout=5).json()["data"]
    except (httpx.HTTPError, ValueError, KeyError):
        return False
    return any(m["id"] == "smol" for m in models)


def check(pid: int, demo_model: Path, data_dir: Path) -> None:
    since = int(time.time())
    with RunningControlPlane(controlplane_settings(data_dir, None)) as cp:
        config = Path("/etc/outpost/agent.toml")
        config.write_text(
            config.read_text() + f'control_plane = "{cp.enroll_address}"\n'
            f'join_token = "{cp.create_token(site="branch")}"\n'
            f'ca_fingerprint = "{cp.fingerprint}"\n'
        )
        started = time.monotonic()
        print("systemctl start:", _in(pid, "systemctl", "start", "outpost-agent") or "ok", end="")
        print(f" (returned after {time.monotonic() - started:.1f} s: Type=notify, READY=1)")
        print("  ", _show(pid))
        with cp.api() as api:
            wait_until(lambda: bool(api.get("/agents").json()["agents"]), "enrolled", 60)
            agent = api.get("/agents").json()["agents"][0]
        print("enrolled:", agent["id"], "site", agent["site"])
        cp.assign_demo_model(demo_model, agent["id"])
        wait_until(_serves_smol, "the agent serves smol", 180)
        answer = httpx.post(
            f"{AGENT_HTTP}/v1/chat/completions",
            json={"model": "smol", "messages": [{"role": "user", "content": "Hi"}]},
            timeout=60,
        )
        answer.raise_for_status()
        print("chat completion:", repr(answer.json()["choices"][0]["message"]["content"][:60]))

        def pinged_after(moment: int) -> bool:
            stamp = _in(pid, "systemctl", "show", "-p", "WatchdogTimestampMonotonic", "--value",
                        "outpost-agent")  # fmt: skip
            return int(stamp or 0) > moment

        first = int(_in(pid, "systemctl", "show", "-p", "WatchdogTimestampMonotonic", "--value",
                        "outpost-agent") or 0)  # fmt: skip
        wait_until(lambda: pinged_after(first), "a watchdog ping reaches systemd", 40)
        shown = _show(pid)
        print("watchdog ping received by systemd:", shown)
        assert "serving smol" in shown["StatusText"], shown  # the status follows the rollout
        print("systemctl stop:", _in(pid, "systemctl", "stop", "outpost-agent") or "ok")
        shown = _show(pid)
        print("  ", shown)
        assert shown["Result"] == "success", shown
        assert shown["NRestarts"] == "0", shown
        print(_in(pid, "journalctl", "-u", "outpost-agent", "--no-pager", "-o", "cat",
                  f"--since=@{since}"))  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("deb", type=Path, help="the outpost-agent package to install")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root: it installs the package and boots systemd in namespaces")
    demo_model = ensure_demo_model(default_cache_dir(dict(os.environ)))
    subprocess.run(["dpkg", "--purge", "outpost-agent"], capture_output=True, check=False)
    subprocess.run(["dpkg", "--install", str(args.deb)], check=True, capture_output=True)
    try:
        with tempfile.TemporaryDirectory() as data_dir, booted_systemd() as pid:
            check(pid, demo_model, Path(data_dir))
    finally:
        subprocess.run(["dpkg", "--purge", "outpost-agent"], check=True, capture_output=True)
    print("the unit ran under systemd: started, enrolled, served, pinged, stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
