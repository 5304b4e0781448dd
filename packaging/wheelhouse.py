"""Fills a wheelhouse with every wheel the agent needs, so sites install with no network."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tested_versions() -> str:
    """The distributions installed in this environment, as pip constraints: the wheelhouse
    holds the versions the tests ran with, not whatever the index offers today."""
    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    # direct references (name @ url) are not constraints pip accepts
    return "".join(
        f"{line}\n" for line in frozen.splitlines() if "==" in line and " @ " not in line
    )


def fill(wheelhouse: Path) -> None:
    """Wheels of the project and all its runtime dependencies (not the extras). pip builds
    what has no wheel (llama-cpp-python, portable with the Makefile's CMAKE_ARGS) or takes it
    from its cache."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    for stale in wheelhouse.glob("outpost-*.whl"):
        stale.unlink()  # the project's own wheel is always built anew from this checkout
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as constraints:
        constraints.write(tested_versions())
        constraints.flush()
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--constraint", constraints.name,
             "--wheel-dir", str(wheelhouse), str(REPO)],
            check=True,
        )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("directory", type=Path, help="where the wheels go (e.g. dist/wheelhouse)")
    fill(parser.parse_args(argv).directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
