"""Signed offline bundles: one plain tar of a signed manifest, models, policy and wheels."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.artifacts import MESSAGE_BYTES, check_sha256
from common.errors import InvalidArgument
from common.files import fsync_directory

FORMAT = "outpost-bundle/1"
MANIFEST_MEMBER = "manifest.json"
SIGNATURE_MEMBER = "manifest.sig"
POLICY_MEMBER = "policy.json"
SIGNATURE_BYTES = 64
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_POLICY_BYTES = 1024 * 1024
MAX_MODELS = 64
MAX_WHEELS = 256
MAX_TEXT_CHARS = 255
MODEL_MEMBER = re.compile(r"models/([0-9a-f]{64})\.gguf")
WHEEL_MEMBER = re.compile(r"wheels/[A-Za-z0-9_][A-Za-z0-9._+-]{0,150}\.whl")
IDENTIFIER = re.compile(r"[A-Za-z0-9._-]{1,63}")
COMPRESSED_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
}
_MANIFEST_KEYS = {"format", "sequence", "created_at", "created_by", "key_id", "members", "models",
                  "policy", "wheels"}  # fmt: skip
_INT_RANGES = {"context_length": (64, 1_048_576), "gpu_layers": (-1, 100_000),
               "threads": (0, 1024), "queue_depth": (0, 1024)}  # fmt: skip


class BundleError(Exception):
    """A bundle cannot be written, or is not one this key signed intact; the message says why."""


@dataclass(frozen=True)
class BundleMember:
    path: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class ManifestModel:
    """One model the bundle installs, with the serving parameters of its assignment."""

    alias: str
    sha256: str
    size_bytes: int
    name: str
    version: str
    context_length: int = 4096
    gpu_layers: int = 0
    threads: int = 0
    queue_depth: int = 16


@dataclass(frozen=True)
class BundleManifest:
    sequence: int
    created_at: str
    created_by: str
    key_id: str
    members: tuple[BundleMember, ...]
    models: tuple[ManifestModel, ...]
    policy: str | None
    wheels: tuple[str, ...]

    def to_json(self) -> bytes:
        document = {"format": FORMAT, **asdict(self)}
        return json.dumps(document, indent=1, sort_keys=True).encode()

    def member(self, path: str) -> BundleMember:
        return next(m for m in self.members if m.path == path)


def model_member(sha256: str) -> str:
    return f"models/{sha256}.gguf"


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as error:
        raise BundleError(f"the bundle public key is not a PEM public key: {error}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError("the bundle public key is not an ed25519 key")
    return key


def key_id_of(key: Ed25519PublicKey) -> str:
    """sha256 (hex) of the key's 32 raw bytes: names the key in manifests and messages."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


# -- manifest schema ------------------------------------------------------------------------


def _fail(message: str) -> BundleError:
    return BundleError(f"invalid bundle manifest: {message}")


_KIND_NAMES = {int: "an integer", str: "a string", list: "a list"}


def _get(document: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = document.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _fail(f"{where}.{key} must be {_KIND_NAMES[kind]}, not {value!r:.80}")
    return value


def _object(value: Any, keys: set[str], where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(f"{where} must be an object")
    if set(value) != keys:
        unknown, missing = sorted(set(value) - keys), sorted(keys - set(value))
        raise _fail(f"{where}: unknown fields {unknown}, missing fields {missing}")
    return value


def _text(document: dict[str, Any], key: str, where: str, *, empty: bool = False) -> str:
    value: str = _get(document, key, str, where)
    if not (empty or value) or len(value) > MAX_TEXT_CHARS or not value.isprintable():
        raise _fail(f"{where}.{key} must be 1 to {MAX_TEXT_CHARS} printable characters")
    return value


def _digest(document: dict[str, Any], key: str, where: str) -> str:
    try:
        return check_sha256(document.get(key), f"{where}.{key}")
    except InvalidArgument as error:
        raise _fail(str(error)) from None


def _size(document: dict[str, Any], where: str) -> int:
    size: int = _get(document, "size_bytes", int, where)
    if size < 0:
        raise _fail(f"{where}.size_bytes must not be negative")
    return size


def _member(value: Any, where: str) -> BundleMember:
    item = _object(value, {"path", "sha256", "size_bytes"}, where)
    path: str = _get(item, "path", str, where)
    match = MODEL_MEMBER.fullmatch(path)
    if not (match or path == POLICY_MEMBER or WHEEL_MEMBER.fullmatch(path)):
        raise _fail(f"{where}.path {path!r:.80} is not models/<sha256>.gguf, "
                    f"{POLICY_MEMBER} or wheels/<name>.whl")  # fmt: skip
    member = BundleMember(path, _digest(item, "sha256", where), _size(item, where))
    if match and match.group(1) != member.sha256:
        raise _fail(f"member {path} is named after another sha256 than its own")
    return member


def _model(value: Any, where: str) -> ManifestModel:
    item = _object(value, set(ManifestModel.__dataclass_fields__), where)
    alias: str = _get(item, "alias", str, where)
    if IDENTIFIER.fullmatch(alias) is None:
        raise _fail(f"{where}.alias must be 1 to 63 characters of A-Z a-z 0-9 . _ -")
    numbers = {}
    for key, (low, high) in _INT_RANGES.items():
        numbers[key] = _get(item, key, int, where)
        if not low <= numbers[key] <= high:
            raise _fail(f"{where}.{key} must be between {low} and {high}")
    name, version = _text(item, "name", where), _text(item, "version", where, empty=True)
    sha256, size = _digest(item, "sha256", where), _size(item, where)
    return ManifestModel(alias, sha256, size, name, version, **numbers)


def _list(document: dict[str, Any], key: str, limit: int) -> list[Any]:
    values: list[Any] = _get(document, key, list, "manifest")
    if len(values) > limit:
        raise _fail(f"at most {limit} {key} are allowed, not {len(values)}")
    return values


def check_manifest(document: Any) -> BundleManifest:
    """The manifest a parsed manifest.json describes, once every field and cross-reference holds."""
    doc = _object(document, _MANIFEST_KEYS, "manifest")
    if doc["format"] != FORMAT:
        raise _fail(f"format must be {FORMAT!r}, not {doc['format']!r:.80}")
    sequence: int = _get(doc, "sequence", int, "manifest")
    created_at: str = _get(doc, "created_at", str, "manifest")
    try:
        offset = datetime.fromisoformat(created_at).utcoffset()
    except ValueError:
        offset = None
    if offset is None or offset.total_seconds() != 0:
        raise _fail(f"created_at must be an ISO-8601 time in UTC, not {created_at!r:.80}")
    if sequence < 1:
        raise _fail("sequence must be at least 1")
    members = [_member(v, f"members[{i}]") for i, v in enumerate(_list(doc, "members", 1024))]
    models = [_model(v, f"models[{i}]") for i, v in enumerate(_list(doc, "models", MAX_MODELS))]
    wheels = _list(doc, "wheels", MAX_WHEELS)
    by_path = {m.path: m for m in members}
    if len(by_path) != len(members):
        raise _fail("a member path is listed twice")
    if len({m.alias for m in models}) != len(models):
        raise _fail("a model alias is listed twice")
    for model in models:
        member = by_path.get(model_member(model.sha256))
        if member is None or member.size_bytes != model.size_bytes:
            raise _fail(f"model {model.alias}: no member {model_member(model.sha256)} of its size")
    policy = doc["policy"]
    if policy not in (None, POLICY_MEMBER) or (policy is None) == (POLICY_MEMBER in by_path):
        raise _fail(f"policy must be {POLICY_MEMBER!r} when that member is present, else null")
    if policy and by_path[POLICY_MEMBER].size_bytes > MAX_POLICY_BYTES:
        raise _fail(f"the policy may have at most {MAX_POLICY_BYTES} bytes")
    if not all(isinstance(w, str) for w in wheels) or sorted(wheels) != sorted(
        p for p in by_path if p.startswith("wheels/")
    ):
        raise _fail("wheels must list exactly the wheels/ members")
    used = {model_member(m.sha256) for m in models} | {POLICY_MEMBER} | set(wheels)
    if unused := sorted(set(by_path) - used):
        raise _fail(f"member {unused[0]} belongs to no model")
    return BundleManifest(
        sequence=sequence,
        created_at=created_at,
        created_by=_text(doc, "created_by", "manifest"),
        key_id=_digest(doc, "key_id", "manifest"),
        members=tuple(members),
        models=tuple(models),
        policy=policy,
        wheels=tuple(wheels),
    )


# -- writing ---------------------------------------------------------------------------------


def _tar_header(path: str, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(path)
    info.size, info.mtime, info.mode, info.type = size, mtime, 0o644, tarfile.REGTYPE
    return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "strict")


def _write_member(out: BinaryIO, path: str, source: BinaryIO, size: int, mtime: int) -> str:
    """Streams `size` bytes of `source` into the tar; returns their sha256."""
    out.write(_tar_header(path, size, mtime))
    digest, left = hashlib.sha256(), size
    while left:
        block = source.read(min(left, MESSAGE_BYTES))
        if not block:
            raise BundleError(f"{path}: the source file shrank while the bundle was written")
        digest.update(block)
        out.write(block)
        left -= len(block)
    out.write(b"\0" * (-size % tarfile.BLOCKSIZE))
    return digest.hexdigest()


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(MESSAGE_BYTES):
            digest.update(block)
    return digest.hexdigest()


def write_bundle(
    out: Path,
    *,
    sequence: int,
    created_by: str,
    key_id: str,
    models: Sequence[ManifestModel],
    files: Sequence[tuple[str, Path]],
    sign: Callable[[bytes], bytes],
    created_at: datetime | None = None,
) -> BundleManifest:
    """Writes the bundle to a temporary file beside `out`, renamed over `out` once complete.

    `files` are (member path, source file): `models/<sha256>.gguf`, `policy.json`,
    `wheels/<name>.whl`. A model file is hashed while it is copied (its name says what it must
    hash to); the others are hashed first. A source that changes meanwhile fails the write.
    """
    created = (created_at or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    order = sorted(files, key=lambda f: (not f[0].startswith("models/"), f[0] != POLICY_MEMBER))
    members = []
    for path, source in order:
        match = MODEL_MEMBER.fullmatch(path)
        size = source.stat().st_size
        members.append(BundleMember(path, match.group(1) if match else _hash_file(source), size))
    wheels = tuple(m.path for m in members if m.path.startswith("wheels/"))
    manifest = BundleManifest(
        sequence=sequence,
        created_at=created.isoformat().replace("+00:00", "Z"),
        created_by=created_by,
        key_id=key_id,
        members=tuple(members),
        models=tuple(models),
        policy=POLICY_MEMBER if any(m.path == POLICY_MEMBER for m in members) else None,
        wheels=wheels,
    )
    manifest_bytes = manifest.to_json()
    check_manifest(json.loads(manifest_bytes))  # never write what a reader would refuse
    if len(manifest_bytes) > MAX_MANIFEST_BYTES:
        raise BundleError(f"the manifest is larger than {MAX_MANIFEST_BYTES} bytes")
    signature = sign(manifest_bytes)
    if len(signature) != SIGNATURE_BYTES:
        raise BundleError(f"an ed25519 signature has {SIGNATURE_BYTES} bytes")
    mtime = int(created.timestamp())
    fd, temp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as stream:
            os.fchmod(stream.fileno(), 0o644)
            for path, data in ((MANIFEST_MEMBER, manifest_bytes), (SIGNATURE_MEMBER, signature)):
                stream.write(_tar_header(path, len(data), mtime))
                stream.write(data + b"\0" * (-len(data) % tarfile.BLOCKSIZE))
            for member, (path, source) in zip(members, order, strict=True):
                with source.open("rb") as handle:
                    if _write_member(stream, path, handle, member.size_bytes, mtime) != (
                        member.sha256
                    ) or handle.read(1):
                        raise BundleError(f"{path}: {source} does not hash to {member.sha256}")
            stream.write(b"\0" * (2 * tarfile.BLOCKSIZE))
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, out)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    fsync_directory(out.parent)
    return manifest
