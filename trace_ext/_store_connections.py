"""The store's connections: one per thread to the file, or the one in-memory
database while the file can't be written, and write transactions on them.

SQLite connections are not shared across threads, so each thread gets its own
connection to the file (``_disk``); a switch between disk and memory bumps
``_generation`` and each thread reconnects on its next use. In memory mode every
use of the single connection holds ``_guard`` (``_use``).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import contextmanager, suppress
from typing import Iterator

__all__ = ["Connections"]

_SQLITE_BUSY_SNAPSHOT = 517  # "database is locked" that no wait can cure (see _write)


class Connections:
    """Mixin for :class:`SpanStore`: connections and transactions (state set up in its ``__init__``)."""

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

    # -- writing -----------------------------------------------------------
    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction. While another connection holds the lock, retry every
        0.2 ms: SQLite's own busy handler sleeps 1, 2, 5, 10 ms for a lock held for µs."""
        with self._use() as conn:
            deadline = time.monotonic() + self._busy_timeout
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
                            raise
                        time.sleep(0.0002)
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                with suppress(sqlite3.Error):  # a failed COMMIT may have rolled back already
                    conn.execute("ROLLBACK")
                raise
