"""`ControlPlaneServices`: the domain services, all built on one `Database`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from controlplane.audit import AuditLog
from controlplane.auth import ApiKeys
from controlplane.db.database import Database
from controlplane.db.models import utcnow
from controlplane.desired_state import DesiredStates
from controlplane.fleet import Fleet
from controlplane.tokens import JoinTokens


@dataclass
class ControlPlaneServices:
    db: Database
    audit: AuditLog
    api_keys: ApiKeys
    tokens: JoinTokens
    desired: DesiredStates
    fleet: Fleet

    @classmethod
    def build(cls, db: Database, *, clock: Callable[[], datetime] = utcnow) -> ControlPlaneServices:
        """`clock` (timezone-aware UTC) is for tests that move time."""
        audit = AuditLog(db, clock=clock)
        desired = DesiredStates(db, audit, clock=clock)
        return cls(
            db=db,
            audit=audit,
            api_keys=ApiKeys(db, audit, clock=clock),
            tokens=JoinTokens(db, audit, clock=clock),
            desired=desired,
            fleet=Fleet(db, audit, desired, clock=clock),
        )
