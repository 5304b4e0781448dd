"""Builds a signed offline bundle from registry models, a routing policy and agent wheels."""

from __future__ import annotations

import json
import stat
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common.bundle_format import (
    MAX_MODELS,
    MAX_POLICY_BYTES,
    MAX_WHEELS,
    POLICY_MEMBER,
    WHEEL_MEMBER,
    BundleError,
    ManifestModel,
    model_member,
    write_bundle,
)
from controlplane.bundle_signing import BundleSigner


@dataclass(frozen=True)
class BundleModel:
    """A registry model to carry, `blob` being its verified file in the control plane's store."""

    alias: str
    sha256: str
    size_bytes: int
    name: str
    version: str
    blob: Path
    context_length: int = 4096
    gpu_layers: int = 0
    threads: int = 0
    queue_depth: int = 16


@dataclass(frozen=True)
class BundleSummary:
    path: Path
    sequence: int
    created_at: str
    key_id: str
    size_bytes: int
    models: tuple[ManifestModel, ...]
    policy: bool
    wheels: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "sequence": self.sequence,
            "created_at": self.created_at,
            "key_id": self.key_id,
            "size_bytes": self.size_bytes,
            "models": [asdict(m) for m in self.models],
            "policy": self.policy,
            "wheels": list(self.wheels),
        }


def _regular_file(path: Path, what: str) -> int:
    """The size of `path`, a regular file (not a link to one)."""
    try:
        info = path.lstat()
    except OSError as error:
        raise BundleError(f"{what} {path}: {error.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise BundleError(f"{what} {path} is not a regular file")
    return info.st_size


def check_policy_file(path: Path) -> None:
    """A policy is a JSON object of at most MAX_POLICY_BYTES (the engine reads it later)."""
    if _regular_file(path, "the policy") > MAX_POLICY_BYTES:
        raise BundleError(f"the policy {path} is larger than {MAX_POLICY_BYTES} bytes")
    try:
        document = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise BundleError(f"the policy {path} is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise BundleError(f"the policy {path} must be a JSON object")


def wheel_files(directory: Path) -> list[Path]:
    """Every regular *.whl file in `directory`, by name."""
    if not directory.is_dir():
        raise BundleError(f"the wheels directory {directory} is not a directory")
    wheels = []
    for path in sorted(directory.glob("*.whl")):
        if not stat.S_ISREG(path.lstat().st_mode):
            continue
        if WHEEL_MEMBER.fullmatch(f"wheels/{path.name}") is None:
            raise BundleError(f"the wheel name {path.name!r} has characters a bundle refuses")
        wheels.append(path)
    if len(wheels) > MAX_WHEELS:
        raise BundleError(f"a bundle may carry at most {MAX_WHEELS} wheels, not {len(wheels)}")
    return wheels


def _model_files(models: Sequence[BundleModel]) -> list[tuple[str, Path]]:
    files: dict[str, Path] = {}
    for model in models:
        size = _regular_file(model.blob, f"the file of model {model.alias}")
        if size != model.size_bytes:
            raise BundleError(
                f"the file of model {model.alias} ({model.blob}) has {size} bytes; "
                f"the registry says {model.size_bytes}"
            )
        files.setdefault(model_member(model.sha256), model.blob)
    return list(files.items())


def build_bundle(
    out: Path,
    models: Sequence[BundleModel],
    signer: BundleSigner,
    *,
    actor: str,
    policy: Path | None = None,
    wheels_dir: Path | None = None,
) -> BundleSummary:
    """Writes a bundle of `models` (each blob re-hashed as it is copied) to `out`, atomically."""
    if not models:
        raise BundleError("a bundle needs at least one model")
    if len(models) > MAX_MODELS:
        raise BundleError(f"a bundle may carry at most {MAX_MODELS} models")
    if not out.parent.is_dir():
        raise BundleError(f"the directory of {out} does not exist")
    files = _model_files(models)
    if policy is not None:
        check_policy_file(policy)
        files.append((POLICY_MEMBER, policy))
    wheels = wheel_files(wheels_dir) if wheels_dir is not None else []
    files.extend((f"wheels/{path.name}", path) for path in wheels)
    entries = [
        ManifestModel(
            alias=m.alias,
            sha256=m.sha256,
            size_bytes=m.size_bytes,
            name=m.name,
            version=m.version,
            context_length=m.context_length,
            gpu_layers=m.gpu_layers,
            threads=m.threads,
            queue_depth=m.queue_depth,
        )
        for m in models
    ]
    manifest = write_bundle(
        out,
        sequence=signer.next_sequence(),
        created_by=actor,
        key_id=signer.key_id,
        models=entries,
        files=files,
        sign=signer.sign,
    )
    return BundleSummary(
        path=out,
        sequence=manifest.sequence,
        created_at=manifest.created_at,
        key_id=manifest.key_id,
        size_bytes=out.stat().st_size,
        models=manifest.models,
        policy=manifest.policy is not None,
        wheels=manifest.wheels,
    )
