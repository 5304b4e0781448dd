"""`ControlPlaneServices`: the domain services, all built on one `Database`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from common.telemetry import Sample
from controlplane.alert_event_store import AlertEventStore
from controlplane.audit import AuditLog
from controlplane.auth import ApiKeys
from controlplane.db.database import Database
from controlplane.db.models import utcnow
from controlplane.desired_state import DesiredStates
from controlplane.federated.jobs import FederatedJobs
from controlplane.fleet import Fleet
from controlplane.inference_keys import InferenceKeys
from controlplane.liveness import Health, LivenessPolicy, assess_fleet
from controlplane.model_assignments import ModelAssignments
from controlplane.model_registry import DEFAULT_MAX_MODEL_BYTES, ModelRegistry
from controlplane.model_store import ModelStore
from controlplane.policy_store import PolicyStore
from controlplane.telemetry_store import TelemetryStore
from controlplane.tokens import JoinTokens
from controlplane.usage_store import UsageStore
from controlplane.users import Users


@dataclass
class ControlPlaneServices:
    db: Database
    audit: AuditLog
    api_keys: ApiKeys
    tokens: JoinTokens
    desired: DesiredStates
    fleet: Fleet
    telemetry: TelemetryStore
    models: ModelRegistry
    assignments: ModelAssignments
    policies: PolicyStore
    inference_keys: InferenceKeys
    usage: UsageStore
    alert_events: AlertEventStore
    users: Users
    federated_jobs: FederatedJobs
    started_at: datetime  # the restart grace of liveness counts from here
    liveness_policy: LivenessPolicy = field(default_factory=LivenessPolicy)

    @classmethod
    def build(
        cls,
        db: Database,
        *,
        clock: Callable[[], datetime] = utcnow,
        telemetry_raw_retention: timedelta = timedelta(days=1),
        telemetry_rollup_retention: timedelta = timedelta(days=30),
        liveness_policy: LivenessPolicy | None = None,
        model_store_dir: Path | None = None,
        max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES,
    ) -> ControlPlaneServices:
        """`clock` (timezone-aware UTC) is for tests that move time. Telemetry keeps raw
        points for `telemetry_raw_retention` and minute averages for
        `telemetry_rollup_retention`. Model files are stored under `model_store_dir` (without
        one, models can be listed but not imported), each at most `max_model_bytes`."""
        audit = AuditLog(db, clock=clock)
        desired = DesiredStates(db, audit, clock=clock)
        telemetry = TelemetryStore(
            db,
            raw_retention=telemetry_raw_retention,
            rollup_retention=telemetry_rollup_retention,
            clock=clock,
        )
        models = ModelRegistry(
            db,
            ModelStore(model_store_dir) if model_store_dir is not None else None,
            audit,
            max_bytes=max_model_bytes,
            clock=clock,
        )
        return cls(
            db=db,
            audit=audit,
            api_keys=ApiKeys(db, audit, clock=clock),
            tokens=JoinTokens(db, audit, clock=clock),
            desired=desired,
            fleet=Fleet(db, audit, desired, clock=clock),
            telemetry=telemetry,
            models=models,
            # Registers itself with `desired`: label changes re-resolve registry models.
            assignments=ModelAssignments(db, models, desired, audit, telemetry.latest, clock=clock),
            policies=PolicyStore(db, audit, desired, clock=clock),
            inference_keys=InferenceKeys(db, audit, desired, clock=clock),
            usage=UsageStore(db, clock=clock),
            alert_events=AlertEventStore(db, clock=clock),
            users=Users(db, audit, clock=clock),
            federated_jobs=FederatedJobs(db, models, desired, audit, clock=clock),
            started_at=clock(),
            liveness_policy=liveness_policy or LivenessPolicy(),
        )

    def health(self, latest: Mapping[str, Sample] | None = None) -> dict[str, Health]:
        """Every agent's liveness now; `latest` telemetry (when given) can show degradation."""
        return assess_fleet(
            self.fleet.list(),
            now=self.telemetry.now(),
            started_at=self.started_at,
            latest=latest or {},
            policy=self.liveness_policy,
        )
