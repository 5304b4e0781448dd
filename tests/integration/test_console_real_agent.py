"""The console with real parts: an admin creates a join token in the browser, a real managed
agent enrols with it and shows up connected; the real demo model is uploaded, assigned and
rolled out (downloaded, verified and loaded by the agent), then served. Nothing is simulated."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser import console_page, log_in, screenshot_path
from tests.console_fleet import add_users, console_control_plane
from tests.controlplane_harness import RunningControlPlane, managed_agent

pytestmark = pytest.mark.model
ROLLOUT_MS = 180_000  # a real download, verification and load on a busy two-core machine
UPLOAD_MS = 120_000  # ~100 MB streamed by the browser, hashed and checked by the control plane
INSTALL = re.compile(
    r"--control-plane (?P<address>\S+) --join-token (?P<token>\S+) --ca-fingerprint (?P<ca>\S+)"
)


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[RunningControlPlane]:
    with console_control_plane(tmp_path / "cp", refresh_seconds=1) as running:
        add_users(running)
        yield running


@pytest.fixture
def page(browser: Browser, cp: RunningControlPlane) -> Iterator[Page]:
    with console_page(browser, f"http://127.0.0.1:{cp.ports.http}") as opened:
        yield opened


def mark_page(page: Page) -> None:
    """Marks the loaded document: the mark survives background refreshes, not a reload."""
    page.evaluate("window.outpostTestMark = 1")


def still_marked(page: Page) -> bool:
    return bool(page.evaluate("window.outpostTestMark === 1"))


def test_an_enrolled_agent_goes_ready_and_serves_the_model_rolled_out_from_the_console(
    page: Page, cp: RunningControlPlane, demo_model: Path, tmp_path: Path
) -> None:
    log_in(page, "ada")
    expect(page.locator("header .who")).to_have_text("ada (admin)")
    page.get_by_role("link", name="Enrollment").click()
    page.get_by_label("Site").fill("plant-7")
    page.get_by_role("button", name="Create").click()
    install = INSTALL.search(page.locator("#install-command").inner_text())
    assert install is not None, page.locator("#install-command").inner_text()
    assert install["address"].endswith(f":{cp.ports.grpc}")
    assert install["ca"] == cp.fingerprint

    page.get_by_role("link", name="Fleet").click()
    expect(page.locator("#fleet")).to_contain_text("No agents have enrolled yet")
    mark_page(page)
    running, companion = managed_agent(
        tmp_path / "agent", install["address"], install["token"], install["ca"]
    )
    with running:
        running.wait_until_serving()
        # No reload: the overview polls its rows, and the agent appears, connected.
        row = page.locator("tr.agent")
        expect(row).to_have_count(1)
        expect(row.locator(".state")).to_have_text("ready")
        expect(row.locator(".state + div")).to_have_text("connected")
        expect(page.get_by_role("heading", name="plant-7")).to_be_visible()
        assert companion.link.connected.is_set()
        with cp.api() as api:
            (enrolled,) = api.get("/agents").json()["agents"]
        agent_id = str(enrolled["id"])
        assert row.get_attribute("data-agent-id") == agent_id
        assert still_marked(page)

        page.get_by_role("link", name="Models").click()
        expect(page.get_by_text("The registry is empty")).to_be_visible()
        page.get_by_label("GGUF file").set_input_files(demo_model)
        page.get_by_label("Name").fill("smollm2")
        page.get_by_role("button", name="Import").click()
        imported = page.locator("tr.registry-model", has_text="smollm2@1")
        expect(imported).to_be_visible(timeout=UPLOAD_MS)
        expect(imported).to_contain_text("llama")  # read from the GGUF header
        page.get_by_label("Model", exact=True).fill("smollm2")
        page.get_by_label("Target kind").select_option("agent")
        page.get_by_label("Target", exact=True).fill(agent_id)
        page.get_by_label("Alias").fill("smol")
        page.get_by_label("Context length").fill("512")
        page.get_by_role("button", name="Assign").click()
        expect(page.locator("tr.assignment")).to_contain_text(f"agent: {agent_id}")
        mark_page(page)
        rollout = page.locator("tr.rollout").filter(
            has=page.locator(f'a[href="/console/agents/{agent_id}"]')
        )
        expect(rollout).to_contain_text("smol")
        # The agent downloads, verifies and loads it; the page follows without a reload.
        expect(rollout.locator(".state")).to_have_text("ready", timeout=ROLLOUT_MS)
        assert still_marked(page)
        page.screenshot(path=screenshot_path("models-real-rollout"), full_page=True)

        answer = httpx.post(
            f"{running.http_base}/v1/chat/completions",
            json={
                "model": "smol",
                "messages": [{"role": "user", "content": "Say hello."}],
                "max_tokens": 8,
                "temperature": 0,
            },
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"].strip()

        page.get_by_role("link", name="Fleet").click()
        expect(row.locator("td").nth(2)).to_have_text("smol (ready)")
        page.screenshot(path=screenshot_path("fleet-real-agent"), full_page=True)
