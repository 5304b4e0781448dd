"""The control plane's typed settings, built once in `main()` from flags and environment."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path


@dataclass(frozen=True)
class ConsoleSettings:
    """The web console's sessions and login limits."""

    # Off only for plain-HTTP demos reached by another name than localhost/127.0.0.1
    # (browsers treat those two as secure contexts and keep Secure cookies over HTTP there).
    secure_cookies: bool = True
    session_idle: timedelta = timedelta(minutes=30)  # a session unused this long ends
    session_lifetime: timedelta = timedelta(hours=12)  # a login lasts at most this long
    login_failures: int = 10  # per user name and per address, in `login_window`: then 429
    login_window: timedelta = timedelta(minutes=5)
    refresh_seconds: int = 5  # how often the fleet overview polls for fresh rows


@dataclass(frozen=True)
class ControlPlaneSettings:
    data_dir: Path
    database_url: str | None = None  # None: SQLite file in data_dir
    host: str = "127.0.0.1"
    http_port: int = 8700  # Flower's SuperLink takes 8000 by default
    grpc_port: int = 8701
    mtls_port: int = 8702  # 0: any free port; agents learn it from Discover
    # The Flower Fleet API relay (mutual TLS) agents' SuperNodes reach; the SuperLink behind
    # it listens on 127.0.0.1 only. 0: any free port (agents learn it from their tasks).
    fleet_port: int = 8703
    # Names agents use to reach the control plane; they go into its TLS certificate.
    advertise_hosts: tuple[str, ...] = field(default=("localhost", "127.0.0.1"))
    insecure: bool = False
    join_token_ttl: timedelta = timedelta(hours=24)
    agent_certificate_ttl: timedelta = timedelta(days=30)
    hello_timeout_s: float = 10.0
    max_message_bytes: int = 4 * 1024 * 1024
    max_request_bytes: int = 1024 * 1024
    max_model_bytes: int = 256 * 1024**3  # the largest model file an import accepts
    log_level: str = "INFO"
    telemetry_raw_retention: timedelta = timedelta(days=1)
    telemetry_rollup_retention: timedelta = timedelta(days=30)
    compaction_interval_s: float = 600.0  # rolls raw telemetry up and applies retention
    liveness_grace: timedelta = timedelta(seconds=60)  # silence before "unreachable"
    liveness_restart_grace: timedelta = timedelta(seconds=120)  # after this process starts
    console: ConsoleSettings = field(default_factory=ConsoleSettings)

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'outpost.db'}"
