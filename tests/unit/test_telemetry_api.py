"""REST telemetry: an agent's health, a metric's series, the fleet summary (SQLite, PostgreSQL)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar.testing import TestClient

from common.telemetry import Metric, Sample, SequencedSample, TelemetryBatch
from controlplane.api.app import create_app
from controlplane.auth import Role
from controlplane.db.database import Database
from controlplane.services import ControlPlaneServices
from tests.unit.test_telemetry_store import FakeCertificate

API = "/api/v1"
# A whole minute near the real time (tokens and API keys meet the real clock too).
NOW = datetime.now(UTC).replace(second=0, microsecond=0)
CPU = "outpost_cpu_utilization_ratio"
LOAD = "outpost_load_average"


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Api:
    client: TestClient[Any]
    services: ControlPlaneServices
    keys: dict[Role, str]
    clock: Clock

    def get(self, path: str, role: Role = Role.VIEWER, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.keys[role]}"}
        return self.client.get(f"{API}{path}", headers=headers, **kw)

    def enroll(self, name: str) -> str:
        services = self.services
        token, _ = services.tokens.create(
            site="", labels={}, ttl=timedelta(hours=1), created_by="test"
        )
        agent_id = str(uuid.uuid4())
        with services.db.session() as session:
            grant = services.tokens.consume(session, token, agent_id=agent_id, now=NOW)
            services.fleet.enroll(
                session,
                agent_id=agent_id,
                name=name,
                grant=grant,
                certificate=FakeCertificate(not_before=NOW, not_after=NOW + timedelta(days=1)),
            )
        return agent_id


@pytest.fixture
def api(database: Database) -> Iterator[Api]:
    clock = Clock(NOW)
    services = ControlPlaneServices.build(database, clock=clock)
    keys = {role: services.api_keys.create(f"{role.value}-user", role)[0] for role in Role}
    app = create_app(services, max_request_bytes=16 * 1024)
    with TestClient(app) as client:
        yield Api(client, services, keys, clock)


def error(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == {400: "invalid_argument", 404: "not_found"}[status]
    return str(body["error"]["message"])


def load_sample(
    seq: int, at: datetime, value: float, notes: tuple[str, ...] = ()
) -> SequencedSample:
    metrics = (
        Metric(CPU, value / 20, {"cpu": "total"}),
        Metric(LOAD, value, {"period": "1m"}),
        Metric(LOAD, value * 2, {"period": "5m"}),
    )
    return SequencedSample(seq, Sample(at, metrics, notes))


def test_health_of_an_agent_before_and_after_telemetry(api: Api) -> None:
    agent_id = api.enroll("edge-1")
    empty = api.get(f"/agents/{agent_id}/health")
    assert empty.status_code == 200, empty.text
    assert empty.json() == {
        "agent_id": agent_id,
        "state": "enrolled",
        # Never connected, but the control plane has just started: within the restart grace.
        "liveness": {"state": "ready", "reason": "not connected, within the grace period"},
        "collected_at": None,
        "metrics": [],
        "notes": [],
        "counters": {
            "received": 0,
            "stored": 0,
            "duplicates": 0,
            "rejected": 0,
            "dropped_by_agent": 0,
            "last_sample_at": None,
        },
    }
    at = NOW - timedelta(seconds=5, milliseconds=250)
    api.services.telemetry.ingest(
        agent_id,
        TelemetryBatch(
            (
                load_sample(1, at - timedelta(seconds=5), 0.5),
                load_sample(2, at, 1.5, ("no NVIDIA driver",)),
                SequencedSample(3, Sample(NOW, (Metric("outpost_made_up", 1.0),))),
            ),
            dropped=4,
        ),
    )
    health = api.get(f"/agents/{agent_id}/health", role=Role.ANALYST).json()
    assert health["collected_at"] == NOW.isoformat().replace("+00:00", "Z")
    assert health["metrics"] == []  # the newest sample had only an unknown metric
    assert health["counters"]["received"] == 3
    assert health["counters"]["stored"] == 3
    assert health["counters"]["rejected"] == 1
    assert health["counters"]["dropped_by_agent"] == 4

    other = api.enroll("edge-2")
    api.services.telemetry.ingest(other, TelemetryBatch((load_sample(7, at, 1.5, ("n",)),)))
    health = api.get(f"/agents/{other}/health").json()
    assert health["collected_at"] == at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert health["metrics"] == [
        {"name": CPU, "labels": {"cpu": "total"}, "value": 0.075},
        {"name": LOAD, "labels": {"period": "1m"}, "value": 1.5},
        {"name": LOAD, "labels": {"period": "5m"}, "value": 3.0},
    ]
    assert health["notes"] == ["n"]


def test_unknown_agents_are_404(api: Api) -> None:
    nobody = str(uuid.uuid4())
    assert "no agent" in error(api.get(f"/agents/{nobody}/health"), 404)
    assert "no agent" in error(api.get(f"/agents/{nobody}/metrics/{CPU}"), 404)


def test_a_series_with_defaults_range_step_and_labels(api: Api) -> None:
    agent_id = api.enroll("edge-1")
    start = NOW - timedelta(minutes=3)
    api.services.telemetry.ingest(
        agent_id,
        TelemetryBatch(
            tuple(load_sample(i + 1, start + i * timedelta(seconds=15), i) for i in range(12))
        ),
    )
    query = {"start": start.isoformat(), "end": NOW.isoformat(), "step": "1m"}
    body = api.get(f"/agents/{agent_id}/metrics/{LOAD}", params=query).json()
    assert (body["name"], body["unit"], body["kind"]) == (LOAD, "", "gauge")
    stamp = [(start + timedelta(minutes=m)).isoformat().replace("+00:00", "Z") for m in range(3)]
    assert body["series"] == [
        {"labels": {"period": "1m"}, "points": [[stamp[0], 1.5], [stamp[1], 5.5], [stamp[2], 9.5]]},
        {
            "labels": {"period": "5m"},
            "points": [[stamp[0], 3.0], [stamp[1], 11.0], [stamp[2], 19.0]],
        },
    ]
    one = api.get(
        f"/agents/{agent_id}/metrics/{LOAD}", params={**query, "label": "period=5m"}
    ).json()
    assert one["series"] == body["series"][1:]
    # Defaults: the last hour (from a whole minute) up to now, in 60 s steps.
    default = api.get(f"/agents/{agent_id}/metrics/{CPU}").json()
    assert (default["unit"], len(default["series"])) == ("ratio", 1)
    points = default["series"][0]["points"]
    assert len(points) == 3
    assert all(datetime.fromisoformat(at).second == 0 for at, _ in points)
    assert sum(v for _, v in points) == pytest.approx((1.5 + 5.5 + 9.5) / 20)
    assert api.get(f"/agents/{agent_id}/metrics/{CPU}?label=cpu=7").json()["series"] == []


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"start": "yesterday"}, "'start' must be an ISO-8601 time"),
        ({"end": "2030-13-01T00:00:00Z"}, "'end' must be an ISO-8601 time"),
        ({"start": "2030-01-01T01:00:00Z", "end": "2030-01-01T00:00:00Z"}, "before 'end'"),
        ({"start": "2030-01-01T00:00:00Z", "end": "2030-01-01T00:00:00Z"}, "before 'end'"),
        ({"step": "500ms"}, "at least 1s"),
        ({"step": "0"}, "at least 1s"),
        ({"step": "-5s"}, "'step' must be a duration"),
        ({"step": "1w"}, "'step' must be a duration"),
        ({"step": "9" * 30}, "'step' must be a duration"),
        ({"step": "400d"}, "at most 366d"),
        (
            {"step": "1s", "start": "2030-01-01T00:00:00Z", "end": "2030-01-02T00:00:00Z"},
            "86400 buckets",
        ),
        ({"label": "cpu"}, "key=value"),
        ({"label": "core=0"}, "has no label 'core'"),
        ({"label": ["cpu=0", "cpu=1"]}, "two values"),
        ({"start": "x" * 100}, "start"),
    ],
)
def test_bad_series_queries_are_400(api: Api, query: dict[str, Any], message: str) -> None:
    agent_id = api.enroll("edge-1")
    assert message in error(api.get(f"/agents/{agent_id}/metrics/{CPU}", params=query), 400)


def test_an_unknown_metric_is_400(api: Api) -> None:
    agent_id = api.enroll("edge-1")
    assert "unknown metric 'outpost_nope'" in error(
        api.get(f"/agents/{agent_id}/metrics/outpost_nope"), 400
    )


def test_fleet_summary(api: Api) -> None:
    first, second = api.enroll("edge-1"), api.enroll("edge-2")
    api.services.fleet.revoke(second, actor="test")
    sample = load_sample(1, NOW, 1.0)
    api.services.telemetry.ingest(first, TelemetryBatch((sample,), dropped=2))
    api.services.telemetry.ingest(first, TelemetryBatch((sample,)))
    summary = api.get("/fleet/summary").json()
    assert summary["agents"] == 2
    assert summary["by_state"]["enrolled"] == 1
    assert summary["by_state"]["revoked"] == 1
    assert summary["telemetry"] == {
        "received": 2,
        "stored": 1,
        "duplicates": 1,
        "rejected": 0,
        "dropped_by_agent": 2,
    }


def test_routes_need_a_key_and_are_in_the_schema(api: Api) -> None:
    agent_id = api.enroll("edge-1")
    assert api.client.get(f"{API}/agents/{agent_id}/health").status_code == 401
    assert api.client.get(f"{API}/fleet/summary").status_code == 401
    paths = api.client.get(f"{API}/schema/openapi.json").json()["paths"]
    health = paths[f"{API}/agents/{{agent_id}}/health"]["get"]
    assert "latest health" in health["description"]
    series = paths[f"{API}/agents/{{agent_id}}/metrics/{{name}}"]["get"]
    assert {p["name"] for p in series["parameters"]} >= {"start", "end", "step", "label"}
    assert "fleet" in paths[f"{API}/fleet/summary"]["get"]["description"]
