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
from typing import Iterable, NamedTuple, Sequence

from ._otlp import SpanRecord

__all__ = ["Claimed", "Counts", "SpanStore", "StoredSpan"]

# States a span moves through. 'local': recorded while no destination was
# configured (the embedded default), kept here and never sent on its own.
LOCAL, PENDING, SENT, FAILED = "local", "pending", "sent", "failed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS origins (
    id INTEGER PRIMARY KEY,
    digest BLOB NOT NULL UNIQUE,
    resource BLOB NOT NULL,
    scope BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS spans (
    id INTEGER PRIMARY KEY,
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    parent_id TEXT,
    name TEXT NOT NULL,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    status INTEGER NOT NULL,
    origin INTEGER NOT NULL REFERENCES origins(id),
    payload BLOB NOT NULL,
    size INTEGER NOT NULL,
    state TEXT NOT NULL,
    lease_until REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    recorded_at REAL NOT NULL,
    done_at REAL
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
            conn = sqlite3.connect(
                self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives the kernel being killed (it is
            # in the OS's hands); only a power cut may lose the last commits.
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()

    # -- writing -----------------------------------------------------------

    def _origin_id(self, conn: sqlite3.Connection, record: SpanRecord) -> int:
        cached = self._origin_ids.get(record.origin)
        if cached is not None:
            return cached
        conn.execute(
            "INSERT OR IGNORE INTO origins(digest, resource, scope) VALUES (?, ?, ?)",
            (record.origin, record.resource, record.scope),
        )
        (origin_id,) = conn.execute(
            "SELECT id FROM origins WHERE digest = ?", (record.origin,)
        ).fetchone()
        self._origin_ids[record.origin] = origin_id
        return origin_id

    def append(self, records: Sequence[SpanRecord], state: str) -> None:
        """Write ended spans in one transaction: durable when this returns."""
        if not records:
            return
        conn = self._connect()
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        try:
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
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            # Ids cached inside the rolled-back transaction may not exist.
            self._origin_ids.clear()
            raise

    def claim(self, max_spans: int, max_bytes: int, lease_seconds: float) -> list[Claimed]:
        """Lease the oldest pending spans (at least one, at most the limits) to this sender."""
        conn = self._connect()
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        try:
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
                conn.executemany(
                    "UPDATE spans SET lease_until = ?, attempts = attempts + 1 WHERE id = ?",
                    [(now + lease_seconds, i) for i in chosen],
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if not chosen:
            return []
        return self._payloads(conn, chosen)

    def _payloads(self, conn: sqlite3.Connection, ids: Sequence[int]) -> list[Claimed]:
        marks = ",".join("?" * len(ids))
        rows = conn.execute(
            f"SELECT id, origin, payload FROM spans WHERE id IN ({marks}) ORDER BY id", list(ids)
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

    def _set_state(self, ids: Sequence[int], state: str, error: str | None) -> None:
        conn = self._connect()
        now = time.time()
        conn.executemany(
            "UPDATE spans SET state = ?, error = ?, done_at = ?, lease_until = 0 WHERE id = ?",
            [(state, error, now, i) for i in ids],
        )

    def mark_sent(self, ids: Sequence[int], note: str | None = None) -> None:
        self._set_state(ids, SENT, note)

    def mark_failed(self, ids: Sequence[int], reason: str) -> None:
        self._set_state(ids, FAILED, reason)

    def release(self, ids: Sequence[int], not_before: float = 0.0) -> None:
        """Give claimed spans back, to be sent again from ``not_before`` (epoch seconds)."""
        conn = self._connect()
        conn.executemany(
            "UPDATE spans SET lease_until = ? WHERE id = ?", [(not_before, i) for i in ids]
        )

    def requeue_failed(self) -> int:
        """Put failed spans back in the queue (after the cause has been fixed)."""
        cur = self._connect().execute(
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
        (n,) = self._connect().execute(
            "SELECT COUNT(*) FROM spans WHERE state = ?", (PENDING,)
        ).fetchone()
        return n

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
