"""The store's in-memory fallback, while its file can't be written (a read-only
folder, a full disk, a path that isn't a folder).

Then the store is one in-memory SQLite database, shared by all threads behind
``SpanStore._guard``. Spans recorded meanwhile are delivered from memory, and
:meth:`SpanStore.maintain` (run by the sender thread) copies them to the file
as soon as it can be written again. Rows of the in-memory database have ids
from ``MEMORY_IDS`` up, so an id always says which database it belongs to.
This module also says what is wrong with the store, in one sentence (``warning``).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from contextlib import suppress
from typing import Sequence

from ._otlp import SpanRecord
from ._store_files import private_file
from ._store_leases import ensure_schema
from ._store_schema import CHUNK, COLUMNS, SCHEMA, SENT, update_in, used_bytes

__all__ = ["MEMORY_LIMIT_BYTES", "REOPEN_INTERVAL", "MemoryMode"]

log = logging.getLogger("trace_ext")

MEMORY_LIMIT_BYTES = 256 * 2**20  # most bytes the in-memory database may hold
REOPEN_INTERVAL = 5.0  # seconds between attempts to write to the file again, in memory mode


def _megabytes(size: float) -> str:
    return f"{size / 2**20:.1f} MB"


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if isinstance(exc, OSError) else str(exc)


class MemoryMode:
    """Mixin for :class:`SpanStore`: entering memory mode, and leaving it by
    copying everything back to the file. Uses the store's ``_memory``, ``_guard``,
    ``_generation`` and ``_deferred`` (set up in ``SpanStore.__init__``)."""

    def _enter_memory(self, exc: BaseException) -> None:
        with self._guard:
            if self._memory is None:
                conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
                conn.executescript(SCHEMA)
                ensure_schema(conn)  # the same columns as on disk, so one SQL serves both
                self._memory = conn
                self._memory_origins.clear()
                self._generation += 1  # every thread drops its disk connection
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
            conn.executescript(SCHEMA)
            ensure_schema(conn)  # a new file, or one from before leases had owners
            conn.execute("INSERT OR REPLACE INTO probe(id, at) VALUES (1, ?)", (time.time(),))
            for sql, params, ids in self._deferred:  # e.g. spans sent while the disk was full
                update_in(conn, sql, params, ids)
            self._deferred.clear()
            # Copy the memory's spans in chunks, so a cell's commit waits for one chunk at most.
            while True:
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
            self._reason = str(exc)
            return False
        finally:
            with suppress(sqlite3.Error):
                conn.close()

    @staticmethod
    def _copy_chunk(memory: sqlite3.Connection, conn: sqlite3.Connection) -> bool:
        """Move up to CHUNK of the memory's oldest spans to disk (origins mapped to disk
        ids) in one transaction; True when that was the last of them."""
        rows = memory.execute(f"SELECT id, {COLUMNS} FROM spans ORDER BY id LIMIT ?", (CHUNK,)).fetchall()
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
            conn.execute("ROLLBACK")
            raise
        if rows:
            memory.execute("DELETE FROM spans WHERE id <= ?", (rows[-1][0],))
        return len(rows) < CHUNK
