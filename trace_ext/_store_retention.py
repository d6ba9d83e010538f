"""Retention: deleting sent spans older than ``retention_seconds`` and, oldest first,
enough sent spans to keep the store under ``max_bytes``; and the sender thread's
periodic housekeeping (:meth:`Retention.maintain`) that runs it. Spans not yet
sent (pending, local, failed) are never deleted, whatever the settings.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from contextlib import suppress
from typing import NamedTuple

from ._store_memory import REOPEN_INTERVAL
from ._store_schema import CHUNK, SENT, used_bytes

__all__ = ["PRUNE_INTERVAL", "Pruned", "Retention"]

log = logging.getLogger("trace_ext")

PRUNE_INTERVAL = 60.0  # seconds between retention passes


class Pruned(NamedTuple):
    """What one retention pass did."""

    expired: int = 0  # sent spans older than the retention time, deleted
    over_cap: int = 0  # sent spans deleted (oldest first) to bring the store under its size cap
    size: int = 0  # bytes the store's data takes afterwards
    over: bool = False  # still over the cap: what is left is unsent, and unsent spans are kept


class Retention:
    """Mixin for :class:`SpanStore`: housekeeping and pruning. Uses the store's
    ``_write`` / ``_use`` transactions and, in memory mode, ``_try_disk``."""

    def maintain(self, force: bool = False) -> Pruned | None:
        """Housekeeping for the sender thread (never a cell's): in memory mode, try the
        file again; every ``PRUNE_INTERVAL`` (or when forced), apply the retention settings."""
        if self._closed:
            return None
        if self._memory is not None and (force or time.monotonic() >= self._reopen_at):
            self._reopen_at = time.monotonic() + REOPEN_INTERVAL
            self._try_disk()
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
