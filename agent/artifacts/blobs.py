"""`StoreBlobs`: the agent's verified artifacts as a BlobSource, for serving its site's peers."""

from __future__ import annotations

import threading
from typing import BinaryIO

from agent.artifacts.store import ArtifactStore
from common.artifacts import ArtifactManifest, manifest_of_file

MAX_CACHED_MANIFESTS = 64


class StoreBlobs:
    """Serves only complete, verified blobs; manifests are computed once per blob and cached."""

    def __init__(self, store: ArtifactStore) -> None:
        self._store = store
        self._manifests: dict[str, ArtifactManifest] = {}
        self._lock = threading.Lock()

    def manifest(self, sha256: str) -> ArtifactManifest | None:
        if not self._store.has(sha256):
            return None
        with self._lock:
            cached = self._manifests.get(sha256)
        if cached is not None:
            return cached
        manifest = manifest_of_file(self._store.blob_path(sha256))
        if manifest.sha256 != sha256:  # damaged on disk since it was verified: never serve it
            return None
        with self._lock:
            if len(self._manifests) >= MAX_CACHED_MANIFESTS:
                self._manifests.pop(next(iter(self._manifests)))
            self._manifests[sha256] = manifest
        return manifest

    def open(self, sha256: str) -> BinaryIO:
        return self._store.blob_path(sha256).open("rb")
