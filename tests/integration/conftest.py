"""Integration-test hooks: the console tests' browser, control plane and logged-in users; say
where their screenshots were saved."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser

from tests.browser import SCREENSHOTS, chromium
from tests.console_client import ConsoleClient
from tests.console_fleet import add_users, console_control_plane, logged_in
from tests.controlplane_harness import RunningControlPlane


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium, one per test module (each test opens its own context)."""
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def console_cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningControlPlane]:
    """A control plane with a console user of each role (tests.console_fleet.USERS), one per
    test module; logins are not rate-limited."""
    data_dir = tmp_path_factory.mktemp("console")
    with console_control_plane(data_dir, login_failures=1000) as running:
        add_users(running)
        yield running


def _session(cp: RunningControlPlane, name: str) -> Iterator[ConsoleClient]:
    user = logged_in(cp, name)
    yield user
    user.close()


@pytest.fixture
def admin(console_cp: RunningControlPlane) -> Iterator[ConsoleClient]:
    yield from _session(console_cp, "ada")


@pytest.fixture
def operator(console_cp: RunningControlPlane) -> Iterator[ConsoleClient]:
    yield from _session(console_cp, "otto")


@pytest.fixture
def viewer(console_cp: RunningControlPlane) -> Iterator[ConsoleClient]:
    yield from _session(console_cp, "vera")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SCREENSHOTS.is_dir() and any(SCREENSHOTS.glob("*.png")):
        terminalreporter.write_line(f"console screenshots: {SCREENSHOTS}")
