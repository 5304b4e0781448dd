"""The federated pages in a real browser (headless Chromium): an operator starts a job with the
form, sees it listed and refreshed live, opens it and cancels it after confirming."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from playwright.sync_api import Browser, Dialog, Page, expect

from controlplane.federated.job_views import RoundReport
from controlplane.federated.runner import FederatedRunner
from tests.browser import console_page, log_in, screenshot_path
from tests.console_fleet import add_users, console_control_plane, services_of
from tests.controlplane_harness import RunningControlPlane
from tests.federated_jobs import add_agent, add_model


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningControlPlane]:
    """The federated runner is held still: the job stays where the test puts it (no Flower)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FederatedRunner, "tick", lambda self: None)
        data_dir = tmp_path_factory.mktemp("console-federated-browser")
        with console_control_plane(data_dir, login_failures=1000, refresh_seconds=1) as running:
            add_users(running)
            yield running


@pytest.fixture
def page(browser: Browser, cp: RunningControlPlane) -> Iterator[Page]:
    with console_page(browser, f"http://127.0.0.1:{cp.ports.http}") as opened:
        yield opened


def test_an_operator_starts_a_job_watches_it_and_cancels_it(
    page: Page, cp: RunningControlPlane
) -> None:
    services = services_of(cp)
    model = add_model(services)
    berlin = add_agent(services, "trainer-berlin", site="berlin", model=model)
    add_agent(services, "trainer-paris", site="paris", model=model)

    log_in(page, "otto")
    page.get_by_role("link", name="Federated", exact=True).click()
    expect(page.get_by_role("heading", name="Federated jobs")).to_be_visible()
    page.get_by_role("link", name="Start a job").click()
    form = page.locator("#fl-start")
    form.locator('select[name="model"]').select_option("smollm2@1")
    page.get_by_label("Dataset name").fill("support")
    page.get_by_role("radio", name="these agents").check()
    form.locator('select[name="agents"]').select_option([berlin])
    page.get_by_label("Rounds").fill("2")
    page.get_by_label("k_proj").check()
    page.screenshot(path=screenshot_path("federated-start"), full_page=True)
    page.get_by_role("button", name="Start job").click()

    expect(page.locator("#fl-job-state")).to_have_text("pending")
    expect(page.locator("#fl-spec")).to_contain_text("q_proj, k_proj, v_proj")
    expect(page.locator("tr.fl-participant")).to_have_count(1)
    expect(page.locator("tr.fl-participant")).to_contain_text("trainer-berlin")
    job_id = page.url.rsplit("/", 1)[1]
    page.get_by_role("link", name="Federated", exact=True).click()
    row = page.locator(f'tr.fl-job[data-job-id="{job_id}"]')
    expect(row).to_contain_text("pending")
    expect(row).to_contain_text("smollm2@1")
    services.federated_jobs.mark_running(job_id, 1)
    expect(row.locator(".state")).to_have_text("running")  # no reload: console.js polls
    expect(row).to_contain_text("1/2")
    page.screenshot(path=screenshot_path("federated"), full_page=True)

    row.get_by_role("link").click()
    expect(page.locator("#fl-job-state")).to_have_text("running")
    services.federated_jobs.record_round(
        job_id,
        RoundReport(
            round=1,
            started_at=datetime.now(UTC),
            participants=(berlin,),
            sites={berlin: {"train_loss": 2.25, "heldout_loss": 2.5, "examples": 40}},
            bytes_down=3 * 1024**2,
        ),
    )
    chart = page.locator("#fl-loss-chart")  # the job's rounds refresh themselves too
    expect(chart).to_contain_text("trainer-berlin: 2.2500")
    expect(page.locator("section.fl-round")).to_contain_text("2.2500")
    page.screenshot(path=screenshot_path("federated-job"), full_page=True)
    page.once("dialog", lambda dialog: dialog.dismiss())  # "no": nothing happens
    page.get_by_role("button", name="Cancel job").click()
    expect(page.locator("#fl-job-state")).to_have_text("running")
    assert services.federated_jobs.get(job_id).state == "running"
    messages: list[str] = []

    def accept(dialog: Dialog) -> None:
        messages.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.get_by_role("button", name="Cancel job").click()
    expect(page.locator("#fl-job-state")).to_have_text("cancelled")
    expect(page.locator("#fl-job-reason")).to_have_text("cancelled by otto")
    expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)
    assert messages == ["Cancel this federated job? Its Flower run is stopped."]
    assert services.federated_jobs.get(job_id).state == "cancelled"
    page.screenshot(path=screenshot_path("federated-cancelled"), full_page=True)
