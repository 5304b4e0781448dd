"""`Fleet`: the agent registry: enrollment, certificates, hello/status, labels, revocation."""

from __future__ import annotations

import builtins
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict
from datetime import datetime
from typing import Any, Protocol, cast

from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, or_, select, update

from common.control import AgentStatus, Hello
from common.errors import InvalidArgument, NotFound, OutpostError
from controlplane.audit import AuditLog, check_actor
from controlplane.db.database import Database
from controlplane.db.models import NAME_CHARS, Agent, AgentState, Certificate, utcnow
from controlplane.desired_state import DesiredStates
from controlplane.desired_state_checks import check_agent_id, check_labels
from controlplane.tokens import TokenGrant

MAX_GENERATION = 2**31 - 1  # the columns are 32-bit integers on PostgreSQL
MAX_STATUS_ITEMS = 1024
MAX_ERROR_CHARS = 2000
MAX_CAPABILITIES = 64
MAX_CAPABILITY_CHARS = 200
_HEX64 = re.compile(r"[0-9a-f]{64}")


class AgentAlreadyExists(OutpostError):
    """An agent with this id is already enrolled."""


class AgentRevoked(OutpostError):
    """The agent was revoked: it may not connect, renew or be changed."""


class IssuedCertificateLike(Protocol):
    """A signed agent certificate, as the PKI module hands it out."""

    @property
    def serial(self) -> str: ...  # lowercase hex
    @property
    def not_before(self) -> datetime: ...
    @property
    def not_after(self) -> datetime: ...
    @property
    def pem(self) -> bytes | str: ...


def _text(value: str, limit: int) -> str:
    """Agent-reported text as stored: no NUL (PostgreSQL refuses it), at most `limit` chars."""
    return value.replace("\x00", "\N{REPLACEMENT CHARACTER}")[:limit]


def _sha256_or_empty(value: str) -> str:
    return value if _HEX64.fullmatch(value) else ""


def _count(value: int) -> int:
    return min(max(int(value), 0), 2**63 - 1)


def _rate(value: float) -> float:
    return value if math.isfinite(value) and 0 <= value < 1e15 else 0.0


def _host_port(value: str) -> str:
    host, _, port = value.rpartition(":")
    valid = bool(host) and port.isdigit() and 0 < int(port) < 65536
    return value if valid and len(value) <= NAME_CHARS and value.isprintable() else ""


def _generation(value: int) -> int:
    if not 0 <= value <= MAX_GENERATION:
        raise InvalidArgument(f"a generation must be between 0 and {MAX_GENERATION}")
    return value


def _certificate(agent_id: str, certificate: IssuedCertificateLike) -> Certificate:
    pem = certificate.pem
    return Certificate(
        serial=certificate.serial.lower(),
        agent_id=agent_id,
        not_before=certificate.not_before,
        not_after=certificate.not_after,
        pem=pem.decode("ascii") if isinstance(pem, bytes) else pem,
    )


class Fleet:
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

    # -- enrollment and certificates ------------------------------------------------------

    def enroll(
        self,
        session: Session,
        *,
        agent_id: str,
        name: str,
        grant: TokenGrant,
        certificate: IssuedCertificateLike,
    ) -> Agent:
        """Records a new agent with the token's site and labels, in the caller's transaction."""
        check_agent_id(agent_id)
        if not isinstance(name, str) or not 1 <= len(name) <= NAME_CHARS or not name.isprintable():
            raise InvalidArgument(f"an agent name must be 1 to {NAME_CHARS} printable characters")
        if session.get(Agent, agent_id) is not None:
            raise AgentAlreadyExists(f"agent {agent_id} is already enrolled")
        agent = Agent(
            id=agent_id,
            name=name,
            site=grant.site,
            labels=dict(grant.labels),
            state=AgentState.ENROLLED.value,
            enrolled_at=self._clock(),
        )
        session.add(agent)
        try:
            session.flush()  # the agent row first: the certificate refers to it
        except IntegrityError as exc:  # enrolled concurrently by another transaction
            raise AgentAlreadyExists(f"agent {agent_id} is already enrolled") from exc
        record = _certificate(agent_id, certificate)
        session.add(record)
        session.flush()
        actor = f"token:{grant.token_id}"
        if grant.labels:  # the agent learns its labels through its desired state
            self._desired.set_labels(session, agent_id, grant.labels, actor=actor)
        else:  # models assigned to its site reach it from the start
            self._desired.refresh_registry_models(session, agent_id, actor=actor)
        self._desired.refresh_policy(session, agent_id, actor=actor)  # the live routing policy
        self._audit.record(
            session,
            actor=actor,
            action="agent.enroll",
            target=f"agent:{agent_id}",
            detail={"name": name, "site": grant.site, "serial": record.serial},
        )
        return agent

    def add_certificate(self, agent_id: str, certificate: IssuedCertificateLike) -> None:
        """Records a renewed certificate; older ones stay valid until they expire."""
        with self._db.session() as session:
            self._live_agent(session, agent_id)
            record = _certificate(agent_id, certificate)
            session.add(record)
            self._audit.record(
                session,
                actor=f"agent:{agent_id}",
                action="certificate.renew",
                target=f"agent:{agent_id}",
                detail={"serial": record.serial, "not_after": record.not_after.isoformat()},
            )

    def certificate_is_current(self, agent_id: str, serial: str) -> bool:
        """The agent is not revoked and this certificate is its own, unrevoked and in date."""
        now = self._clock()
        with self._db.session() as session:
            row = session.exec(
                select(Certificate, Agent)
                .join(Agent, col(Agent.id) == col(Certificate.agent_id))
                .where(Certificate.serial == serial.lower(), Certificate.agent_id == agent_id)
            ).first()
        if row is None:
            return False
        record, agent = row
        return (
            agent.revoked_at is None
            and agent.state != AgentState.REVOKED
            and record.revoked_at is None
            and record.not_before <= now < record.not_after
        )

    # -- reading --------------------------------------------------------------------------

    def get(self, agent_id: str) -> Agent:
        with self._db.session() as session:
            agent = session.get(Agent, agent_id)
        if agent is None:
            raise NotFound(f"no agent {agent_id}")
        return agent

    def list(self, site: str | None = None) -> builtins.list[Agent]:
        """Every agent (of one site), by site, name and id."""
        statement = select(Agent).order_by(col(Agent.site), col(Agent.name), col(Agent.id))
        if site is not None:
            statement = statement.where(Agent.site == site)
        with self._db.session() as session:
            return builtins.list(session.exec(statement).all())

    # -- administration -------------------------------------------------------------------

    def set_labels(self, agent_id: str, labels: Mapping[str, str], *, actor: str) -> Agent:
        """Replaces the agent's labels and pushes them as a new desired-state generation."""
        check_actor(actor)
        checked = check_labels(labels)
        with self._db.session() as session:
            agent = self._live_agent(session, agent_id)
            previous = dict(agent.labels)
            agent.labels = checked
            session.add(agent)
            self._desired.set_labels(session, agent_id, checked, actor=actor)
            self._audit.record(
                session,
                actor=actor,
                action="agent.set_labels",
                target=f"agent:{agent_id}",
                detail={"before": previous, "after": checked},
            )
        return agent

    def revoke(self, agent_id: str, *, actor: str) -> Agent:
        """Marks the agent and all its certificates revoked; repeating it changes nothing."""
        check_actor(actor)
        with self._db.session() as session:
            agent = session.get(Agent, agent_id)
            if agent is None:
                raise NotFound(f"no agent {agent_id}")
            if agent.revoked_at is not None:
                return agent
            now = self._clock()
            agent.state = AgentState.REVOKED.value
            agent.revoked_at = now
            session.add(agent)
            revoked = session.exec(
                update(Certificate)
                .where(col(Certificate.agent_id) == agent_id, col(Certificate.revoked_at).is_(None))
                .values(revoked_at=now)
                .execution_options(synchronize_session=False)
            ).rowcount
            self._audit.record(
                session,
                actor=actor,
                action="agent.revoke",
                target=f"agent:{agent_id}",
                detail={"certificates": revoked},
            )
        return agent

    # -- the control stream ---------------------------------------------------------------

    def record_hello(self, agent_id: str, hello: Hello) -> Agent:
        if hello.agent_id != agent_id:
            raise InvalidArgument(f"Hello names agent {hello.agent_id!r}, not {agent_id}")
        observed = _generation(hello.observed_generation)
        with self._db.session() as session:
            agent = self._live_agent(session, agent_id)
            agent.state = AgentState.CONNECTED.value
            agent.version = _text(hello.version, NAME_CHARS)
            agent.hardware = {
                k: _text(v, NAME_CHARS) if isinstance(v, str) else v
                for k, v in asdict(hello.hardware).items()
            }
            agent.observed_generation = observed
            agent.peer_address = _host_port(hello.peer_address)
            agent.inference_address = _host_port(hello.inference_address)
            agent.capabilities = [
                _text(c, MAX_CAPABILITY_CHARS) for c in hello.capabilities[:MAX_CAPABILITIES]
            ]
            agent.last_seen_at = self._clock()
            session.add(agent)
        return agent

    def record_status(self, agent_id: str, status: AgentStatus) -> None:
        """The agent's latest report; a revoked agent's report changes only `last_seen_at`."""
        observed = _generation(status.observed_generation)
        items = [
            {
                "kind": _text(item.kind, 64),
                "name": _text(item.name, NAME_CHARS),
                "state": _text(str(item.state), 32),
                "error": _text(item.error, MAX_ERROR_CHARS),
                "sha256": _sha256_or_empty(item.sha256),
                "bytes_done": _count(item.bytes_done),
                "bytes_total": _count(item.bytes_total),
                "rate_bytes_per_s": _rate(item.rate_bytes_per_s),
                "serving_sha256": _sha256_or_empty(item.serving_sha256),
            }
            for item in status.items[:MAX_STATUS_ITEMS]
        ]
        with self._db.session() as session:
            agent = session.get(Agent, agent_id)
            if agent is None:
                raise NotFound(f"no agent {agent_id}")
            agent.last_seen_at = self._clock()
            if agent.revoked_at is None:
                agent.observed_generation = observed
                agent.status_items = items
            session.add(agent)

    def peers_holding(self, agent_id: str, sha256: str) -> builtins.list[str]:
        """Peer addresses of the other connected agents of `agent_id`'s site that report the
        artifact ready or serving, most recently seen first."""
        with self._db.session() as session:
            agent = self._live_agent(session, agent_id)
            if not agent.site:
                return []
            peers = session.exec(
                select(Agent)
                .where(
                    col(Agent.site) == agent.site,
                    col(Agent.id) != agent_id,
                    col(Agent.revoked_at).is_(None),
                    col(Agent.state) == AgentState.CONNECTED.value,
                    col(Agent.peer_address) != "",
                )
                .order_by(col(Agent.last_seen_at).desc())
            ).all()
            return [
                peer.peer_address
                for peer in peers
                if any(
                    (item.get("sha256") == sha256 and item.get("state") == "ready")
                    or item.get("serving_sha256") == sha256
                    for item in peer.status_items or []
                )
            ]

    def site_agent(self, agent_id: str, wanted: str) -> tuple[str, str] | None:
        """(id, inference address) of the connected agent of `agent_id`'s site whose id or
        name is `wanted` and that takes forwarded requests (most recently seen, if names
        repeat); None when there is none. An agent without a site finds none."""
        if not isinstance(wanted, str) or not 1 <= len(wanted) <= NAME_CHARS:
            raise InvalidArgument(f"an agent id or name is 1 to {NAME_CHARS} characters")
        if not wanted.isprintable():
            raise InvalidArgument("an agent id or name is printable text")
        with self._db.session() as session:
            agent = self._live_agent(session, agent_id)
            if not agent.site:
                return None
            found = session.exec(
                select(Agent)
                .where(
                    col(Agent.site) == agent.site,
                    or_(col(Agent.id) == wanted, col(Agent.name) == wanted),
                    col(Agent.revoked_at).is_(None),
                    col(Agent.state) == AgentState.CONNECTED.value,
                    col(Agent.inference_address) != "",
                )
                .order_by(col(Agent.last_seen_at).desc())
            ).first()
            return (found.id, found.inference_address) if found is not None else None

    def mark_disconnected(self, agent_id: str) -> None:
        """A connected agent's stream ended; unknown and revoked agents are left as they are."""
        with self._db.session() as session:
            agent = session.get(Agent, agent_id)
            if agent is None:
                return
            agent.last_seen_at = self._clock()
            if agent.state == AgentState.CONNECTED:
                agent.state = AgentState.DISCONNECTED.value
            session.add(agent)

    def mark_all_disconnected(self) -> int:
        """At start-up no stream is open yet: agents recorded as connected are not (the last
        run may have ended without saying so). Their last contact time is kept."""
        with self._db.session() as session:
            result = session.execute(
                update(Agent)
                .where(col(Agent.state) == AgentState.CONNECTED.value)
                .values(state=AgentState.DISCONNECTED.value)
            )
            return int(cast(CursorResult[Any], result).rowcount)

    def _live_agent(self, session: Session, agent_id: str) -> Agent:
        agent = session.get(Agent, agent_id)
        if agent is None:
            raise NotFound(f"no agent {agent_id}")
        if agent.revoked_at is not None:
            raise AgentRevoked(f"agent {agent_id} is revoked")
        return agent
