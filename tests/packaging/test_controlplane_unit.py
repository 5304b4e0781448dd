"""The control plane's systemd unit: exposure measured by systemd-analyze, directives, ExecStart."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from controlplane.cli import build_parser, build_settings
from tests.packaging.unit_files import MAX_EXPOSURE, security, unit_sections

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging" / "systemd" / "outpost-controlplane.service"
VENV_BIN = "/opt/outpost-controlplane/bin/outpost"


def unit_directives(path: Path) -> dict[str, list[str]]:
    """`Section.Key` → values in order."""
    return {
        f"{section}.{key}": values
        for section, keys in unit_sections(path).items()
        for key, values in keys.items()
    }


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
