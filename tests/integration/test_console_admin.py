"""The console's admin pages: users (a generated password shown once) and the audit log."""

from __future__ import annotations

import pytest

from tests.console_client import ConsoleClient
from tests.console_fleet import PASSWORD, logged_out, services_of
from tests.controlplane_harness import RunningControlPlane

HOSTILE = "<img src=x onerror=alert(1)>"


def change(user: ConsoleClient, action: str, name: str, role: str = "") -> tuple[int, str]:
    form = {"csrf_token": user.page_token(), "action": action, "name": name}
    if role:
        form["role"] = role
    response = user.post("/console/users", form)
    return response.status_code, response.text


def shown_password(page: str) -> str:
    start = page.index('<code id="new-password">') + len('<code id="new-password">')
    return page[start : page.index("</code>", start)]


def test_an_admin_creates_a_user_whose_password_is_shown_once(
    console_cp: RunningControlPlane, admin: ConsoleClient
) -> None:
    status, page = change(admin, "create", "newcomer", "operator")
    assert status == 200
    password = shown_password(page)
    assert len(password) >= 20
    assert password not in admin.get("/console/users").text  # never again
    newcomer = logged_out(console_cp)
    assert newcomer.login("newcomer", password).status_code == 303
    assert "newcomer (operator)" in newcomer.get("/").text
    status, page = change(admin, "password", "newcomer")
    assert status == 200
    replaced = shown_password(page)
    assert newcomer.get("/").status_code == 303  # the new password ended the session
    assert newcomer.login("newcomer", password).status_code == 401
    assert newcomer.login("newcomer", replaced).status_code == 303
    status, _ = change(admin, "disable", "newcomer")
    assert status == 200
    assert newcomer.get("/").status_code == 303
    assert newcomer.login("newcomer", replaced).status_code == 401
    newcomer.close()


@pytest.mark.parametrize(
    ("action", "name", "role", "status", "message"),
    [
        ("create", "ada", "viewer", 409, "exists"),
        ("create", HOSTILE, "viewer", 400, "&lt;img src=x onerror=alert(1)&gt;"),
        ("create", "fresh", "emperor", 400, "a role is one of"),
        ("create", "", "viewer", 400, "The user name is required"),
        ("password", "nobody", "", 404, "no user"),
        ("promote", "vera", "", 400, "must be create, password or disable"),
    ],
)
def test_bad_user_changes_are_refused(
    console_cp: RunningControlPlane,
    admin: ConsoleClient,
    action: str,
    name: str,
    role: str,
    status: int,
    message: str,
) -> None:
    before = services_of(console_cp).users.list()
    answered, page = change(admin, action, name, role)
    assert answered == status
    assert message in page
    assert HOSTILE not in page
    assert 'id="new-password"' not in page
    assert services_of(console_cp).users.list() == before


@pytest.mark.parametrize("name", ["vera", "otto"])
def test_only_admins_see_or_change_users_and_the_audit_log(
    console_cp: RunningControlPlane, name: str
) -> None:
    user = logged_out(console_cp)
    assert user.login(name, PASSWORD).status_code == 303
    assert 'href="/console/users"' not in user.get("/").text
    assert user.get("/console/users").status_code == 403
    assert user.get("/console/audit").status_code == 403
    before = services_of(console_cp).users.list()
    status, page = change(user, "create", "intruder", "admin")
    assert status == 403
    assert "Only administrators" in page
    assert services_of(console_cp).users.list() == before
    user.close()


def test_the_audit_log_shows_events_escaped(
    console_cp: RunningControlPlane, admin: ConsoleClient
) -> None:
    assert logged_out(console_cp).login(HOSTILE, "some wrong password").status_code == 401
    page = admin.get("/console/audit")
    assert page.status_code == 200
    assert "console.login" in page.text
    assert HOSTILE not in page.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in page.text
