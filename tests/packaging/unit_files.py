"""Systemd unit files for the packaging tests: parsed directives and systemd-analyze runs."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAX_EXPOSURE = 4.9  # systemd-analyze rates 0.0-10.0; up to 4.9 it says "OK"
_EXPOSURE = re.compile(r"Overall exposure level for \S+: (\d+\.\d)")


def project_version() -> str:
    """The upstream version in pyproject.toml."""
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert isinstance(version, str)
    return version


def unit_sections(path: Path) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> every value assigned, in order (systemd's keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a Key=Value line in [{section}]: {raw!r}"
        sections[section][key.strip()].append(value.strip())
    return sections


def systemd_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    """Runs systemd-analyze; its absence fails the test: the units must be checked, always
    (it need not run: these checks are offline)."""
    executable = shutil.which("systemd-analyze")
    if executable is None:
        pytest.fail(
            "systemd-analyze is not installed: the units cannot be checked "
            "(Debian/Ubuntu: apt-get install systemd)"
        )
    return subprocess.run(
        [executable, "--no-pager", *args], capture_output=True, text=True, timeout=120, check=False
    )


def security(unit: Path, threshold: float) -> tuple[int, float, str]:
    """`systemd-analyze security --offline=true` with a threshold (it counts tenths of the
    exposure: 49 means 4.9); answers its exit status, the overall exposure and its output."""
    done = systemd_analyze(
        "security", "--offline=true", f"--threshold={round(threshold * 10)}", str(unit)
    )
    output = done.stdout + done.stderr
    match = _EXPOSURE.search(output)
    assert match, f"no exposure level in systemd-analyze's output:\n{output}"
    return done.returncode, float(match.group(1)), output
