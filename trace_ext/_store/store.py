"""The local SQLite store: where every span lives from the end of its cell on.

:class:`SpanStore` is one class for one concept: spans on disk (or, while the
disk can't be written, in memory), with the states and leases the sender works
with. Its parts, in the order below: connections and transactions, writing
(save, claim, mark sent or failed, release), reading, the in-memory fallback,
and retention.

- WAL mode lets the sender read and mark spans while a cell saves new ones.
- Several kernels may share one store: the sender *claims* a batch with a
  lease, so a span is sent by one kernel at a time; a kernel that dies
  mid-request leaves its lease to the next kernel on the host (:mod:`.leases`).
- SQLite connections are not shared across threads, so each thread gets its own
  connection to the file (``_disk``); a switch between disk and memory bumps
  ``_generation`` and each thread reconnects on its next use.
- While the file can't be written (a read-only folder, a full disk, a path that
  isn't a folder) the store is one in-memory SQLite database, shared by all
  threads behind ``_guard``. Spans recorded meanwhile are delivered from memory,
  and :meth:`SpanStore.maintain` (run by the sender thread) copies them to the
  file as soon as it can be written again. Rows of the in-memory database have
  ids from ``MEMORY_IDS`` up, so an id always says which database holds it.
- Retention deletes sent spans older than ``retention_seconds`` and, oldest
  first, enough sent spans to keep the store under ``max_bytes``. Spans not yet
  sent (pending, local, failed) are never deleted, whatever the settings.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from contextlib import contextmanager, suppress
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

from IPython.core.error import UsageError

from .._otlp import SpanRecord
from .journal import read_at, read_frames
from .files import damaged, move_aside, private_file, storage_failure
from .leases import (
    LEASE_CHECK_INTERVAL,
    ensure_schema,
    record_lease,
    take_over_dead,
    this_owner,
)
from .schema import (
    CHUNK,
    COLUMNS,
    MEMORY_IDS,
    SCHEMA,
    SpanState,
    origins_in,
    split_ids,
    update_in,
    used_bytes,
)

__all__ = ["CHECKPOINT_INTERVAL", "Claimed", "Counts", "Pruned", "SpanStore", "StoredSpan", "StoredTrace", "open_store"]

log = logging.getLogger("trace_ext")

FAILED, LOCAL, PENDING, SENT = SpanState.FAILED, SpanState.LOCAL, SpanState.PENDING, SpanState.SENT
MEMORY_LIMIT_BYTES = 256 * 2**20  # most bytes the in-memory database may hold
REOPEN_INTERVAL = 5.0  # seconds between attempts to write to the file again, in memory mode (at first)
REOPEN_MAX_INTERVAL = 30.0  # ... doubling after each failed attempt, up to this
# Bytes the write-ahead log is cut back to whenever it starts over: SQLite never shrinks it
# otherwise, so one burst (a disk-full retry's copy, say) kept its size on a full disk.
WAL_SIZE_LIMIT = 1 * 2**20
COPY_ROWS = 500  # rows per transaction copying memory's spans to disk: the log holds one such chunk
PRUNE_INTERVAL = 60.0  # seconds between retention passes
# Seconds between checkpoints while spans are written (SQLite's automatic ones are off):
# the sender thread checkpoints between its requests, the importer between its rounds.
CHECKPOINT_INTERVAL = 2.0
MARK_WAIT = 15.0  # seconds a mark (sent, failed, released) waits for the write lock
ROWS_PER_INSERT = 500  # rows in one INSERT statement (13 columns: well under SQLite's 32,766 variables)
IMPORT_PAUSE = 0.02  # seconds between a journal import's transactions: a few GIL switch intervals (5 ms)
_SQLITE_BUSY_SNAPSHOT = 517  # "database is locked" that no wait can cure (see _write)
_SQLITE_FULL = 13


def _megabytes(size: float) -> str:
    return f"{size / 2**20:.1f} MB"


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if isinstance(exc, OSError) else str(exc)


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


class StoredTrace(NamedTuple):
    """One trace as the store sums it up: counts by span state, its time span, and its root."""

    trace_id: str
    spans: int  # distinct span ids (a span saved twice counts once)
    start_ns: int
    end_ns: int
    errors: int  # spans with status ERROR
    local: int
    pending: int
    sent: int
    failed: int
    recorded_at: float  # epoch seconds its last span was saved
    root: StoredSpan  # the earliest span without a parent (else the earliest span)


_SPAN_COLUMNS = "trace_id, span_id, parent_id, name, start_ns, end_ns, status, state, error, payload"


def _trace_filter(since: float, trace_id: str | None) -> tuple[str, list]:
    """SQL conditions (on ``spans``) for spans saved since ``since`` of traces whose id starts with ``trace_id``."""
    where, params = ["recorded_at >= ?"], [since]
    if trace_id:
        # A prefix of the hex id, as people copy a short one; LIKE's wildcards can't be in hex.
        where.append("trace_id LIKE ?")
        params.append(trace_id.lower() + "%")
    return " AND ".join(where), params


class Pruned(NamedTuple):
    """What one retention pass did."""

    expired: int = 0  # sent spans older than the retention time, deleted
    over_cap: int = 0  # sent spans deleted (oldest first) to bring the store under its size cap
    size: int = 0  # bytes the store's data takes afterwards
    over: bool = False  # still over the cap: what is left is unsent, and unsent spans are kept


_IMPORT_COLUMNS = ("trace_id, span_id, parent_id, name, start_ns, end_ns, status, origin, payload, size,"
                   " state, recorded_at")
_IMPORT_ROW = "(?,?,?,?,?,?,?,(SELECT id FROM origins WHERE digest = ?),?,?,?,?)"


def _import_statements(frames) -> tuple[list[tuple[bytes, bytes, bytes]], list[tuple[str, list]], dict[str, int]]:
    """For journal frames: their origins, the INSERT statements (many rows each; the
    origin's id looked up by SQLite), and the spans per state."""
    now = time.time()
    origins: dict[bytes, tuple[bytes, bytes, bytes]] = {}
    rows: list[tuple] = []
    by_state: dict[str, int] = {}
    for _end, state, records in frames:
        for r in records:
            if r.origin not in origins:
                origins[r.origin] = (r.origin, r.resource, r.scope)
            rows.append((r.trace_id, r.span_id, r.parent_id, r.name, r.start_ns, r.end_ns, r.status,
                         r.origin, r.payload, len(r.payload), state, now))
        by_state[state] = by_state.get(state, 0) + len(records)
    statements = []
    for start in range(0, len(rows), ROWS_PER_INSERT):
        part = rows[start : start + ROWS_PER_INSERT]
        sql = f"INSERT INTO spans({_IMPORT_COLUMNS}) VALUES {','.join([_IMPORT_ROW] * len(part))}"
        statements.append((sql, [v for row in part for v in row]))
    return list(origins.values()), statements, by_state


class SpanStore:
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
        self._reopen_interval = REOPEN_INTERVAL
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
        self._locked_out = False  # the last write gave up: another writer held the lock all the busy timeout
        #: Called (from any thread) whenever ``warning``, ``dropped`` or the memory count change.
        self.listener: Callable[[], None] | None = None
        self._reason = ""
        self._memory_origins: dict[bytes, int] = {}
        self._journaled: dict[str, int] = {}  # state -> spans in this process's journal, not yet imported
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

    # -- connections and transactions --------------------------------------

    @property
    def in_memory(self) -> bool:
        return self._memory is not None

    def _disk(self) -> sqlite3.Connection:
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is not None and getattr(local, "generation", -1) != self._generation:
            # The store switched since this thread connected: start afresh.
            with self._lock:
                if conn in self._connections:
                    self._connections.remove(conn)
            with suppress(sqlite3.Error):
                conn.close()
            conn = None
        if conn is None:
            conn = self._open_disk()
            local.conn, local.generation = conn, self._generation
            with self._lock:
                self._connections.append(conn)
        return conn

    def _open_disk(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are explicit (BEGIN ... COMMIT).
        conn = sqlite3.connect(self.path, self._busy_timeout, isolation_level=None, check_same_thread=False)
        try:
            # Only takes effect in a new file: lets pruning give space back to the OS.
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives the kernel being killed (it is
            # in the OS's hands); only a power cut may lose the last commits.
            conn.execute("PRAGMA synchronous=NORMAL")
            # No automatic checkpoints: one would run inside some cell's COMMIT
            # (~10 ms every ~40 cells). The sender thread checkpoints instead.
            conn.execute("PRAGMA wal_autocheckpoint=0")
            conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _connect(self) -> sqlite3.Connection:
        """This thread's connection to the active database (callers in memory mode hold the guard)."""
        memory = self._memory
        return memory if memory is not None else self._disk()

    @contextmanager
    def _use(self) -> Iterator[sqlite3.Connection]:
        """The active database's connection; in memory mode, held by this thread alone."""
        if self._memory is not None:
            with self._guard:
                memory = self._memory
                if memory is not None:
                    yield memory
                    return
        yield self._disk()

    def close(self) -> None:
        self._close_memory()
        self._closed = True
        with self._guard:
            memory, self._memory = self._memory, None
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections + ([memory] if memory is not None else []):
            with suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()

    def forget_after_fork(self) -> None:
        """In a child made by ``os.fork()``: never use, nor close, the inherited connections.

        SQLite connections must not cross a fork, and closing one may checkpoint
        or delete the write-ahead log the parent is writing. They are kept,
        unused, for the child's whole life (even through interpreter shutdown,
        which would otherwise close them), and the store is closed to the child.
        """
        import ctypes

        inherited = (self._connections, self._memory, self._local)
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(inherited))  # never freed, so never closed
        self._connections, self._memory, self._local = [], None, threading.local()
        self._lock, self._guard = threading.Lock(), threading.RLock()
        self._closed = True
        self.listener = None

    @contextmanager
    def _write(self, wait: float | None = None) -> Iterator[sqlite3.Connection]:
        """A write transaction. While another connection holds the lock, retry every
        0.2 ms: SQLite's own busy handler sleeps 1, 2, 5, 10 ms for a lock held for µs.
        ``wait``: give up after this many seconds (default: the busy timeout)."""
        locked_out = self._locked_out
        try:
            with self._use() as conn:
                deadline = time.monotonic() + (self._busy_timeout if wait is None else wait)
                conn.execute("PRAGMA busy_timeout = 0")
                try:
                    while True:
                        try:
                            conn.execute("BEGIN IMMEDIATE")
                            break
                        except sqlite3.OperationalError as exc:
                            # BUSY_SNAPSHOT: this connection still reads an old snapshot (a statement
                            # left open on it), and waiting can't change that: fail now, not in 2 s.
                            stale = getattr(exc, "sqlite_errorcode", None) == _SQLITE_BUSY_SNAPSHOT
                            if stale or "locked" not in str(exc) or time.monotonic() >= deadline:
                                # Held elsewhere for the whole busy timeout: worth saying (a
                                # shorter wait of the caller's choosing is not).
                                if not stale and "locked" in str(exc) and (wait is None or wait >= self._busy_timeout):
                                    self._locked_out = True
                                raise
                            time.sleep(0.0002)
                    self._locked_out = False  # a write got in: the lock is not held for good
                finally:
                    conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    with suppress(sqlite3.Error):  # a failed COMMIT may have rolled back already
                        conn.execute("ROLLBACK")
                    raise
        finally:
            # Outside the transaction and the memory guard: the listener takes the status lock.
            if self._locked_out != locked_out:
                self._update_warning()

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
        """``method(*args)``; if the file can't take it (even once the log gave its space
        back), switch to memory and do it there."""
        for last_try in (False, True):
            try:
                return method(*args)
            except (OSError, sqlite3.Error) as exc:
                if self._memory is not None or not storage_failure(exc):
                    raise
                if last_try or not self._room_made(exc):
                    self._enter_memory(exc)
                    break
        return method(*args)

    def _room_made(self, exc: BaseException) -> bool:
        """On a full disk: give the write-ahead log's space back (it only grows between
        checkpoints, and may hold all that is left); True if that freed any."""
        if getattr(exc, "sqlite_errorcode", None) != _SQLITE_FULL:
            return False
        try:
            conn = self._disk()
            before = os.path.getsize(self.path + "-wal")
            self._fold_log(conn)
            return os.path.getsize(self.path + "-wal") < before
        except (OSError, sqlite3.Error):
            return False

    def save(self, records: Sequence[SpanRecord], state: SpanState) -> int:
        """Write ended spans in one transaction: durable when this returns (unless
        the store is in memory). Returns how many were kept: all of them, unless
        the in-memory store is full, and then the others are counted in ``dropped``."""
        if not records:
            return 0
        return self._on_storage_failure(self._save, records, state)

    def _save(self, records: Sequence[SpanRecord], state: SpanState) -> int:
        kept = len(records)
        try:
            with self._write() as conn:
                if conn is self._memory:
                    kept = self._room_for(conn, records)
                    if kept < len(records):
                        self.dropped += len(records) - kept
                        records = records[:kept]
                self._insert(conn, records, state)
        except BaseException:
            # Ids cached inside the rolled-back transaction may not exist.
            self._origin_ids.clear()
            self._memory_origins.clear()
            raise
        if self._memory is not None:
            self._update_warning()
        return kept

    def _insert(self, conn: sqlite3.Connection, records: Sequence[SpanRecord], state: str) -> None:
        """Inside a write transaction: insert ``records`` as new rows in ``state``."""
        now = time.time()
        rows = [
            (
                r.trace_id, r.span_id, r.parent_id, r.name, r.start_ns, r.end_ns, r.status,
                self._origin_id(conn, r), r.payload, len(r.payload), str(state), now,
            )
            for r in records
        ]
        columns = ("trace_id, span_id, parent_id, name, start_ns, end_ns, status,"
                   " origin, payload, size, state, recorded_at")
        if conn is self._memory:  # explicit ids from MEMORY_IDS up
            first, self._next_id = self._next_id, self._next_id + len(rows)
            rows = [(first + i, *row) for i, row in enumerate(rows)]
            columns = "id, " + columns
        # Many rows per statement, not executemany: each statement's step lets go of the
        # GIL, and a thread busy making spans takes it back for up to 5 ms every time, so
        # row by row a transaction held the write lock for seconds (the sender's marks
        # gave up after 2 s).
        width = len(rows[0]) if rows else 0
        for start in range(0, len(rows), ROWS_PER_INSERT):
            part = rows[start : start + ROWS_PER_INSERT]
            marks = ",".join([f"({','.join('?' * width)})"] * len(part))
            conn.execute(f"INSERT INTO spans({columns}) VALUES {marks}", [v for row in part for v in row])

    def import_journal(
        self, path: str, wait: float | None = None, max_rounds: int | None = None, own: bool = False
    ) -> tuple[int, int, bool]:
        """Insert the frames of journal file ``path`` not yet imported (see :mod:`.journal`).

        Each round is one transaction: the frames of at most ``MAX_READ`` bytes and
        the file's new imported offset, so a frame is imported once, by whoever
        gets there first. Returns ``(spans imported, imported offset, nothing
        importable left)``. In memory mode nothing is imported: the journal is on
        disk, where its spans are safer than in memory, until the file can be written.
        ``wait`` bounds each wait for the write lock (sqlite3.OperationalError past it).
        ``own``: this process's journal, whose spans :meth:`journaled` counted.
        A file that can't be written switches the store to memory mode (the journal keeps its spans).
        """
        imported, offset, rounds = 0, 0, 0
        room_made = False  # once per round: a disk that fills again right away means memory mode
        name = os.path.basename(path)
        while self._memory is None and not self._closed:
            if max_rounds is not None and rounds >= max_rounds:
                return imported, offset, False
            if rounds:
                # Let other writers (this kernel's sender marking what it sent, other kernels)
                # in between rounds: SQLite's lock is not fair, and they give up after 2 s.
                time.sleep(IMPORT_PAUSE)
            rounds += 1
            try:
                # Read and prepare outside the transaction: with a thread busy making spans,
                # every Python step inside it waits for the GIL, and the write lock with it.
                # The offset is checked again inside: offsets only grow, so an unchanged one
                # means these frames are still not imported.
                offset = self._journal_offset(name)
                frames = list(read_frames(read_at(path, offset)))
                if not frames:
                    return imported, offset, True
                end = offset + frames[-1][0]
                origins, statements, by_state = _import_statements(frames)
                with self._write(wait) as conn:
                    if conn is self._memory:
                        return imported, offset, False
                    row = conn.execute("SELECT offset FROM journals WHERE name = ?", (name,)).fetchone()
                    if (row[0] if row else 0) != offset:
                        continue  # someone else imported meanwhile: read again
                    conn.executemany(
                        "INSERT OR IGNORE INTO origins(digest, resource, scope) VALUES (?, ?, ?)", origins
                    )
                    for sql, params in statements:
                        conn.execute(sql, params)
                    conn.execute(
                        "INSERT INTO journals(name, offset) VALUES (?, ?)"
                        " ON CONFLICT(name) DO UPDATE SET offset = excluded.offset",
                        (name, end),
                    )
            except (OSError, sqlite3.Error) as exc:
                if storage_failure(exc) and self._memory is None:
                    if not room_made and self._room_made(exc):
                        room_made = True
                        continue  # the same frames again, into the space the log gave back
                    self._enter_memory(exc)
                    return imported, offset, False
                raise
            offset = end
            room_made = False
            imported += sum(by_state.values())
            if own:
                with self._lock:
                    for state, count in by_state.items():
                        # Not clamped at 0: the saver counts a frame once its write returns, and
                        # this thread may import the frame before that (the count then dips below
                        # 0 for a moment); clamped, those spans stayed counted as pending forever.
                        self._journaled[state] = self._journaled.get(state, 0) - count
        return imported, offset, False

    def _journal_offset(self, name: str) -> int:
        row = self._disk().execute("SELECT offset FROM journals WHERE name = ?", (name,)).fetchone()
        return row[0] if row else 0

    def forget_journal(self, path: str) -> None:
        """Remove a journal file whose every frame is imported, and its row."""
        with suppress(FileNotFoundError):
            os.remove(path)
        with self._write() as conn:
            if conn is not self._memory:
                conn.execute("DELETE FROM journals WHERE name = ?", (os.path.basename(path),))

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
                "SELECT id, size FROM spans WHERE state = ? AND lease_until <= ? ORDER BY id LIMIT ?",
                (PENDING, now, max_spans),
            ).fetchall()
            claimed = _lease(conn, rows, max_bytes, now + lease_seconds, owner.name)
            if claimed and on_disk:
                record_lease(conn, owner, now + lease_seconds)
        return claimed

    def _update(self, sql: str, params: tuple, ids: Sequence[int], wait: float = MARK_WAIT) -> None:
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
            # Longer than a save's wait: a mark that gives up means the spans are sent
            # again, and only the sender thread waits here (never a cell).
            for last_try in (False, True):
                try:
                    with self._write(wait) as conn:
                        update_in(conn, sql, params, part, in_transaction=True)
                    break
                except (OSError, sqlite3.Error) as exc:
                    if not storage_failure(exc):
                        raise
                    if last_try or not self._room_made(exc):
                        self._deferred.append((sql, params, part))
                        self._enter_memory(exc)
                        break

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

    def release(self, ids: Sequence[int], not_before: float = 0.0, wait: float = MARK_WAIT) -> None:
        """Give claimed spans back, to be sent again from ``not_before`` (epoch seconds).
        A ``not_before`` is the server's Retry-After, not a lease: no owner, never taken over."""
        self._update("UPDATE spans SET lease_until = ?, lease_owner = NULL", (not_before,), ids, wait)

    def checkpoint(self, passive: bool = False) -> None:
        """Fold the write-ahead log into the database without blocking writers; then
        :meth:`maintain`. The sender thread calls this every few seconds. ``passive``:
        the fold alone, which never waits (the importer's call between its rounds)."""
        if self._closed:
            return
        if self._memory is None:
            with suppress(sqlite3.Error, OSError):  # a full disk must not stop the sender
                conn = self._disk()
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                # A log past its limit (a burst of marks, a copy back from memory) is cut
                # back now, holding writers off for that one checkpoint: on a nearly full
                # disk it would otherwise keep the space until the next cell failed for it.
                if not passive and os.path.getsize(self.path + "-wal") > WAL_SIZE_LIMIT:
                    self._fold_log(conn)
        if not passive:
            self.maintain()

    def requeue_failed(self) -> int:
        """Put failed spans back in the queue (after the cause has been fixed)."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE spans SET state = ?, error = NULL, lease_until = 0 WHERE state = ?",
                (PENDING, FAILED),
            )
        return cur.rowcount

    # -- reading -----------------------------------------------------------

    def origins(self, ids: Iterable[int]) -> dict[int, tuple[bytes, bytes]]:
        wanted = sorted(set(ids))
        found: dict[int, tuple[bytes, bytes]] = {}
        for in_memory, part in split_ids(wanted):
            if in_memory:
                with self._guard:
                    if self._memory is not None:
                        found.update(origins_in(self._memory, part))
            else:
                found.update(origins_in(self._disk(), part))
        return found

    def counts(self) -> Counts:
        with self._use() as conn:
            rows = conn.execute("SELECT state, COUNT(*) FROM spans GROUP BY state").fetchall()
        by_state = dict(rows)
        for state, count in self._journaled.items():
            by_state[state] = by_state.get(state, 0) + count
        return Counts(*(max(by_state.get(s, 0), 0) for s in (LOCAL, PENDING, SENT, FAILED)))

    def pending(self) -> int:
        """Pending spans: in the file (or memory), and in this process's journal, not yet imported."""
        with self._use() as conn:
            stored = conn.execute("SELECT COUNT(*) FROM spans WHERE state = ?", (PENDING,)).fetchone()[0]
        return max(stored + self._journaled.get(PENDING, 0), 0)

    def journaled(self, count: int, state: str) -> None:
        """``count`` spans in ``state`` went to this process's journal (counted until imported)."""
        with self._lock:
            self._journaled[str(state)] = self._journaled.get(str(state), 0) + count

    def recent_traces(self, limit: int, since: float = 0.0) -> list[list[StoredSpan]]:
        """The spans of the ``limit`` most recently recorded traces, oldest trace first.

        ``since`` (epoch seconds) leaves out traces recorded before it.
        """
        with self._use() as conn:
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

    def traces(
        self,
        limit: int,
        since: float = 0.0,
        trace_id: str | None = None,
        errors_only: bool = False,
        keep: Callable[[StoredTrace], bool] | None = None,
    ) -> list[StoredTrace]:
        """Up to ``limit`` traces, the most recently saved first, for a trace list.

        ``since`` (epoch seconds) leaves out traces with no span saved since;
        ``trace_id`` is a prefix of the hex id; ``errors_only`` keeps traces with
        a span in error; ``keep`` decides on the rest (it may read the root's
        attributes). Traces are taken newest first and each is summed up from
        its own rows when it is reached, so listing the newest traces costs
        little even in a store of a million spans.
        """
        # Without --since or --errors this reads only the trace index (trace id and row id),
        # not the spans' rows, so it costs little however big the store; with them, the rows.
        where, params = [], []
        if trace_id:
            # A prefix of the hex id, as a range the index can seek ("~" sorts after every hex digit).
            where.append("trace_id >= ? AND trace_id < ?")
            params += [trace_id.lower(), trace_id.lower() + "~"]
        if since:
            where.append("recorded_at >= ?")
            params.append(since)
        if errors_only:
            where.append("status = 2")
        condition = f"WHERE {' AND '.join(where)}" if where else ""
        found: list[StoredTrace] = []
        with self._use() as conn:
            cursor = conn.execute(
                f"SELECT trace_id FROM spans {condition} GROUP BY trace_id ORDER BY MAX(id) DESC", params
            )
            try:
                # A statement left open would pin this connection's snapshot (and make
                # its next write fail): the cursor is closed however this ends.
                for (tid,) in cursor:
                    row = conn.execute(
                        "SELECT COUNT(DISTINCT span_id), MIN(start_ns), MAX(end_ns), SUM(status = 2), SUM(state = ?),"
                        " SUM(state = ?), SUM(state = ?), SUM(state = ?), MAX(recorded_at)"
                        " FROM spans WHERE trace_id = ?",
                        (LOCAL, PENDING, SENT, FAILED, tid),
                    ).fetchone()
                    root = conn.execute(
                        f"SELECT {_SPAN_COLUMNS} FROM spans WHERE trace_id = ?"
                        " ORDER BY parent_id IS NOT NULL, start_ns, id LIMIT 1",
                        (tid,),
                    ).fetchone()
                    trace = StoredTrace(tid, *row, StoredSpan(*root))
                    if keep is None or keep(trace):
                        found.append(trace)
                        if len(found) >= limit:
                            break
            finally:
                cursor.close()
        return found

    def trace_spans(self, trace_id: str, limit: int) -> list[StoredSpan]:
        """The first ``limit`` spans of a trace, by start time."""
        with self._use() as conn:
            rows = conn.execute(
                f"SELECT {_SPAN_COLUMNS} FROM spans WHERE trace_id = ? ORDER BY start_ns, id LIMIT ?",
                (trace_id, limit),
            ).fetchall()
        return [StoredSpan(*row) for row in rows]

    def spans_for_export(self, since: float = 0.0, trace_id: str | None = None, batch: int = 512) -> Iterator[list[Claimed]]:
        """Every stored span (any state) saved since ``since`` of traces matching ``trace_id``,
        in batches of ``batch``, oldest first: for writing them to a file."""
        where, params = _trace_filter(since, trace_id)
        last = -1
        while True:
            with self._use() as conn:
                rows = conn.execute(
                    f"SELECT id, origin, payload FROM spans WHERE {where} AND id > ? ORDER BY id LIMIT ?",
                    (*params, last, batch),
                ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield [Claimed(*row) for row in rows]

    def queue_local(self, since: float = 0.0, trace_id: str | None = None) -> int:
        """Make local spans (recorded with no destination) pending, so the sender sends them; how many."""
        where, params = _trace_filter(since, trace_id)
        with self._write() as conn:
            cur = conn.execute(
                f"UPDATE spans SET state = ?, error = NULL, lease_until = 0 WHERE state = ? AND {where}",
                (PENDING, LOCAL, *params),
            )
        return cur.rowcount

    def count_local(self, since: float = 0.0, trace_id: str | None = None) -> int:
        """Local spans saved since ``since`` of traces matching ``trace_id``."""
        where, params = _trace_filter(since, trace_id)
        with self._use() as conn:
            return conn.execute(
                f"SELECT COUNT(*) FROM spans WHERE state = ? AND {where}", (LOCAL, *params)
            ).fetchone()[0]

    def claim_local(
        self, max_spans: int, max_bytes: int, lease_seconds: float, since: float = 0.0, trace_id: str | None = None
    ) -> list[Claimed]:
        """As :meth:`claim`, but of *local* spans (saved since ``since``, of traces matching
        ``trace_id``): for a sender of the user's choosing, outside any kernel. The spans stay
        local while leased, so no kernel's sender takes them; :meth:`mark_sent` or
        :meth:`mark_failed` finishes them as usual."""
        where, params = _trace_filter(since, trace_id)
        now = time.time()
        owner = this_owner()
        with self._write() as conn:
            rows = conn.execute(
                f"SELECT id, size FROM spans WHERE state = ? AND lease_until <= ? AND {where} ORDER BY id LIMIT ?",
                (LOCAL, now, *params, max_spans),
            ).fetchall()
            return _lease(conn, rows, max_bytes, now + lease_seconds, owner.name)

    # -- the in-memory fallback ---------------------------------------------

    def _enter_memory(self, exc: BaseException) -> None:
        with self._guard:
            if self._memory is None:
                conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
                conn.executescript(SCHEMA)
                ensure_schema(conn)  # the same columns as on disk, so one SQL serves both
                self._memory = conn
                self._memory_origins.clear()
                self._generation += 1  # every thread drops its disk connection
                self._reopen_interval = REOPEN_INTERVAL
                self._reopen_at = time.monotonic() + REOPEN_INTERVAL
            self._reason = _reason(exc)
        log.warning("trace_ext can't write its span store %s (%s); keeping spans in memory", self.path, self._reason)
        self._update_warning()

    def memory_count(self) -> int:
        """Spans held only in memory (0 on disk)."""
        with self._guard:
            memory = self._memory
            if memory is None:
                return 0
            return memory.execute("SELECT COUNT(*) FROM spans WHERE state != ?", (SENT,)).fetchone()[0]

    def _update_warning(self) -> None:
        parts = []
        if self._memory is not None:
            parts.append(
                f"trace_ext can't write its span store {self.path} ({self._reason}), so spans are kept "
                f"in memory ({self.memory_count()} not yet sent, at most {_megabytes(self.memory_limit)}) "
                "and written there once it is writable again; a kernel restart before that loses them, "
                "so free space or set TraceExt.store_path to a writable file"
            )
        if self._locked_out:
            parts.append(
                f"trace_ext's span store {self.path} is locked by another writer (database is locked) for "
                f"longer than {self._busy_timeout:g} s at a time, so spans wait, safe in this kernel's "
                "journal or the store, and are sent once it is free"
            )
        if self.dropped:
            parts.append(f"trace_ext dropped {self.dropped} spans because its memory limit was reached")
        if self.over_cap and self.max_bytes:
            parts.append(
                f"trace_ext's span store {self.path} is over its size cap TraceExt.retention_mb "
                f"({_megabytes(self.max_bytes)}) with spans not yet sent, which are never deleted"
            )
        self.warning = "; ".join(parts) + "." if parts else ""
        listener = self.listener
        if listener is not None:
            with suppress(Exception):
                listener()

    def _room_for(self, conn: sqlite3.Connection, records: Sequence[SpanRecord]) -> int:
        """How many of ``records`` fit under the memory limit (sent spans make room first)."""
        need = sum(len(r.payload) + 200 for r in records)
        if used_bytes(conn) + need > self.memory_limit:
            self._prune_cap(conn, max(self.memory_limit - need, 0), in_transaction=True)
        room = self.memory_limit - used_bytes(conn)
        kept, total = 0, 0
        for r in records:
            total += len(r.payload) + 200
            if total > room:
                break
            kept += 1
        return kept

    def _close_memory(self) -> None:
        """At close (unload, kernel exit): the last chance for spans kept in memory, since
        the file may be writable by now. If not, say how many are lost."""
        if self._memory is None or self._closed:
            return
        with suppress(Exception):
            self._try_disk()
        left = self.memory_count()
        if left:
            log.warning("trace_ext lost %d unsent spans kept in memory: %s still can't be written (%s)",
                        left, self.path, self._reason)

    def _try_disk(self) -> bool:
        """In memory mode: write the file again if it can be written; True once back on disk."""
        try:
            private_file(self.path)
            conn = self._open_disk()
        except (OSError, sqlite3.Error) as exc:
            self._reason = _reason(exc)
            return False
        try:
            # First give back what the log holds: a full disk's failed writes left it grown,
            # and what was freed would go to it rather than to the spans.
            self._fold_log(conn)
            conn.executescript(SCHEMA)
            ensure_schema(conn)  # a new file, or one from before leases had owners
            conn.execute("INSERT OR REPLACE INTO probe(id, at) VALUES (1, ?)", (time.time(),))
            for sql, params, ids in self._deferred:  # e.g. spans sent while the disk was full
                update_in(conn, sql, params, ids)
            self._deferred.clear()
            # Copy the memory's spans in chunks, so a cell's commit waits for one chunk at most.
            while True:
                # One chunk in the log at a time, never all of memory's spans (outside the
                # guard: the checkpoint may wait for another kernel's reader).
                self._fold_log(conn)
                with self._guard:
                    memory = self._memory
                    if memory is None:
                        return True
                    if self._copy_chunk(memory, conn):
                        # All copied: switch while still holding the guard, so no
                        # commit lands in memory after the last chunk.
                        self._memory = None
                        self._origin_ids.clear()
                        self._generation += 1
                        memory.close()
                        log.warning("trace_ext's span store %s is writable again; spans kept in memory "
                                    "were saved there", self.path)
                        return True
        except sqlite3.Error as exc:
            self._reason = _reason(exc)
            return False
        finally:
            with suppress(sqlite3.Error):
                conn.close()

    @staticmethod
    def _fold_log(conn: sqlite3.Connection) -> None:
        """Checkpoint the write-ahead log into the file and cut it to nothing: what it held
        is in the file then, and the space it took is free for what comes next."""
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    @staticmethod
    def _copy_chunk(memory: sqlite3.Connection, conn: sqlite3.Connection) -> bool:
        """Move up to COPY_ROWS of the memory's oldest spans to disk (origins mapped to disk
        ids) in one transaction; True when that was the last of them."""
        rows = memory.execute(f"SELECT id, {COLUMNS} FROM spans ORDER BY id LIMIT ?", (COPY_ROWS,)).fetchall()
        origins = {o: None for o in {row[8] for row in rows}}
        conn.execute("BEGIN IMMEDIATE")
        try:
            for old in origins:
                digest, resource, scope = memory.execute(
                    "SELECT digest, resource, scope FROM origins WHERE id = ?", (old,)
                ).fetchone()
                conn.execute(
                    "INSERT OR IGNORE INTO origins(digest, resource, scope) VALUES (?, ?, ?)",
                    (digest, resource, scope),
                )
                origins[old] = conn.execute("SELECT id FROM origins WHERE digest = ?", (digest,)).fetchone()[0]
            # lease_until 0 (and no lease_owner): a span leased in memory is not leased on disk.
            conn.executemany(
                f"INSERT INTO spans({COLUMNS}) VALUES ({','.join('?' * 16)})",
                [(*r[1:8], origins[r[8]], *r[9:12], 0.0, *r[13:]) for r in rows],
            )
            conn.execute("COMMIT")
        except BaseException:
            # A full disk's failed COMMIT has rolled back already: a ROLLBACK then fails
            # ("cannot rollback - no transaction is active") and would hide the reason.
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        if rows:
            memory.execute("DELETE FROM spans WHERE id <= ?", (rows[-1][0],))
        return len(rows) < COPY_ROWS

    # -- retention ---------------------------------------------------------

    def maintain(self, force: bool = False) -> Pruned | None:
        """Housekeeping for the sender thread (never a cell's): in memory mode, try the
        file again; every ``PRUNE_INTERVAL`` (or when forced), apply the retention settings."""
        if self._closed:
            return None
        if self._memory is not None and (force or time.monotonic() >= self._reopen_at):
            if not self._try_disk():
                # A disk that stays full is not worth a try every 5 s: each one writes some.
                self._reopen_interval = min(self._reopen_interval * 2, REOPEN_MAX_INTERVAL)
            self._reopen_at = time.monotonic() + self._reopen_interval
            self._update_warning()
        if not force and time.monotonic() < self._pruned_at:
            return None
        self._pruned_at = time.monotonic() + PRUNE_INTERVAL
        retention = self.retention_seconds
        older_than = time.time() - retention if retention else None
        try:
            pruned = self.prune(older_than, self.max_bytes)
        except sqlite3.Error as exc:
            log.warning("trace_ext could not prune %s: %s", self.path, exc)
            return None
        if pruned.over != self.over_cap:
            self.over_cap = pruned.over
            self._update_warning()
        return pruned

    def settings_changed(self) -> None:
        """Retention settings changed: apply them at the next :meth:`maintain`."""
        self._pruned_at = 0.0

    def prune(self, older_than: float | None = None, max_bytes: int | None = None) -> Pruned:
        """Delete sent spans: those finished before ``older_than`` (epoch seconds), then the
        oldest ones until the store's data takes at most ``max_bytes``. Spans not yet
        sent (pending, local, failed) are never deleted, so the store can stay over
        its cap (``Pruned.over``). Runs in short transactions."""
        expired = 0
        if older_than is not None:
            while True:
                with self._write() as conn:
                    cur = conn.execute(
                        "DELETE FROM spans WHERE id IN (SELECT id FROM spans WHERE state = ? AND done_at < ?"
                        " ORDER BY id LIMIT ?)",
                        (SENT, older_than, CHUNK),
                    )
                expired += cur.rowcount
                if cur.rowcount < CHUNK:
                    break
        over_cap = 0
        with self._use() as conn:
            if max_bytes:
                over_cap = self._prune_cap(conn, max_bytes)
            if (expired or over_cap) and conn is not self._memory:
                with suppress(sqlite3.Error):
                    # Give freed pages back to the file system (stores made since auto_vacuum was
                    # set). executescript steps the pragma to its end: execute() frees one page.
                    conn.executescript("PRAGMA incremental_vacuum;")
            size = used_bytes(conn)
        return Pruned(expired, over_cap, size, bool(max_bytes) and size > max_bytes)

    def _prune_cap(self, conn: sqlite3.Connection, max_bytes: int, in_transaction: bool = False) -> int:
        deleted = 0
        for _ in range(1000):  # bounded: each round deletes rows or stops
            excess = used_bytes(conn) - max_bytes
            if excess <= 0:
                break
            rows = conn.execute(
                "SELECT id, size FROM spans WHERE state = ? ORDER BY id LIMIT ?", (SENT, CHUNK)
            ).fetchall()
            if not rows:
                break  # only unsent spans are left: they stay
            last, freed = rows[-1][0], 0
            for span_id, size in rows:
                freed += size + 100  # the row's other columns and index entries, roughly
                if freed >= excess:
                    last = span_id
                    break
            sql = "DELETE FROM spans WHERE state = ? AND id <= ?"
            if in_transaction:
                cur = conn.execute(sql, (SENT, last))
            else:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    cur = conn.execute(sql, (SENT, last))
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            deleted += cur.rowcount
        return deleted

    def size(self) -> int:
        """Bytes the store's data takes (pages in use, not counting free pages)."""
        with self._use() as conn:
            return used_bytes(conn)


def open_store(path: str, fallback: bool = False) -> SpanStore:
    """Open (or create) the store.

    A damaged file ("file is not a database", "malformed") is moved aside and a
    new store started; ``store.notice`` then says so. When the file can't be
    used at all, ``fallback`` opens the store in memory (``store.warning``
    says why); without it, a ``UsageError`` says in one sentence what to do.
    """
    notice = ""
    try:
        try:
            store = SpanStore(path)
            try:
                store.counts()  # reads the state index: most damage shows up here
            except BaseException:
                store.close()
                raise
        except sqlite3.DatabaseError as exc:
            if not damaged(exc):
                raise
            moved = move_aside(path)
            notice = (
                f"trace_ext's span store {path} was damaged ({exc}), so it was moved to {moved} "
                "and a new, empty store was started in its place."
            )
            log.warning("%s", notice)
            store = SpanStore(path)
    except (OSError, sqlite3.Error) as exc:
        if not fallback:
            raise UsageError(
                f"trace_ext can't use {path} as its span store ({exc}); set TraceExt.store_path "
                "or TRACE_EXT_STORE_PATH to a file in a writable folder."
            ) from None
        store = SpanStore(path, in_memory=exc)
    store.notice = notice
    return store


def _lease(conn, rows: Sequence[tuple[int, int]], max_bytes: int, until: float, owner: str) -> list[Claimed]:
    """Lease the first of ``rows`` (id, size) that fit in ``max_bytes`` (one at least) and read them."""
    chosen, total = [], 0
    for span_id, size in rows:
        if chosen and total + size > max_bytes:
            break
        chosen.append(span_id)
        total += size
    if not chosen:
        return []
    marks = ",".join("?" * len(chosen))
    conn.execute(
        f"UPDATE spans SET lease_until = ?, lease_owner = ?, attempts = attempts + 1 WHERE id IN ({marks})",
        (until, owner, *chosen),
    )
    rows = conn.execute(f"SELECT id, origin, payload FROM spans WHERE id IN ({marks}) ORDER BY id", chosen).fetchall()
    return [Claimed(*row) for row in rows]
