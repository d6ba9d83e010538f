"""The local SQLite store: where every span lives from the end of its cell on.

This module is the store's core: :class:`SpanStore` and what the cell and the
sender do with spans (append, claim, mark sent or failed, release). WAL mode
lets the sender read and mark spans while a cell commits new ones. Several
kernels may share one store: the sender *claims* a batch with a lease, so a
span is sent by one kernel at a time; a kernel that dies mid-request leaves
its lease to the next kernel on the host (:mod:`._store_leases`).

The rest lives next door, as mixins of :class:`SpanStore` or plain functions:
connections and transactions (:mod:`._store_connections`), reading
(:mod:`._store_reading`), the in-memory fallback while the file can't be
written (:mod:`._store_memory`), retention (:mod:`._store_retention`), the file
itself, including moving a damaged one aside (:mod:`._store_files`), and the
tables (:mod:`._store_schema`). Importers use this module: the names they need
are all here.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import suppress
from typing import Callable, NamedTuple, Sequence

from ._otlp import SpanRecord
from ._store_files import open_store, private_file, storage_failure
from ._store_leases import LEASE_CHECK_INTERVAL, ensure_schema, record_lease, take_over_dead, this_owner
from ._store_connections import Connections
from ._store_memory import MEMORY_LIMIT_BYTES, MemoryMode
from ._store_reading import Counts, Reading, StoredSpan
from ._store_retention import Pruned, Retention
from ._store_schema import FAILED, LOCAL, MEMORY_IDS, PENDING, SCHEMA, SENT, split_ids, update_in

__all__ = [
    "FAILED", "LOCAL", "MEMORY_IDS", "PENDING", "SENT",
    "Claimed", "Counts", "Pruned", "SpanStore", "StoredSpan", "open_store",
]


class Claimed(NamedTuple):
    id: int
    origin: int
    payload: bytes


class SpanStore(Connections, Reading, MemoryMode, Retention):
    """Spans on disk (or, while the disk can't be written, in memory), with the
    states and leases the sender works with."""

    def __init__(self, path: str, busy_timeout: float = 2.0, in_memory: BaseException | None = None) -> None:
        self.path = path
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._origin_ids: dict[bytes, int] = {}
        self._generation = 0  # bumped at every switch between disk and memory
        # In memory mode: the one connection, the lock every use of it holds,
        # and the next explicit ids.
        self._memory: sqlite3.Connection | None = None
        self._guard = threading.RLock()
        self._next_id = self._next_origin = MEMORY_IDS
        self._deferred: list[tuple[str, tuple, list[int]]] = []  # disk updates to apply once writable
        self._reopen_at = 0.0
        self._pruned_at = 0.0
        self._leases_checked_at = float("-inf")  # monotonic; the first claim looks for dead kernels' leases
        self._closed = False
        #: Retention: sent spans older than this many seconds are deleted (None: kept).
        self.retention_seconds: float | None = None
        #: Size cap in bytes: the oldest sent spans are deleted to stay under it (None: no cap).
        self.max_bytes: int | None = None
        self.memory_limit = MEMORY_LIMIT_BYTES
        #: A one-off message from opening the store (a damaged file moved aside).
        self.notice = ""
        #: The store's current problem in one sentence ("" when all is well).
        self.warning = ""
        self.dropped = 0  # spans that could not be kept anywhere (memory limit reached)
        self.over_cap = False
        #: Called (from any thread) whenever ``warning``, ``dropped`` or the memory count change.
        self.listener: Callable[[], None] | None = None
        self._reason = ""
        self._memory_origins: dict[bytes, int] = {}
        if in_memory is not None:
            self._enter_memory(in_memory)
            return
        try:
            private_file(path)
            conn = self._disk()
            conn.executescript(SCHEMA)
            ensure_schema(conn)  # stores from before lease owners get the column here
        except BaseException:
            self.close()
            raise

    # -- writing -----------------------------------------------------------

    def _origin_id(self, conn: sqlite3.Connection, record: SpanRecord) -> int:
        memory = conn is self._memory
        cache = self._memory_origins if memory else self._origin_ids
        cached = cache.get(record.origin)
        if cached is not None:
            return cached
        if memory:
            conn.execute(
                "INSERT OR IGNORE INTO origins(id, digest, resource, scope) VALUES (?, ?, ?, ?)",
                (self._next_origin, record.origin, record.resource, record.scope),
            )
            self._next_origin += 1
        else:
            conn.execute(
                "INSERT OR IGNORE INTO origins(digest, resource, scope) VALUES (?, ?, ?)",
                (record.origin, record.resource, record.scope),
            )
        (origin_id,) = conn.execute("SELECT id FROM origins WHERE digest = ?", (record.origin,)).fetchone()
        cache[record.origin] = origin_id
        return origin_id

    def _on_storage_failure(self, method, *args):
        """``method(*args)``; if the file can't take it, switch to memory and do it there."""
        try:
            return method(*args)
        except (OSError, sqlite3.Error) as exc:
            if self._memory is not None or not storage_failure(exc):
                raise
            self._enter_memory(exc)
        return method(*args)

    def append(self, records: Sequence[SpanRecord], state: str) -> int:
        """Write ended spans in one transaction: durable when this returns (unless
        the store is in memory). Returns how many were kept: all of them, unless
        the in-memory store is full, and then the others are counted in ``dropped``."""
        if not records:
            return 0
        return self._on_storage_failure(self._append, records, state)

    def _append(self, records: Sequence[SpanRecord], state: str) -> int:
        now = time.time()
        kept = len(records)
        try:
            with self._write() as conn:
                memory = conn is self._memory
                if memory:
                    kept = self._room_for(conn, records)
                    if kept < len(records):
                        self.dropped += len(records) - kept
                        records = records[:kept]
                rows = [
                    (
                        r.trace_id, r.span_id, r.parent_id, r.name, r.start_ns, r.end_ns, r.status,
                        self._origin_id(conn, r), r.payload, len(r.payload), state, now,
                    )
                    for r in records
                ]
                columns = ("trace_id, span_id, parent_id, name, start_ns, end_ns, status,"
                           " origin, payload, size, state, recorded_at")
                if memory:  # explicit ids from MEMORY_IDS up
                    first, self._next_id = self._next_id, self._next_id + len(rows)
                    conn.executemany(f"INSERT INTO spans(id, {columns}) VALUES ({','.join('?' * 13)})",
                                     [(first + i, *row) for i, row in enumerate(rows)])
                else:
                    conn.executemany(f"INSERT INTO spans({columns}) VALUES ({','.join('?' * 12)})", rows)
        except BaseException:
            # Ids cached inside the rolled-back transaction may not exist.
            self._origin_ids.clear()
            self._memory_origins.clear()
            raise
        if self._memory is not None:
            self._update_warning()
        return kept

    def claim(self, max_spans: int, max_bytes: int, lease_seconds: float) -> list[Claimed]:
        """Lease the oldest pending spans (at least one, at most the limits) to this sender."""
        return self._on_storage_failure(self._claim, max_spans, max_bytes, lease_seconds)

    def _claim(self, max_spans: int, max_bytes: int, lease_seconds: float) -> list[Claimed]:
        now = time.time()
        owner = this_owner()
        with self._write() as conn:
            on_disk = conn is not self._memory  # in memory, every lease is this process's own
            if on_disk and time.monotonic() - self._leases_checked_at >= LEASE_CHECK_INTERVAL:
                self._leases_checked_at = time.monotonic()
                take_over_dead(conn, owner, now)
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
            if not chosen:
                return []
            marks = ",".join("?" * len(chosen))
            conn.execute(
                f"UPDATE spans SET lease_until = ?, lease_owner = ?, attempts = attempts + 1 WHERE id IN ({marks})",
                (now + lease_seconds, owner.name, *chosen),
            )
            if on_disk:
                record_lease(conn, owner, now + lease_seconds)
            rows = conn.execute(
                f"SELECT id, origin, payload FROM spans WHERE id IN ({marks}) ORDER BY id", chosen
            ).fetchall()
        return [Claimed(*row) for row in rows]

    def _update(self, sql: str, params: tuple, ids: Sequence[int]) -> None:
        """Short UPDATE ... WHERE id IN (...) transactions, on whichever database holds the ids."""
        for in_memory, part in split_ids(ids):
            if in_memory:
                with self._guard:
                    if self._memory is not None:  # else they were copied to disk meanwhile
                        update_in(self._memory, sql, params, part)
                continue
            if self._memory is not None:
                # The file can't be written now: apply this when it can (spans sent
                # meanwhile would otherwise be sent again).
                self._deferred.append((sql, params, part))
                continue
            try:
                with self._write() as conn:
                    update_in(conn, sql, params, part, in_transaction=True)
            except (OSError, sqlite3.Error) as exc:
                if not storage_failure(exc):
                    raise
                self._deferred.append((sql, params, part))
                self._enter_memory(exc)

    def _finish(self, ids: Sequence[int], state: str, note: str | None) -> None:
        # No owner once done: only spans leased right now stay in the lease-owner index.
        sql = "UPDATE spans SET state = ?, error = ?, done_at = ?, lease_until = 0, lease_owner = NULL"
        self._update(sql, (state, note, time.time()), ids)

    def mark_sent(self, ids: Sequence[int], note: str | None = None) -> None:
        self._finish(ids, SENT, note)
        if self._memory is not None:
            self._update_warning()

    def mark_failed(self, ids: Sequence[int], reason: str) -> None:
        self._finish(ids, FAILED, reason)

    def release(self, ids: Sequence[int], not_before: float = 0.0) -> None:
        """Give claimed spans back, to be sent again from ``not_before`` (epoch seconds).
        A ``not_before`` is the server's Retry-After, not a lease: no owner, never taken over."""
        self._update("UPDATE spans SET lease_until = ?, lease_owner = NULL", (not_before,), ids)

    def checkpoint(self) -> None:
        """Fold the write-ahead log into the database without blocking writers; then
        :meth:`maintain`. The sender thread calls this every few seconds."""
        if self._closed:
            return
        if self._memory is None:
            with suppress(sqlite3.Error):  # a full disk must not stop the sender
                self._disk().execute("PRAGMA wal_checkpoint(PASSIVE)")
        self.maintain()

    def requeue_failed(self) -> int:
        """Put failed spans back in the queue (after the cause has been fixed)."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE spans SET state = ?, error = NULL, lease_until = 0 WHERE state = ?",
                (PENDING, FAILED),
            )
        return cur.rowcount
