"""The local SQLite store: where every span lives from the end of its cell on.

Each thread uses its own connection (SQLite connections are not shared across
threads); WAL mode lets the sender read and mark spans while a cell commits
new ones. Several kernels may share one store: the sender *claims* a batch
with a lease, so a span is sent by one kernel at a time, and a kernel that
dies mid-request only delays its batch until the lease runs out.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import contextmanager, suppress
from typing import Iterable, Iterator, NamedTuple, Sequence

from IPython.core.error import UsageError

from ._otlp import SpanRecord

__all__ = ["Claimed", "Counts", "SpanStore", "StoredSpan", "open_store"]

# States a span moves through. 'local': recorded while no destination was
# configured (the embedded default), kept here and never sent on its own.
LOCAL, PENDING, SENT, FAILED = "local", "pending", "sent", "failed"

_SCHEMA = """
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
"""


class Claimed(NamedTuple):
    id: int
    origin: int
    payload: bytes


class Counts(NamedTuple):
    local: int = 0
    pending: int = 0
    sent: int = 0
    failed: int = 0


class StoredSpan(NamedTuple):
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    start_ns: int
    end_ns: int
    status: int
    state: str
    error: str | None
    payload: bytes


def _private_file(path: str) -> None:
    """Create the store's folder (0700) and file (0600): spans hold cell inputs and outputs."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)


def open_store(path: str) -> SpanStore:
    """Open (or create) the store, or say in one sentence why it can't be used."""
    try:
        return SpanStore(path)
    except (OSError, sqlite3.Error) as exc:
        raise UsageError(
            f"trace_ext can't use {path} as its span store ({exc}); set TraceExt.store_path "
            "or TRACE_EXT_STORE_PATH to a file in a writable folder."
        ) from None


class SpanStore:
    """Spans on disk, with the states and leases the sender works with."""

    def __init__(self, path: str, busy_timeout: float = 2.0) -> None:
        self.path = path
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._origin_ids: dict[bytes, int] = {}
        _private_file(path)
        with self._connect() as conn:
            conn.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: transactions are explicit (BEGIN ... COMMIT).
            conn = sqlite3.connect(self.path, self._busy_timeout, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives the kernel being killed (it is
            # in the OS's hands); only a power cut may lose the last commits.
            conn.execute("PRAGMA synchronous=NORMAL")
            # No automatic checkpoints: one would run inside some cell's COMMIT
            # (~10 ms every ~40 cells). The sender thread checkpoints instead.
            conn.execute("PRAGMA wal_autocheckpoint=0")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            with suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()

    # -- writing -----------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction. While another connection holds the lock, retry every
        0.2 ms: SQLite's own busy handler sleeps 1, 2, 5, 10 ms for a lock held for µs."""
        conn = self._connect()
        deadline = time.monotonic() + self._busy_timeout
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            while True:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() >= deadline:
                        raise
                    time.sleep(0.0002)
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _origin_id(self, conn: sqlite3.Connection, record: SpanRecord) -> int:
        cached = self._origin_ids.get(record.origin)
        if cached is not None:
            return cached
        conn.execute(
            "INSERT OR IGNORE INTO origins(digest, resource, scope) VALUES (?, ?, ?)",
            (record.origin, record.resource, record.scope),
        )
        (origin_id,) = conn.execute("SELECT id FROM origins WHERE digest = ?", (record.origin,)).fetchone()
        self._origin_ids[record.origin] = origin_id
        return origin_id

    def append(self, records: Sequence[SpanRecord], state: str) -> None:
        """Write ended spans in one transaction: durable when this returns."""
        if not records:
            return
        now = time.time()
        try:
            with self._write() as conn:
                rows = [
                    (
                        r.trace_id, r.span_id, r.parent_id, r.name, r.start_ns, r.end_ns, r.status,
                        self._origin_id(conn, r), r.payload, len(r.payload), state, now,
                    )
                    for r in records
                ]
                conn.executemany(
                    "INSERT INTO spans(trace_id, span_id, parent_id, name, start_ns, end_ns, status,"
                    " origin, payload, size, state, recorded_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    rows,
                )
        except BaseException:
            # Ids cached inside the rolled-back transaction may not exist.
            self._origin_ids.clear()
            raise

    def claim(self, max_spans: int, max_bytes: int, lease_seconds: float) -> list[Claimed]:
        """Lease the oldest pending spans (at least one, at most the limits) to this sender."""
        now = time.time()
        with self._write() as conn:
            rows = conn.execute(
                "SELECT id, origin, size FROM spans WHERE state = ? AND lease_until <= ?"
                " ORDER BY id LIMIT ?",
                (PENDING, now, max_spans),
            ).fetchall()
            chosen, total = [], 0
            for span_id, _origin, size in rows:
                if chosen and total + size > max_bytes:
                    break
                chosen.append(span_id)
                total += size
            if chosen:
                marks = ",".join("?" * len(chosen))
                conn.execute(
                    f"UPDATE spans SET lease_until = ?, attempts = attempts + 1 WHERE id IN ({marks})",
                    (now + lease_seconds, *chosen),
                )
        if not chosen:
            return []
        rows = self._connect().execute(
            f"SELECT id, origin, payload FROM spans WHERE id IN ({marks}) ORDER BY id", chosen
        ).fetchall()
        return [Claimed(*row) for row in rows]

    def origins(self, ids: Iterable[int]) -> dict[int, tuple[bytes, bytes]]:
        conn = self._connect()
        wanted = sorted(set(ids))
        marks = ",".join("?" * len(wanted))
        rows = conn.execute(
            f"SELECT id, resource, scope FROM origins WHERE id IN ({marks})", wanted
        ).fetchall()
        return {row[0]: (row[1], row[2]) for row in rows}

    def _update(self, sql: str, params: tuple, ids: Sequence[int]) -> None:
        """One short UPDATE ... WHERE id IN (...) transaction, so a cell never waits long on it."""
        with self._write() as conn:
            for start in range(0, len(ids), 500):  # well under SQLite's bound-parameter limit
                chunk = list(ids[start : start + 500])
                marks = ",".join("?" * len(chunk))
                conn.execute(f"{sql} WHERE id IN ({marks})", (*params, *chunk))

    def _finish(self, ids: Sequence[int], state: str, note: str | None) -> None:
        sql = "UPDATE spans SET state = ?, error = ?, done_at = ?, lease_until = 0"
        self._update(sql, (state, note, time.time()), ids)

    def mark_sent(self, ids: Sequence[int], note: str | None = None) -> None:
        self._finish(ids, SENT, note)

    def mark_failed(self, ids: Sequence[int], reason: str) -> None:
        self._finish(ids, FAILED, reason)

    def release(self, ids: Sequence[int], not_before: float = 0.0) -> None:
        """Give claimed spans back, to be sent again from ``not_before`` (epoch seconds)."""
        self._update("UPDATE spans SET lease_until = ?", (not_before,), ids)

    def checkpoint(self) -> None:
        """Fold the write-ahead log into the database without blocking writers."""
        self._connect().execute("PRAGMA wal_checkpoint(PASSIVE)")

    def requeue_failed(self) -> int:
        """Put failed spans back in the queue (after the cause has been fixed)."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE spans SET state = ?, error = NULL, lease_until = 0 WHERE state = ?",
                (PENDING, FAILED),
            )
        return cur.rowcount

    # -- reading -----------------------------------------------------------

    def counts(self) -> Counts:
        rows = self._connect().execute("SELECT state, COUNT(*) FROM spans GROUP BY state").fetchall()
        by_state = dict(rows)
        return Counts(*(by_state.get(s, 0) for s in (LOCAL, PENDING, SENT, FAILED)))

    def pending(self) -> int:
        return self._connect().execute("SELECT COUNT(*) FROM spans WHERE state = ?", (PENDING,)).fetchone()[0]

    def recent_traces(self, limit: int, since: float = 0.0) -> list[list[StoredSpan]]:
        """The spans of the ``limit`` most recently recorded traces, oldest trace first.

        ``since`` (epoch seconds) leaves out traces recorded before it.
        """
        conn = self._connect()
        trace_ids = [
            row[0]
            for row in conn.execute(
                "SELECT trace_id FROM spans GROUP BY trace_id HAVING MAX(recorded_at) >= ?"
                " ORDER BY MAX(id) DESC LIMIT ?",
                (since, limit),
            )
        ]
        traces = []
        for trace_id in reversed(trace_ids):
            rows = conn.execute(
                "SELECT trace_id, span_id, parent_id, name, start_ns, end_ns, status, state,"
                " error, payload FROM spans WHERE trace_id = ? ORDER BY start_ns, id",
                (trace_id,),
            ).fetchall()
            traces.append([StoredSpan(*row) for row in rows])
        return traces
