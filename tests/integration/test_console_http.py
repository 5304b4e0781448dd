"""The console over plain HTTP: login, sessions, cookies and headers, CSRF, roles, bad forms."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from common.telemetry import Metric, Sample, SequencedSample, TelemetryBatch
from controlplane import cli
from controlplane.db.models import AuditEvent
from tests.console_client import ConsoleClient, csrf_token
from tests.console_fleet import (
    BAD_POLICY,
    GOOD_POLICY,
    PASSWORD,
    add_users,
    console_control_plane,
    enroll_agent,
    live_version,
    logged_out,
    services_of,
)
from tests.controlplane_harness import RunningControlPlane

SCRIPT_NAME = "<script>document.title='pwned'</script>"


def test_logged_out_visitors_are_sent_to_the_login_page(console_cp: RunningControlPlane) -> None:
    visitor = logged_out(console_cp)
    for path in ("/", "/console/policy", "/console/usage", "/console/fleet-fragment"):
        response = visitor.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/login"
    fragment = visitor.http.get("/console/fleet-fragment", headers={"X-Outpost-Fragment": "1"})
    assert fragment.status_code == 401
    visitor.close()


def test_login_sets_a_strict_session_cookie_and_the_pages_send_strict_headers(
    console_cp: RunningControlPlane,
) -> None:
    user = logged_out(console_cp)
    response = user.login("ada", PASSWORD)
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    session = next(
        h for h in response.headers.get_list("set-cookie") if h.startswith("outpost_session=")
    )
    flags = {part.strip().lower() for part in session.split(";")[1:]}
    assert {"httponly", "secure", "path=/", "samesite=strict"} <= flags
    assert len(user.cookies["outpost_session"]) >= 43  # 256 bits, URL-safe base64
    page = user.get("/")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["referrer-policy"] == "same-origin"
    assert "<script>" not in page.text  # only <script src=...>: no inline script
    user.close()


def test_a_wrong_password_or_unknown_user_is_refused_without_a_session(
    console_cp: RunningControlPlane,
) -> None:
    user = logged_out(console_cp)
    for name, password in (("ada", "not the password"), ("nobody", PASSWORD)):
        response = user.login(name, password)
        assert response.status_code == 401
        assert "Wrong user name or password" in response.text
        assert "outpost_session" not in user.cookies
    assert user.get("/").status_code == 303
    with services_of(console_cp).db.session() as session:
        denied = session.exec(
            select(AuditEvent).where(
                AuditEvent.action == "console.login", AuditEvent.outcome == "denied"
            )
        ).all()
    assert {"user:ada", "user:nobody"} <= {event.target for event in denied}
    user.close()


def test_logout_ends_the_session(console_cp: RunningControlPlane, admin: ConsoleClient) -> None:
    session_id = admin.cookies["outpost_session"]
    response = admin.post("/logout", {"csrf_token": admin.page_token()})
    assert response.status_code == 303
    admin.cookies["outpost_session"] = session_id  # a stolen copy of the cookie
    assert admin.get("/").status_code == 303


def test_a_form_without_or_with_a_stale_csrf_token_is_refused(
    console_cp: RunningControlPlane, admin: ConsoleClient
) -> None:
    before = live_version(console_cp)
    form = {"action": "publish", "document": GOOD_POLICY}
    missing = admin.post("/console/policy/edit", form)
    assert missing.status_code == 403
    assert "security token" in missing.text
    stale = admin.page_token("/console/policy")
    admin.post("/logout", {"csrf_token": stale})
    assert admin.login("ada", PASSWORD).status_code == 303
    refused = admin.post("/console/policy/edit", {**form, "csrf_token": stale})
    assert refused.status_code == 403
    assert "security token" in refused.text
    assert live_version(console_cp) == before


def test_a_login_form_without_its_token_is_refused(console_cp: RunningControlPlane) -> None:
    user = logged_out(console_cp)
    response = user.post("/login", {"name": "ada", "password": PASSWORD})
    assert response.status_code == 403
    assert "outpost_session" not in user.cookies
    user.close()


def test_a_viewer_cannot_publish_a_policy(
    console_cp: RunningControlPlane, viewer: ConsoleClient
) -> None:
    before = live_version(console_cp)
    page = viewer.get("/console/policy")
    assert 'value="publish"' not in page.text
    form = {"csrf_token": csrf_token(page.text), "action": "publish", "document": GOOD_POLICY}
    response = viewer.post("/console/policy/edit", form)
    assert response.status_code == 403
    assert "Only administrators" in response.text
    assert live_version(console_cp) == before
    with services_of(console_cp).db.session() as session:
        denied = session.exec(
            select(AuditEvent).where(AuditEvent.actor == "vera", AuditEvent.outcome == "denied")
        ).all()
    assert [event.action for event in denied] == ["policy.apply"]
    validated = viewer.post("/console/policy/edit", {**form, "action": "validate"})
    assert validated.status_code == 200  # validating changes nothing: any role may
    assert "not published" in validated.text


def test_an_invalid_policy_shows_each_problem_with_its_line(
    console_cp: RunningControlPlane, admin: ConsoleClient
) -> None:
    before = live_version(console_cp)
    form = {"csrf_token": admin.page_token("/console/policy"), "action": "publish"}
    response = admin.post("/console/policy/edit", {**form, "document": BAD_POLICY})
    assert response.status_code == 422
    assert "line 7, column 27" in response.text
    assert "unknown target &#39;nowhere&#39;" in response.text
    assert live_version(console_cp) == before
    published = admin.post("/console/policy/edit", {**form, "document": GOOD_POLICY})
    assert published.status_code == 200
    assert "Published as version" in published.text or "Unchanged" in published.text
    assert live_version(console_cp) is not None


@pytest.mark.parametrize(
    ("path", "form", "status", "message"),
    [
        ("/console/policy/edit", {"action": "publish"}, 400, "The policy is required"),
        ("/console/policy/edit", {"document": GOOD_POLICY}, 400, "The action is required"),
        ("/console/policy/edit", {"action": "drop", "document": "x"}, 400, "validate or publish"),
        ("/console/policy/explain", {"prompt": "hi"}, 400, "The role is required"),
        ("/console/policy/explain", {"prompt": "x" * 70_000, "role": "dev"}, 400, "longer than"),
        ("/console/policy/explain", {"prompt": "hi", "role": "d\x07v"}, 400, "control characters"),
    ],
)
def test_missing_malformed_and_oversized_fields_are_refused(
    console_cp: RunningControlPlane,
    admin: ConsoleClient,
    path: str,
    form: dict[str, str],
    status: int,
    message: str,
) -> None:
    before = live_version(console_cp)
    response = admin.post(path, {**form, "csrf_token": admin.page_token("/console/policy")})
    assert response.status_code == status
    assert message in response.text
    assert response.headers["content-type"].startswith("text/html")
    assert live_version(console_cp) == before


def test_bodies_that_are_not_forms_or_too_large_are_refused(
    console_cp: RunningControlPlane, admin: ConsoleClient
) -> None:
    token = admin.page_token("/console/policy")
    as_json = admin.post(
        "/console/policy/explain",
        content=f'{{"csrf_token": "{token}", "prompt": "hi", "role": "dev"}}',
        headers={"Content-Type": "application/json"},
    )
    assert as_json.status_code == 400
    assert "not a form" in as_json.text
    twice = admin.post(
        "/console/policy/explain",
        content=f"csrf_token={token}&prompt=a&prompt=b&role=dev",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert twice.status_code == 400
    assert "given twice" in twice.text
    huge = admin.post(
        "/console/policy/edit",
        {"csrf_token": token, "action": "validate", "document": "x" * (5 * 1024 * 1024)},
    )
    assert huge.status_code == 413
    assert "larger than this page accepts" in huge.text
    visitor = logged_out(console_cp)
    login_token = csrf_token(visitor.get("/login").text)
    long_name = visitor.post(
        "/login", {"csrf_token": login_token, "name": "a" * 64, "password": PASSWORD}
    )
    assert long_name.status_code == 400
    assert "longer than 63" in long_name.text
    visitor.close()


def test_explain_shows_the_live_policys_decision(
    console_cp: RunningControlPlane, admin: ConsoleClient
) -> None:
    form = {"csrf_token": admin.page_token("/console/policy"), "action": "publish"}
    admin.post("/console/policy/edit", {**form, "document": GOOD_POLICY})
    response = admin.post(
        "/console/policy/explain",
        {"csrf_token": form["csrf_token"], "prompt": "hello there", "role": "dev"},
    )
    assert response.status_code == 200
    assert "route:    all" in response.text
    assert "targets:  here" in response.text


def test_names_are_escaped_on_every_page(
    console_cp: RunningControlPlane, admin: ConsoleClient
) -> None:
    agent_id = enroll_agent(console_cp, SCRIPT_NAME, site="escaping")
    for path in ("/", "/console/fleet-fragment", f"/console/agents/{agent_id}"):
        page = admin.get(path)
        assert page.status_code == 200
        assert SCRIPT_NAME not in page.text
        assert "&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt;" in page.text


def test_an_unknown_agent_is_a_404_page(admin: ConsoleClient) -> None:
    response = admin.get("/console/agents/not-an-agent")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")


def test_repeated_failures_for_a_name_are_rate_limited(tmp_path: Path) -> None:
    with console_control_plane(tmp_path, login_failures=3) as limited:
        add_users(limited)
        user = logged_out(limited)
        statuses = [user.login("ada", "wrong password!").status_code for _ in range(4)]
        assert statuses == [401, 401, 401, 429]
        assert user.login("ada", PASSWORD).status_code == 429  # blocked, even when right
        user.close()


def test_the_agent_page_charts_telemetry_over_the_chosen_range(
    console_cp: RunningControlPlane, admin: ConsoleClient
) -> None:
    agent_id = enroll_agent(console_cp, "charted", site="charts")
    now = services_of(console_cp).telemetry.now()
    samples = tuple(
        SequencedSample(
            seq,
            Sample(
                now - timedelta(minutes=10 - seq),
                (
                    Metric("outpost_cpu_utilization_ratio", 0.1 * seq, {"cpu": "total"}),
                    Metric("outpost_cpu_utilization_ratio", 0.9, {"cpu": "0"}),
                    Metric("outpost_model_tokens_per_second", 40.0 + seq, {"model": "smol"}),
                ),
            ),
        )
        for seq in range(1, 6)
    )
    services_of(console_cp).telemetry.ingest(agent_id, TelemetryBatch(samples))
    page = admin.get(f"/console/agents/{agent_id}?range=1h").text
    assert page.count("<polyline") == 2  # the CPU "total" series (not a core), tokens/s
    assert "CPU" in page
    assert "Tokens/s" in page
    assert "model=smol: 45" in page  # the latest value in the legend
    assert "GPU utilisation" not in page  # no data: no chart
    overview = admin.get("/").text
    assert "50 %" in overview  # the "total" CPU series, not the cores' average
    week = admin.get(f"/console/agents/{agent_id}/live?range=7d")
    assert week.status_code == 200
    assert 'aria-current="page">7d' in week.text
    bad = admin.get(f"/console/agents/{agent_id}?range=forever")
    assert bad.status_code == 400
    assert "The range must be one of" in bad.text


def test_validating_a_draft_shows_its_changes_against_the_live_version(
    console_cp: RunningControlPlane, admin: ConsoleClient
) -> None:
    form = {"csrf_token": admin.page_token("/console/policy"), "action": "publish"}
    admin.post("/console/policy/edit", {**form, "document": GOOD_POLICY})
    draft = GOOD_POLICY.replace("model: smol", "model: <tiny>")
    response = admin.post("/console/policy/edit", {**form, "action": "validate", "document": draft})
    assert response.status_code == 200
    assert '<span class="diff-removed">-  here: {type: local, model: smol}</span>' in response.text
    assert '<span class="diff-added">+  here: {type: local, model: &lt;tiny&gt;}</span>' in (
        response.text
    )
    same = admin.post(
        "/console/policy/edit", {**form, "action": "validate", "document": GOOD_POLICY}
    )
    assert "the same as the live version" in same.text
    assert 'id="policy-diff"' not in same.text


def test_insecure_cookies_drop_only_the_secure_flag(tmp_path: Path) -> None:
    args = cli.build_parser().parse_args(
        ["serve", "--data-dir", str(tmp_path), "--insecure-cookies"]
    )
    settings = cli.build_settings(args)
    assert settings.console.secure_cookies is False
    default = cli.build_settings(cli.build_parser().parse_args(["serve", "--data-dir", "x"]))
    assert default.console.secure_cookies is True
    with console_control_plane(tmp_path, secure_cookies=False) as plain:
        add_users(plain)
        user = logged_out(plain)
        response = user.login("ada", PASSWORD)
        session = next(
            h for h in response.headers.get_list("set-cookie") if h.startswith("outpost_session=")
        )
        flags = {part.strip().lower() for part in session.split(";")[1:]}
        assert "secure" not in flags
        assert {"httponly", "samesite=strict", "path=/"} <= flags
        user.close()
