"""A throwaway PostgreSQL server for the test session, from Debian's packaged binaries."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import psycopg

BIN_GLOB = "/usr/lib/postgresql/*/bin"
SERVICE_USER = "postgres"
DATABASE = "outpost_test"
START_TIMEOUT_S = 60


class PostgresUnavailable(RuntimeError):
    """PostgreSQL could not be started; the message says why. Tests fail on it, never skip."""


def find_bin_dir() -> Path:
    """The newest installed major version's bin dir (Debian puts each under its number)."""
    candidates = [Path(p) for p in glob.glob(BIN_GLOB) if (Path(p) / "initdb").is_file()]
    if not candidates:
        raise PostgresUnavailable(
            f"no PostgreSQL server binaries ({BIN_GLOB}/initdb): install Debian's postgresql "
            "package (`make pytest` does: apt-get install postgresql)"
        )

    def version(path: Path) -> tuple[int, ...]:
        name = path.parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    return max(candidates, key=version)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """initdb + pg_ctl in a temp dir; `url` points at a fresh, empty database.

    PostgreSQL refuses to run as root, so as root the cluster belongs to (and runs as) the
    `postgres` system user. Only 127.0.0.1 on a free port; unix sockets stay in the temp dir;
    trust authentication, which is fine for a server nobody else can reach and that dies
    with the session. The packaged cluster (`postgresql.service`) is neither used nor needed.
    """

    def __init__(self) -> None:
        self.bin_dir = find_bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="outpost-pg-"))
        self.data_dir = self.root / "data"
        self.log_file = self.root / "server.log"
        self.port = 0
        self.url = ""
        self._run_as: list[str] = []
        self._started = False

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> str:
        try:
            self._prepare_user()
            self._initdb()
            last_error = ""
            for _ in range(3):  # another process may take the free port before we bind it
                self.port = free_port()
                try:
                    self._pg_ctl(
                        "start",
                        "-w",
                        "-t",
                        str(START_TIMEOUT_S),
                        "-l",
                        str(self.log_file),
                        "-o",
                        self._server_options(),
                    )
                except PostgresUnavailable as exc:
                    last_error = str(exc)
                    continue
                self._started = True
                break
            else:
                raise PostgresUnavailable(f"PostgreSQL did not start: {last_error}")
            self.create_database(DATABASE)
        except BaseException:
            self.stop()
            raise
        self.url = self.url_for(DATABASE)
        return self.url

    def stop(self) -> None:
        if self._started:
            with contextlib.suppress(PostgresUnavailable):
                self._pg_ctl("stop", "-w", "-m", "immediate", "-t", "30")
            self._started = False
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- databases -----------------------------------------------------------------------

    def url_for(self, database: str) -> str:
        return f"postgresql+psycopg://{SERVICE_USER}@127.0.0.1:{self.port}/{database}"

    def admin_connection(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=SERVICE_USER,
            dbname="postgres",
            autocommit=True,
            connect_timeout=10,
        )

    def create_database(self, name: str) -> str:
        """A new empty database; returns its URL."""
        self._check_name(name)
        with self.admin_connection() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        self._check_name(name)
        with self.admin_connection() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    @staticmethod
    def _check_name(name: str) -> None:
        if not name.replace("_", "").isalnum() or not name.isascii():
            raise ValueError(f"not a plain database name: {name!r}")

    # -- helpers -------------------------------------------------------------------------

    def _prepare_user(self) -> None:
        if os.geteuid() != 0:
            return
        try:
            user = pwd.getpwnam(SERVICE_USER)
        except KeyError as exc:
            raise PostgresUnavailable(
                f"running as root but there is no {SERVICE_USER!r} system user to run "
                "PostgreSQL as (PostgreSQL refuses root); install Debian's postgresql package"
            ) from exc
        os.chown(self.root, user.pw_uid, user.pw_gid)
        runuser = shutil.which("runuser")
        if runuser is not None:
            self._run_as = [runuser, "-u", SERVICE_USER, "--"]
        else:
            self._run_as = ["su", SERVICE_USER, "-s", "/bin/sh", "-c", '"$0" "$@"']

    def _server_options(self) -> str:
        options = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.root),
            # A throwaway server: durability costs time and buys nothing.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
        }
        return " ".join(f"-c {k}={v}" for k, v in options.items())

    def _initdb(self) -> None:
        self._run(
            self.bin_dir / "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            SERVICE_USER,
            "-E",
            "UTF8",
            "--locale=C",
            "--auth-local=trust",
            "--auth-host=trust",
            "--no-sync",
            "--no-instructions",
        )
        hba = "local all all trust\nhost all all 127.0.0.1/32 trust\n"
        hba_path = self.data_dir / "pg_hba.conf"
        hba_path.write_text(hba, encoding="utf-8")  # root may write it; the owner stays

    def _pg_ctl(self, *args: str) -> None:
        self._run(self.bin_dir / "pg_ctl", "-D", str(self.data_dir), *args)

    def _run(self, program: Path, *args: str) -> None:
        command: Sequence[str] = [*self._run_as, str(program), *args]
        try:
            result = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=START_TIMEOUT_S + 30,
                check=False,
                cwd=self.root,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PostgresUnavailable(f"{program.name} failed: {exc}") from exc
        if result.returncode != 0:
            log = ""
            if self.log_file.exists():
                log = self.log_file.read_text(encoding="utf-8", errors="replace")[-4000:]
            raise PostgresUnavailable(
                f"{program.name} {' '.join(args)} exited with {result.returncode}:\n"
                f"{result.stdout[-2000:]}{result.stderr[-4000:]}\n{log}"
            )


def start_postgres() -> PostgresServer:
    """A started server; call `stop()` at the end. Raises PostgresUnavailable with the reason."""
    server = PostgresServer()
    server.start()
    return server
