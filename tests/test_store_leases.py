"""Leases of a dead kernel: the next kernel on the host takes them over at once,
and never takes over a live kernel's (two kernels sharing a store send a span once).

The kernels here are SpanStores in this process that claim under another
owner's name: a pid that no longer exists, or a subprocess that lives until the
test ends. tests/test_faults.py (test 6) does the same with a real SIGKILLed kernel.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time

import pytest

import trace_ext._store.store as store_module
from trace_ext._store.store import PENDING, SpanStore
from trace_ext._store.leases import Owner, this_owner

from .conftest import recording_tracer

# The tables of a store made by the release before lease owners (no lease_owner, no leases).
OLD_SCHEMA = """
CREATE TABLE origins (id INTEGER PRIMARY KEY, digest BLOB NOT NULL UNIQUE, resource BLOB NOT NULL, scope BLOB NOT NULL);
CREATE TABLE spans (
    id INTEGER PRIMARY KEY,
    trace_id TEXT NOT NULL, span_id TEXT NOT NULL, parent_id TEXT, name TEXT NOT NULL,
    start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL, status INTEGER NOT NULL,
    origin INTEGER NOT NULL REFERENCES origins(id),
    payload BLOB NOT NULL, size INTEGER NOT NULL,
    state TEXT NOT NULL, lease_until REAL NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT, recorded_at REAL NOT NULL, done_at REAL
);
CREATE INDEX spans_by_state ON spans(state, id);
CREATE INDEX spans_by_trace ON spans(trace_id);
"""


@pytest.fixture
def records():
    processor, tracer = recording_tracer("leases")

    def make(n: int):
        for i in range(n):
            tracer.start_span(f"s{i}").end()
        return processor.take()

    return make


@pytest.fixture
def live_process():
    """Another process of this host that lives until the test ends."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    yield proc
    proc.stdin.close()
    proc.wait(timeout=10)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=10)  # exited and reaped: the pid names no process now
    return proc.pid


def claim_as(monkeypatch, store: SpanStore, owner: Owner, n: int = 100):
    """``store.claim`` made by ``owner`` rather than by this process."""
    with monkeypatch.context() as patch:
        patch.setattr(store_module, "this_owner", lambda: owner)
        return store.claim(n, 10**9, 30)


def leases(path) -> list[tuple]:
    conn = sqlite3.connect(str(path))
    try:
        return conn.execute("SELECT lease_owner, lease_until > ? FROM spans ORDER BY id", (time.time(),)).fetchall()
    finally:
        conn.close()


def test_a_lease_of_a_process_that_no_longer_exists_is_taken_over_at_once(store_path, records, monkeypatch):
    dead = this_owner()._replace(pid=dead_pid())
    killed = SpanStore(str(store_path))
    killed.save(records(5), PENDING)
    assert len(claim_as(monkeypatch, killed, dead)) == 5  # then the kernel is killed mid-request
    assert leases(store_path) == [(dead.name, 1)] * 5

    started = time.monotonic()
    store = SpanStore(str(store_path))  # the next kernel
    claimed = store.claim(100, 10**9, 30)

    assert len(claimed) == 5 and time.monotonic() - started < 5  # not 30 s later
    assert leases(store_path) == [(this_owner().name, 1)] * 5
    store.mark_sent([c.id for c in claimed])
    assert leases(store_path) == [(None, 0)] * 5  # done: no owner, out of the lease index
    killed.close()
    store.close()


def test_a_live_processs_lease_is_never_taken_over(store_path, records, monkeypatch, live_process):
    other = this_owner()._replace(pid=live_process.pid)
    kernel_a = SpanStore(str(store_path))
    kernel_a.save(records(5), PENDING)
    assert len(claim_as(monkeypatch, kernel_a, other, n=3)) == 3

    kernel_b = SpanStore(str(store_path))
    assert [c.id for c in kernel_b.claim(100, 10**9, 30)] == [4, 5]  # only what nobody holds
    kernel_b._leases_checked_at = float("-inf")  # and looking again changes nothing
    assert kernel_b.claim(100, 10**9, 30) == []
    assert [owner for owner, _ in leases(store_path)[:3]] == [other.name] * 3
    kernel_a.close()
    kernel_b.close()


def test_leases_of_another_host_or_pid_namespace_are_left_to_run_out(store_path, records, monkeypatch):
    pid = dead_pid()
    kernel_a = SpanStore(str(store_path))
    kernel_a.save(records(4), PENDING)
    claim_as(monkeypatch, kernel_a, this_owner()._replace(host="elsewhere", pid=pid), n=2)
    claim_as(monkeypatch, kernel_a, this_owner()._replace(ns="pid:[1]", pid=pid), n=2)  # another container

    kernel_b = SpanStore(str(store_path))
    assert kernel_b.claim(100, 10**9, 30) == []  # that pid may well be alive where it ran
    kernel_a.close()
    kernel_b.close()


def test_a_span_reclaimed_by_an_older_release_after_the_dead_lease_ran_out_is_not_taken(store_path, records, monkeypatch):
    dead = this_owner()._replace(pid=dead_pid())
    kernel_a = SpanStore(str(store_path))
    kernel_a.save(records(2), PENDING)
    claim_as(monkeypatch, kernel_a, dead)
    # An older trace_ext (which writes no owner) claims span 1 after the dead lease
    # ran out: the span keeps the dead kernel's name, with a later lease_until.
    conn = sqlite3.connect(str(store_path))
    conn.execute("UPDATE spans SET lease_until = ? WHERE id = 1", (time.time() + 300,))
    conn.commit()
    conn.close()

    kernel_b = SpanStore(str(store_path))
    assert [c.id for c in kernel_b.claim(100, 10**9, 30)] == [2]
    kernel_a.close()
    kernel_b.close()


def test_a_store_from_the_previous_release_gets_lease_owners(store_path, records):
    store_path.parent.mkdir(parents=True)
    conn = sqlite3.connect(str(store_path))
    conn.executescript(OLD_SCHEMA)
    conn.execute("INSERT INTO origins(id, digest, resource, scope) VALUES (1, x'00', x'', x'')")
    conn.execute(
        "INSERT INTO spans(trace_id, span_id, name, start_ns, end_ns, status, origin, payload, size, state,"
        " recorded_at) VALUES ('t', 's', 'old', 1, 2, 0, 1, x'0a', 1, 'pending', 0)"
    )
    conn.commit()
    conn.close()

    store = SpanStore(str(store_path))
    store.save(records(1), PENDING)
    claimed = store.claim(100, 10**9, 30)

    assert len(claimed) == 2 and leases(store_path) == [(this_owner().name, 1)] * 2
    store.close()
    again = SpanStore(str(store_path))  # opening a migrated store again is a no-op
    again.close()


def test_looking_for_dead_kernels_reads_only_leased_rows(store_path, records):
    store = SpanStore(str(store_path))
    store.save(records(1), PENDING)
    conn = store._disk()
    (plan,) = [row[3] for row in conn.execute(
        "EXPLAIN QUERY PLAN UPDATE spans SET lease_until = 0, lease_owner = NULL"
        " WHERE lease_owner = ? AND state = ? AND lease_until > ? AND lease_until <= ?", ("h:1", PENDING, 0, 1))]
    assert "spans_by_lease_owner" in plan, plan
    store.close()
