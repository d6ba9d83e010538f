"""The store under faults: retention, an unwritable or full disk, a damaged file, a long outage.

"Never lose a span, never block a cell": delivered spans are pruned by the
retention settings and nothing else is; a store that can't be written keeps
spans in memory (and says so) until it can; a damaged store is moved aside; and
100,000 spans made while the backend is down stay on disk, not in the kernel's
memory, and all arrive once it is back.

We run as root, so permissions can't make a folder read-only for us. The
read-only and disk-full tests use a real tmpfs mount (read-only, or a few
hundred KB) when this machine lets us mount one, and otherwise a store path
under a regular file (NotADirectoryError, which root can't write either) and
SQLite's own SQLITE_FULL via ``PRAGMA max_page_count``.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest

from trace_ext._store.store import LOCAL, MEMORY_IDS, PENDING, SpanStore, open_store

from .conftest import journals_imported, memory_mb, recording_tracer, require, wait_until
from .otlp_receiver import Respond
from .test_faults import store_rows

# -- helpers ----------------------------------------------------------------


@pytest.fixture
def spans():
    """make(n, payload_bytes) -> n encoded SpanRecords of real SDK spans."""
    processor, tracer = recording_tracer("faults")

    def make(n: int, payload: int = 100, prefix: str = "s"):
        for i in range(n):
            tracer.start_span(f"{prefix}{i}", attributes={"p": "x" * payload}).end()
        return processor.take()

    return make


def rows(path, columns: str = "span_id, state") -> list[tuple]:
    """The store file's spans, read by a connection of our own (empty while it has no table yet)."""
    if not Path(path).exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(f"SELECT {columns} FROM spans ORDER BY id").fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        conn.close()


def send(store: SpanStore, n: int) -> list[int]:
    """Play the sender: claim n spans and mark them sent."""
    ids = [c.id for c in store.claim(n, 10**9, 30)]
    store.mark_sent(ids)
    return ids


def _run(*argv: str) -> bool:
    if os.geteuid() != 0 or shutil.which(argv[0]) is None:
        return False
    return subprocess.run(argv, capture_output=True).returncode == 0


@pytest.fixture(params=["mount", "no-mount"])
def tmpfs(request, tmp_path):
    """mount(options) -> a folder with a fresh tmpfs mounted there, or None if this machine
    can't (and always None in the "no-mount" variant, so the fallback is tested too)."""
    mounted: list[Path] = []

    def mount(options: str) -> Path | None:
        folder = tmp_path / f"mnt{len(mounted)}"
        folder.mkdir()
        if request.param == "no-mount":
            return None
        if not _run("mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)):
            return None
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        if not _run("umount", str(folder)):
            _run("umount", "-l", str(folder))


# -- retention ----------------------------------------------------------------


def test_retention_deletes_only_sent_spans_older_than_the_setting(store_path, spans):
    store = SpanStore(str(store_path))
    store.save(spans(10), PENDING)
    store.save(spans(3), LOCAL)
    old = send(store, 6)
    store.mark_failed([c.id for c in store.claim(2, 10**9, 30)], "refused")
    # Six sent spans: four finished two days ago, two just now.
    conn = sqlite3.connect(str(store_path))
    conn.execute(f"UPDATE spans SET done_at = ? WHERE id IN ({','.join('?' * 4)})", (time.time() - 2 * 86400, *old[:4]))
    conn.commit()
    conn.close()

    pruned = store.prune(older_than=time.time() - 86400)

    assert pruned.expired == 4 and pruned.over_cap == 0
    counts = store.counts()
    assert (counts.sent, counts.pending, counts.local, counts.failed) == (2, 2, 3, 2)
    store.close()


def test_a_frame_imported_before_the_saver_counts_it_leaves_no_phantom_pending_span(store_path):
    # The importer thread may import a frame the moment its write returns, before the saver
    # has counted it as journaled. The count then went below 0, was clamped there, and the
    # saver's count came on top: a flush waited 30 s for "2 still pending" spans that did not exist.
    from trace_ext._store.saver import Saver
    from trace_ext._store.schema import SpanState

    processor, tracer = recording_tracer("race")
    store = SpanStore(str(store_path))
    saver = Saver(store, processor, lambda: SpanState.PENDING, lambda count, state: None, lambda message: None)
    journal = saver.journal
    write = journal.append

    def write_then_import(snapshots, state):
        write(snapshots, state)
        store.import_journal(journal.path, own=True)  # the importer, between the write and the count

    journal.append = write_then_import
    for i in range(5):
        tracer.start_span(f"s{i}").end()
    assert saver.save() == 5
    assert len(rows(store_path)) == 5
    assert (store.pending(), store.counts().pending) == (5, 5)
    send(store, 5)
    assert (store.pending(), store.counts().pending, store.counts().sent) == (0, 0, 5)
    saver.stop(1.0)
    store.close()


def test_size_cap_deletes_the_oldest_sent_spans_first_and_never_unsent_ones(store_path, spans):
    store = SpanStore(str(store_path))
    store.save(spans(300, payload=2000, prefix="a"), PENDING)
    sent = send(store, 200)  # the oldest 200 are sent, the newest 100 pending
    store.save(spans(20, payload=2000, prefix="local"), LOCAL)
    full = store.size()

    pruned = store.prune(max_bytes=full - 150_000)

    assert 0 < pruned.over_cap < 200 and not pruned.over and pruned.size <= full - 150_000
    left = [i for i, state in rows(store_path, "id, state") if state == "sent"]
    assert left == sent[pruned.over_cap:]  # what was deleted is exactly the oldest sent spans
    assert store.counts().pending == 100 and store.counts().local == 20

    # A cap smaller than the unsent spans alone: every sent span goes, no unsent one does.
    pruned = store.prune(max_bytes=50_000)
    counts = store.counts()
    assert pruned.over and (counts.sent, counts.pending, counts.local) == (0, 100, 20)
    store.close()


def test_over_the_cap_with_unsent_spans_alone_is_shown_not_deleted(store_path, spans):
    store = open_store(str(store_path))
    store.save(spans(100, payload=2000), LOCAL)
    store.max_bytes = 50_000
    pruned = store.maintain(force=True)
    assert pruned.over and store.counts().local == 100
    assert "over its size cap TraceExt.retention_mb" in store.warning and "never deleted" in store.warning
    store.max_bytes = None
    store.maintain(force=True)
    assert store.warning == ""
    store.close()


def test_pruning_gives_space_back_to_the_file_system(store_path, spans):
    store = SpanStore(str(store_path))
    store.save(spans(2000, payload=2000), PENDING)
    send(store, 2000)
    store.checkpoint()
    before = os.path.getsize(store_path)
    store.prune(older_than=time.time() + 1)
    store.checkpoint()
    assert store.counts().sent == 0
    assert os.path.getsize(store_path) < before / 4  # auto_vacuum=INCREMENTAL on new stores
    store.close()


# -- a store that can't be written ------------------------------------------------


def unwritable_store_path(tmp_path, tmpfs) -> tuple[Path, Callable[[], object], str]:
    """A store path root can't write, and a function that makes it writable again.

    A real read-only tmpfs (remounted read-write to recover) when we may mount;
    else a path under a regular file (removing the file recovers).
    """
    folder = tmpfs("ro,size=4m")
    if folder is not None:
        return folder / "spans.sqlite3", lambda: _run("mount", "-o", "remount,rw", str(folder)), "read-only tmpfs"
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a regular file where the store's folder should be")
    return blocker / "spans.sqlite3", blocker.unlink, "path under a regular file"


def test_unwritable_store_at_load_works_in_memory_and_saves_everything_once_writable(tmp_path, tmpfs, spans):
    path, make_writable, how = unwritable_store_path(tmp_path, tmpfs)
    store = open_store(str(path), fallback=True)
    assert store.in_memory, how
    assert str(path) in store.warning and "TraceExt.store_path" in store.warning and "in memory" in store.warning

    assert store.save(spans(50, prefix="p"), PENDING) == 50
    store.save(spans(5, prefix="l"), LOCAL)
    batch = store.claim(20, 10**9, 30)
    assert all(c.id >= MEMORY_IDS for c in batch) and len(store.origins(c.origin for c in batch)) == 1
    store.mark_sent([c.id for c in batch])
    assert store.memory_count() == 35 and "35 not yet sent" in store.warning
    store.maintain(force=True)
    assert store.in_memory  # still unwritable: nothing changes

    make_writable()
    store.maintain(force=True)

    assert not store.in_memory and store.warning == ""
    on_disk = rows(path)
    assert len(on_disk) == 55 and len({span_id for span_id, _ in on_disk}) == 55
    assert sorted(state for _, state in on_disk).count("sent") == 20
    store.save(spans(1, prefix="after"), PENDING)  # and the store goes on, on disk
    assert len(rows(path)) == 56
    store.close()


def test_a_full_disk_switches_to_memory_without_losing_a_span(tmp_path, tmpfs, spans):
    folder = tmpfs("size=256k")
    how = "tmpfs of 256 KB" if folder is not None else "PRAGMA max_page_count"
    path = (folder or tmp_path) / "spans.sqlite3"
    store = open_store(str(path))
    store.save(spans(5, prefix="first"), PENDING)
    claimed = [c.id for c in store.claim(5, 10**9, 30)]  # in flight when the disk fills
    if folder is None:
        (pages,) = store._disk().execute("PRAGMA page_count").fetchone()
        store._disk().execute(f"PRAGMA max_page_count = {pages + 2}")
    made = 5
    for _ in range(200):
        made += store.save(spans(20, payload=1000), PENDING)  # never raises: memory takes over
        if store.in_memory:
            break
    assert store.in_memory, how
    assert "database or disk is full" in store.warning and str(path) in store.warning
    store.mark_sent(claimed)  # delivered meanwhile: remembered until the file has room

    if folder is not None:
        assert _run("mount", "-o", "remount,size=16m", str(folder))
    store.maintain(force=True)  # (max_page_count is per connection: a new one has room)

    assert not store.in_memory, how
    on_disk = rows(path)
    assert len(on_disk) == made and len({s for s, _ in on_disk}) == made
    assert [state for _, state in on_disk[:5]] == ["sent"] * 5
    store.close()


def test_memory_mode_is_bounded_and_counts_what_it_drops(tmp_path, spans):
    (tmp_path / "file").write_text("")
    store = open_store(str(tmp_path / "file" / "spans.sqlite3"), fallback=True)
    store.memory_limit = 400_000
    kept = sum(store.save(spans(100, payload=2000), PENDING) for _ in range(4))
    assert kept < 400 and store.dropped == 400 - kept
    assert f"dropped {store.dropped} spans" in store.warning
    # Sent spans make room before anything new is dropped.
    send(store, kept)
    assert store.save(spans(50, payload=2000), PENDING) == 50
    store.close()


def test_a_damaged_store_is_moved_aside_and_a_new_one_started(store_path, spans):
    store = open_store(str(store_path))
    store.save(spans(3), PENDING)
    store.close()
    data = store_path.read_bytes()
    store_path.write_bytes(os.urandom(len(data)))

    store = open_store(str(store_path), fallback=True)

    assert not store.in_memory and store.counts() == (0, 0, 0, 0)
    [moved] = [p for p in store_path.parent.iterdir() if ".corrupt-" in p.name]
    assert moved.name.startswith("spans.sqlite3.corrupt-") and moved.read_bytes()[:16] != b"SQLite format 3\0"
    assert str(moved) in store.notice and "damaged" in store.notice
    store.save(spans(2), PENDING)
    assert store.counts().pending == 2
    store.close()


def test_a_truncated_store_header_is_moved_aside(store_path, spans):
    store = open_store(str(store_path))
    store.save(spans(3), PENDING)
    store.close()
    store_path.write_bytes(store_path.read_bytes()[:50])  # cut inside the 100-byte header
    store = open_store(str(store_path))
    assert "damaged (database disk image is malformed)" in store.notice and store.counts() == (0, 0, 0, 0)
    assert [p for p in store_path.parent.iterdir() if ".corrupt-" in p.name]
    store.close()


# -- in a real kernel ---------------------------------------------------------------


def status_text(kernel) -> str:
    return kernel.ok("%trace status").displays[-1]["data"]["text/plain"]


def test_kernel_with_an_unwritable_store_keeps_working_delivers_and_saves_later(start_kernel, receiver, tmp_path):
    blocker = tmp_path / "blocked"
    blocker.write_text("not a folder")
    path = blocker / "spans.sqlite3"
    kernel = start_kernel(store=path, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.base_url)
    kernel.ok("%load_ext trace_ext")  # no UsageError: memory-only mode
    text = status_text(kernel)
    assert f"can't write its span store {path}" in text and "TraceExt.store_path" in text and "in memory" in text
    kernel.ok("%%trace from-memory\n1")
    assert [s.name for s in receiver.wait_for_spans(1)] == ["from-memory"]
    receiver.default = Respond(503)
    kernel.ok("%%trace waiting\n2")
    kernel.ok("from trace_ext._extension import active")
    assert kernel.value("active().status.in_memory") == 1  # 'waiting': not sent yet

    blocker.unlink()  # the folder can be created now: the sender thread writes memory to disk
    assert wait_until(lambda: len(rows(path)) == 2, 30), "timed out waiting for memory spans written to the store"
    assert {(s, st) for s, st in rows(path)} >= {(receiver.spans[0].span_id, "sent")}
    assert wait_until(lambda: "in memory" not in status_text(kernel), 10), "timed out waiting for the warning to clear"
    receiver.default = None
    kernel.ok("%%trace on-disk\n3")
    names = {s.name for s in receiver.wait_for_spans(3, timeout=40)}
    assert names == {"from-memory", "waiting", "on-disk"}


def test_kernel_with_a_damaged_store_moves_it_aside_and_works(start_kernel, store_path):
    store_path.parent.mkdir(parents=True)
    store_path.write_bytes(os.urandom(8192))
    kernel = start_kernel()
    kernel.ok("%load_ext trace_ext")
    text = status_text(kernel)
    [moved] = [p for p in store_path.parent.iterdir() if ".corrupt-" in p.name and not p.name.endswith("-wal")]
    assert f"moved to {moved}" in text
    kernel.ok("%%trace fresh\n1")
    assert wait_until(lambda: journals_imported(store_path), 20)  # the saver thread imports it
    assert [state for _, state in rows(store_path)] == ["local"]


PRUNE_SPY = """
from trace_ext._extension import active
_store = active().store
_prune_threads = []
_real_prune = _store.prune
def _spy(*a, **k):
    import threading
    _prune_threads.append(threading.current_thread().name)
    return _real_prune(*a, **k)
_store.prune = _spy
"""


def test_retention_is_applied_by_the_sender_thread(start_kernel, receiver, store_path):
    kernel = start_kernel(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.base_url)
    kernel.ok("%load_ext trace_ext")
    kernel.ok(PRUNE_SPY)
    kernel.ok("%config TraceExt.retention_days = 0.5")
    kernel.ok("%%trace kept\n1")
    receiver.wait_for_spans(1)
    kernel.ok("%trace flush --timeout 10")
    kernel.ok("%config TraceExt.retention_days = 1e-9")  # ~0.1 ms: anything sent is old enough
    assert wait_until(lambda: rows(store_path) == [], 30), "timed out waiting for the sender thread to prune the sent span"
    assert set(kernel.value("_prune_threads")) == {"trace_ext-sender"}


# -- a long outage --------------------------------------------------------------------

PRODUCE = (
    "from opentelemetry import trace as _t\n"
    "_tr = _t.get_tracer('bulk')\n"
    "for _i in range({n}):\n"
    "    _tr.start_span('bulk', attributes={{'i': _i}}).end()\n"
)
OUTAGE_SPANS = 100_000
RSS_BOUND_MB = 100


def test_100k_spans_during_an_outage_stay_on_disk_and_all_arrive_once(start_kernel, receiver, store_path):
    """The RSS bound (100 MB) is a third of what holding the outage in memory costs:
    `python -m bench --only outage` measures +293 MB for 100k such spans queued in RAM by the
    OTel SDK's BatchSpanProcessor. trace_ext spills them to disk every 2000 spans and
    grows by ~15 MB (SQLite page cache, allocator slack), so 100 MB leaves room for a
    busy machine without letting "kept in memory" pass."""
    started = time.monotonic()
    receiver.stop()  # the backend is down: connections to its URL are refused
    kernel = start_kernel(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.base_url)
    kernel.ok("%load_ext trace_ext")
    kernel.ok(PRODUCE.format(n=2000))  # warm up: imports, caches, the first spill
    before = memory_mb(kernel)
    for _ in range(4):
        kernel.ok(PRODUCE.format(n=OUTAGE_SPANS // 4), timeout=120)
    total = OUTAGE_SPANS + 2000

    def pending() -> int:
        store = SpanStore(str(store_path))
        try:
            return store.counts().pending
        finally:
            store.close()

    assert wait_until(lambda: pending() == total, 30), f"timed out waiting for {total} pending spans in the store"
    after = memory_mb(kernel)
    produced = time.monotonic() - started
    assert after - before < RSS_BOUND_MB, f"RSS grew {after - before:.0f} MB ({before:.0f} -> {after:.0f})"

    receiver.start()  # same port: the sender's next retry (backoff capped at 30 s) gets through

    def accepted(rx) -> int:
        return sum(len(r.spans) for r in rx.requests if r.accepted)

    assert receiver.wait_for(lambda rx: accepted(rx) >= total, timeout=150), f"{accepted(receiver)} of {total}"
    ids = receiver.span_ids()
    assert len(ids) == total and len(set(ids)) == total
    print(f"\n100k outage: RSS {before:.0f} -> {after:.0f} MB (+{after - before:.1f}); produced in "
          f"{produced:.1f} s; all {total} delivered after {time.monotonic() - started:.1f} s")


def test_unloading_in_memory_mode_saves_spans_if_the_file_is_writable_by_then(tmp_path, spans):
    blocker = tmp_path / "blocked"
    blocker.write_text("")
    path = blocker / "spans.sqlite3"
    store = open_store(str(path), fallback=True)
    store.save(spans(7), PENDING)
    blocker.unlink()
    store.close()  # what %unload_ext and kernel exit do, after the sender's last flush
    assert [state for _, state in rows(path)] == ["pending"] * 7


def test_kernel_on_a_disk_that_fills_up_keeps_working_and_loses_nothing(start_kernel, receiver, tmpfs, tmp_path):
    folder = tmpfs("size=1m")
    path = (folder or tmp_path / "nomount") / "spans.sqlite3"
    kernel = start_kernel(store=path, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.base_url)
    kernel.ok("%load_ext trace_ext\nfrom trace_ext._extension import active")
    kernel.ok("%%trace before-full\n1")
    receiver.wait_for_spans(1)
    filler = None
    if folder is not None:  # a real full disk: fill the tmpfs to the last block
        filler = folder / "filler"
        with open(filler, "wb") as fh:
            with pytest.raises(OSError):
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
    else:  # SQLite's own SQLITE_FULL on every connection opened from now on (the saver
        # thread, which imports the journal, and the cell's; each thread connects again).
        # fetchall() and no cell value: a statement left unfinished (a cursor kept in Out) holds
        # the connection's read snapshot open, and once the sender writes, the cell's next
        # BEGIN IMMEDIATE fails with SQLITE_BUSY_SNAPSHOT ("database is locked"), not FULL.
        kernel.ok(
            "_st = active().store\n"
            "_open = _st._open_disk\n"
            "def _full():\n"
            "    _c = _open()\n"
            "    _n = _c.execute('PRAGMA page_count').fetchall()[0][0]\n"
            "    _c.execute(f'PRAGMA max_page_count = {_n}').fetchall()\n"
            "    return _c\n"
            "_st._open_disk = _full\n"
            "_st._generation += 1"
        )
    receiver.default = Respond(503)  # some spans wait in memory
    kernel.ok(PRODUCE.format(n=1500))  # cells go on: no error reaches the user
    # The saver thread imports the cell's journal just after the cell, and meets the full disk.
    assert wait_until(lambda: "database or disk is full" in status_text(kernel), 10), status_text(kernel)
    text = status_text(kernel)
    assert "in memory" in text and str(path) in text
    receiver.default = None
    kernel.ok("%%trace while-full\n2")
    if filler is not None:
        filler.unlink()
    else:
        kernel.ok("_st._open_disk = _open")  # room again, for connections opened from now on
    assert wait_until(lambda: "in memory" not in status_text(kernel), 40), "timed out waiting for the store to be written again"
    assert receiver.wait_for(lambda rx: len(set(rx.span_ids())) >= 1502, 60)
    assert {"before-full", "while-full"} <= {s.name for s in receiver.spans}
    assert len(receiver.span_ids()) == 1502  # each once
    assert wait_until(lambda: [state for _, state in rows(path)].count("sent") == 1502, 20), "timed out waiting for all marked sent on disk"


def test_retention_settings_are_validated_and_zero_or_none_keeps_everything():
    from trace_ext.config import SettingError, TraceExt

    settings = TraceExt()
    assert settings.retention_days == 7.0 and settings.retention_mb is None
    for name, unit in (("retention_days", "days"), ("retention_mb", "megabytes")):
        with pytest.raises(SettingError, match=f"TraceExt.{name} must be at least 0 {unit}"):
            setattr(settings, name, -1)
        setattr(settings, name, 0)
        setattr(settings, name, None)


# Spans with an id the kernel records, and a payload, so a few thousand fill a small disk.
PRODUCE_IDS = (
    "from opentelemetry import trace as _t\n"
    "_tr = _t.get_tracer('bulk')\n"
    "for _i in range({n}):\n"
    "    with _tr.start_as_current_span('bulk', attributes={{'i': _i, 'pad': 'x' * 400}}) as _s:\n"
    "        _ids.append(format(_s.get_span_context().span_id, '016x'))\n"
)


def _fill(path: Path) -> None:
    """Write ``path`` until the file system is full, to the last block."""
    with open(path, "wb", buffering=0) as fh:
        with pytest.raises(OSError):
            while True:
                fh.write(b"\0" * 4096)


def test_a_disk_full_then_partly_freed_leaves_memory_mode_and_a_kill_loses_nothing(start_kernel, tmp_path):
    # The retry grew the write-ahead log into the freed space and filled the disk again:
    # the store stayed in memory, said "cannot rollback - no transaction is active", and a
    # kill -9 lost what memory held.
    folder = tmp_path / "small"
    folder.mkdir()
    require(_run("mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(folder)),
            "can't mount a tmpfs here (needs root and mount); this test needs a real small file system")
    try:
        path = folder / "spans.sqlite3"
        # Port 9 (discard) on loopback refuses: every span stays pending, retried.
        kernel = start_kernel(store=path, OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9")
        kernel.ok("%load_ext trace_ext\nfrom trace_ext._extension import active\n_ids = []")
        kernel.ok(PRODUCE_IDS.format(n=200))  # the store and its journal exist while there is room
        ballast = folder / "ballast"
        _fill(ballast)
        for _ in range(6):
            kernel.ok(PRODUCE_IDS.format(n=500))  # cells go on: no error reaches the user
        warning = kernel.value("active().store.warning")
        assert "database or disk is full" in warning and "in memory" in warning, warning
        assert "cannot rollback" not in warning
        # Free part of it: room for the spans and about 1.8 MB more. The log's working set between
        # the sender's checkpoints (its marks rewrite whole pages) reaches ~1.2 MB here; with
        # less than that left over, the store goes back to memory mode (and says so) until the
        # next checkpoint. Before the fix, the copy back alone kept ~2.6 MB in the log.
        with open(ballast, "r+b") as fh:
            fh.truncate(max(ballast.stat().st_size - 4 * 1024 * 1024, 0))
        # The sender thread tries the file again, 5 s after the disk filled, then less often.
        assert wait_until(lambda: not kernel.value("active().store.in_memory"), 60), kernel.value("active().store.warning")
        log_size = (folder / "spans.sqlite3-wal").stat().st_size
        # Its limit (1 MB) and a sender's try or two since the switch; before the fix, 2.6 MB.
        assert log_size <= 1.5 * 2**20, f"the write-ahead log kept {log_size} bytes of the freed space"
        assert kernel.value("active().store.warning") == ""
        kernel.ok("%trace flush --timeout 0.5")  # the cell's spans saved (journal and store)
        kernel.ok(PRODUCE_IDS.format(n=100))  # more spans on the recovered disk stay on it
        state = kernel.value("[active().store.in_memory, active().store.warning]")
        assert state == [False, ""], (state, {f.name: f.stat().st_size for f in folder.iterdir()})
        produced = kernel.value("_ids")
        assert len(produced) == 3300 and len(set(produced)) == 3300
        os.kill(kernel.pid(), 9)
        assert wait_until(lambda: not kernel.km.is_alive(), 10)
        # The next kernel on the store imports what the killed one left in its journal.
        start_kernel(store=path).ok("%load_ext trace_ext\n%trace flush --timeout 0.5")
        # Durable means in the table or in a journal beside it (what the disk had no room to
        # import stays there, for whichever kernel finds room).
        kept = {span_id for span_id, (state, _error) in store_rows(path).items() if state == "pending"}
        lost = set(produced) - kept
        assert not lost, f"a kill -9 after recovery lost {len(lost)} of {len(produced)} spans"
    finally:
        if not _run("umount", str(folder)):
            _run("umount", "-l", str(folder))
