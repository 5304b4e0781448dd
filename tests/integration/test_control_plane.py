"""Enrollment, desired state and restarts end to end: real control plane, real agents, real
certificates, the real model; on SQLite and on PostgreSQL."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from sqlmodel import select

from agent.control.client import ControlLinkSettings
from agent.control.identity import IdentityStore
from agent.settings import AgentSettings, ModelSettings
from controlplane.db.models import Certificate
from tests.agent_harness import RunningAgent
from tests.conftest import llama_factory
from tests.controlplane_harness import (
    ObservedManagedAgent,
    RunningControlPlane,
    controlplane_settings,
    managed_agent,
    wait_until,
)

_names = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None: the control plane's default SQLite file in its data dir."""
    if request.param == "sqlite":
        yield None
        return
    server = request.getfixturevalue("postgres_server")
    name = f"cp_{os.getpid()}_{next(_names)}"
    yield server.create_database(name)
    server.drop_database(name)


def agent_json(cp: RunningControlPlane, agent_id: str) -> dict[str, Any]:
    with cp.api() as api:
        response = api.get(f"/agents/{agent_id}")
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def assign(cp: RunningControlPlane, agent_id: str, models: list[dict[str, Any]]) -> int:
    with cp.api() as api:
        response = api.put(f"/agents/{agent_id}/desired-state/models", json={"models": models})
    assert response.status_code == 200, response.text
    return int(response.json()["generation"])


def complete(base: str, model: str) -> httpx.Response:
    return httpx.post(
        f"{base}/v1/completions",
        json={"model": model, "prompt": "Hello", "max_tokens": 3, "temperature": 0},
        timeout=60,
    )


def test_enrolled_agent_follows_desired_state_across_restarts(
    tmp_path: Path, database_url: str | None, demo_model: Path
) -> None:
    settings = controlplane_settings(tmp_path / "cp", database_url)
    smol = {"alias": "smol", "path": str(demo_model), "context_length": 512}
    with RunningControlPlane(settings) as cp:
        token = cp.create_token(site="branch-7", labels={"tier": "edge"})
        enroll_port = cp.ports.grpc
        running, companion = managed_agent(
            tmp_path / "agent", cp.enroll_address, token, cp.fingerprint
        )
        with running:
            running.wait_until_serving()
            wait_until(companion.link.connected.is_set, "the agent is connected")
            with cp.api() as api:
                (listed,) = api.get("/agents").json()["agents"]
            agent_id = listed["id"]
            assert listed["site"] == "branch-7"
            assert listed["labels"] == {"tier": "edge"}
            assert listed["state"] == "connected"

            generation = assign(cp, agent_id, [smol])
            status = companion.wait_applied(generation)
            assert [(i.name, i.state.value) for i in status.items] == [("smol", "ready")]
            assert complete(running.http_base, "smol").status_code == 200
            wait_until(
                lambda: agent_json(cp, agent_id)["observed_generation"] == generation,
                "the control plane records the observed generation",
            )
            assert agent_json(cp, agent_id)["status"] == [
                {"kind": "model", "name": "smol", "state": "ready", "error": ""}
            ]

            # The control plane restarts; the agent keeps serving, reconnects and converges.
            cp.__exit__(None, None, None)
            assert complete(running.http_base, "smol").status_code == 200
            restarted = replace(settings, grpc_port=enroll_port)
            with RunningControlPlane(restarted) as cp2:
                renamed = {**smol, "alias": "smol-v2"}
                generation = assign(cp2, agent_id, [renamed])
                companion.wait_applied(generation)
                assert complete(running.http_base, "smol-v2").status_code == 200
                assert complete(running.http_base, "smol").status_code == 404
                wait_until(
                    lambda: agent_json(cp2, agent_id)["observed_generation"] == generation,
                    "the restarted control plane records the new generation",
                )

    # The agent restarts with no control plane reachable: it serves what it was told last.
    again, companion = managed_agent(tmp_path / "agent")
    with again:
        again.wait_until_serving()
        assert complete(again.http_base, "smol-v2").status_code == 200
        assert not companion.link.connected.is_set()


def test_revoked_agent_is_cut_off_and_keeps_serving_locally(
    tmp_path: Path, demo_model: Path
) -> None:
    settings = controlplane_settings(tmp_path / "cp", None)
    with RunningControlPlane(settings) as cp:
        token = cp.create_token()
        running, companion = managed_agent(
            tmp_path / "agent", cp.enroll_address, token, cp.fingerprint
        )
        with running:
            running.wait_until_serving()
            wait_until(companion.link.connected.is_set, "the agent is connected")
            with cp.api() as api:
                (listed,) = api.get("/agents").json()["agents"]
                generation = assign(
                    cp,
                    listed["id"],
                    [{"alias": "smol", "path": str(demo_model), "context_length": 256}],
                )
                companion.wait_applied(generation)
                assert api.post(f"/agents/{listed['id']}/revoke").status_code == 200
            wait_until(lambda: not companion.link.connected.is_set(), "the stream is cut")
            assert agent_json(cp, listed["id"])["state"] == "revoked"
            assert complete(running.http_base, "smol").status_code == 200
            wait_until(lambda: _has_denied_connect(cp), "a refused reconnect is audited")


def _has_denied_connect(cp: RunningControlPlane) -> bool:
    with cp.api() as api:
        events = api.get("/audit").json()["events"]
    return any(e["action"] == "connect" and e["outcome"] == "denied" for e in events)


def test_agent_renews_a_certificate_that_is_due(tmp_path: Path) -> None:
    # A one-minute certificate (backdated five minutes for clock skew) is due for renewal at
    # once: the agent's first session renews it before connecting.
    settings = controlplane_settings(
        tmp_path / "cp", None, agent_certificate_ttl=timedelta(minutes=1)
    )
    with RunningControlPlane(settings) as cp:
        running, companion = managed_agent(
            tmp_path / "agent", cp.enroll_address, cp.create_token(), cp.fingerprint
        )
        with running:
            running.wait_until_serving()
            wait_until(companion.link.connected.is_set, "the agent is connected")
            stored = IdentityStore(tmp_path / "agent").load()
            assert stored is not None
            assert cp.server.services is not None
            with cp.server.services.db.session() as session:
                serials = session.exec(
                    select(Certificate.serial).where(Certificate.agent_id == stored.agent_id)
                ).all()
            assert len(serials) == 2  # the enrollment's and the renewal's
            current = x509.load_pem_x509_certificate(stored.certificate_pem)
            assert format(current.serial_number, "x") in serials


def test_plain_text_demo_mode_works_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = controlplane_settings(tmp_path / "cp", None, insecure=True)
    with caplog.at_level("WARNING"), RunningControlPlane(settings) as cp:
        link = ControlLinkSettings(
            control_plane=cp.enroll_address,
            join_token=cp.create_token(),
            ca_fingerprint="",
            insecure=True,
        )
        companion = ObservedManagedAgent(
            tmp_path / "agent", link, ModelSettings(path=Path(), alias="m")
        )
        agent_settings = AgentSettings(host="127.0.0.1", grpc_port=0, http_port=0)
        with RunningAgent(agent_settings, llama_factory(), companion) as running:
            running.wait_until_serving()
            wait_until(companion.link.connected.is_set, "the agent is connected in plain text")
    assert any("PLAIN-TEXT MODE" in r.getMessage() for r in caplog.records)
