"""Process plumbing shared by the agent and the control plane: logging, run until a signal."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Protocol

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class StoppableServer(Protocol):
    def request_stop(self) -> None: ...

    async def run(self) -> None: ...


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)


def run_until_signalled(server: StoppableServer) -> None:
    """Runs `server` on a new event loop; SIGINT and SIGTERM ask it to stop gracefully."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, server.request_stop)
        await server.run()

    asyncio.run(main())
