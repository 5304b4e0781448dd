"""`Database(url)`: the engine (SQLite WAL or PostgreSQL), transactional sessions, migrations."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, Table, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool
from sqlmodel import Session

from common.errors import InvalidArgument

HERE = Path(__file__).resolve().parent
ALEMBIC_INI = HERE / "alembic.ini"
MIGRATIONS = HERE / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000


def _sqlite_on_connect(dbapi_connection: Any, connection_record: ConnectionPoolEntry) -> None:
    # Let SQLAlchemy's "begin" hook below issue BEGIN rather than the sqlite3 module, which
    # would start transactions late and in DEFERRED mode.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")  # WAL stays consistent; last commits may go
    finally:
        cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    # IMMEDIATE takes the write lock at BEGIN: a transaction that read first and writes later
    # then waits for another writer (busy_timeout) instead of failing with SQLITE_BUSY.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """One engine and the sessions on it.

    `session()` is a unit of work: it commits when the block ends normally and rolls back when
    it raises. With SQLite a session holds the database's single write lock for its whole
    block, so do not open a second session of the same `Database` inside one in the same
    thread (it would wait for the first until busy_timeout).
    """

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        backend = parsed.get_backend_name()
        if backend == "sqlite":
            self.engine: Engine = self._sqlite_engine(url)
        elif backend == "postgresql":
            if parsed.drivername == "postgresql":  # plain postgresql:// means psycopg 3 here
                parsed = parsed.set(drivername="postgresql+psycopg")
            self.engine = create_engine(parsed, pool_pre_ping=True)
        else:
            raise InvalidArgument(f"unsupported database URL scheme {parsed.drivername!r}")
        self.url = self.engine.url
        self.dialect: str = backend

    @staticmethod
    def _sqlite_engine(url: str) -> Engine:
        database = make_url(url).database
        in_memory = database in (None, "", ":memory:")
        if not in_memory:
            assert database is not None
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            # One shared connection for an in-memory database, or each would be empty.
            **({"poolclass": StaticPool} if in_memory else {}),
        )
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine

    def __repr__(self) -> str:
        return f"Database({self.url.render_as_string(hide_password=True)!r})"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on any exception.

        Objects stay readable after the block (no expiry on commit).
        """
        with Session(self.engine, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def alembic_config(self) -> Config:
        config = Config(str(ALEMBIC_INI))
        config.set_main_option("script_location", str(MIGRATIONS))
        return config

    def migrate(self, revision: str = "head") -> None:
        """Brings the schema up to `revision` (Alembic `upgrade`) in one transaction."""
        config = self.alembic_config()
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)

    def dispose(self) -> None:
        self.engine.dispose()


def table_of(model: Any) -> Table:
    """The Core table of a SQLModel table class (for bulk and dialect-specific statements)."""
    table: Table = model.__table__
    return table
