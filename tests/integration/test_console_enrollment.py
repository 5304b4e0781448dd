"""The console's enrollment page: join tokens with the install command, revoking tokens and
agents; admins only, bad forms refused."""

from __future__ import annotations

import re
import shlex
import uuid

import grpc
import pytest

from agent.control.identity import build_csr, generate_key
from tests.console_client import ConsoleClient
from tests.console_fleet import enroll_agent, logged_in, services_of
from tests.controlplane_harness import RunningControlPlane
from tests.integration.test_control_plane_bad_input import enroll

TOKEN = re.compile(r"opj_[A-Za-z0-9_-]+")


def create(user: ConsoleClient, **fields: str) -> tuple[int, str]:
    form = {"site": "", "labels": "", "hours": "", **fields}
    form["csrf_token"] = user.page_token("/console/enrollment")
    response = user.post("/console/enrollment/tokens", form)
    return response.status_code, response.text


def unused_tokens(console_cp: RunningControlPlane) -> int:
    return len(services_of(console_cp).tokens.list())


def test_a_new_token_comes_with_its_install_command_once_and_enrolls_an_agent(
    console_cp: RunningControlPlane, admin: ConsoleClient
) -> None:
    status, page = create(admin, site="branch-7", labels="floor=2, gpu=yes", hours="2")
    assert status == 200
    command = page[page.index('<pre id="install-command">') :].split(">", 1)[1].split("<")[0]
    words = shlex.split(command.replace("&#39;", "'"))
    assert words[:2] == ["outpost-agent", "run"]
    options = dict(zip(words[2::2], words[3::2], strict=False))
    assert options["--control-plane"] == f"localhost:{console_cp.ports.grpc}"
    assert options["--ca-fingerprint"] == console_cp.fingerprint
    token = options["--join-token"]
    assert TOKEN.fullmatch(token)
    assert token not in admin.get("/console/enrollment").text  # shown once
    agent_id = str(uuid.uuid4())
    enroll(console_cp, token, build_csr(generate_key(), agent_id), name="from-console")
    agent = services_of(console_cp).fleet.get(agent_id)
    assert agent.site == "branch-7"
    assert agent.labels == {"floor": "2", "gpu": "yes"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"site": "<bad site>"}, "site must be"),
        ({"labels": "no-equals"}, "key=value pairs"),
        ({"labels": "a=1,a=2"}, "given twice"),
        ({"labels": "b@d=1"}, "label"),
        ({"hours": "0"}, "from 1 to 720"),
        ({"hours": "721"}, "from 1 to 720"),
        ({"hours": "two"}, "from 1 to 720"),
    ],
)
def test_bad_tokens_are_refused(
    console_cp: RunningControlPlane, admin: ConsoleClient, fields: dict[str, str], message: str
) -> None:
    before = unused_tokens(console_cp)
    status, page = create(admin, **fields)
    assert status == 400
    assert message in page
    assert "<bad site>" not in page
    assert unused_tokens(console_cp) == before


@pytest.mark.parametrize("name", ["vera", "otto"])
def test_only_admins_create_tokens_or_revoke(console_cp: RunningControlPlane, name: str) -> None:
    agent_id = enroll_agent(console_cp, f"kept-by-{name}")
    user = logged_in(console_cp, name)
    before = unused_tokens(console_cp)
    status, page = create(user, site="x")
    assert status == 403
    assert "Only administrators" in page
    assert unused_tokens(console_cp) == before
    token = user.page_token(f"/console/agents/{agent_id}")
    assert "Revoke this agent" not in user.get(f"/console/agents/{agent_id}").text
    response = user.post(f"/console/agents/{agent_id}/revoke", {"csrf_token": token})
    assert response.status_code == 403
    assert services_of(console_cp).fleet.get(agent_id).revoked_at is None
    user.close()


def test_an_admin_revokes_a_token_and_an_agent(
    console_cp: RunningControlPlane, admin: ConsoleClient
) -> None:
    _, page = create(admin, site="short-lived")
    match = TOKEN.search(page)
    assert match is not None
    (record,) = [t for t in services_of(console_cp).tokens.list() if t.site == "short-lived"]
    token = admin.page_token("/console/enrollment")
    revoked = admin.post(
        "/console/enrollment/tokens/revoke", {"csrf_token": token, "token_id": str(record.id)}
    )
    assert revoked.status_code == 303
    with pytest.raises(grpc.RpcError):
        enroll(console_cp, match.group(0), build_csr(generate_key(), str(uuid.uuid4())))
    agent_id = enroll_agent(console_cp, "to-be-revoked")
    page = admin.get(f"/console/agents/{agent_id}").text
    assert "Revoke this agent" in page
    response = admin.post(f"/console/agents/{agent_id}/revoke", {"csrf_token": token})
    assert response.status_code == 303
    assert services_of(console_cp).fleet.get(agent_id).revoked_at is not None
    page = admin.get(f"/console/agents/{agent_id}").text
    assert "revoked" in page
    events = page[page.index('id="agent-events"') :]
    actions = re.findall(
        r'<tr class="agent-event"><td>[^<]*</td><td>([^<]*)</td><td>([^<]*)<', events
    )
    assert actions[0] == ("agent.revoke", "ada")  # newest first, this agent's only
    assert actions[-1][0] == "agent.enroll"
    missing = admin.post(f"/console/agents/{uuid.uuid4()}/revoke", {"csrf_token": token})
    assert missing.status_code == 404
    for value in ("", "abc"):
        bad = admin.post(
            "/console/enrollment/tokens/revoke", {"csrf_token": token, "token_id": value}
        )
        assert bad.status_code == 400
