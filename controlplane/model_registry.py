"""`ModelRegistry`: GGUF models and LoRA adapters imported once, stored by sha256, known by name
and version."""

from __future__ import annotations

import asyncio
import builtins
import logging
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePath
from types import MappingProxyType
from typing import Any, BinaryIO

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from common.artifacts import MESSAGE_BYTES, ArtifactManifest, format_digest, parse_digest
from common.errors import Conflict, InvalidArgument, NotFound, Unavailable
from common.gguf_info import (
    ADAPTER,
    MODEL,
    GgufError,
    GgufInfo,
    kv_cache_bytes,
    read_gguf_info,
)
from controlplane.audit import AuditLog, check_actor
from controlplane.db.database import Database
from controlplane.db.models import ModelAssignmentRecord, RegisteredModel, utcnow
from controlplane.desired_state_checks import check_identifier
from controlplane.model_store import BlobTooLarge, ModelStore

log = logging.getLogger(__name__)

DEFAULT_MAX_MODEL_BYTES = 256 * 1024**3
KINDS = (MODEL, ADAPTER)
ADAPTER_TYPES = ("lora",)  # what the agent's engine loads
_NOT_IDENTIFIER = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class RegisteredModelView:
    """One registered model (or LoRA adapter) version, as the registry answers it."""

    id: int
    name: str
    version: str
    sha256: str
    size_bytes: int
    architecture: str
    parameters: int
    quantization: str
    context_length: int
    chat_template: str
    license: str
    metadata: Mapping[str, Any]  # everything read from the GGUF header (GgufInfo.metadata())
    created_at: datetime
    created_by: str
    kind: str = MODEL  # "model" or "adapter"; an adapter's architecture is its base models'
    adapter_type: str = ""  # adapters: "lora"
    lora_alpha: float = 0.0  # adapters: adapter.lora.alpha (0: not given)

    @property
    def is_adapter(self) -> bool:
        return self.kind == ADAPTER

    @property
    def digest(self) -> str:
        return format_digest(self.sha256)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def gguf(self) -> GgufInfo:
        return GgufInfo.from_metadata(dict(self.metadata))

    def kv_cache_bytes(self, context_length: int) -> int:
        """Bytes of the f16 KV cache for `context_length` tokens (0 when unknown)."""
        return kv_cache_bytes(self.gguf(), context_length)

    @classmethod
    def of(cls, record: RegisteredModel) -> RegisteredModelView:
        info = GgufInfo.from_metadata(dict(record.gguf or {}))
        assert record.id is not None
        return cls(
            id=record.id,
            name=record.name,
            version=record.version,
            sha256=record.sha256,
            size_bytes=record.size_bytes,
            architecture=info.architecture,
            parameters=info.parameters,
            quantization=info.quantization,
            context_length=info.context_length,
            chat_template=info.chat_template,
            license=info.license,
            metadata=MappingProxyType(dict(record.gguf or {})),
            created_at=record.created_at,
            created_by=record.created_by,
            kind=ADAPTER if info.is_adapter else MODEL,
            adapter_type=info.adapter_type,
            lora_alpha=info.lora_alpha,
        )


def name_from_filename(filename: str) -> str:
    """A model name from a file name: its stem, other characters replaced by '-'."""
    stem = PurePath(PurePath(filename.replace("\\", "/")).name).stem
    name = _NOT_IDENTIFIER.sub("-", stem).strip("-.")[:63].rstrip("-.")
    if not name:
        raise InvalidArgument(f"cannot make a model name of {filename[:80]!r}: give a name")
    return name


def adapters_using(assignment: ModelAssignmentRecord, model_id: int | None) -> list[str]:
    """The names under which an assignment serves the registered adapter `model_id`."""
    return sorted(name for name, used in (assignment.adapters or {}).items() if used == model_id)


def _check_kind(info: GgufInfo, shown: str) -> None:
    """A model, or an adapter of a type the agent loads; nothing else GGUF may hold."""
    if info.file_type not in KINDS:
        raise InvalidArgument(
            f"{shown} is a GGUF file of type {info.file_type!r}: only models and LoRA adapters "
            "can be registered"
        )
    if info.is_adapter and info.adapter_type not in ADAPTER_TYPES:
        found = f"of type {info.adapter_type!r}" if info.adapter_type else "without adapter.type"
        raise InvalidArgument(
            f"{shown} is a GGUF adapter {found}: only LoRA adapters (adapter.type 'lora') can "
            "be registered"
        )


def _file_blocks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while block := handle.read(MESSAGE_BYTES):
            yield block


class ModelRegistry:
    """Registered models in the database; their bytes in a `ModelStore`.

    A sha256 is stored once however many names or versions it has; its blob goes when its
    last record does. Every change is audited.
    """

    def __init__(
        self,
        db: Database,
        store: ModelStore | None,
        audit: AuditLog,
        *,
        max_bytes: int = DEFAULT_MAX_MODEL_BYTES,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        """`store` None: the registry lists and resolves models but cannot import or serve."""
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self._db = db
        self._store = store
        self._audit = audit
        self._clock = clock
        self.max_bytes = max_bytes
        # Deciding whether a blob is still used, and adding a record for one, happen under
        # this lock, so a failed import cannot delete the blob another import just recorded.
        self._lock = threading.Lock()

    @property
    def store(self) -> ModelStore:
        if self._store is None:
            raise Unavailable("this control plane has no model store configured")
        return self._store

    # -- importing ---------------------------------------------------------------------------

    def import_file(
        self, path: Path, *, name: str | None = None, version: str | None = None, actor: str
    ) -> RegisteredModelView:
        """Imports the GGUF file at `path` (on this host); the name defaults to its stem."""
        check_actor(actor)
        name = self._name(name, path.name)
        self._check_version(version)
        try:
            info = read_gguf_info(path)
        except GgufError as exc:
            raise InvalidArgument(str(exc)) from None
        _check_kind(info, str(path))
        if info.size_bytes > self.max_bytes:
            raise BlobTooLarge(
                f"{path} has {info.size_bytes} bytes; the limit is {self.max_bytes} bytes"
            )
        manifest = self.store.ingest(_file_blocks(path), self.max_bytes)
        return self._register(manifest, name, version, actor, source=str(path))

    def import_stream(
        self,
        blocks: Iterable[bytes],
        *,
        name: str | None = None,
        version: str | None = None,
        filename: str | None = None,
        actor: str,
    ) -> RegisteredModelView:
        """Imports a GGUF file from `blocks`; the name defaults to `filename`'s stem."""
        check_actor(actor)
        name = self._name(name, filename)
        self._check_version(version)
        manifest = self.store.ingest(blocks, self.max_bytes)
        return self._register(manifest, name, version, actor, source="upload")

    async def import_stream_async(
        self,
        blocks: AsyncIterator[bytes],
        *,
        name: str | None = None,
        version: str | None = None,
        filename: str | None = None,
        actor: str,
    ) -> RegisteredModelView:
        """`import_stream` for an async stream (an HTTP body); disk and database work run in
        worker threads."""
        check_actor(actor)
        name = self._name(name, filename)
        self._check_version(version)
        manifest = await self.store.ingest_async(blocks, self.max_bytes)
        return await asyncio.to_thread(
            self._register, manifest, name, version, actor, source="upload"
        )

    def _name(self, name: str | None, filename: str | None) -> str:
        if name is not None:
            return check_identifier(name, "a model name")
        if not filename:
            raise InvalidArgument("a model name is required (no file name to take one from)")
        return name_from_filename(filename)

    @staticmethod
    def _check_version(version: str | None) -> None:
        if version is not None:
            check_identifier(version, "a model version")

    def _register(
        self,
        manifest: ArtifactManifest,
        name: str,
        version: str | None,
        actor: str,
        *,
        source: str,
    ) -> RegisteredModelView:
        """Checks the stored blob is a GGUF model or LoRA adapter and records it; on any
        failure the blob goes again unless a record uses it."""
        try:
            shown = "the upload" if source == "upload" else source
            try:
                info = read_gguf_info(self.store.path(manifest.sha256))
            except GgufError as exc:
                message = str(exc).replace(str(self.store.path(manifest.sha256)), shown)
                raise InvalidArgument(message) from None
            _check_kind(info, shown)
            with self._lock:
                return self._record(manifest, info, name, version, actor, source)
        except BaseException:
            with self._lock:
                try:
                    self._delete_blob_if_unused(manifest.sha256)
                except Exception:  # the import's own error is the one to report
                    log.exception("could not remove blob sha256:%s", manifest.sha256)
            raise

    def _record(
        self,
        manifest: ArtifactManifest,
        info: GgufInfo,
        name: str,
        version: str | None,
        actor: str,
        source: str,
    ) -> RegisteredModelView:
        if not self.store.has(manifest.sha256):  # a failed import of the same bytes removed it
            raise Unavailable("the stored model was removed by a concurrent import; try again")
        try:
            with self._db.session() as session:
                same = session.exec(
                    select(RegisteredModel)
                    .where(RegisteredModel.name == name, RegisteredModel.sha256 == manifest.sha256)
                    .order_by(col(RegisteredModel.id).desc())
                ).first()
                if same is not None and version in (None, same.version):
                    return RegisteredModelView.of(same)  # the same bytes under the same name
                version = version or self._next_version(session, name)
                taken = self._find(session, name, version)
                if taken is not None:
                    raise Conflict(
                        f"model {name}@{version} exists already "
                        f"(sha256:{taken.sha256}); choose another version"
                    )
                record = RegisteredModel(
                    name=name,
                    version=version,
                    sha256=manifest.sha256,
                    size_bytes=manifest.size_bytes,
                    chunk_size=manifest.chunk_size,
                    chunk_sha256=list(manifest.chunk_sha256),
                    gguf=info.metadata(),
                    created_at=self._clock(),
                    created_by=actor,
                )
                session.add(record)
                session.flush()
                detail = {
                    "sha256": manifest.sha256,
                    "size_bytes": manifest.size_bytes,
                    "kind": info.file_type,
                }
                self._audit.record(
                    session,
                    actor=actor,
                    action="model.import",
                    target=f"model:{name}@{version}",
                    detail={**detail, "source": source},
                )
                return RegisteredModelView.of(record)
        except IntegrityError:  # the same name and version, added by another process
            raise Conflict(f"model {name}@{version} was added at the same moment") from None

    @staticmethod
    def _next_version(session: Session, name: str) -> str:
        versions = session.exec(
            select(RegisteredModel.version).where(RegisteredModel.name == name)
        ).all()
        numbers = [int(v) for v in versions if v.isdigit() and len(v) <= 18]
        return str(max(numbers, default=0) + 1)

    @staticmethod
    def _find(session: Session, name: str, version: str) -> RegisteredModel | None:
        return session.exec(
            select(RegisteredModel).where(
                RegisteredModel.name == name, RegisteredModel.version == version
            )
        ).first()

    # -- reading -----------------------------------------------------------------------------

    def list(self, kind: str | None = None) -> builtins.list[RegisteredModelView]:
        """Every registered model and adapter version (`kind`: only models or only adapters),
        by name, oldest version first."""
        if kind is not None and kind not in KINDS:
            raise InvalidArgument(f"a kind is one of {', '.join(KINDS)}")
        with self._db.session() as session:
            records = session.exec(
                select(RegisteredModel).order_by(col(RegisteredModel.name), col(RegisteredModel.id))
            ).all()
            views = [RegisteredModelView.of(r) for r in records]
        return [v for v in views if kind is None or v.kind == kind]

    def get(self, ref: str) -> RegisteredModelView:
        """`name` (its newest version), `name@version`, or `sha256:<64 hex>`; NotFound else."""
        with self._db.session() as session:
            return RegisteredModelView.of(self._resolve(session, ref))

    def _resolve(self, session: Session, ref: object) -> RegisteredModel:
        if not isinstance(ref, str) or not ref:
            raise InvalidArgument("a model reference must be a non-empty string")
        statement = select(RegisteredModel).order_by(col(RegisteredModel.id).desc())
        if ":" in ref:  # a digest; parse_digest explains what a valid one looks like
            sha256 = parse_digest(ref)
            record = session.exec(statement.where(RegisteredModel.sha256 == sha256)).first()
        elif "@" in ref:
            name, _, version = ref.partition("@")
            check_identifier(name, "a model name")
            check_identifier(version, "a model version")
            record = self._find(session, name, version)
        else:
            check_identifier(ref, "a model name")
            record = session.exec(statement.where(RegisteredModel.name == ref)).first()
        if record is None:
            raise NotFound(f"no registered model {ref}")
        return record

    def manifest(self, sha256: str) -> ArtifactManifest | None:
        """The manifest of a stored model; None when it is not held."""
        return self._store.manifest(sha256) if self._store is not None else None

    def open(self, sha256: str) -> BinaryIO:
        return self.store.open(sha256)

    def blob_path(self, sha256: str) -> Path:
        return self.store.path(sha256)

    # -- deleting ----------------------------------------------------------------------------

    def delete(self, ref: str, *, actor: str) -> None:
        """Deletes one model or adapter version; Conflict while an assignment uses it. Its blob
        goes when no other record has the same sha256."""
        check_actor(actor)
        with self._lock:
            try:
                with self._db.session() as session:
                    record = self._lock_row(session, self._resolve(session, ref))
                    self._refuse_if_assigned(session, record)
                    session.delete(record)
                    session.flush()
                    self._audit.record(
                        session,
                        actor=actor,
                        action="model.delete",
                        target=f"model:{record.name}@{record.version}",
                        detail={"sha256": record.sha256},
                    )
            except IntegrityError:  # assigned by another transaction meanwhile
                raise Conflict(f"model {ref} was assigned meanwhile; it is kept") from None
            self._delete_blob_if_unused(record.sha256)

    @staticmethod
    def _lock_row(session: Session, record: RegisteredModel) -> RegisteredModel:
        """The row again, locked (PostgreSQL) until the transaction ends: an assignment that
        names it as an adapter locks it too (no foreign key covers the adapters), so either
        the assignment sees it gone or the deletion sees the assignment."""
        locked = session.exec(
            select(RegisteredModel).where(RegisteredModel.id == record.id).with_for_update()
        ).one_or_none()
        if locked is None:
            raise NotFound(f"no registered model {record.name}@{record.version}")
        return locked

    @staticmethod
    def _refuse_if_assigned(session: Session, record: RegisteredModel) -> None:
        """Conflict while an assignment serves it as its model or names it as an adapter."""
        assignments = session.exec(
            select(ModelAssignmentRecord).order_by(col(ModelAssignmentRecord.id))
        ).all()
        uses = []
        for a in assignments:
            if a.model_id == record.id:
                uses.append(f"{a.target_kind} {a.target} as {a.alias}")
            uses += [
                f"{a.target_kind} {a.target} as {a.alias}:{n}" for n in adapters_using(a, record.id)
            ]
        if uses:
            what = "adapter" if RegisteredModelView.of(record).is_adapter else "model"
            raise Conflict(
                f"{what} {record.name}@{record.version} is assigned ({', '.join(uses)}); "
                "remove those assignments first"
            )

    def _delete_blob_if_unused(self, sha256: str) -> None:
        """Call with the lock held."""
        if self._store is None:
            return
        with self._db.session() as session:
            used = session.exec(
                select(RegisteredModel.id).where(RegisteredModel.sha256 == sha256)
            ).first()
        if used is None:
            self._store.delete(sha256)
