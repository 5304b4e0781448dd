"""Headless Chromium from Debian's `chromium` package, driven by Playwright (no browser download),
a console page that fails on any browser error, logging in, and where the console tests keep
their screenshots."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.console_fleet import PASSWORD

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "console"
WAIT_MS = 15_000  # Playwright's default wait for each action and expectation


@contextmanager
def chromium() -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):  # a failure, not a skip: the test command installs it
        pytest.fail(f"Debian's chromium is not installed at {CHROMIUM} (make pytest installs it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def console_page(browser: Browser, base_url: str) -> Iterator[Page]:
    """A page in a new browser context (no cookies) on `base_url`; on leaving, fails on any
    console error the page logged but the answers tests provoke (401, 403, 422)."""
    context = browser.new_context(base_url=base_url, viewport={"width": 1366, "height": 800})
    context.set_default_timeout(WAIT_MS)
    opened = context.new_page()
    errors: list[str] = []  # a CSP violation or a script error shows here
    opened.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    opened.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield opened
    finally:
        context.close()
    # Answers the tests provoke (a wrong password, a refused or invalid form) are logged as
    # failed loads; anything else (a missing asset, a CSP violation, a script error) fails.
    expected = tuple(f"status of {status}" for status in (401, 403, 422))
    assert [e for e in errors if not any(status in e for status in expected)] == []


def log_in(page: Page, name: str, password: str = PASSWORD) -> None:
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login$"))  # logged out: sent to the login page
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def screenshot_path(name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS / f"{name}.png"
