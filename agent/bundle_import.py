"""`import_bundle`: installs a signed offline bundle as if the control plane had sent it."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from agent.artifacts.store import ArtifactError, ArtifactStore
from agent.control.state_store import DesiredStateError, DesiredStateStore
from common.bundle_format import BundleError, BundleManifest, key_id_of, load_public_key
from common.bundle_reader import VerifiedBundle, open_bundle
from common.control import DesiredState, ModelAssignment
from common.files import atomic_write, ensure_private_directory, fsync_directory

PINNED_KEY_FILE = "bundle-signing.pub"
BUNDLE_STATE_FILE = "bundle-state.json"
POLICY_FILE = "policy.json"
WHEELS_DIRECTORY = "wheels"
LOCK_FILE = ".bundle-import.lock"


@dataclass(frozen=True)
class ImportResult:
    sequence: int
    created_at: str
    created_by: str
    key_id: str
    models: tuple[ModelAssignment, ...]
    policy: bool
    wheels: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        document = asdict(self)
        document["models"] = [asdict(model) for model in self.models]
        document["wheels"] = list(self.wheels)
        return document


def pin_public_key(state_dir: Path, public_key_pem: bytes) -> None:
    """Pins the bundle-signing key (enrollment does this with the control plane's key)."""
    load_public_key(public_key_pem)
    ensure_private_directory(state_dir)
    atomic_write(state_dir / PINNED_KEY_FILE, public_key_pem, 0o644)


def trusted_key(state_dir: Path, given_pem: bytes | None) -> tuple[bytes, bool]:
    """The key bundles must be signed with, and whether it still has to be pinned."""
    try:
        pinned = (state_dir / PINNED_KEY_FILE).read_bytes()
    except FileNotFoundError:
        if given_pem is None:
            raise BundleError(
                f"no bundle-signing key is pinned in {state_dir}: pass --public-key with the "
                "control plane's key (`outpost bundle public-key`)"
            ) from None
        load_public_key(given_pem)
        return given_pem, True
    pinned_id = key_id_of(load_public_key(pinned))
    if given_pem is not None and key_id_of(load_public_key(given_pem)) != pinned_id:
        raise BundleError(
            f"the given public key differs from the key pinned in {state_dir / PINNED_KEY_FILE} "
            f"(key id {pinned_id}); a pinned key is never replaced by an import"
        )
    return pinned, False


def last_sequence(state_dir: Path) -> int:
    """The sequence of the last imported bundle; 0 when none was imported."""
    path = state_dir / BUNDLE_STATE_FILE
    try:
        document = json.loads(path.read_bytes())
    except FileNotFoundError:
        return 0
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as error:
        raise BundleError(f"{path} is damaged ({error}); it guards against replays") from None
    sequence = document.get("sequence") if isinstance(document, dict) else None
    if type(sequence) is not int or sequence < 0:
        raise BundleError(f"{path} is damaged: no sequence number")
    return sequence


@contextmanager
def _import_lock(state_dir: Path) -> Iterator[None]:
    fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _check_policy(verified: VerifiedBundle) -> None:
    path = verified.policy_file
    if path is None:
        return
    try:
        document = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise BundleError(f"member policy.json is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise BundleError("member policy.json must be a JSON object")


def _assignments(manifest: BundleManifest) -> tuple[ModelAssignment, ...]:
    return tuple(
        ModelAssignment(
            alias=model.alias,
            path="",
            sha256=model.sha256,
            size_bytes=model.size_bytes,
            model_name=model.name,
            model_version=model.version,
            context_length=model.context_length,
            gpu_layers=model.gpu_layers,
            queue_depth=model.queue_depth,
            threads=model.threads,
        )
        for model in manifest.models
    )


def _stored(state_dir: Path) -> DesiredState | None:
    """The stored desired state (None when there is none or it is damaged)."""
    try:
        return DesiredStateStore(state_dir).load()
    except DesiredStateError:
        return None


def _install(
    verified: VerifiedBundle, state_dir: Path, store: ArtifactStore
) -> tuple[ModelAssignment, ...]:
    """Moves the verified members into place; undoes the new blobs and wheels on a failure."""
    manifest = verified.manifest
    added: list[Path] = []
    try:
        for sha256 in dict.fromkeys(model.sha256 for model in manifest.models):
            if not store.has(sha256):
                added.append(store.adopt(sha256, verified.model_file(sha256)))
        wheels_dir = state_dir / WHEELS_DIRECTORY
        for source in verified.wheel_files:
            ensure_private_directory(wheels_dir)
            target = wheels_dir / source.name
            if not target.exists():
                added.append(target)
            os.replace(source, target)
        if manifest.wheels:
            fsync_directory(wheels_dir)
        models = _assignments(manifest)
        stored = _stored(state_dir)
        # The next generation of this agent's own count (the bundle's sequence is the signing
        # control plane's counter, a different scale); labels are not a bundle's to set.
        generation = stored.generation + 1 if stored is not None else 1
        labels = MappingProxyType(dict(stored.labels) if stored is not None else {})
        DesiredStateStore(state_dir).save(DesiredState(generation, models, labels))
    except BaseException:
        for path in added:
            path.unlink(missing_ok=True)
        raise
    if verified.policy_file is not None:  # kept when a bundle carries none: fail closed
        os.replace(verified.policy_file, state_dir / POLICY_FILE)
        fsync_directory(state_dir)
    return models


def import_bundle(bundle: Path, state_dir: Path, *, public_key_pem: bytes | None) -> ImportResult:
    """Verifies `bundle` (signature with the pinned key, every member's size and sha256, a
    sequence newer than the last import) in staging, and only then installs its models,
    policy and wheels and saves its desired state. On an error nothing is installed."""
    ensure_private_directory(state_dir)
    with _import_lock(state_dir):
        key_pem, pin = trusted_key(state_dir, public_key_pem)
        last = last_sequence(state_dir)
        store = ArtifactStore(state_dir / "artifacts")
        with open_bundle(bundle, key_pem) as reader:
            manifest = reader.manifest
            if manifest.sequence <= last:
                raise BundleError(
                    f"older bundle: sequence {manifest.sequence} is not newer than the last "
                    f"imported bundle's {last}; a bundle cannot be replayed over a newer one"
                )
            needed = sum(member.size_bytes for member in manifest.members)
            if needed > (free := store.free_bytes()):
                raise BundleError(f"not enough disk space: {needed} bytes needed, {free} free")
            staging = Path(tempfile.mkdtemp(prefix="bundle-", dir=store.staging_dir()))
            try:
                verified = reader.extract_to(staging)
                _check_policy(verified)
                try:
                    models = _install(verified, state_dir, store)
                except ArtifactError as error:
                    raise BundleError(str(error)) from None
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        document = {"sequence": manifest.sequence, "key_id": manifest.key_id}
        atomic_write(state_dir / BUNDLE_STATE_FILE, json.dumps(document).encode() + b"\n", 0o600)
        if pin:
            pin_public_key(state_dir, key_pem)
    return ImportResult(
        sequence=manifest.sequence,
        created_at=manifest.created_at,
        created_by=manifest.created_by,
        key_id=manifest.key_id,
        models=models,
        policy=manifest.policy is not None,
        wheels=manifest.wheels,
    )
