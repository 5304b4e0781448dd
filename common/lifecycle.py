"""Process plumbing shared by the agent and the control plane: logging, run until a signal."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from typing import Protocol

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class StoppableServer(Protocol):
    def request_stop(self) -> None: ...

    async def run(self) -> None: ...


def collect_garbage_less_often() -> None:
    """For a server holding many long-lived objects (the control plane: several per agent
    stream). With Python's default thresholds (700, 10, 10) collections run often, and the
    older generations walk every stream's objects; at 5,000 agents that cost a push of the
    desired state about half a second (benchmarks/control_plane_fanout.py)."""
    gc.set_threshold(50_000, 20, 100)


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)
    # httpx logs every request at INFO: one line per forwarded or cloud call is noise (and
    # costs time on the gateway's hot path); its warnings still show.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))


def run_until_signalled(server: StoppableServer) -> None:
    """Runs `server` on a new event loop; SIGINT and SIGTERM ask it to stop gracefully."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, server.request_stop)
        await server.run()

    asyncio.run(main())
