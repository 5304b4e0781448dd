"""The console in a real browser (headless Chromium): log in, watch the fleet, edit, publish and
explain a policy, a viewer refused; screenshots of the main pages under test-artifacts/console."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from common.control import AgentStatus, ItemState, ItemStatus
from tests.browser import console_page, log_in, screenshot_path
from tests.console_fleet import (
    BAD_POLICY,
    GOOD_POLICY,
    PASSWORD,
    add_telemetry,
    add_users,
    console_control_plane,
    enroll_agent,
    live_version,
    services_of,
)
from tests.controlplane_harness import RunningControlPlane
from tests.unit.test_gguf_info import write_gguf

SCRIPT_NAME = "<script>window.pwned = 1</script>"


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningControlPlane]:
    data_dir = tmp_path_factory.mktemp("console-browser")
    with console_control_plane(data_dir, login_failures=1000, refresh_seconds=1) as running:
        add_users(running)
        model = write_gguf(data_dir / "tiny.gguf")
        services_of(running).models.import_file(model, name="tiny", actor="test")
        yield running


@pytest.fixture
def page(browser: Browser, cp: RunningControlPlane) -> Iterator[Page]:
    with console_page(browser, f"http://127.0.0.1:{cp.ports.http}") as opened:
        yield opened


def test_login_refuses_a_wrong_password_then_lets_the_user_in(page: Page) -> None:
    log_in(page, "ada", "not the password at all")
    expect(page.locator("#login-error")).to_have_text("Wrong user name or password.")
    screenshot = screenshot_path("login")
    page.screenshot(path=screenshot)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Fleet")).to_be_visible()
    expect(page.locator("header .who")).to_have_text("ada (admin)")
    assert screenshot.stat().st_size > 0


def test_the_overview_shows_agents_escaped_and_refreshes_itself(
    page: Page, cp: RunningControlPlane
) -> None:
    enroll_agent(cp, SCRIPT_NAME, site="branch-1")
    log_in(page, "otto")
    row = page.locator("tr.agent", has_text=SCRIPT_NAME)
    expect(row).to_be_visible()  # the name shown as text, never run as script
    expect(row.locator(".state")).to_have_text("ready")
    expect(page.get_by_role("heading", name="branch-1")).to_be_visible()
    assert page.evaluate("typeof window.pwned") == "undefined"
    newcomer = enroll_agent(cp, "late-arrival", site="branch-2")
    add_telemetry(cp, newcomer)
    # No reload: console.js polls the fragment and the new agent appears.
    expect(page.locator(f'tr.agent[data-agent-id="{newcomer}"]')).to_contain_text("late-arrival")
    assert page.evaluate("typeof window.pwned") == "undefined"
    page.screenshot(path=screenshot_path("fleet"), full_page=True)
    page.get_by_role("link", name="late-arrival").click()
    expect(page.get_by_role("heading", name="late-arrival")).to_be_visible()
    expect(page.get_by_text(newcomer).first).to_be_visible()
    expect(page.locator("figure.chart")).to_have_count(6)  # the metrics sent, one chart each
    expect(page.locator("figure.chart", has_text="Tokens/s")).to_contain_text("model=smol")
    page.screenshot(path=screenshot_path("agent"), full_page=True)


def test_an_admin_fixes_a_policy_publishes_it_and_explains_a_prompt(
    page: Page, cp: RunningControlPlane
) -> None:
    log_in(page, "ada")
    page.get_by_role("link", name="Routing policy").click()
    editor = page.get_by_label("Policy document")
    editor.fill(BAD_POLICY)
    page.get_by_role("button", name="Publish").click()
    problems = page.locator("#policy-problems")
    expect(problems).to_contain_text("line 7, column 27")
    expect(problems).to_contain_text("unknown target 'nowhere'")
    assert live_version(cp) is None
    expect(page.get_by_label("Policy document")).to_have_value(BAD_POLICY)  # the draft is kept
    page.get_by_label("Policy document").fill(GOOD_POLICY)
    page.get_by_role("button", name="Publish").click()
    expect(page.locator("#policy-notice")).to_contain_text("Published as version 1")
    expect(page.locator("#live-version")).to_contain_text("Live: version 1")
    assert live_version(cp) == 1
    page.get_by_label("Prompt").fill("Summarise the meeting notes")
    page.get_by_label("Role").fill("dev")
    page.get_by_role("button", name="Explain").click()
    explanation = page.locator("#explanation")
    expect(explanation).to_contain_text("route:    all")
    expect(explanation).to_contain_text("targets:  here")
    page.screenshot(path=screenshot_path("policy"), full_page=True)


def test_a_viewer_is_refused_publishing(page: Page, cp: RunningControlPlane) -> None:
    before = live_version(cp)
    log_in(page, "vera")
    page.goto("/console/policy")
    expect(page.get_by_text("Only administrators may publish.")).to_be_visible()
    expect(page.get_by_role("button", name="Publish")).to_have_count(0)
    token = page.locator('input[name="csrf_token"]').first.get_attribute("value")
    assert token
    # The same form post the button would send, with the viewer's session and token.
    response = page.request.post(
        "/console/policy/edit",
        form={"csrf_token": token, "action": "publish", "document": "version: 1\n"},
    )
    assert response.status == 403
    assert "Only administrators" in response.text()
    assert live_version(cp) == before
    page.get_by_role("link", name="Alerts").click()
    expect(page.get_by_role("heading", name="Firing now")).to_be_visible()
    page.screenshot(path=screenshot_path("alerts"), full_page=True)
    page.goto("/console/usage")
    expect(page.get_by_role("heading", name="Usage this month")).to_be_visible()
    page.screenshot(path=screenshot_path("usage"), full_page=True)
    page.emulate_media(color_scheme="dark")  # the same page, readable in dark mode
    background = "getComputedStyle(document.body).backgroundColor"
    assert page.evaluate(background) == "rgb(20, 23, 28)"
    page.screenshot(path=screenshot_path("usage-dark"), full_page=True)


def report(cp: RunningControlPlane, agent_id: str, state: ItemState, **progress: Any) -> None:
    """What the agent would report about the model aliased "smol" (it never connects here)."""
    model = next(m for m in services_of(cp).models.list() if m.name == "tiny")
    item = ItemStatus("model", "smol", state, sha256=model.sha256, **progress)
    services_of(cp).fleet.record_status(agent_id, AgentStatus(1, (item,)))


def test_an_operator_assigns_a_model_and_watches_its_rollout(
    page: Page, cp: RunningControlPlane, tmp_path: Path
) -> None:
    agent_id = enroll_agent(cp, "press-line", site="plant-9")
    log_in(page, "otto")
    page.get_by_role("link", name="Models").click()
    expect(page.locator("tr.registry-model")).to_contain_text("tiny@")
    page.get_by_label("Model", exact=True).fill("tiny")
    page.get_by_label("Target kind").select_option("site")
    page.get_by_label("Target", exact=True).fill("plant-9")
    page.get_by_label("Alias").fill("smol")
    page.get_by_role("button", name="Assign").click()
    expect(page.locator("tr.assignment")).to_contain_text("site: plant-9")
    assert [a.target for a in services_of(cp).assignments.list()] == ["plant-9"]
    rollout = page.locator("tr.rollout", has_text="press-line")
    expect(rollout).to_contain_text("pending")  # nothing reported yet
    # The page follows the agent's reports without a reload.
    report(cp, agent_id, ItemState.DOWNLOADING, bytes_done=500, bytes_total=1000)
    expect(rollout).to_contain_text("downloading")
    expect(rollout).to_contain_text("50 %")
    report(cp, agent_id, ItemState.READY)
    expect(rollout).to_contain_text("ready")
    page.screenshot(path=screenshot_path("models"), full_page=True)
    upload = write_gguf(tmp_path / "uploaded.gguf", context_length=128)
    page.get_by_label("GGUF file").set_input_files(upload)
    page.get_by_role("button", name="Import").click()
    expect(page.locator("tr.registry-model", has_text="uploaded@1")).to_be_visible()
    rollout.get_by_role("link", name="press-line").click()
    live = page.locator("#agent-live")
    expect(live).to_contain_text("ready")
    report(cp, agent_id, ItemState.FAILED, error="not enough memory for <smol>")
    expect(live).to_contain_text("not enough memory for <smol>")


def test_an_admin_adds_a_user_and_reads_the_audit_log(page: Page) -> None:
    log_in(page, "ada")
    page.get_by_role("link", name="Users").click()
    page.get_by_label("User name").fill("auditor")
    page.get_by_label("Role").select_option("analyst")
    page.get_by_role("button", name="Create").click()
    expect(page.locator("#users-notice")).to_contain_text("shown only this once")
    password = page.locator("#new-password").inner_text()
    assert len(password) >= 20
    expect(page.locator("tr.user", has_text="auditor")).to_contain_text("analyst")
    page.screenshot(path=screenshot_path("users"), full_page=True)
    page.get_by_role("link", name="Audit log").click()
    expect(page.locator("tr.audit-event").first).to_contain_text("user.create")
    page.screenshot(path=screenshot_path("audit"), full_page=True)
    page.get_by_role("link", name="Keys").click()
    expect(page.locator("tr.api-key").first).to_contain_text("admin")  # the first admin's key
    page.screenshot(path=screenshot_path("keys"), full_page=True)
    page.get_by_role("button", name="Log out").click()
    log_in(page, "auditor", password)
    expect(page.locator("header .who")).to_have_text("auditor (analyst)")
    expect(page.get_by_role("link", name="Users")).to_have_count(0)


def test_an_admin_creates_a_join_token_and_copies_the_install_command(
    page: Page, cp: RunningControlPlane
) -> None:
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    log_in(page, "ada")
    page.get_by_role("link", name="Enrollment").click()
    page.get_by_label("Site").fill("branch-12")
    page.get_by_label("Labels").fill("floor=3")
    page.get_by_role("button", name="Create").click()
    command = page.locator("#install-command")
    expect(command).to_contain_text(f"--control-plane localhost:{cp.ports.grpc}")
    expect(command).to_contain_text(cp.fingerprint)
    page.get_by_role("button", name="Copy the command").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == command.inner_text().strip()
    expect(page.locator("tr.token", has_text="branch-12")).to_contain_text("floor=3")
    page.screenshot(path=screenshot_path("enrollment"), full_page=True)
