"""The saver: ended spans from the processor's buffer into the journal, and the journal into the store.

Two named daemon threads per extension. Every ``SAVE_INTERVAL`` seconds
(sooner when the buffer grows by thousands) ``trace_ext-saver`` saves what the
buffer holds to this kernel's journal file (:mod:`.journal`): one
``os.write``, which no other writer's lock can hold up. ``trace_ext-importer``
imports the journal into the SQLite store, in transactions of bounded size, as
fast as SQLite takes them; a lock held elsewhere only delays that import. They
are two threads so that saving never waits behind an import: during a cell
busy making spans, SQLite gives up the GIL at every row and waits for it again,
and one import round took up to 1.8 s, while the buffer grew by tens of
thousands of spans that the post-cell hook then had to save.

So a span is durable within ``SAVE_INTERVAL`` of ending, in a cell or not,
and the post-cell hook (:meth:`Saver.save`) only appends what the thread has
not yet saved. The buffer holds each span as plain data already (see
``_recording.processor``); encoding it into OTLP is part of the import, which
starts ``REPLY_GRACE`` after a cell ends. While a cell runs, for its first ``QUIET_CELL`` seconds,
nothing is imported: the cell shares the interpreter with no encoding, no
SQLite and no sending of its own spans, and all of that happens once it ends
(a longer cell has its spans imported, and so sent, while it runs). The
buffer is read, written, and only then emptied (``peek``, write, ``drop``):
an exception anywhere before the write leaves the spans in the buffer, none
is dropped.

While the store is in memory mode (its file can't be written) spans are saved
into that memory directly, as the store alone would, and the journal waits.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from typing import Callable, Protocol, Sequence

from .._otlp import Snapshot, encode_snapshot
from .journal import Journal, journal_files, owner_gone, owner_of, stem_of
from .schema import SpanState
from .store import CHECKPOINT_INTERVAL, SpanStore

__all__ = ["SAVE_INTERVAL", "Saver"]

log = logging.getLogger("trace_ext")

SAVE_INTERVAL = 0.2  # seconds: the longest a span ended outside a cell waits to be durable
FRAME_SPANS = 2000  # spans per journal frame at most (one frame is imported in one transaction)
OTHERS_INTERVAL = 5.0  # seconds between looks for journals dead kernels left
QUIET_CELL = 2.0  # seconds of a running cell during which nothing is imported (see the module doc)
# Seconds the import waits after a cell ends, so the kernel's reply and its idle status go
# out first: an import of a big cell's spans started at once took the GIL from them and
# the cell was seen done 20-50 ms later (20,000 spans; 4 ms without trace_ext).
REPLY_GRACE = 0.03
ROTATE_BYTES = 16 * 2**20  # a fully imported journal file past this size is replaced by a new one

_LIVE_STEMS: set[str] = set()  # journals of this process's savers now running (others here are left over)


class Buffer(Protocol):
    def peek(self, limit: int) -> list[tuple[Snapshot, bytes, bytes]]: ...
    def drop(self, count: int) -> None: ...
    def buffered(self) -> int: ...


class Saver:
    """Saves the buffer to the journal (durable) and imports the journal into ``store``."""

    def __init__(
        self,
        store: SpanStore,
        buffer: Buffer,
        state: Callable[[], SpanState],
        on_saved: Callable[[int, SpanState], None],
        on_error: Callable[[str], None],
        count_lock: "threading.RLock | None" = None,
        cell_time: Callable[[], float | None] = lambda: None,
        on_imported: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self._buffer = buffer
        self._state = state  # pending while there is a destination, else local
        self._on_saved = on_saved  # (spans saved, their state): the status counters
        self._on_error = on_error  # a one-sentence problem for the status
        self._cell_time = cell_time  # seconds the running cell has run so far; None between cells
        self._on_imported = on_imported  # spans reached the store: the sender may send them
        # Held while the store's count of journaled spans and on_saved's counters both move,
        # so whoever sets the counters from the store under it never counts a save twice.
        self._count_lock = count_lock or threading.RLock()
        self._lock = threading.Lock()  # one save at a time: peek, write, drop
        self._wake = threading.Event()  # save now
        self._import_wake = threading.Event()  # import now
        self._import_after = 0.0  # monotonic: no import before (see REPLY_GRACE)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._importer: threading.Thread | None = None
        self._others_at = 0.0  # monotonic: next look for dead kernels' journals
        self._older: list[str] = []  # this kernel's earlier journal files, not yet removed
        self.journal: Journal | None = None
        self._journal_error = ""
        self._checkpointed = 0.0  # monotonic time of the importer's last checkpoint
        self._imported = ("", 0)  # (journal file, offset) as of the last import
        try:
            self.journal = Journal(store.path)
            _LIVE_STEMS.add(self.journal.stem)
        except OSError as exc:  # a folder that can't be made: the store alone (in memory, likely)
            self._journal_error = str(exc)

    # -- from any thread ------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="trace_ext-saver", daemon=True)
            self._importer = threading.Thread(target=self._run_imports, name="trace_ext-importer", daemon=True)
            self._thread.start()
            self._importer.start()

    def wake(self) -> None:
        """Save now (then import)."""
        self._wake.set()

    def wake_import(self, after: float = 0.0) -> None:
        """Import in ``after`` seconds: after a save by another thread (the post-cell hook's), there is nothing to save."""
        self._import_after = time.monotonic() + after
        self._import_wake.set()

    def save(self) -> int:
        """Save everything the buffer holds now: durable once this returns. How many were saved."""
        saved = 0
        with self._lock:
            # What is there now, not what a busy thread adds meanwhile: this must end.
            left = self._buffer.buffered()
            while left > 0:
                snapshots = self._buffer.peek(min(left, FRAME_SPANS))
                if not snapshots:
                    return saved
                state = self._state()
                try:
                    journaled = self._write(snapshots, state)
                except (sqlite3.Error, OSError) as exc:
                    self._on_error(
                        f"Could not save {len(snapshots)} spans to {self.store.path} ({exc}); "
                        "they are kept in memory and saved again shortly."
                    )
                    return saved
                self._buffer.drop(len(snapshots))
                saved += len(snapshots)
                left -= len(snapshots)
                with self._count_lock:
                    if journaled:
                        self.store.journaled(len(snapshots), state)
                    self._on_saved(len(snapshots), state)
            return saved

    def _write(self, snapshots: Sequence[tuple[Snapshot, bytes, bytes]], state: SpanState) -> bool:
        """Write to the journal (True) or, failing that, to the store itself (False)."""
        journal = self.journal
        if journal is not None and not self.store.in_memory:
            try:
                journal.append(snapshots, state)
                return True
            except OSError as exc:  # a full disk, say: the store decides (memory mode)
                log.warning("trace_ext could not write its journal %s (%s)", journal.path, exc)
        records = [encode_snapshot(*taken) for taken in snapshots]
        kept = self.store.save(records, state)
        if kept < len(records):
            log.warning("trace_ext dropped %d spans: its memory limit was reached", len(records) - kept)
        return False

    def import_now(self, wait: float | None = None, max_rounds: int | None = None, older: bool = True) -> bool:
        """Import this kernel's journal into the store; True when all of it is imported.
        ``older``: also this kernel's earlier files (removing them takes the write lock
        with the busy timeout, so the post-cell hook leaves them to the saver thread)."""
        journal = self.journal
        if journal is None:
            return True
        if journal.abandoned:
            self._older += journal.abandoned
            journal.abandoned.clear()
        for path in list(self._older) if older else []:
            _n, _offset, rest_unusable = self.store.import_journal(path, wait, max_rounds, own=True)
            if rest_unusable:
                self.store.forget_journal(path)
                self._older.remove(path)
        done = not self._older
        path = journal.path
        _n, offset, _ = self.store.import_journal(path, wait, max_rounds, own=True)
        self._imported = (path, offset)
        with self._lock:
            if journal.path != path or offset < journal.size:
                return False
            if journal.size >= ROTATE_BYTES:
                journal.rotate()
                self._older.append(path)  # removed at the next import (all of it is in the store)
        return done

    def backlog(self) -> int:
        """Bytes of this kernel's current journal file not yet imported, as last seen."""
        journal = self.journal
        if journal is None:
            return 0
        path, offset = self._imported
        return journal.size - (offset if path == journal.path else 0)

    def sync(self, timeout: float, others: bool = True) -> bool:
        """Save the buffer, then import the journal, for at most about ``timeout`` seconds;
        with ``others``, then the journals kernels that are gone left (their spans are
        pending too: a flush that left them out would report 0 pending, then find more)."""
        self.save()
        deadline = time.monotonic() + timeout
        while True:
            try:
                # A round at a time, so the deadline is looked at between rounds.
                if self.import_now(wait=max(deadline - time.monotonic(), 0.0), max_rounds=1):
                    break
            except sqlite3.Error:
                pass  # locked past the deadline, or a file that can't take it: left for later
            if time.monotonic() >= deadline:
                return False
        if others:
            try:
                self._import_others(deadline)
            except sqlite3.Error:
                return False  # left to the importer thread
        return True

    def stop(self, timeout: float) -> None:
        """Stop the thread within ``timeout`` seconds, saving the buffer and importing what time allows."""
        deadline = time.monotonic() + max(timeout, 0.0)
        self._stopping = True
        self._wake.set()
        self._import_wake.set()
        for thread in (self._thread, self._importer):
            if thread is not None and thread is not threading.current_thread():
                thread.join(max(deadline - time.monotonic(), 0.0))
        journal = self.journal
        try:
            # Others' journals are left to the next kernel: this is the exit, bounded.
            if self.sync(max(deadline - time.monotonic(), 0.0), others=False) and journal is not None:
                journal.close()
                self.store.forget_journal(journal.path)  # all of it is in the store
        except Exception:  # what isn't imported stays in the journal, for the next kernel
            log.debug("trace_ext left its journal to the next kernel", exc_info=True)
        if journal is not None:
            journal.close()
            _LIVE_STEMS.discard(journal.stem)

    def forget_after_fork(self) -> None:
        """In a forked child: never write the parent's journal."""
        self._lock = threading.Lock()
        if self.journal is not None:
            self.journal.forget_after_fork()
        self.journal = None
        self._stopping = True

    # -- the thread -----------------------------------------------------------

    def _loop(self, wake: threading.Event, step: Callable[[], None]) -> None:
        """Each thread's body: ``step`` when woken, or every ``SAVE_INTERVAL``, until stopped."""
        while not self._stopping:
            wake.wait(SAVE_INTERVAL)
            wake.clear()
            if self._stopping:
                return
            step()

    def _run(self) -> None:
        self._loop(self._wake, self._save_step)

    def _run_imports(self) -> None:
        self._loop(self._import_wake, self._import_step)

    def _save_step(self) -> None:
        try:
            self.save()
        except Exception as exc:  # keep the thread alive whatever happens
            log.exception("trace_ext saver step failed")
            self._on_error(f"trace_ext could not save its spans: {exc}.")
        self._import_wake.set()  # what it saved can be imported (the post-cell hook wakes the importer itself)

    def _import_step(self) -> None:
        try:
            pause = self._import_after - time.monotonic()
            if pause > 0:
                time.sleep(min(pause, REPLY_GRACE))
                if self._stopping:
                    return
            running = self._cell_time()  # after the pause: the next cell may have begun
            if running is not None and running < QUIET_CELL:
                return  # the import waits for the cell's end, or for QUIET_CELL
            before = self.backlog()
            if before or self._older:
                # A round at a time; the next one follows at once if this one moved
                # on (not in memory mode, or with the lock held elsewhere).
                if not self.import_now(max_rounds=1) and self.backlog() < before:
                    self._import_wake.set()
                self._on_imported()
                if time.monotonic() - self._checkpointed > CHECKPOINT_INTERVAL:
                    # The sender checkpoints between requests; while one hangs (up to
                    # export_timeout), a busy cell's imports grew the log to 94 MB, and
                    # closing the store at exit took 0.45 s to fold that in.
                    self._checkpointed = time.monotonic()
                    self.store.checkpoint(passive=True)
            if time.monotonic() >= self._others_at:
                self._others_at = time.monotonic() + OTHERS_INTERVAL
                self._import_others()
        except sqlite3.OperationalError:
            pass  # the store is locked beyond the busy timeout: the journal holds the spans
        except Exception as exc:  # keep the thread alive whatever happens
            if self._stopping:
                # The exit stopped waiting for this round (the lock was held elsewhere) and
                # closed the store under it: what it was importing stays in the journal.
                log.debug("trace_ext import step ended by the exit", exc_info=True)
                return
            log.exception("trace_ext import step failed")
            self._on_error(f"trace_ext could not import its journal into the store: {exc}.")

    def _import_others(self, deadline: float | None = None) -> None:
        """Import (and remove) journals of kernels that are gone, or of an earlier load in this
        process; with ``deadline`` (monotonic), only until then."""
        journal = self.journal
        if journal is None or self.store.in_memory:
            return
        mine = set(self._older + [journal.path])
        for path in journal_files(self.store.path):
            if path in mine:
                continue
            _host, pid = owner_of(path)
            here = pid == str(os.getpid())
            if (here and stem_of(path) in _LIVE_STEMS) or not (here or owner_gone(path)):
                continue
            while True:
                wait = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                _count, _offset, rest_unusable = self.store.import_journal(path, wait, max_rounds=1)
                if rest_unusable:
                    self.store.forget_journal(path)
                    break
                if self._stopping or self.store.in_memory:
                    return
                if deadline is not None and time.monotonic() >= deadline:
                    return
