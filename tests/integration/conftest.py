"""Integration-test hooks: the console tests' browser; say where their screenshots were saved."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser

from tests.browser import SCREENSHOTS, chromium


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium, one per test module (each test opens its own context)."""
    with chromium() as launched:
        yield launched


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SCREENSHOTS.is_dir() and any(SCREENSHOTS.glob("*.png")):
        terminalreporter.write_line(f"console screenshots: {SCREENSHOTS}")
