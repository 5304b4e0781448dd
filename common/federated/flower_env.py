"""How Outpost starts Flower's processes: offline, and on loopback ports picked at start."""

from __future__ import annotations

import socket

# Flower must not phone home, check for updates or install packages: sites are air-gapped.
FLOWER_OFFLINE_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


def free_loopback_port() -> int:
    """A port free now on 127.0.0.1, for a Flower process that needs a fixed one (Flower takes
    no port 0); another process could take it before Flower binds it, then the start fails."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
