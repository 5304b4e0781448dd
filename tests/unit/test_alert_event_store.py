"""Alert events at the control plane: once per (agent, seq), hostile values turned away or
clipped, the gateway's own, and the REST answers (SQLite and PostgreSQL, the real app)."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest

from common.alert_batch import AlertEventBatch, SequencedAlertEvent
from common.policy.alert_notify import AlertEvent
from controlplane.alert_event_store import BAD_NUMBER, BAD_STATE, AlertEventStore
from controlplane.auth import Role
from controlplane.usage_validation import (
    BAD_SEQUENCE_NUMBER,
    BAD_TIME,
    BATCH_TOO_LARGE,
    FROM_THE_FUTURE,
    TOO_OLD,
)
from tests.alert_events import alert_event
from tests.unit.test_controlplane_api import Api, api, error
from tests.usage_rows import AT

__all__ = ["api"]  # the fixture, shared

AGENT = "4f9c2b7e-1d3a-4c5b-8e6f-0a1b2c3d4e5f"
NOW = AT + timedelta(minutes=1)


def batch(*events: AlertEvent, first: int = 1, dropped: int = 0) -> AlertEventBatch:
    items = tuple(SequencedAlertEvent(first + i, e) for i, e in enumerate(events))
    return AlertEventBatch(events=items, dropped=dropped)


def store_of(api: Api, **options: Any) -> AlertEventStore:
    return AlertEventStore(api.services.db, clock=lambda: NOW, **options)


def events(api: Api, **params: Any) -> list[dict[str, Any]]:
    response = api.call("GET", "/alerts/events", Role.VIEWER, params=params)
    assert response.status_code == 200, response.text
    return list(response.json()["events"])


def test_events_are_stored_once_per_agent_and_seq(api: Api) -> None:
    store = store_of(api)
    first = store.record_batch(AGENT, batch(alert_event(), alert_event(state="cleared")))
    assert (first.stored, first.duplicates, first.acked_seq) == (2, 0, 2)
    replay = store.record_batch(AGENT, batch(alert_event(), alert_event(state="cleared")))
    assert (replay.stored, replay.duplicates, replay.acked_seq) == (0, 2, 2)
    other = store.record_batch("agent-2", batch(alert_event()))  # its own seqs
    assert other.stored == 1
    found = events(api)
    assert len(found) == 3
    assert {(e["source"], e["seq"], e["state"]) for e in found} == {
        (AGENT, 1, "firing"), (AGENT, 2, "cleared"), ("agent-2", 1, "firing"),
    }  # fmt: skip
    assert found[0]["key"] == "cloud"
    assert found[0]["at"] == "2026-11-27T12:00:00.123Z"


def test_hostile_events_are_turned_away_but_acked_and_texts_clipped(api: Api) -> None:
    store = store_of(api, max_events_per_batch=8)
    result = store.record_batch(
        AGENT,
        batch(
            alert_event(state="burning"),
            alert_event(value=math.nan),
            alert_event(threshold=math.inf),
            alert_event(at=math.inf),
            alert_event(at=1e300),
            alert_event(at=(NOW + timedelta(hours=1)).timestamp()),
            alert_event(at=(NOW - timedelta(days=500)).timestamp()),
            alert_event(rule="r" * 500, key="k\x00" * 100, reason="x" * 5000, op="<=====",
                        metric="m" * 99, scope="s" * 99, action="a" * 99),
            alert_event(),  # beyond the batch limit: not acked, comes again
        ),
    )  # fmt: skip
    assert result.rejected == {
        BAD_STATE: 1, BAD_NUMBER: 2, BAD_TIME: 2, FROM_THE_FUTURE: 1, TOO_OLD: 1,
        BATCH_TOO_LARGE: 1,
    }  # fmt: skip
    assert (result.stored, result.acked_seq) == (1, 8)
    odd = (SequencedAlertEvent(0, alert_event()), SequencedAlertEvent(-3, alert_event()))
    bad_seq = store.record_batch(AGENT, AlertEventBatch(odd))
    assert bad_seq.rejected == {BAD_SEQUENCE_NUMBER: 2}
    (row,) = events(api)
    assert row["rule"] == "r" * 63
    assert row["key"] == ("k\N{REPLACEMENT CHARACTER}" * 32)[:63]
    assert (len(row["reason"]), row["op"], len(row["metric"]), len(row["scope"])) == (
        500, "<===", 32, 16,
    )  # fmt: skip


def test_the_gateway_records_its_own_events_without_sequence_numbers(api: Api) -> None:
    store = store_of(api)
    assert store.record(alert_event())
    assert store.record(alert_event())  # no seq: never a duplicate
    assert not store.record(alert_event(state="unknown"))
    assert [(e["source"], e["seq"]) for e in events(api)] == [("gateway", None)] * 2


def test_firing_is_the_latest_event_per_source_rule_and_key_when_it_fires(api: Api) -> None:
    store = store_of(api)
    at = AT.timestamp()
    store.record_batch(AGENT, batch(
        alert_event(at=at),  # cloud fires, then clears
        alert_event(at=at + 1, state="cleared"),
        alert_event(at=at + 2, key="other-cloud"),  # fires, still firing
        alert_event(at=at + 3, rule="overspend", scope="team", key="support"),
    ))  # fmt: skip
    store.record(alert_event(at=at + 4))  # the gateway's own cloud-down fires
    response = api.call("GET", "/alerts/firing", Role.VIEWER)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [(f["source"], f["rule"], f["key"]) for f in body["firing"]] == [
        ("gateway", "cloud-down", "cloud"),
        (AGENT, "overspend", "support"),
        (AGENT, "cloud-down", "other-cloud"),
    ]
    assert body["truncated"] is False
    store.record(alert_event(at=at + 5, state="cleared"))
    firing = api.call("GET", "/alerts/firing", Role.VIEWER).json()["firing"]
    assert [f["source"] for f in firing] == [AGENT, AGENT]


def test_events_are_paged_newest_first_and_filtered(api: Api) -> None:
    store = store_of(api)
    at = AT.timestamp()
    store.record_batch(AGENT, batch(*[
        alert_event(at=at + n, state="firing" if n % 2 == 0 else "cleared") for n in range(5)
    ]))  # fmt: skip
    store.record(alert_event(at=at + 10, rule="slow"))
    page = api.call("GET", "/alerts/events", Role.VIEWER, params={"limit": 4}).json()
    assert [e["seq"] for e in page["events"]] == [None, 5, 4, 3]
    rest = events(api, limit=4, cursor=page["next_cursor"])
    assert [e["seq"] for e in rest] == [2, 1]
    assert [e["seq"] for e in events(api, source=AGENT, state="firing")] == [5, 3, 1]
    assert [e["rule"] for e in events(api, rule="slow")] == ["slow"]
    since, until = "2026-11-27T12:00:01.5Z", "2026-11-27T12:00:03.5Z"
    assert [e["seq"] for e in events(api, since=since, until=until)] == [4, 3]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"since": "yesterday"}, "'since' must be an ISO-8601 time"),
        ({"since": "2026-11-28", "until": "2026-11-27"}, "'since' must be before 'until'"),
        ({"state": "burning"}, "'state' must be 'firing' or 'cleared'"),
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"cursor": "nonsense"}, "'cursor' must be"),
        ({"rule": "r" * 64}, "rule"),
    ],
)
def test_bad_query_input_is_a_400_that_says_why(
    api: Api, params: dict[str, Any], message: str
) -> None:
    assert message in error(api.call("GET", "/alerts/events", Role.VIEWER, params=params), 400)


def test_alert_events_need_an_api_key(api: Api) -> None:
    assert error(api.call("GET", "/alerts/events", None), 401)
    assert error(api.call("GET", "/alerts/firing", None), 401)
