"""The control plane's systemd unit: exposure measured by systemd-analyze, directives, ExecStart."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from controlplane.cli import build_parser, build_settings

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging" / "systemd" / "outpost-controlplane.service"
MAX_EXPOSURE = 4.9  # systemd's scale is 0.0-10.0; --threshold takes tenths
VENV_BIN = "/opt/outpost-controlplane/bin/outpost"
_EXPOSURE = re.compile(r"Overall exposure level for \S+: (\d+\.\d)")


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail(
            "systemd-analyze is not installed: the unit's hardening cannot be measured. "
            "Install Debian's systemd package (it need not be running: the check is offline)."
        )
    return path


def security(unit: Path, threshold: float) -> tuple[int, float, str]:
    """Runs `systemd-analyze security --offline=true`; returns its status, exposure, output."""
    done = subprocess.run(
        [
            systemd_analyze(),
            "security",
            "--offline=true",
            f"--threshold={round(threshold * 10)}",
            "--no-pager",
            str(unit),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = done.stdout + done.stderr
    match = _EXPOSURE.search(output)
    assert match, f"no exposure level in systemd-analyze's output:\n{output}"
    return done.returncode, float(match.group(1)), output


def unit_directives(path: Path) -> dict[str, list[str]]:
    """`Section.Key` → values in order (systemd allows a key more than once)."""
    directives: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not Key=Value: {raw!r}"
        directives.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return directives


def test_exposure_is_at_most_4_9() -> None:
    status, exposure, output = security(UNIT, MAX_EXPOSURE)
    assert exposure <= MAX_EXPOSURE, output
    assert status == 0, output


def test_the_measurement_can_fail(tmp_path: Path) -> None:
    """A unit without hardening is above the threshold and systemd-analyze says so."""
    weak = tmp_path / "weak.service"
    weak.write_text("[Service]\nExecStart=/bin/true\n")
    status, exposure, output = security(weak, MAX_EXPOSURE)
    assert exposure > MAX_EXPOSURE, output
    assert status != 0, output


def test_key_directives() -> None:
    d = unit_directives(UNIT)
    expected = {
        "Service.Type": ["exec"],
        "Service.User": ["outpost"],
        "Service.Group": ["outpost"],
        "Service.StateDirectory": ["outpost"],
        "Service.Restart": ["on-failure"],
        "Service.ProtectSystem": ["strict"],
        "Service.ProtectHome": ["yes"],
        "Service.PrivateTmp": ["yes"],
        "Service.PrivateDevices": ["yes"],
        "Service.NoNewPrivileges": ["yes"],
        "Service.CapabilityBoundingSet": [""],
        "Install.WantedBy": ["multi-user.target"],
    }
    for key, values in expected.items():
        assert d.get(key) == values, f"{key}: {d.get(key)}"
    assert "@system-service" in d["Service.SystemCallFilter"]
    # The flower-superlink child is started with fork + execve: never filtered.
    assert not any(
        "@process" in v or "execve" in v for v in d["Service.SystemCallFilter"] if "~" in v
    )
    assert d["Service.EnvironmentFile"] == ["-/etc/outpost/controlplane.env"]


def exec_start_script() -> str:
    """The `sh -c` script of ExecStart, with systemd's `$$` escapes undone."""
    (exec_start,) = unit_directives(UNIT)["Service.ExecStart"]
    prefix = "/bin/sh -c '"
    assert exec_start.startswith(prefix), exec_start
    assert exec_start.endswith("'"), exec_start
    script = exec_start[len(prefix) : -1]
    assert "'" not in script
    assert re.search(r"(?<!\$)\$(?!\$)", script) is None, "a lone $ is expanded by systemd"
    return script.replace("$$", "$")


def run_exec_start(tmp_path: Path, environ: dict[str, str]) -> list[str]:
    """Runs ExecStart's script with a stand-in `outpost` that prints its arguments."""
    fake = tmp_path / "outpost"
    fake.write_text('#!/bin/sh\nfor arg in "$@"; do printf \'%s\\n\' "$arg"; done\n')
    fake.chmod(0o755)
    script = exec_start_script()
    assert script.startswith(f"exec {VENV_BIN} serve "), script
    done = subprocess.run(
        ["/bin/sh", "-c", script.replace(VENV_BIN, str(fake))],
        env={"PATH": "/usr/bin:/bin", **environ},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.splitlines()


def test_exec_start_without_database_uses_sqlite_in_the_state_directory(tmp_path: Path) -> None:
    args = run_exec_start(tmp_path, {})
    assert "--db" not in args
    settings = build_settings(build_parser().parse_args(args))
    (state,) = unit_directives(UNIT)["Service.StateDirectory"]
    assert settings.data_dir == Path("/var/lib") / state
    assert settings.effective_database_url == f"sqlite:////var/lib/{state}/outpost.db"
    assert settings.host == "0.0.0.0"


def test_exec_start_passes_the_database_url_and_extra_arguments(tmp_path: Path) -> None:
    url = "postgresql+psycopg://outpost@db.example.org:5432/outpost?sslmode=require"
    environ = {"OUTPOST_DB": url, "OUTPOST_SERVE_ARGS": "--advertise-host cp.example.org"}
    args = run_exec_start(tmp_path, environ)
    settings = build_settings(build_parser().parse_args(args))
    assert settings.database_url == url
    assert settings.advertise_hosts == ("cp.example.org",)
