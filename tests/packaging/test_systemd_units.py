"""The agent's systemd unit: systemd-analyze's security score and verify, its key directives."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.packaging.unit_files import (
    MAX_EXPOSURE,
    REPO,
    security,
    systemd_analyze,
    unit_sections,
)

AGENT_UNIT = REPO / "packaging" / "systemd" / "outpost-agent.service"
AGENT_EXECUTABLE = "opt/outpost-agent/bin/outpost-agent"
HOST_UNIT_DIRS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))


def test_security_exposure_is_ok() -> None:
    status, exposure, output = security(AGENT_UNIT, MAX_EXPOSURE)
    assert status == 0, output
    assert exposure <= MAX_EXPOSURE
    assert re.search(r"Overall exposure level .*: \d+\.\d (OK|SAFE)", output)
    # The threshold is enforced: one tenth below the measured exposure fails.
    below, _, output = security(AGENT_UNIT, exposure - 0.1)
    assert below != 0, output


def installed_root(root: Path, *, with_executable: bool = True) -> Path:
    """A file system tree as the Debian package leaves it (the unit, the agent's executable)
    with the host's systemd units the agent's unit depends on; returns the unit's path."""
    units = next((d for d in HOST_UNIT_DIRS if (d / "sysinit.target").exists()), None)
    assert units is not None, f"systemd's own units are in none of {HOST_UNIT_DIRS}"
    shutil.copytree(units, root / "usr" / "lib" / "systemd" / "system", symlinks=True)
    (root / "lib").symlink_to("usr/lib")
    if with_executable:
        executable = root / AGENT_EXECUTABLE
        executable.parent.mkdir(parents=True)
        executable.write_text("#!/bin/sh\nexit 0\n")
        executable.chmod(0o755)
    unit = root / "etc" / "systemd" / "system" / AGENT_UNIT.name
    unit.parent.mkdir(parents=True)
    shutil.copyfile(AGENT_UNIT, unit)
    return unit


def test_verify_is_clean_in_an_installed_tree(tmp_path: Path) -> None:
    unit = installed_root(tmp_path)
    result = systemd_analyze("verify", "--man=no", f"--root={tmp_path}", str(unit))
    # verify exits 0 on unknown keys too, so a clean result is also one without a message.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_verify_checks_the_executable_inside_the_tree(tmp_path: Path) -> None:
    """The clean verify above is honest: with the agent missing from the tree it fails."""
    unit = installed_root(tmp_path, with_executable=False)
    result = systemd_analyze("verify", "--man=no", f"--root={tmp_path}", str(unit))
    assert result.returncode != 0
    assert f"/{AGENT_EXECUTABLE} is not executable" in result.stderr


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return unit_sections(AGENT_UNIT)["Service"]


def test_readiness_and_watchdog(service: dict[str, list[str]]) -> None:
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]  # the SuperNodes it starts cannot notify
    assert service["WatchdogSec"] == ["30s"]
    assert service["Restart"] == ["on-failure"]
    assert service["TimeoutStartSec"]


def test_runs_the_installed_agent_unprivileged(service: dict[str, list[str]]) -> None:
    assert service["ExecStart"] == [
        "/opt/outpost-agent/bin/outpost-agent run --config /etc/outpost/agent.toml"
    ]
    assert service["User"] == ["outpost-agent"]
    assert service["Group"] == ["outpost-agent"]
    assert service["StateDirectory"] == ["outpost-agent"]
    assert service["StateDirectoryMode"] == ["0750"]
    assert service["NoNewPrivileges"] == ["yes"]
    assert service["CapabilityBoundingSet"] == [""]
    assert service["ProtectSystem"] == ["strict"]


def test_the_gpu_stays_reachable(service: dict[str, list[str]]) -> None:
    assert "PrivateDevices" not in service  # it would hide /dev/nvidia*
    assert service["DevicePolicy"] == ["closed"]
    allowed = set(service["DeviceAllow"])
    assert {"char-nvidia-frontend rw", "char-nvidia-uvm rw"} <= allowed


def test_sandbox_leaves_what_the_agent_needs(service: dict[str, list[str]]) -> None:
    assert "MemoryDenyWriteExecute" not in service  # torch's JIT kernels need W+X pages
    assert "ProcSubset" not in service  # telemetry and the NVIDIA library read /proc
    filters = " ".join(service["SystemCallFilter"])
    assert "@system-service" in filters
    assert "~@privileged" in filters
    assert "@resources" not in filters.replace("@system-service", "")  # nice -n: setpriority
    families = service["RestrictAddressFamilies"][0].split()
    assert {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"} == set(families)
