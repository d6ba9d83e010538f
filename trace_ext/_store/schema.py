"""The store's tables, span states and id ranges, and the small SQL helpers the
store and its leases share. Nothing here holds state; it imports nothing of trace_ext.
"""

from __future__ import annotations

import enum
import sqlite3
from contextlib import suppress
from typing import Iterable, Sequence

__all__ = [
    "CHUNK", "COLUMNS", "MEMORY_IDS", "SCHEMA", "SpanState",
    "origins_in", "split_ids", "update_in", "used_bytes",
]

class SpanState(str, enum.Enum):
    """Where a stored span stands. The values are what the ``state`` column holds."""

    #: Recorded while no destination was configured (the embedded default): kept here, not sent on its own.
    LOCAL = "local"
    #: Waiting to be sent, or being retried.
    PENDING = "pending"
    #: The backend answered 2xx.
    SENT = "sent"
    #: The backend refused it; the reason is in ``error`` (``%trace retry`` queues it again).
    FAILED = "failed"

    def __str__(self) -> str:  # so f-strings and SQL parameters read the value
        return self.value

MEMORY_IDS = 1 << 60  # first row id in the in-memory database (disk ids stay far below)
CHUNK = 5000  # rows per pruning / copying transaction, so a cell never waits long

# lease_owner is not here: stores from before it get it by ALTER TABLE, and an
# index on it can only be made once it exists (see _store_leases.ensure_schema).
SCHEMA = """
CREATE TABLE IF NOT EXISTS origins (  -- an encoded (resource, instrumentation scope) pair
    id INTEGER PRIMARY KEY, digest BLOB NOT NULL UNIQUE, resource BLOB NOT NULL, scope BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS spans (
    id INTEGER PRIMARY KEY,
    trace_id TEXT NOT NULL, span_id TEXT NOT NULL, parent_id TEXT, name TEXT NOT NULL,
    start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL, status INTEGER NOT NULL,
    origin INTEGER NOT NULL REFERENCES origins(id),
    payload BLOB NOT NULL, size INTEGER NOT NULL,  -- the OTLP Span message, and its length
    state TEXT NOT NULL, lease_until REAL NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT, recorded_at REAL NOT NULL, done_at REAL
);
CREATE INDEX IF NOT EXISTS spans_by_state ON spans(state, id);
CREATE INDEX IF NOT EXISTS spans_by_trace ON spans(trace_id);
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, at REAL NOT NULL);
-- How far each journal file (see _store.journal) is imported: moved on in the import's transaction.
CREATE TABLE IF NOT EXISTS journals (name TEXT PRIMARY KEY, offset INTEGER NOT NULL);
"""

# The columns copied from memory to disk (not lease_owner: a copied span is not leased).
COLUMNS = ("trace_id, span_id, parent_id, name, start_ns, end_ns, status, origin, payload, size,"
           " state, lease_until, attempts, error, recorded_at, done_at")


def used_bytes(conn: sqlite3.Connection) -> int:
    """Bytes the database's data takes (pages in use, not counting free pages)."""
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    (free,) = conn.execute("PRAGMA freelist_count").fetchone()
    (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    return (pages - free) * page_size


def split_ids(ids: Iterable[int]) -> list[tuple[bool, list[int]]]:
    """``[(in_memory, ids), ...]``: an id says which database holds its row."""
    disk = [i for i in ids if i < MEMORY_IDS]
    memory = [i for i in ids if i >= MEMORY_IDS]
    return [(flag, part) for flag, part in ((False, disk), (True, memory)) if part]


def origins_in(conn: sqlite3.Connection, wanted: list[int]) -> dict[int, tuple[bytes, bytes]]:
    found = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(f"SELECT id, resource, scope FROM origins WHERE id IN ({marks})", chunk).fetchall()
        found.update({row[0]: (row[1], row[2]) for row in rows})
    return found


def update_in(conn: sqlite3.Connection, sql: str, params: tuple, ids: Sequence[int], in_transaction: bool = False) -> None:
    """``sql`` (an UPDATE without WHERE) for rows ``ids``, in one transaction unless already in one."""
    if not in_transaction:
        conn.execute("BEGIN IMMEDIATE")
    try:
        for start in range(0, len(ids), 500):  # well under SQLite's bound-parameter limit
            chunk = list(ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            conn.execute(f"{sql} WHERE id IN ({marks})", (*params, *chunk))
        if not in_transaction:
            conn.execute("COMMIT")
    except BaseException:
        if not in_transaction:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
