"""`InferenceKeys`: callers' keys (a routing role and a team), created here, pushed to agents."""

from __future__ import annotations

import builtins
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlmodel import Session, col, func, select

from common.control import InferenceKeyGrant
from common.errors import InvalidArgument, NotFound, ResourceExhausted
from common.inference_key_grants import MAX_INFERENCE_KEYS
from common.policy.document import PolicyError, parse_policy
from controlplane.audit import AuditLog, check_actor
from controlplane.auth import SHOWN_PREFIX_CHARS, hash_key, new_key
from controlplane.db.database import Database
from controlplane.db.models import InferenceKeyRecord, RoutingPolicyRecord, utcnow
from controlplane.desired_state_checks import check_identifier

if TYPE_CHECKING:  # desired_state imports this module's queries
    from controlplane.desired_state import DesiredStates

log = logging.getLogger(__name__)

INFERENCE_KEY_PREFIX = "opi_"
INFERENCE_KEY_PATTERN = re.compile(r"opi_[A-Za-z0-9_-]{40}")
MAX_ID = 2**63 - 1


@dataclass(frozen=True)
class InferenceKey:
    """A key as the control plane shows it: never the key, only its first characters."""

    id: int
    name: str
    prefix: str
    role: str  # the routing policy's role
    team: str
    created_at: datetime
    created_by: str
    revoked_at: datetime | None = None


@dataclass(frozen=True)
class CreatedKey:
    key: str  # shown once, never stored
    record: InferenceKey
    warnings: tuple[str, ...]  # e.g. a role the live policy does not have (yet)


def _view(record: InferenceKeyRecord) -> InferenceKey:
    assert record.id is not None
    return InferenceKey(
        id=record.id,
        name=record.name,
        prefix=record.prefix,
        role=record.routing_role,
        team=record.team,
        created_at=record.created_at,
        created_by=record.created_by,
        revoked_at=record.revoked_at,
    )


def live_inference_keys(session: Session) -> tuple[InferenceKeyGrant, ...]:
    """Every inference key not revoked, by id: the set every agent's state carries. At most
    MAX_INFERENCE_KEYS, the oldest (two creates racing at the bound could pass it; the newest
    one is then left out, and logged, rather than the whole set refused by the agents)."""
    records = session.exec(
        select(InferenceKeyRecord)
        .where(col(InferenceKeyRecord.revoked_at).is_(None))
        .order_by(col(InferenceKeyRecord.id))
        .limit(MAX_INFERENCE_KEYS + 1)
    ).all()
    if len(records) > MAX_INFERENCE_KEYS:
        log.error("more than %d live inference keys: the newest are not sent", MAX_INFERENCE_KEYS)
        records = records[:MAX_INFERENCE_KEYS]
    return tuple(InferenceKeyGrant(str(r.id), r.key_hash, r.routing_role, r.team) for r in records)


def inference_keys_revision(session: Session) -> int:
    """Grows by one with every key created or revoked (rows are never deleted): the marker an
    agent's stored spec keeps to say which set its generation carries."""
    created, revoked = session.exec(
        select(
            func.count(col(InferenceKeyRecord.id)), func.count(col(InferenceKeyRecord.revoked_at))
        )
    ).one()
    return int(created) + int(revoked)


class InferenceKeys:
    """Only a key's sha256 is stored. Creating or revoking a key gives every live agent a new
    generation with the live set, in the same transaction; both are audited."""

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

    def create(self, name: str, routing_role: str, team: str, *, actor: str) -> CreatedKey:
        """A new key; InvalidArgument for a name, role or team that is not an identifier,
        ResourceExhausted when MAX_INFERENCE_KEYS keys are live already."""
        check_identifier(name, "a key name")
        check_identifier(routing_role, "a routing role")
        check_identifier(team, "a team")
        check_actor(actor)
        key = new_key(INFERENCE_KEY_PREFIX)
        with self._db.session() as session:
            live = session.exec(
                select(func.count(col(InferenceKeyRecord.id))).where(
                    col(InferenceKeyRecord.revoked_at).is_(None)
                )
            ).one()
            if live >= MAX_INFERENCE_KEYS:
                raise ResourceExhausted(
                    f"{MAX_INFERENCE_KEYS} inference keys are live; revoke one first"
                )
            record = InferenceKeyRecord(
                name=name,
                prefix=key[:SHOWN_PREFIX_CHARS],
                key_hash=hash_key(key),
                routing_role=routing_role,
                team=team,
                created_at=self._clock(),
                created_by=actor,
            )
            session.add(record)
            session.flush()
            view = _view(record)
            self._audit.record(
                session,
                actor=actor,
                action="inference_key.create",
                target=f"inference_key:{view.id}",
                detail={"name": name, "prefix": view.prefix, "role": routing_role, "team": team},
            )
            self._desired.set_inference_keys_for_all(session, actor=actor)
            warnings = _role_warnings(session, routing_role)
        return CreatedKey(key, view, warnings)

    def revoke(self, key_id: int, *, actor: str) -> InferenceKey:
        """Revokes the key (agents stop accepting it with their next generation); revoking a
        revoked key changes nothing. NotFound for an unknown id."""
        if isinstance(key_id, bool) or not isinstance(key_id, int) or not 1 <= key_id <= MAX_ID:
            raise InvalidArgument("an inference key id is a whole number from 1")
        check_actor(actor)
        with self._db.session() as session:
            record = session.get(InferenceKeyRecord, key_id)
            if record is None:
                raise NotFound(f"no inference key {key_id}")
            if record.revoked_at is not None:
                return _view(record)
            record.revoked_at = self._clock()
            session.add(record)
            session.flush()
            self._audit.record(
                session,
                actor=actor,
                action="inference_key.revoke",
                target=f"inference_key:{key_id}",
                detail={"name": record.name, "prefix": record.prefix},
            )
            self._desired.set_inference_keys_for_all(session, actor=actor)
            return _view(record)

    def list(self, *, include_revoked: bool = False) -> builtins.list[InferenceKey]:
        """By id; at most MAX_INFERENCE_KEYS live keys (revoked ones are not bounded)."""
        statement = select(InferenceKeyRecord).order_by(col(InferenceKeyRecord.id))
        if not include_revoked:
            statement = statement.where(col(InferenceKeyRecord.revoked_at).is_(None))
        with self._db.session() as session:
            return [_view(r) for r in session.exec(statement).all()]

    def role_warnings(self, routing_role: str) -> tuple[str, ...]:
        """Why the role may not work yet: the live policy lacks it, or there is none."""
        with self._db.session() as session:
            return _role_warnings(session, routing_role)


def _role_warnings(session: Session, routing_role: str) -> tuple[str, ...]:
    record = session.exec(
        select(RoutingPolicyRecord).order_by(col(RoutingPolicyRecord.version).desc()).limit(1)
    ).first()
    if record is None:
        return (f"no routing policy is applied yet: role {routing_role!r} is not defined",)
    try:
        policy = parse_policy(record.document)
    except PolicyError:  # applied policies were valid; a later engine may read them otherwise
        return (f"the live routing policy (version {record.version}) cannot be read",)
    if policy.role(routing_role) is None:
        return (
            f"the live routing policy (version {record.version}) has no role "
            f"{routing_role!r}: agents refuse this key's requests until one does",
        )
    return ()
