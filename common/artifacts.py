"""Content addresses of artifacts: `sha256:` digests and chunk manifests, shared by both sides."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from common.errors import InvalidArgument

DIGEST_PREFIX = "sha256:"
CHUNK_SIZE = 4 * 1024 * 1024  # one verified unit of a transfer: at most this is fetched twice
MAX_CHUNK_SIZE = 64 * 1024 * 1024
MESSAGE_BYTES = 1024 * 1024  # bytes of one ArtifactChunk message
MAX_CHUNKS = 65_536  # a manifest of a 256 GiB artifact at 4 MiB chunks; ~4.5 MB in protobuf
_HEX64 = re.compile(r"[0-9a-f]{64}")


def check_sha256(value: object, what: str = "a sha256") -> str:
    """`value` when it is 64 lowercase hex digits; InvalidArgument otherwise."""
    if not isinstance(value, str) or _HEX64.fullmatch(value) is None:
        raise InvalidArgument(f"{what} must be 64 lowercase hex digits")
    return value


def parse_digest(text: object) -> str:
    """The hex part of `sha256:` + 64 hex digits (either case); InvalidArgument otherwise."""
    if isinstance(text, str) and text.startswith(DIGEST_PREFIX):
        hex_part = text[len(DIGEST_PREFIX) :].lower()
        if _HEX64.fullmatch(hex_part):
            return hex_part
    shown = repr(text) if len(repr(text)) <= 90 else repr(text)[:87] + "..."
    raise InvalidArgument(f"a digest must be 'sha256:' followed by 64 hex digits, got {shown}")


def format_digest(sha256: str) -> str:
    return DIGEST_PREFIX + sha256


@dataclass(frozen=True)
class ArtifactManifest:
    """What a receiver verifies an artifact against: its size and each chunk's sha256."""

    sha256: str
    size_bytes: int
    chunk_size: int
    chunk_sha256: tuple[str, ...]

    def __post_init__(self) -> None:
        check_sha256(self.sha256, "the artifact's sha256")
        if not 1 <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise InvalidArgument(f"chunk size must be between 1 and {MAX_CHUNK_SIZE} bytes")
        if self.size_bytes < 0:
            raise InvalidArgument("an artifact's size cannot be negative")
        expected = -(-self.size_bytes // self.chunk_size)
        if expected > MAX_CHUNKS:
            raise InvalidArgument(f"an artifact may have at most {MAX_CHUNKS} chunks")
        if len(self.chunk_sha256) != expected:
            raise InvalidArgument(
                f"the manifest lists {len(self.chunk_sha256)} chunks; "
                f"{self.size_bytes} bytes in chunks of {self.chunk_size} make {expected}"
            )
        for digest in self.chunk_sha256:
            check_sha256(digest, "a chunk's sha256")

    @property
    def chunk_count(self) -> int:
        return len(self.chunk_sha256)

    def chunk_span(self, index: int) -> tuple[int, int]:
        """(offset, length) of chunk `index`."""
        offset = index * self.chunk_size
        return offset, min(self.chunk_size, self.size_bytes - offset)


class ManifestBuilder:
    """Hashes an artifact as it streams by: the whole and each chunk, in one pass."""

    def __init__(self, chunk_size: int = CHUNK_SIZE) -> None:
        self._chunk_size = chunk_size
        self._whole = hashlib.sha256()
        self._chunk = hashlib.sha256()
        self._in_chunk = 0
        self._chunks: list[str] = []
        self.size_bytes = 0

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        self._whole.update(view)
        self.size_bytes += len(view)
        while view:
            take = min(len(view), self._chunk_size - self._in_chunk)
            self._chunk.update(view[:take])
            self._in_chunk += take
            view = view[take:]
            if self._in_chunk == self._chunk_size:
                self._chunks.append(self._chunk.hexdigest())
                self._chunk = hashlib.sha256()
                self._in_chunk = 0

    def finish(self) -> ArtifactManifest:
        chunks = list(self._chunks)
        if self._in_chunk:
            chunks.append(self._chunk.hexdigest())
        return ArtifactManifest(
            sha256=self._whole.hexdigest(),
            size_bytes=self.size_bytes,
            chunk_size=self._chunk_size,
            chunk_sha256=tuple(chunks),
        )


def manifest_of_stream(blocks: Iterable[bytes], chunk_size: int = CHUNK_SIZE) -> ArtifactManifest:
    builder = ManifestBuilder(chunk_size)
    for block in blocks:
        builder.update(block)
    return builder.finish()


def manifest_of_file(path: Path, chunk_size: int = CHUNK_SIZE) -> ArtifactManifest:
    with path.open("rb") as handle:
        return manifest_of_stream(iter(lambda: handle.read(MESSAGE_BYTES), b""), chunk_size)
