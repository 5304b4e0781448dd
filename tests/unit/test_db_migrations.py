"""The Alembic migrations build exactly the models' schema, on SQLite and on PostgreSQL."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlmodel import SQLModel

from common.errors import InvalidArgument
from controlplane.db.database import Database
from controlplane.db.models import Agent, Certificate, ModelAssignmentRecord
from tests.postgres import PostgresServer

_names = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A database nobody has migrated yet."""
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'empty' / 'outpost.db'}")
        yield db
        db.dispose()
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = f"empty_{next(_names)}"
    db = Database(server.create_database(name))
    try:
        yield db
    finally:
        db.dispose()
        server.drop_database(name)


def differences(db: Database, metadata: sa.MetaData) -> list[object]:
    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))


def test_migrate_builds_exactly_the_models_tables(empty_database: Database) -> None:
    assert differences(empty_database, SQLModel.metadata) != []  # empty: every table missing
    empty_database.migrate()
    assert differences(empty_database, SQLModel.metadata) == []
    tables = set(sa.inspect(empty_database.engine).get_table_names())
    assert tables == set(SQLModel.metadata.tables) | {"alembic_version"}


def test_the_comparison_sees_a_column_the_migrations_lack(database: Database) -> None:
    metadata = sa.MetaData()
    for table in SQLModel.metadata.tables.values():
        table.to_metadata(metadata)
    metadata.tables["agents"].append_column(sa.Column("extra", sa.Integer, nullable=True))
    diffs = differences(database, metadata)
    assert [d[0] for d in diffs if isinstance(d, tuple)] == ["add_column"]


def test_migrate_is_repeatable_and_stops_at_head(database: Database) -> None:
    database.migrate()
    head = ScriptDirectory.from_config(database.alembic_config()).get_current_head()
    assert head is not None
    with database.engine.connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == head


def test_revisions_form_one_chain_from_the_first_table_on() -> None:
    script = ScriptDirectory.from_config(Database("sqlite://").alembic_config())
    revisions = list(script.walk_revisions())  # newest first
    assert len(script.get_heads()) == 1
    assert revisions[-1].revision == "423333ca0f12"
    assert revisions[-1].down_revision is None
    for newer, older in itertools.pairwise(revisions):
        assert newer.down_revision == older.revision
    for revision in revisions:
        assert revision.path is not None
        assert "import sqlmodel" in Path(revision.path).read_text(encoding="utf-8")


def test_assignments_made_before_adapters_get_none(empty_database: Database) -> None:
    """Revision b5d2e8f41c07 adds model_assignments.adapters: rows already there get {}."""
    db = empty_database
    db.migrate("7c1e5a9d3b20")
    now = datetime.now(UTC)
    with db.engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO models (id, name, version, sha256, size_bytes, chunk_size, "
                "chunk_sha256, gguf, created_at, created_by) VALUES (1, 'm', '1', :sha, 10, 10, "
                "'[]', '{}', :now, 'test')"
            ),
            {"sha": "0" * 64, "now": now},
        )
        connection.execute(
            sa.text(
                "INSERT INTO model_assignments (id, model_id, target_kind, target, alias, "
                "context_length, gpu_layers, threads, queue_depth, created_at, created_by) "
                "VALUES (1, 1, 'site', 'hq', 'm', 4096, 0, 0, 16, :now, 'test')"
            ),
            {"now": now},
        )
    db.migrate()
    assert differences(db, SQLModel.metadata) == []
    with db.session() as session:
        row = session.get(ModelAssignmentRecord, 1)
        assert row is not None
        assert row.adapters == {}
        row.adapters = {"sql": 1}
        session.add(row)
    with db.session() as session:
        row = session.get(ModelAssignmentRecord, 1)
        assert row is not None
        assert row.adapters == {"sql": 1}


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'sub' / 'outpost.db'}")
    try:
        with db.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
        assert (tmp_path / "sub" / "outpost.db").exists()
    finally:
        db.dispose()


def test_foreign_keys_are_enforced(database: Database) -> None:
    now = datetime.now(UTC)
    with pytest.raises(sa.exc.IntegrityError), database.session() as session:
        session.add(
            Certificate(serial="ab", agent_id="nobody", not_before=now, not_after=now, pem="x")
        )


def test_a_session_commits_on_success_and_rolls_back_on_error(database: Database) -> None:
    agent = Agent(id="a", name="kept", enrolled_at=datetime.now(UTC))
    with database.session() as session:
        session.add(agent)

    def add_then_fail() -> None:
        with database.session() as session:
            session.add(Agent(id="b", name="lost", enrolled_at=datetime.now(UTC)))
            session.flush()
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        add_then_fail()
    with database.session() as session:
        assert session.get(Agent, "a") is not None
        assert session.get(Agent, "b") is None


def test_datetimes_come_back_timezone_aware_utc(database: Database) -> None:
    local = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=2)))
    with database.session() as session:
        session.add(Agent(id="a", name="n", enrolled_at=local))
    with database.session() as session:
        stored = session.get(Agent, "a")
        assert stored is not None
        assert stored.enrolled_at == local
        assert stored.enrolled_at.utcoffset() == timedelta(0)
        assert stored.enrolled_at.hour == 1
        assert stored.last_seen_at is None

    def add_naive() -> None:
        with database.session() as session:
            session.add(Agent(id="naive", name="n", enrolled_at=datetime(2030, 1, 1)))

    with pytest.raises(sa.exc.StatementError, match="timezone-aware"):
        add_naive()


def test_unsupported_urls_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="unsupported"):
        Database("mysql://localhost/outpost")


def test_a_plain_postgresql_url_uses_psycopg_3() -> None:
    db = Database("postgresql://user@127.0.0.1:1/none")
    try:
        assert db.engine.url.drivername == "postgresql+psycopg"
        assert db.dialect == "postgresql"
    finally:
        db.dispose()
