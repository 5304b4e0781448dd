"""A bounded on-disk SQLite buffer of items numbered with per-agent sequences until acked."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Self, TypeVar

from common.files import ensure_private_directory

FORMAT_VERSION = 1
_T = TypeVar("_T")


class SequencedBufferError(Exception):
    """The buffer's database is damaged or unusable; the message names the file."""


@dataclass(frozen=True)
class Pending(Generic[_T]):
    """The oldest unacked items with their sequence numbers, and the drops not yet reported."""

    items: tuple[tuple[int, _T], ...]
    dropped: int


class SequencedBuffer(Generic[_T]):
    """`path`: the items the control plane has not acknowledged yet, as one table `TABLE`.

    Sequence numbers start at 1, persist across restarts and are never reused. When the buffer
    is full the oldest items are deleted and counted in `dropped_unreported` until an ack of a
    batch that reported them. An ack that does not advance past the highest seq acknowledged so
    far (a repeat, a late one) changes nothing. Damaged rows are logged and deleted, not counted:
    every drop then comes with a newer item, so a batch reporting drops always holds items.
    Subclasses name the file's contents and turn an item into text and back.
    """

    TABLE = "items"
    NOUN = "item"  # in messages: "dropping damaged item 7", "max_items must be ..."
    KIND = "buffer"  # in messages: "... is damaged or not a <KIND>"
    EXTRA_SCHEMA: tuple[str, ...] = ()  # more tables a subclass keeps in the same file
    error: type[SequencedBufferError] = SequencedBufferError

    def __init__(self, path: Path, *, max_items: int) -> None:
        if max_items < 1:
            raise ValueError(f"max_{self.NOUN}s must be at least 1, not {max_items}")
        self.path = path
        self.max_items = max_items
        self._log = logging.getLogger(type(self).__module__)
        self._lock = threading.Lock()
        self._held: int | None = None  # rows in the table; None: count them when next needed
        try:
            ensure_private_directory(path.parent)
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            os.chmod(self.path, 0o600)  # sqlite3 would create it 0644; also tightens an old one
            self._connection = sqlite3.connect(
                self.path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as error:
            raise self.error(f"cannot open {self.path}: {error}") from error
        try:
            self._setup()
        except (sqlite3.Error, SequencedBufferError) as error:
            self._connection.close()
            message = f"{self.path} is damaged or not a {self.KIND}: {error}"
            raise self.error(message) from error

    # -- what a subclass supplies ---------------------------------------------------------

    def encode(self, item: _T) -> str:
        raise NotImplementedError

    def decode(self, raw: bytes) -> _T:
        """The item back from its text; ValueError or TypeError when the row is damaged."""
        raise NotImplementedError

    def stored(self, connection: sqlite3.Connection, rows: Sequence[tuple[int, _T]]) -> None:
        """Runs in the transaction that appended `rows` (seq, item): for EXTRA_SCHEMA tables."""

    # -- the buffer -----------------------------------------------------------------------

    def _setup(self) -> None:
        connection = self._connection
        connection.execute("PRAGMA journal_mode=WAL").fetchall()
        connection.execute("PRAGMA synchronous=NORMAL")
        (check,) = connection.execute("PRAGMA quick_check").fetchone()
        if check != "ok":
            raise SequencedBufferError(f"quick_check: {check}")
        (version,) = connection.execute("PRAGMA user_version").fetchone()
        if version not in (0, FORMAT_VERSION):
            raise SequencedBufferError(f"unsupported format version {version}")
        schema = (
            f"CREATE TABLE IF NOT EXISTS {self.TABLE}"
            " (seq INTEGER PRIMARY KEY, body TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
            "INSERT OR IGNORE INTO meta VALUES"
            " ('next_seq', 1), ('dropped_unreported', 0), ('acked_seq', 0)",
            *self.EXTRA_SCHEMA,
        )
        with self._lock, _transaction(connection):
            for statement in schema:
                connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
            connection.execute(f"SELECT seq, body FROM {self.TABLE} LIMIT 0").fetchall()
            for key in ("next_seq", "dropped_unreported", "acked_seq"):
                value = _get(connection, key)
                if type(value) is not int or value < 0:
                    raise SequencedBufferError(f"{key} is {value!r}, not a count")
            connection.execute(  # never below a seq that was issued: numbers are not reused
                "UPDATE meta SET value = MAX(value, ?,"
                f" (SELECT IFNULL(MAX(seq), 0) + 1 FROM {self.TABLE})) WHERE key = 'next_seq'",
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
                raise self.error(f"{self.path}: {doing} failed: {error}") from error

    def _count(self, connection: sqlite3.Connection) -> int:
        if self._held is None:  # COUNT(*) reads every page: too slow on each append
            (self._held,) = connection.execute(f"SELECT COUNT(*) FROM {self.TABLE}").fetchone()
        return self._held

    def append(self, item: _T) -> int:
        """Stores `item` under the next sequence number, dropping the oldest when full."""
        return self.append_many((item,))[0]

    def append_many(self, items: Iterable[_T], *, also_dropped: int = 0) -> list[int]:
        """Stores `items` in order in one transaction; `also_dropped` items lost before they
        reached the buffer are counted with its own drops. Returns their sequence numbers."""
        bodies = [(item, self.encode(item)) for item in items]
        if not bodies and also_dropped <= 0:
            return []
        with self._using("append") as connection:
            first, held = int(_get(connection, "next_seq")), self._count(connection)
            excess = held + len(bodies) - self.max_items
            dropped = 0
            if excess > 0:
                dropped = connection.execute(
                    f"DELETE FROM {self.TABLE}"
                    f" WHERE seq IN (SELECT seq FROM {self.TABLE} ORDER BY seq LIMIT ?)",
                    (excess,),
                ).rowcount
            seqs = list(range(first, first + len(bodies)))
            numbered = list(zip(seqs, bodies, strict=True))
            connection.executemany(
                f"INSERT INTO {self.TABLE} (seq, body) VALUES (?, ?)",
                [(seq, body) for seq, (_, body) in numbered],
            )
            # Items beyond the bound in this very call were inserted and deleted again.
            excess_new = max(0, len(bodies) - self.max_items)
            if excess_new:
                connection.execute(
                    f"DELETE FROM {self.TABLE} WHERE seq < ?", (seqs[-1] - self.max_items + 1,)
                )
            _add(connection, "dropped_unreported", dropped + excess_new + max(0, also_dropped))
            self.stored(connection, [(seq, item) for seq, (item, _) in numbered])
            self._held = min(held - dropped + len(bodies), self.max_items)
            _add(connection, "next_seq", len(bodies))
        return seqs

    def pending_items(self, limit: int = 500, *, max_bytes: int | None = None) -> Pending[_T]:
        """The oldest `limit` unacked items in seq order (and no more than `max_bytes` of their
        text, but always one); damaged rows are logged and deleted."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        items: list[tuple[int, _T]] = []
        damaged: list[int] = []
        size = 0
        with self._using(f"reading pending {self.NOUN}s") as connection:
            after, full = 0, False
            while len(items) < limit and not full:
                rows = connection.execute(
                    f"SELECT seq, CAST(body AS BLOB) FROM {self.TABLE}"
                    " WHERE seq > ? ORDER BY seq LIMIT ?",
                    (after, limit - len(items)),
                ).fetchall()
                if not rows:
                    break
                for seq, raw in rows:
                    if max_bytes is not None and items and size + len(raw) > max_bytes:
                        full = True
                        break
                    after = seq
                    try:
                        items.append((seq, self.decode(raw)))
                        size += len(raw)
                    except (ValueError, TypeError, RecursionError) as error:
                        self._log.warning(
                            "%s: dropping damaged %s %d: %s", self.path, self.NOUN, seq, error
                        )
                        damaged.append(seq)
            if damaged:
                self._held = self._count(connection) - len(damaged)
                connection.executemany(
                    f"DELETE FROM {self.TABLE} WHERE seq = ?", [(s,) for s in damaged]
                )
            dropped = _get(connection, "dropped_unreported")
        return Pending(items=tuple(items), dropped=int(dropped))

    def ack(self, acked_seq: int, *, dropped_reported: int) -> None:
        """Forgets items up to `acked_seq`; `dropped_reported` is the acked batch's `dropped`."""
        if dropped_reported < 0:
            raise ValueError(f"dropped_reported must not be negative, not {dropped_reported}")
        with self._using("ack") as connection:
            last_issued = _get(connection, "next_seq") - 1
            if acked_seq > last_issued:
                self._log.warning("%s: ack of seq %d, never issued", self.path, acked_seq)
                acked_seq = last_issued
            if acked_seq <= _get(connection, "acked_seq"):
                return  # a repeated or late ack: already applied
            held = self._count(connection)
            deleted = connection.execute(f"DELETE FROM {self.TABLE} WHERE seq <= ?", (acked_seq,))
            self._held = held - deleted.rowcount
            _add(connection, "dropped_unreported", -dropped_reported)
            connection.execute("UPDATE meta SET value = ? WHERE key = 'acked_seq'", (acked_seq,))

    def __len__(self) -> int:
        with self._using(f"counting {self.NOUN}s") as connection:
            return self._count(connection)

    @property
    def next_seq(self) -> int:
        """The sequence number the next appended item gets."""
        with self._using("reading next_seq") as connection:
            return int(_get(connection, "next_seq"))

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    def __enter__(self) -> Self:
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


def typed(value: object, kind: type[_T], what: str) -> _T:
    """`value` when it is a `kind` (for decoders); TypeError naming `what` otherwise."""
    if not isinstance(value, kind):
        raise TypeError(f"{what} is {type(value).__name__}, not {kind.__name__}")
    return value
