"""Calling `outpost ...` in-process against a RunningControlPlane, for the CLI tests."""

from __future__ import annotations

import pytest

from controlplane import cli
from tests.controlplane_harness import RunningControlPlane

NOWHERE = ["--url", "http://127.0.0.1:9", "--api-key", "k"]  # nothing listens there


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The CLI's exit status, stdout and stderr (no environment variables)."""
    status = cli.main(list(argv), environ={})
    out, err = capsys.readouterr()
    return status, out, err


def admin(cp: RunningControlPlane, *argv: str, key: str | None = None) -> list[str]:
    """`argv` with the control plane's URL and its admin key (or `key`)."""
    url = f"http://127.0.0.1:{cp.ports.http}"
    return ["--url", url, "--api-key", key or cp.admin_key, *argv]
