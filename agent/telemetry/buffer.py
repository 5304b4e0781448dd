"""The agent's on-disk, bounded buffer of telemetry samples, numbered with per-agent sequences."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from common.files import ensure_private_directory
from common.telemetry import Labels, Metric, Sample, SequencedSample, TelemetryBatch

log = logging.getLogger(__name__)

BUFFER_FILE = "telemetry.sqlite3"
FORMAT_VERSION = 1
DEFAULT_MAX_SAMPLES = 17_280  # 24 h at one sample per 5 s

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS samples (seq INTEGER PRIMARY KEY, body TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO meta VALUES"
    " ('next_seq', 1), ('dropped_unreported', 0), ('acked_seq', 0)",
)
_T = TypeVar("_T")


class TelemetryBufferError(Exception):
    """The buffer's database is damaged or unusable; the message names the file."""


class TelemetryBuffer:
    """`state_dir/telemetry.sqlite3`: the samples the control plane has not acknowledged yet.

    Sequence numbers start at 1, persist across restarts and are never reused. When the buffer
    is full the oldest samples are deleted and counted in `dropped_unreported` until an ack of a
    batch that reported them. An ack that does not advance past the highest seq acknowledged so
    far (a repeat, a late one) changes nothing. Damaged rows are logged and deleted, not counted:
    every drop then comes with a newer sample, so a batch reporting drops always holds samples.
    """

    def __init__(self, state_dir: Path, *, max_samples: int = DEFAULT_MAX_SAMPLES) -> None:
        if max_samples < 1:
            raise ValueError(f"max_samples must be at least 1, not {max_samples}")
        self.path = state_dir / BUFFER_FILE
        self.max_samples = max_samples
        self._lock = threading.Lock()
        self._held: int | None = None  # rows in `samples`; None: count them when next needed
        try:
            ensure_private_directory(state_dir)
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            os.chmod(self.path, 0o600)  # sqlite3 would create it 0644; also tightens an old one
            self._connection = sqlite3.connect(
                self.path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as error:
            raise TelemetryBufferError(f"cannot open {self.path}: {error}") from error
        try:
            self._setup()
        except (sqlite3.Error, TelemetryBufferError) as error:
            self._connection.close()
            message = f"{self.path} is damaged or not a telemetry buffer: {error}"
            raise TelemetryBufferError(message) from error

    def _setup(self) -> None:
        connection = self._connection
        connection.execute("PRAGMA journal_mode=WAL").fetchall()
        connection.execute("PRAGMA synchronous=NORMAL")
        (check,) = connection.execute("PRAGMA quick_check").fetchone()
        if check != "ok":
            raise TelemetryBufferError(f"quick_check: {check}")
        (version,) = connection.execute("PRAGMA user_version").fetchone()
        if version not in (0, FORMAT_VERSION):
            raise TelemetryBufferError(f"unsupported format version {version}")
        with self._lock, _transaction(connection):
            for statement in _SCHEMA:
                connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
            connection.execute("SELECT seq, body FROM samples LIMIT 0").fetchall()
            for key in ("next_seq", "dropped_unreported", "acked_seq"):
                value = _get(connection, key)
                if type(value) is not int or value < 0:
                    raise TelemetryBufferError(f"{key} is {value!r}, not a count")
            connection.execute(  # never below a seq that was issued: numbers are not reused
                "UPDATE meta SET value = MAX(value, ?,"
                " (SELECT IFNULL(MAX(seq), 0) + 1 FROM samples)) WHERE key = 'next_seq'",
                (_get(connection, "acked_seq") + 1,),
            )

    @contextmanager
    def _using(self, doing: str) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock and inside one write transaction."""
        with self._lock:
            try:
                with _transaction(self._connection):
                    yield self._connection
            except BaseException as error:
                self._held = None  # the transaction may have rolled back
                if not isinstance(error, sqlite3.Error):
                    raise
                raise TelemetryBufferError(f"{self.path}: {doing} failed: {error}") from error

    def _count(self, connection: sqlite3.Connection) -> int:
        if self._held is None:  # COUNT(*) reads every page: too slow on each append
            (self._held,) = connection.execute("SELECT COUNT(*) FROM samples").fetchone()
        return self._held

    def append(self, sample: Sample) -> int:
        """Stores `sample` under the next sequence number, dropping the oldest when full."""
        body = _encode(sample)
        with self._using("append") as connection:
            seq, held, dropped = _get(connection, "next_seq"), self._count(connection), 0
            if held >= self.max_samples:
                dropped = connection.execute(
                    "DELETE FROM samples"
                    " WHERE seq IN (SELECT seq FROM samples ORDER BY seq LIMIT ?)",
                    (held - self.max_samples + 1,),
                ).rowcount
                _add(connection, "dropped_unreported", dropped)
            connection.execute("INSERT INTO samples (seq, body) VALUES (?, ?)", (seq, body))
            self._held = held - dropped + 1
            _add(connection, "next_seq", 1)
        return int(seq)

    def pending(self, limit: int = 500) -> TelemetryBatch:
        """The oldest `limit` unacked samples in seq order; damaged rows are logged and deleted."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        samples: list[SequencedSample] = []
        damaged: list[int] = []
        with self._using("reading pending samples") as connection:
            after = 0
            while len(samples) < limit:
                rows = connection.execute(
                    "SELECT seq, CAST(body AS BLOB) FROM samples"
                    " WHERE seq > ? ORDER BY seq LIMIT ?",
                    (after, limit - len(samples)),
                ).fetchall()
                if not rows:
                    break
                for seq, raw in rows:
                    after = seq
                    try:
                        samples.append(SequencedSample(seq, _decode(raw)))
                    except (ValueError, TypeError, RecursionError) as error:
                        log.warning("%s: dropping damaged sample %d: %s", self.path, seq, error)
                        damaged.append(seq)
            if damaged:
                self._held = self._count(connection) - len(damaged)
                connection.executemany("DELETE FROM samples WHERE seq = ?", [(s,) for s in damaged])
            dropped = _get(connection, "dropped_unreported")
        return TelemetryBatch(samples=tuple(samples), dropped=int(dropped))

    def ack(self, acked_seq: int, *, dropped_reported: int) -> None:
        """Forgets samples up to `acked_seq`; `dropped_reported` is the acked batch's `dropped`."""
        if dropped_reported < 0:
            raise ValueError(f"dropped_reported must not be negative, not {dropped_reported}")
        with self._using("ack") as connection:
            last_issued = _get(connection, "next_seq") - 1
            if acked_seq > last_issued:
                log.warning("%s: ack of seq %d, never issued", self.path, acked_seq)
                acked_seq = last_issued
            if acked_seq <= _get(connection, "acked_seq"):
                return  # a repeated or late ack: already applied
            held = self._count(connection)
            deleted = connection.execute("DELETE FROM samples WHERE seq <= ?", (acked_seq,))
            self._held = held - deleted.rowcount
            _add(connection, "dropped_unreported", -dropped_reported)
            connection.execute("UPDATE meta SET value = ? WHERE key = 'acked_seq'", (acked_seq,))

    def __len__(self) -> int:
        with self._using("counting samples") as connection:
            return self._count(connection)

    @property
    def next_seq(self) -> int:
        """The sequence number the next appended sample gets."""
        with self._using("reading next_seq") as connection:
            return int(_get(connection, "next_seq"))

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    def __enter__(self) -> TelemetryBuffer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextmanager
def _transaction(connection: sqlite3.Connection) -> Iterator[None]:
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
        connection.execute("COMMIT")
    except BaseException:
        with suppress(sqlite3.Error):
            connection.execute("ROLLBACK")
        raise


def _get(connection: sqlite3.Connection, key: str) -> Any:
    row = connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else row[0]


def _add(connection: sqlite3.Connection, key: str, delta: int) -> None:
    """Adds `delta` to a counter, which never goes below 0."""
    connection.execute("UPDATE meta SET value = MAX(0, value + ?) WHERE key = ?", (delta, key))


def _encode(sample: Sample) -> str:
    document = {
        "collected_at": sample.collected_at.isoformat(),
        "metrics": [[m.name, m.value, dict(m.labels)] for m in sample.metrics],
        "notes": list(sample.notes),
    }
    return json.dumps(document, separators=(",", ":"))


def _typed(value: object, kind: type[_T], what: str) -> _T:
    if not isinstance(value, kind):
        raise TypeError(f"{what} is {type(value).__name__}, not {kind.__name__}")
    return value


def _decode(raw: bytes) -> Sample:
    document = _typed(json.loads(raw), dict, "the sample")
    metrics = []
    for item in _typed(document.get("metrics"), list, "metrics"):
        name, value, labels = _typed(item, list, "a metric")
        labels = _typed(labels, dict, "labels")
        if not all(isinstance(text, str) for text in (name, *labels, *labels.values())):
            raise TypeError("a metric name or label is not a string")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"metric value is {type(value).__name__}")
        metrics.append(Metric(name, value, Labels(labels)))
    notes = _typed(document.get("notes"), list, "notes")
    if not all(isinstance(note, str) for note in notes):
        raise TypeError("a note is not a string")
    collected_at = datetime.fromisoformat(_typed(document.get("collected_at"), str, "collected_at"))
    return Sample(collected_at=collected_at, metrics=tuple(metrics), notes=tuple(notes))
