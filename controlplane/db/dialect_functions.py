"""SQL expressions SQLite and PostgreSQL spell differently, compiled per dialect, so that the
statements that use them are the same code on both."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from controlplane.db.models import UtcDateTime


class MinuteOf(FunctionElement[datetime]):
    """The start of the UTC minute of a UtcDateTime column."""

    type = UtcDateTime()
    inherit_cache = True
    name = "minute_of"


@compiles(MinuteOf, "sqlite")
def _minute_of_sqlite(element: MinuteOf, compiler: SQLCompiler, **kw: Any) -> str:
    # The text UtcDateTime stores on SQLite: naive UTC, "YYYY-MM-DD HH:MM:SS.ffffff".
    return f"strftime('%Y-%m-%d %H:%M:00.000000', {compiler.process(element.clauses, **kw)})"


@compiles(MinuteOf, "postgresql")
def _minute_of_postgresql(element: MinuteOf, compiler: SQLCompiler, **kw: Any) -> str:
    return f"date_trunc('minute', {compiler.process(element.clauses, **kw)}, 'UTC')"


class EpochMs(FunctionElement[int]):
    """Whole milliseconds since 1970-01-01 UTC of a UtcDateTime column, as an integer."""

    type = BigInteger()
    inherit_cache = True
    name = "epoch_ms"


@compiles(EpochMs, "sqlite")
def _epoch_ms_sqlite(element: EpochMs, compiler: SQLCompiler, **kw: Any) -> str:
    # %s and %f come from the same parsed instant, so they agree when milliseconds round up.
    value = compiler.process(element.clauses, **kw)
    return (
        f"(CAST(strftime('%s', {value}) AS INTEGER) * 1000"
        f" + CAST(round(strftime('%f', {value}) * 1000) AS INTEGER) % 1000)"
    )


@compiles(EpochMs, "postgresql")
def _epoch_ms_postgresql(element: EpochMs, compiler: SQLCompiler, **kw: Any) -> str:
    value = compiler.process(element.clauses, **kw)
    return f"CAST(floor(extract(epoch FROM {value}) * 1000) AS BIGINT)"


class AsJson(FunctionElement[Any]):
    """Text that holds JSON, as a JSON value (SQLite's JSON columns are text already)."""

    type = JSON()
    inherit_cache = True
    name = "as_json"


@compiles(AsJson, "sqlite")
def _as_json_sqlite(element: AsJson, compiler: SQLCompiler, **kw: Any) -> str:
    return str(compiler.process(element.clauses, **kw))


@compiles(AsJson, "postgresql")
def _as_json_postgresql(element: AsJson, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST({compiler.process(element.clauses, **kw)} AS JSON)"
