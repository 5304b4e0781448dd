"""Model distribution on loopback: verified chunked gRPC download vs raw copies of the same file.

Usage: .venv/bin/python benchmarks/distribution_throughput.py [--model PATH] [--runs 5]
    [--json FILE]

Each run, in turn and on the same file (from the page cache after the first read):
  * file copy: shutil.copyfile + fsync, the raw local baseline;
  * raw TCP: the file sent over a loopback socket (sendfile) into a file + fsync;
  * Outpost, plain gRPC and mutual TLS: ArtifactServicer -> GrpcChunkSource -> Downloader
    (every 4 MiB chunk verified, fsynced, the whole file hashed and adopted).
Then a transfer cut at 40 % and resumed reports the bytes fetched twice (goal: at most one chunk).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO

import grpc

from agent.artifacts.download import Downloader
from agent.artifacts.grpc_source import CHANNEL_OPTIONS, GrpcChunkSource
from agent.artifacts.store import ArtifactError, ArtifactStore
from agent.control.identity import build_csr, generate_key
from agent.demo_model import default_cache_dir, ensure_demo_model
from common.artifact_servicer import ArtifactServicer, add_artifact_service
from common.artifacts import CHUNK_SIZE, ArtifactManifest, manifest_of_file
from controlplane.pki import CertificateAuthority

AGENT_ID = "00000000-0000-4000-8000-000000000001"


class OneFile:
    """A BlobSource holding one file."""

    def __init__(self, path: Path, manifest: ArtifactManifest) -> None:
        self.path, self.only_manifest = path, manifest

    def manifest(self, sha256: str) -> ArtifactManifest | None:
        return self.only_manifest if sha256 == self.only_manifest.sha256 else None

    def open(self, sha256: str) -> BinaryIO:
        return self.path.open("rb")


class CuttingSource(GrpcChunkSource):
    """Raises once `cut_after` bytes have come through: a link cut mid-transfer."""

    def __init__(self, channel: grpc.aio.Channel, cut_after: int) -> None:
        super().__init__(channel, "cutting")
        self._left = cut_after

    async def read(self, sha256: str, offset: int, length: int) -> AsyncIterator[bytes]:
        async for data in super().read(sha256, offset, length):
            if self._left <= 0:
                raise ConnectionResetError("link cut by the benchmark")
            self._left -= len(data)
            yield data


def _fsync(path: Path) -> None:
    with path.open("rb+") as handle:
        os.fsync(handle.fileno())


def file_copy(source: Path, work: Path) -> float:
    target = work / "copy.gguf"
    started = time.perf_counter()
    shutil.copyfile(source, target)
    _fsync(target)
    elapsed = time.perf_counter() - started
    target.unlink()
    return elapsed


def raw_tcp(source: Path, work: Path) -> float:
    target = work / "tcp.gguf"
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def send() -> None:
        connection, _ = listener.accept()
        with connection, source.open("rb") as handle:
            connection.sendfile(handle)

    started = time.perf_counter()
    sender = threading.Thread(target=send)
    sender.start()
    with socket.create_connection(("127.0.0.1", port)) as client, target.open("wb") as out:
        while block := client.recv(1024 * 1024):
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
    elapsed = time.perf_counter() - started
    sender.join()
    listener.close()
    target.unlink()
    return elapsed


def _tls(work: Path) -> tuple[grpc.ServerCredentials, grpc.ChannelCredentials]:
    ca, _ = CertificateAuthority.load_or_create(work / "ca")
    key, chain = ca.issue_server_certificate(("localhost", "127.0.0.1"))
    agent_key = generate_key()
    _, certificate = ca.sign_agent_csr(
        build_csr(agent_key, AGENT_ID), expected_agent_id=None, valid_for=timedelta(hours=1)
    )
    server = grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=ca.certificate_pem, require_client_auth=True
    )
    client = grpc.ssl_channel_credentials(
        root_certificates=ca.certificate_pem,
        private_key=agent_key,
        certificate_chain=certificate.pem,
    )
    return server, client


async def grpc_download(
    blobs: OneFile,
    work: Path,
    credentials: tuple[grpc.ServerCredentials, grpc.ChannelCredentials] | None,
    cut_after: int = 0,
) -> tuple[float, int]:
    """Seconds for a verified download, and bytes fetched twice (resumed after a cut)."""
    server = grpc.aio.server(options=[("grpc.max_send_message_length", 8 * 1024 * 1024)])
    add_artifact_service(server, ArtifactServicer(blobs))
    address = "127.0.0.1:0"
    if credentials is None:
        port = server.add_insecure_port(address)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS)
    else:
        port = server.add_secure_port(address, credentials[0])
        channel = grpc.aio.secure_channel(
            f"localhost:{port}", credentials[1], options=CHANNEL_OPTIONS
        )
    await server.start()
    store = ArtifactStore(work / "store")
    manifest = blobs.only_manifest
    try:
        downloader = Downloader(store, retry_rounds=1, retry_delay_s=0.01)
        started = time.perf_counter()
        if cut_after:
            with contextlib.suppress(ArtifactError):  # the cut: resumed below
                await downloader.fetch(manifest, [CuttingSource(channel, cut_after)])
        await downloader.fetch(manifest, [GrpcChunkSource(channel, "loopback")])
        elapsed = time.perf_counter() - started
        refetched = downloader.bytes_fetched - manifest.size_bytes
    finally:
        await channel.close()
        await server.stop(None)
        shutil.rmtree(work / "store")
    return elapsed, refetched


def _median_rate(size: int, seconds: list[float]) -> float:
    return size / statistics.median(seconds) / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="file to distribute (default: demo model)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    model = args.model or ensure_demo_model(default_cache_dir(dict(os.environ)))
    size = model.stat().st_size
    blobs = OneFile(model, manifest_of_file(model))
    with tempfile.TemporaryDirectory(prefix="outpost-dist-bench-") as temp:
        work = Path(temp)
        tls = _tls(work)
        runs: dict[str, list[float]] = {"file copy": [], "raw TCP": [], "gRPC": [], "gRPC mTLS": []}
        steps: dict[str, Callable[[], float]] = {
            "file copy": lambda: file_copy(model, work),
            "raw TCP": lambda: raw_tcp(model, work),
            "gRPC": lambda: asyncio.run(grpc_download(blobs, work, None))[0],
            "gRPC mTLS": lambda: asyncio.run(grpc_download(blobs, work, tls))[0],
        }
        for _ in range(args.runs):
            for name, step in steps.items():
                runs[name].append(step())
        _, refetched = asyncio.run(grpc_download(blobs, work, tls, cut_after=int(size * 0.4)))
    rates = {name: _median_rate(size, seconds) for name, seconds in runs.items()}
    print(
        f"model: {model.name}, {size:,} bytes, {args.runs} runs each (medians), chunks of "
        f"{CHUNK_SIZE // 2**20} MiB"
    )
    print("| path | MB/s | vs file copy | vs raw TCP |")
    print("|---|---:|---:|---:|")
    for name, rate in rates.items():
        print(
            f"| {name} | {rate:,.0f} | {rate / rates['file copy']:.2f} | "
            f"{rate / rates['raw TCP']:.2f} |"
        )
    print(
        f"bytes fetched twice after a cut at 40 %: {refetched:,} "
        f"(one chunk is {CHUNK_SIZE:,}; goal met: {0 <= refetched <= CHUNK_SIZE})"
    )
    if args.json:
        document: dict[str, Any] = {
            "size": size,
            "runs": runs,
            "rates_mb_s": rates,
            "refetched_after_cut": refetched,
        }
        args.json.write_text(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
