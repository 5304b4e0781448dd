"""The sd_notify client against a real datagram socket: messages, watchdog, hostile settings."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.systemd_notify import MIN_PING_INTERVAL_S, SystemdNotifier

RECEIVE_TIMEOUT_S = 10.0


class NotifySocket:
    """The service manager's end: a bound AF_UNIX datagram socket, as systemd makes one."""

    def __init__(self, address: str) -> None:
        self.address = address  # as NOTIFY_SOCKET names it
        bind_to = "\0" + address[1:] if address.startswith("@") else address
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(bind_to)
        self.socket.settimeout(RECEIVE_TIMEOUT_S)

    def receive(self) -> list[str]:
        """The next datagram's assignments; raises TimeoutError when none comes."""
        return self.socket.recv(65536).decode().split("\n")

    def pending(self) -> bytes | None:
        """A datagram already queued, without waiting; None when there is none."""
        timeout = self.socket.gettimeout()
        self.socket.setblocking(False)
        try:
            return self.socket.recv(65536)
        except BlockingIOError:
            return None
        finally:
            self.socket.settimeout(timeout)

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: pytest's tmp_path can exceed a socket address's size."""
    with tempfile.TemporaryDirectory(prefix="sdn-") as name:
        yield Path(name)


@pytest.fixture(params=["path", "abstract"])
def manager(request: pytest.FixtureRequest, short_dir: Path) -> Iterator[NotifySocket]:
    if request.param == "path":
        address = str(short_dir / "notify")
    else:
        address = f"@outpost-test-{uuid.uuid4().hex}"
    bound = NotifySocket(address)
    yield bound
    bound.close()


def notifier_for(environ: dict[str, str]) -> SystemdNotifier:
    notifier = SystemdNotifier.from_environ(environ)
    assert notifier is not None
    return notifier


def test_no_notify_socket_means_no_notifier(caplog: pytest.LogCaptureFixture) -> None:
    assert SystemdNotifier.from_environ({}) is None
    assert SystemdNotifier.from_environ({"NOTIFY_SOCKET": "", "WATCHDOG_USEC": "1000"}) is None
    assert caplog.records == []


def test_ready_stopping_and_watchdog_arrive(manager: NotifySocket) -> None:
    notifier = notifier_for({"NOTIFY_SOCKET": manager.address})
    try:
        notifier.ready("serving smol")
        assert manager.receive() == ["READY=1", "STATUS=serving smol"]
        notifier.ping_watchdog()
        assert manager.receive() == ["WATCHDOG=1"]
        notifier.stopping()
        assert manager.receive() == ["STOPPING=1", "STATUS=shutting down"]
    finally:
        notifier.close()


def test_a_status_cannot_forge_another_assignment(manager: NotifySocket) -> None:
    notifier = notifier_for({"NOTIFY_SOCKET": manager.address})
    try:
        notifier.ready("model loaded\nSTOPPING=1\r\nMAINPID=1")
        assert manager.receive() == ["READY=1", "STATUS=model loaded STOPPING=1 MAINPID=1"]
    finally:
        notifier.close()


@pytest.mark.parametrize(
    ("usec", "interval"), [("30000000", 15.0), ("1000000", 0.5), ("1", MIN_PING_INTERVAL_S)]
)
def test_pings_at_half_the_watchdog_interval(
    manager: NotifySocket, usec: str, interval: float
) -> None:
    notifier = notifier_for({"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": usec})
    try:
        assert notifier.watchdog_usec == int(usec)
        assert notifier.ping_interval_s == pytest.approx(interval)
    finally:
        notifier.close()


def test_watchdog_for_this_process_or_no_pid_given(manager: NotifySocket) -> None:
    ours = {"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "2000000"}
    for environ in (ours, {**ours, "WATCHDOG_PID": str(os.getpid())}):
        notifier = notifier_for(environ)
        assert notifier.ping_interval_s == pytest.approx(1.0)
        notifier.close()


def test_watchdog_of_another_process_is_not_ours(manager: NotifySocket) -> None:
    other_pid = os.getppid()
    assert other_pid != os.getpid()
    notifier = notifier_for(
        {
            "NOTIFY_SOCKET": manager.address,
            "WATCHDOG_USEC": "2000000",
            "WATCHDOG_PID": str(other_pid),
        }
    )
    try:
        assert notifier.ping_interval_s is None

        async def started() -> asyncio.Task[None] | None:
            return notifier.start_watchdog()

        assert asyncio.run(started()) is None
        notifier.ready("up")  # readiness still reaches systemd
        assert manager.receive()[0] == "READY=1"
    finally:
        notifier.close()


@pytest.mark.parametrize(
    "usec",
    ["-5", "0", "abc", "1.5", " 30", "+30", "1_000", "", str(2**64 - 1), "9" * 400, "٣٠"],
)
def test_malformed_watchdog_usec_warns_and_disables_only_the_watchdog(
    manager: NotifySocket, usec: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        notifier = notifier_for({"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": usec})
    try:
        assert notifier.ping_interval_s is None
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "WATCHDOG_USEC" in warnings[0].getMessage()
        assert len(warnings[0].getMessage()) < 200  # a 400-digit value is not echoed whole
        notifier.ready("up")
        assert manager.receive()[0] == "READY=1"
    finally:
        notifier.close()


def test_malformed_watchdog_pid_warns(
    manager: NotifySocket, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        notifier = notifier_for(
            {"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "me"}
        )
    notifier.close()
    assert notifier.ping_interval_s is None
    assert ["WATCHDOG_PID" in r.getMessage() for r in caplog.records] == [True]


def test_huge_but_valid_watchdog_usec_is_kept(manager: NotifySocket) -> None:
    notifier = notifier_for({"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": str(2**64 - 2)})
    notifier.close()
    assert notifier.ping_interval_s == pytest.approx((2**64 - 2) / 2_000_000)


def unusable_addresses(short_dir: Path) -> list[str]:
    regular_file = short_dir / "plain-file"
    regular_file.write_text("not a socket")
    return [
        str(short_dir / "missing"),
        str(regular_file),
        "/" + "x" * 108,  # more than sun_path holds
        "@" + "y" * 108,
        "relative/notify",
        f"@outpost-test-unbound-{uuid.uuid4().hex}",
    ]


def test_unusable_notify_socket_warns_once_and_gives_no_notifier(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for address in unusable_addresses(short_dir):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            notifier = SystemdNotifier.from_environ(
                {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"}
            )
        assert notifier is None, address
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, (address, warnings)
        assert "NOTIFY_SOCKET" in warnings[0]


def test_a_socket_that_goes_away_warns_once_and_never_raises(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manager = NotifySocket(str(short_dir / "notify"))
    notifier = notifier_for({"NOTIFY_SOCKET": manager.address})
    manager.close()
    Path(manager.address).unlink()
    try:
        with caplog.at_level(logging.WARNING):
            assert notifier.send("WATCHDOG=1") is False
            notifier.ping_watchdog()
            notifier.stopping()
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "cannot notify systemd" in warnings[0].getMessage()
    finally:
        notifier.close()


def test_a_full_queue_drops_a_message_instead_of_blocking(manager: NotifySocket) -> None:
    notifier = notifier_for({"NOTIFY_SOCKET": manager.address})
    try:
        sent = [notifier.send("STATUS=" + "z" * 4096) for _ in range(2000)]
        assert False in sent  # the receiver reads nothing: the queue fills, send gives up
        assert manager.pending() is not None
    finally:
        notifier.close()


def test_watchdog_task_pings_on_the_loop_until_cancelled(manager: NotifySocket) -> None:
    notifier = notifier_for({"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "100000"})

    async def ping_three_times() -> None:
        task = notifier.start_watchdog()
        assert task is not None
        for _ in range(3):
            assert await asyncio.to_thread(manager.receive) == ["WATCHDOG=1"]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(ping_three_times())
    finally:
        notifier.close()


def test_pings_carry_the_status_when_it_changes(manager: NotifySocket) -> None:
    """E.g. the models an agent serves after a rollout: `systemctl status` shows them."""
    notifier = notifier_for({"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "100000"})
    served = ["no models"]

    async def follow() -> tuple[list[str], list[list[str]], list[str]]:
        notifier.ready(f"serving {served[0]}")
        assert await asyncio.to_thread(manager.receive) == ["READY=1", "STATUS=serving no models"]
        notifier.follow_status(lambda: f"serving {served[0]}")
        task = notifier.start_watchdog()
        assert task is not None
        unchanged = await asyncio.to_thread(manager.receive)
        served[0] = "smol\nREADY=1"  # a new model, and a newline that must not forge anything
        until_changed = [await asyncio.to_thread(manager.receive)]
        while len(until_changed[-1]) == 1 and len(until_changed) < 50:
            until_changed.append(await asyncio.to_thread(manager.receive))
        again = await asyncio.to_thread(manager.receive)
        task.cancel()
        return unchanged, until_changed, again

    try:
        unchanged, until_changed, again = asyncio.run(follow())
    finally:
        notifier.close()
    assert unchanged == ["WATCHDOG=1"]
    assert until_changed[-1] == ["WATCHDOG=1", "STATUS=serving smol READY=1"]
    assert again == ["WATCHDOG=1"]  # sent once, not with every ping


def test_a_blocked_loop_stops_the_pings(manager: NotifySocket) -> None:
    """The point of pinging from the event loop: while it is stuck, systemd hears nothing."""
    notifier = notifier_for({"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "100000"})

    async def stuck_loop() -> list[str]:
        task = notifier.start_watchdog()
        assert task is not None
        assert await asyncio.to_thread(manager.receive) == ["WATCHDOG=1"]
        # From here the loop blocks in synchronous calls: first drop the pings sent before,
        # then wait six ping intervals, during which the ping task cannot run.
        while manager.pending() is not None:
            pass
        manager.socket.settimeout(6 * MIN_PING_INTERVAL_S)
        with pytest.raises(TimeoutError):
            manager.receive()
        manager.socket.settimeout(RECEIVE_TIMEOUT_S)
        resumed = await asyncio.to_thread(manager.receive)  # the loop is free again
        task.cancel()
        return resumed

    try:
        assert asyncio.run(stuck_loop()) == ["WATCHDOG=1"]
    finally:
        notifier.close()
