"""The console's keys page: keys shown once at creation, then only by prefix; admins only."""

from __future__ import annotations

import re

import pytest

from controlplane.auth import KEY_PATTERN
from tests.console_client import ConsoleClient
from tests.console_fleet import logged_in, services_of
from tests.controlplane_harness import RunningControlPlane


def post(client: ConsoleClient, path: str, fields: dict[str, str]) -> tuple[int, str]:
    response = client.post(path, {**fields, "csrf_token": client.page_token("/console/keys")})
    return response.status_code, response.text


def new_key(page: str) -> str:
    match = re.search(r'<code id="new-key-value">([^<]+)</code>', page)
    assert match is not None, page
    return match.group(1)


def test_an_api_key_is_shown_once_works_and_is_revoked(
    console_cp: RunningControlPlane, admin: ConsoleClient
) -> None:
    status, page = post(
        admin, "/console/keys/api", {"action": "create", "user": "ci", "role": "operator"}
    )
    assert status == 200
    key = new_key(page)
    assert KEY_PATTERN.fullmatch(key)
    with console_cp.api(key) as api:
        assert api.get("/agents").status_code == 200
    listing = admin.get("/console/keys").text
    assert key not in listing
    assert f"<code>{key[:8]}…</code>" in listing
    (record,) = [k for k in services_of(console_cp).api_keys.list() if k.prefix == key[:8]]
    status, _ = post(admin, "/console/keys/api", {"action": "revoke", "key_id": str(record.id)})
    assert status == 200
    with console_cp.api(key) as api:
        assert api.get("/agents").status_code == 401


def test_an_inference_key_is_shown_once_then_by_prefix(
    console_cp: RunningControlPlane, admin: ConsoleClient
) -> None:
    fields = {"action": "create", "name": "helpdesk", "role": "dev", "team": "ops"}
    status, page = post(admin, "/console/keys/inference", fields)
    assert status == 200
    key = new_key(page)
    assert "warning:" in page  # no live policy has the role "dev" yet
    listing = admin.get("/console/keys").text
    assert key not in listing
    (record,) = services_of(console_cp).inference_keys.list()
    assert f"<code>{record.prefix}…</code>" in listing
    status, _ = post(
        admin, "/console/keys/inference", {"action": "revoke", "key_id": str(record.id)}
    )
    assert status == 200
    assert services_of(console_cp).inference_keys.list() == []


@pytest.mark.parametrize(
    ("path", "fields", "status", "message"),
    [
        ("/console/keys/api", {"action": "create", "user": "x", "role": "god"}, 400, "a role"),
        (
            "/console/keys/api",
            {"action": "create", "user": "<u>", "role": "viewer"},
            400,
            "&lt;u&gt;",
        ),
        ("/console/keys/api", {"action": "revoke", "key_id": "999999"}, 404, "no API key"),
        ("/console/keys/api", {"action": "revoke", "key_id": "x"}, 400, "by its number"),
        ("/console/keys/api", {"action": "rotate"}, 400, "create or revoke"),
        ("/console/keys/inference", {"action": "create", "name": "a", "role": "r"}, 400, "team"),
        ("/console/keys/inference", {"action": "revoke", "key_id": "0"}, 400, "by its number"),
    ],
)
def test_bad_key_forms_are_refused(
    console_cp: RunningControlPlane,
    admin: ConsoleClient,
    path: str,
    fields: dict[str, str],
    status: int,
    message: str,
) -> None:
    before = (
        len(services_of(console_cp).api_keys.list()),
        len(services_of(console_cp).inference_keys.list()),
    )
    answered, page = post(admin, path, fields)
    assert answered == status
    assert message in page
    assert 'id="new-key-value"' not in page
    after = (
        len(services_of(console_cp).api_keys.list()),
        len(services_of(console_cp).inference_keys.list()),
    )
    assert after == before


@pytest.mark.parametrize("name", ["vera", "otto"])
def test_non_admins_see_inference_key_prefixes_only_and_change_nothing(
    console_cp: RunningControlPlane, name: str
) -> None:
    user = logged_in(console_cp, name)
    page = user.get("/console/keys").text
    assert 'id="api-keys"' not in page
    assert 'id="inference-keys"' in page
    before = len(services_of(console_cp).api_keys.list())
    for path, fields in (
        ("/console/keys/api", {"action": "create", "user": "sneaky", "role": "admin"}),
        ("/console/keys/inference", {"action": "create", "name": "n", "role": "r", "team": "t"}),
    ):
        status, page = post(user, path, fields)
        assert status == 403
        assert "Only administrators" in page
    assert len(services_of(console_cp).api_keys.list()) == before
    user.close()
