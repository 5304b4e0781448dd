"""`PolicyStore`: the routing policy's applied versions; the newest is live and goes to agents."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from common.control import PolicyDocument
from common.errors import Conflict, InvalidArgument, NotFound
from common.policy.document import (
    MAX_DOCUMENT_BYTES,
    CheckedPolicy,
    PolicyError,
    PolicyProblem,
    check_policy,
)
from controlplane.audit import AuditLog, check_actor
from controlplane.db.database import Database
from controlplane.db.models import RoutingPolicyRecord, utcnow
from controlplane.desired_state import DesiredStates

MAX_LIST = 1000
MAX_SOURCE_CHARS = 255  # the name problems are reported against ("policy.yaml")


@dataclass(frozen=True)
class PolicyVersion:
    version: int
    digest: str
    document: str  # as written
    created_at: datetime
    created_by: str


@dataclass(frozen=True)
class Applied:
    """What `apply` did: `created` False when the live policy already had this digest."""

    policy: PolicyVersion
    created: bool
    warnings: tuple[PolicyProblem, ...]


def document_text(document: str | bytes, source: str = "policy") -> str:
    """The document as text, or PolicyError: over MAX_DOCUMENT_BYTES, or not UTF-8."""
    data = document.encode("utf-8", "surrogatepass") if isinstance(document, str) else document
    if len(data) > MAX_DOCUMENT_BYTES:
        message = f"the document has more than {MAX_DOCUMENT_BYTES} bytes"
        raise PolicyError(source, [PolicyProblem("", 0, 0, message)])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        message = f"the document is not UTF-8 (byte {exc.start})"
        raise PolicyError(source, [PolicyProblem("", 0, 0, message)]) from None


def validate(document: str | bytes, source: str = "policy") -> CheckedPolicy:
    """The valid policy and its warnings, or PolicyError with every problem."""
    return check_policy(document_text(document, source), source=source)


def _version(record: RoutingPolicyRecord) -> PolicyVersion:
    return PolicyVersion(
        version=record.version,
        digest=record.digest,
        document=record.document,
        created_at=record.created_at,
        created_by=record.created_by,
    )


class PolicyStore:
    """Each apply of a new policy is version n+1 and live at once; every agent's desired state
    gets it in the same transaction. An invalid document changes nothing (and is audited)."""

    def __init__(
        self,
        db: Database,
        audit: AuditLog,
        desired: DesiredStates,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._db = db
        self._audit = audit
        self._desired = desired
        self._clock = clock

    def live(self) -> PolicyVersion | None:
        with self._db.session() as session:
            record = self._live_record(session)
            return _version(record) if record is not None else None

    def get(self, version: int) -> PolicyVersion:
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise InvalidArgument("a policy version is a whole number from 1")
        with self._db.session() as session:
            record = session.get(RoutingPolicyRecord, version)
            if record is None:
                raise NotFound(f"no policy version {version}")
            return _version(record)

    def versions(self, limit: int = 100, offset: int = 0) -> builtins.list[PolicyVersion]:
        """Newest first."""
        if not 1 <= limit <= MAX_LIST:
            raise InvalidArgument(f"limit must be between 1 and {MAX_LIST}")
        if offset < 0:
            raise InvalidArgument("offset must not be negative")
        with self._db.session() as session:
            statement = (
                select(RoutingPolicyRecord)
                .order_by(col(RoutingPolicyRecord.version).desc())
                .offset(offset)
                .limit(limit)
            )
            return [_version(r) for r in session.exec(statement).all()]

    def apply(self, document: str | bytes, *, actor: str, source: str = "policy") -> Applied:
        """Makes `document` the live policy, or PolicyError (the live policy unchanged).

        Re-applying the live policy's digest (the same policy, however formatted) is a no-op
        that answers the live version. Conflict when another apply won the same version."""
        check_actor(actor)
        source = source[:MAX_SOURCE_CHARS]
        try:
            text = document_text(document, source)
            checked = check_policy(text, source=source)
        except PolicyError as exc:
            self._audit.record_now(
                actor=actor,
                action="policy.apply",
                target="policy",
                outcome="error",
                detail={
                    "problems": len(exc.problems),
                    "first": [str(p)[:200] for p in exc.problems[:5]],
                },
            )
            raise
        digest = checked.policy.digest
        warnings = tuple(checked.warnings)
        try:
            with self._db.session() as session:
                live = self._live_record(session)
                if live is not None and live.digest == digest:
                    self._audit.record(
                        session,
                        actor=actor,
                        action="policy.apply",
                        target=f"policy:{live.version}",
                        detail={"version": live.version, "digest": digest, "created": False},
                    )
                    return Applied(_version(live), False, warnings)
                record = RoutingPolicyRecord(
                    version=(live.version if live is not None else 0) + 1,
                    digest=digest,
                    document=text,
                    created_at=self._clock(),
                    created_by=actor,
                )
                session.add(record)
                session.flush()
                self._audit.record(
                    session,
                    actor=actor,
                    action="policy.apply",
                    target=f"policy:{record.version}",
                    detail={"version": record.version, "digest": digest, "created": True},
                )
                policy = PolicyDocument(record.version, digest, text)
                self._desired.set_policy_for_all(session, policy, actor=actor)
                applied = Applied(_version(record), True, warnings)
        except IntegrityError as exc:  # two applies took the same next version at once
            raise Conflict("another policy was applied at the same time; apply again") from exc
        return applied

    @staticmethod
    def _live_record(session: Session) -> RoutingPolicyRecord | None:
        return session.exec(
            select(RoutingPolicyRecord).order_by(col(RoutingPolicyRecord.version).desc()).limit(1)
        ).first()
