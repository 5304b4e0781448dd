"""Our own sd_notify(3) client: readiness, status, watchdog and stopping messages to systemd."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import socket
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

# The variables systemd sets for a Type=notify service; none of them is for our children.
NOTIFY_ENVIRONMENT = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")

SUN_PATH_BYTES = 108  # sizeof(sockaddr_un.sun_path) on Linux
USEC_INFINITY = 2**64 - 1  # systemd's "no limit"; never a valid watchdog interval
# A hostile or mistyped WATCHDOG_USEC=1 must not turn the ping task into a busy loop.
MIN_PING_INTERVAL_S = 0.05
_DECIMAL = re.compile(r"[0-9]{1,20}")  # plain ASCII digits: no sign, spaces or underscores


class SystemdNotifier:
    """Sends notification datagrams to the service manager; a failed send logs, never raises."""

    def __init__(self, address: str | bytes, watchdog_usec: int | None = None) -> None:
        """`address`: a socket path, or an abstract name as bytes starting with NUL."""
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.setblocking(False)  # a full receive queue drops a message, never blocks
        self._send_failed = False
        self._describe: Callable[[], str] | None = None
        self._last_status = ""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> SystemdNotifier | None:
        """The notifier systemd asks for through `environ`; None without NOTIFY_SOCKET or when
        it is unusable (logged once). A bad watchdog setting disables only the watchdog."""
        raw_address = environ.get("NOTIFY_SOCKET", "")
        if not raw_address:
            return None
        address = _socket_address(raw_address)
        if address is None:
            return None
        notifier = cls(address, _watchdog_usec(environ))
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
                probe.connect(address)
        except OSError as exc:
            log.warning(
                "NOTIFY_SOCKET=%r is unreachable (%s): no systemd notifications", raw_address, exc
            )
            notifier.close()
            return None
        return notifier

    @property
    def ping_interval_s(self) -> float | None:
        """Half the watchdog interval, as sd_watchdog_enabled(3) advises; None: no watchdog."""
        if self.watchdog_usec is None:
            return None
        return max(self.watchdog_usec / 2_000_000, MIN_PING_INTERVAL_S)

    def ready(self, status: str) -> None:
        self._last_status = _one_line(status)
        self.send("READY=1", f"STATUS={self._last_status}")

    def follow_status(self, describe: Callable[[], str]) -> None:
        """From now on every watchdog ping also sends `describe()`'s line when it changed
        (e.g. the models served after a rollout), so `systemctl status` stays current."""
        self._describe = describe

    def stopping(self, status: str = "shutting down") -> None:
        self.send("STOPPING=1", f"STATUS={_one_line(status)}")

    def ping_watchdog(self) -> None:
        """WATCHDOG=1, with the followed status line when it changed since the last sent."""
        assignments = ["WATCHDOG=1"]
        if self._describe is not None:
            status = _one_line(self._describe())
            if status != self._last_status:
                self._last_status = status
                assignments.append(f"STATUS={status}")
        self.send(*assignments)

    def send(self, *assignments: str) -> bool:
        """One datagram of newline-separated assignments; False (and a log line) on failure."""
        message = "\n".join(assignments).encode()
        try:
            self._socket.sendto(message, self.address)
        except OSError as exc:
            report = log.debug if self._send_failed else log.warning
            report("cannot notify systemd at %r (%s)", self.address, _reason(exc))
            self._send_failed = True
            return False
        self._send_failed = False
        return True

    def start_watchdog(self) -> asyncio.Task[None] | None:
        """Pings from a task on the running loop, so a stuck loop stops the pings and systemd
        restarts the service; None when systemd asked for no watchdog. Cancel it to stop."""
        interval = self.ping_interval_s
        if interval is None:
            return None
        return asyncio.create_task(self._ping_every(interval), name="systemd-watchdog")

    async def _ping_every(self, interval_s: float) -> None:
        while True:
            self.ping_watchdog()
            await asyncio.sleep(interval_s)  # the pacing of the pings, not synchronisation

    def close(self) -> None:
        self._socket.close()


def _socket_address(raw: str) -> str | bytes | None:
    """NOTIFY_SOCKET as a socket address: an absolute path, or '@name' in the abstract
    namespace (a leading NUL); None, with a warning, for anything else."""
    if raw.startswith("@"):
        address: str | bytes = b"\0" + os.fsencode(raw[1:])
        size = len(address)
    elif raw.startswith("/"):
        address = raw
        size = len(os.fsencode(raw)) + 1  # a path needs its terminating NUL
    else:
        log.warning(
            "NOTIFY_SOCKET=%r is neither an absolute path nor an '@' abstract name: "
            "no systemd notifications",
            raw,
        )
        return None
    if size > SUN_PATH_BYTES:
        log.warning(
            "NOTIFY_SOCKET is %d bytes, longer than a socket address takes (%d): "
            "no systemd notifications",
            size,
            SUN_PATH_BYTES,
        )
        return None
    return address


def _watchdog_usec(environ: Mapping[str, str]) -> int | None:
    """WATCHDOG_USEC when it is meant for this process (WATCHDOG_PID unset or our pid)."""
    raw_usec = environ.get("WATCHDOG_USEC")
    if raw_usec is None:
        return None
    raw_pid = environ.get("WATCHDOG_PID")
    if raw_pid is not None:
        if not _DECIMAL.fullmatch(raw_pid):
            log.warning("WATCHDOG_PID=%r is not a process id: watchdog disabled", raw_pid)
            return None
        if int(raw_pid) != os.getpid():
            log.info("WATCHDOG_PID=%s is another process (ours: %d)", raw_pid, os.getpid())
            return None
    if not _DECIMAL.fullmatch(raw_usec) or not 0 < int(raw_usec) < USEC_INFINITY:
        log.warning(
            "WATCHDOG_USEC=%r is not a positive number of microseconds: watchdog disabled",
            raw_usec[:40],
        )
        return None
    usec = int(raw_usec)
    if usec / 2_000_000 < MIN_PING_INTERVAL_S:
        log.warning(
            "WATCHDOG_USEC=%d is shorter than the agent can ping (every %.2f s)",
            usec,
            MIN_PING_INTERVAL_S,
        )
    return usec


def _one_line(text: str) -> str:
    """A STATUS value: a newline would start a new assignment (say, a forged READY=1)."""
    return " ".join(text.splitlines())


def _reason(exc: OSError) -> str:
    if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
        return "its queue is full; message dropped"
    return exc.strerror or str(exc)
