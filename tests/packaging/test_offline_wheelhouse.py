"""The offline wheelhouse (`make wheelhouse`): the agent installs from it in a network
namespace with no network at all, and what it installs loads the demo model."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.packaging.debian_host import WHEELHOUSE, build_deb, require_root

PYTHON = "/usr/bin/python3.11"  # Debian's, as at a site


def _without_network(script: str, *arguments: str | Path) -> subprocess.CompletedProcess[str]:
    """`script` under sh in a new network namespace (nothing but a downed loopback)."""
    return subprocess.run(
        ["unshare", "--net", "--", "sh", "-euc", script, "sh", *map(str, arguments)],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_agent_installs_from_the_wheelhouse_with_no_network(
    demo_model: Path, tmp_path: Path
) -> None:
    require_root()  # a network namespace needs CAP_SYS_ADMIN
    assert any(WHEELHOUSE.glob("outpost-*.whl")), f"no wheelhouse at {WHEELHOUSE}: make wheelhouse"
    environment = tmp_path / "agent-env"
    installed = _without_network(
        """
        ip -o link | cut -d: -f2 | tr -d ' ' > "$3/links"
        "$4" -m venv "$1"
        "$1/bin/pip" install --quiet --no-index --find-links "$2" outpost
        "$1/bin/pip" check
        "$1/bin/outpost-agent" --help > /dev/null
        "$1/bin/python" -c '
import sys, llama_cpp
model = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=64, verbose=False)
print("tokens", len(model.tokenize(b"Hello from the site")))
' "$5"
        """,
        environment, WHEELHOUSE, tmp_path, PYTHON, demo_model,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert (tmp_path / "links").read_text().split() == ["lo"]  # no way out of the machine
    assert "No broken requirements found." in installed.stdout
    tokens = int(installed.stdout.split("tokens ")[1].split()[0])
    assert tokens > 3


def test_a_wheelhouse_missing_a_dependency_fails_the_build_naming_it(tmp_path: Path) -> None:
    """The package build never reaches for the network: a missing wheel is an error."""
    partial = tmp_path / "partial"
    partial.mkdir()
    for wheel in WHEELHOUSE.glob("*.whl"):
        if not wheel.name.startswith("grpcio-"):
            shutil.copy(wheel, partial)
    with pytest.raises(AssertionError, match=r"(?s)--no-index.*grpcio"):
        build_deb("0.1.0-1", tmp_path / "out", wheelhouse=partial)
    assert not list((tmp_path / "out").glob("*.deb"))
