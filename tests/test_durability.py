"""A finished cell's spans are durable whatever holds the store's lock, whenever the user
interrupts, and spans ended outside any cell within about a second -- in real kernels,
killed with SIGKILL, counted by span id (issue 11, cases 1-3, 6, 7).

Each test checks the accounting rule of test_faults (sent + failed + pending ==
produced, by id, against what the receiver accepted).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections import Counter

from .conftest import memory_mb, wait_until
from .otlp_receiver import Hang
from .test_faults import (
    CELL, SETUP, all_stored, assert_accounted, extension_exit_took, flushed, status_text, store_rows, timed_exit,
    traced_kernel,
)


def kill_9(kernel) -> None:
    """SIGKILL the kernel process and wait until it is gone."""
    process = kernel.km.provisioner.process
    os.kill(kernel.pid(), signal.SIGKILL)
    process.wait(timeout=20)


# --------------------------------------------------------------------------- 1


def test_a_cell_ending_while_another_writer_holds_the_store_lock_survives_kill_9(
    start_kernel, receiver, store_path
):
    kernel = traced_kernel(start_kernel, receiver)
    receiver.stop()  # nothing is sent: every span must stay pending
    # Another writer (another kernel's big cell, any other program) holds the write lock
    # for longer than SQLite's busy timeout (2 s) while the cells end.
    writer = sqlite3.connect(str(store_path), isolation_level=None, timeout=5)
    writer.execute("BEGIN IMMEDIATE")
    try:
        took = []
        for i in range(3):
            started = time.monotonic()
            kernel.ok(CELL.format(name=f"locked-{i}"))
            took.append(time.monotonic() - started)
        produced = kernel.value("_ids")
        assert len(produced) == 6
        kill_9(kernel)  # the lock is still held: nothing of these cells is in the store file yet
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    # The next kernel on the store finds what the killed one saved.
    traced_kernel(start_kernel, receiver)
    assert wait_until(lambda: all_stored(store_path, produced, journals=False), 30), "the next kernel did not import them"
    assert assert_accounted(store_path, receiver, produced) == Counter(pending=6)
    # Each cell returned at once rather than after waiting out the busy timeout.
    assert max(took) < 1.9, took


# --------------------------------------------------------------------------- 2

# Arms an interrupt (SIGINT, as a frontend's stop button sends) that lands exactly
# ``k`` profiler events after IPython starts its post_run_cell callbacks: a sweep
# of k puts it everywhere inside trace_ext's post-cell hook.
ARM = '''
import os as _os, signal as _signal, sys as _sys
_fired = []
def _arm(k):
    seen = [None, 0]  # the trigger's frame, events since
    def prof(frame, event, arg):
        if seen[0] is None:
            if event == "call" and frame.f_code.co_name == "trigger" and frame.f_locals.get("event") == "post_run_cell":
                seen[0] = frame
            return
        if event == "return" and frame is seen[0]:
            _sys.setprofile(None)  # the callbacks are over: this k is past the hook's end
            return
        seen[1] += 1
        if seen[1] >= k:
            _sys.setprofile(None)
            _fired.append(k)
            _os.kill(_os.getpid(), _signal.SIGINT)
    _sys.setprofile(prof)
'''

INTERRUPTED_CELL = (
    "%%trace cut-{k}\n"
    "_ids.append(format(_t.get_current_span().get_span_context().span_id, '016x'))\n"
    "for _i in range(50):\n"
    "    with _t.get_tracer('lib').start_as_current_span('child') as _s:\n"
    "        _ids.append(format(_s.get_span_context().span_id, '016x'))\n"
    "_arm({k})"
)


def test_an_interrupt_landing_in_the_post_cell_hook_loses_no_span(start_kernel, receiver, store_path):
    kernel = traced_kernel(start_kernel, receiver)
    kernel.ok(ARM)
    sweep = [1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 20, 25, 32, 40, 50, 64, 80, 100, 130, 160, 200, 260,
             330, 420, 530, 670, 850, 1100, 1400, 1800, 2300, 3000, 4000, 6000]
    for k in sweep:
        kernel.execute(INTERRUPTED_CELL.format(k=k))  # the reply's status is IPython's business
    kernel.ok("_sys.setprofile(None)")
    fired = kernel.value("_fired")
    assert len(fired) >= 10, fired  # most of the sweep landed inside the post-cell callbacks
    produced = kernel.value("_ids")
    assert len(produced) == 51 * len(sweep)
    out = kernel.ok("%trace flush --timeout 30", timeout=60).stdout
    assert "0 still pending" in out, out
    assert assert_accounted(store_path, receiver, produced) == Counter(sent=len(produced))


# --------------------------------------------------------------------------- 3

BACKGROUND = '''
import threading as _th, time as _time
def _spans_in_the_background(path, count):
    tracer = _t.get_tracer("worker")
    with open(path, "a") as out:
        for i in range(count):
            with tracer.start_as_current_span(f"bg-{{i}}") as s:
                out.write(format(s.get_span_context().span_id, "016x") + "\\n")
            out.flush()
            _time.sleep(0.01)
        out.write("done\\n")
_th.Thread(target=_spans_in_the_background, args=({path!r}, {count}), daemon=True).start()
'''


def test_spans_ended_outside_any_cell_are_durable_within_about_a_second(
    start_kernel, receiver, store_path, tmp_path
):
    kernel = traced_kernel(start_kernel, receiver)
    receiver.stop()
    ids_file = tmp_path / "background-ids.txt"
    kernel.ok(BACKGROUND.format(path=str(ids_file), count=155))  # the cell returns at once

    def lines() -> list[str]:
        return ids_file.read_text().split() if ids_file.exists() else []

    assert wait_until(lambda: "done" in lines(), 30), "the background thread never finished"
    done_at = time.monotonic()
    produced = [line for line in lines() if line != "done"]
    assert len(produced) == 155
    # No cell runs meanwhile: the spans must reach the store on their own.
    assert wait_until(lambda: all_stored(store_path, produced), 10), "spans ended outside a cell never reached the store"
    latency = time.monotonic() - done_at
    kill_9(kernel)
    assert assert_accounted(store_path, receiver, produced) == Counter(pending=155)
    assert latency < 10, latency


# --------------------------------------------------------------------------- 6

PRODUCER = '''
import threading as _th
_stop_producing = _th.Event()
def _produce():
    tracer = _t.get_tracer("busy")
    while not _stop_producing.is_set():
        with tracer.start_as_current_span("busy") as s:
            s.set_attribute("payload", "x" * 200)
_th.Thread(target=_produce, daemon=True).start()
'''


def test_exit_with_a_busy_span_producer_and_a_hanging_backend_is_bounded(start_kernel, receiver, store_path):
    receiver.default = Hang(60)
    kernel = traced_kernel(start_kernel, receiver, "shutdown_timeout = 2")
    kernel.ok(CELL.format(name="before"))
    kernel.ok(PRODUCER)
    assert receiver.wait_for(lambda rx: len(rx.requests) >= 1, timeout=20)  # one is in flight
    assert wait_until(lambda: all_stored(store_path, []) and len(store_rows(store_path)) > 5000, 60)
    took = timed_exit(kernel, 2 + 1)
    ours = extension_exit_took(kernel)  # the rest is the kernel's own teardown (see test_faults)
    print(f"exit: trace_ext's part {ours:.2f} s, kernel gone after {took:.2f} s")
    # From the shutdown request to trace_ext's exit handler returning, with a thread that
    # holds the GIL nonstop: 1.69-2.03 s, idle or with four other processes spinning.
    assert ours <= 2 + 0.5, f"trace_ext's exit work took {ours:.2f} s (shutdown_timeout = 2)"
    # The user's thread still makes spans (at no cost to trace_ext, whose processor is
    # inert by then) while the kernel tears down (0.2-0.3 s, as without trace_ext). The
    # whole exit (before: 15 s) took 2.05-2.53 s on this 2-core machine, idle or with
    # four other processes spinning (35 runs): the bound, shutdown_timeout + 1 s.
    assert took <= 2 + 1, f"the kernel took {took:.2f} s to exit (shutdown_timeout = 2)"
    # What it saved is in the store (or its journal, for the next kernel), pending, never accepted.
    rows = store_rows(store_path)
    assert rows and all(state == "pending" for state, _error in rows.values())
    assert receiver.span_ids() == []


# --------------------------------------------------------------------------- 7

MANY = """%%trace many
_tracer = _t.get_tracer("bulk")
for _i in range({n}):
    with _tracer.start_as_current_span("small"):
        pass
"""


def test_a_cell_making_300k_spans_is_saved_and_sent_while_it_runs_in_bounded_memory(
    start_kernel, receiver, store_path
):
    # Before, such a cell held every span in memory until it ended (this test: +242 MB;
    # 1,000,000 spans: peak 766 MB), and the sender made no request for 96 s while it ran.
    # Now +42-51 MB and 9-149 requests while it ran, idle or with four processes spinning.
    # (The 1,000,000 spans take the bench's run; see bench/README.)
    n = 300_000
    kernel = traced_kernel(start_kernel, receiver)
    kernel.ok(CELL.format(name="warm-up"))
    flushed(kernel)
    before = memory_mb(kernel, "VmHWM")
    kernel.ok(MANY.format(n=n), timeout=300)
    ended = time.monotonic()
    during = [request for request in receiver.requests if request.received_at < ended]
    flushed(kernel, 240)
    grew = memory_mb(kernel, "VmHWM") - before
    print(f"{n:,} spans: peak memory +{grew:.0f} MB, {len(during)} requests while the cell ran")
    assert grew < 150, f"the kernel's peak memory grew by {grew:.0f} MB for {n:,} spans"
    assert during, "the sender made no request while the cell ran"
    # Every span of the cell is in the store, sent, and the receiver took each exactly once.
    conn = sqlite3.connect(str(store_path))
    try:
        (trace_id,) = conn.execute("SELECT trace_id FROM spans WHERE name = 'many'").fetchone()
        rows = conn.execute("SELECT span_id, state FROM spans WHERE trace_id = ?", (trace_id,)).fetchall()
    finally:
        conn.close()
    assert len(rows) == n + 1 and {state for _id, state in rows} == {"sent"}
    accepted = Counter(receiver.span_ids())
    assert all(accepted[span_id] == 1 for span_id, _state in rows)


# --------------------------------------------------------------------------- 4


def test_spans_recorded_while_the_endpoint_variable_has_no_scheme_are_sent_once_it_is_fixed(
    start_kernel, receiver, store_path
):
    broken = receiver.url.replace("http://", "")  # 127.0.0.1:port/v1/traces
    kernel = start_kernel(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=broken)
    kernel.ok("%load_ext trace_ext")
    kernel.ok(SETUP)
    for i in range(2):
        kernel.ok(CELL.format(name=f"no-scheme-{i}"))
    produced = kernel.value("_ids")
    assert "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT must be an http:// or https:// URL" in status_text(kernel)
    # A mistake to fix, not a choice to keep spans here: they wait, pending.
    assert assert_accounted(store_path, receiver, produced) == Counter(pending=4)
    kernel.ok(f"import os\nos.environ['OTEL_EXPORTER_OTLP_TRACES_ENDPOINT'] = {receiver.url!r}")
    flushed(kernel)
    assert assert_accounted(store_path, receiver, produced) == Counter(sent=4)


# --------------------------------------------------------------------------- 15


def test_reload_ext_leaks_nothing_and_inside_a_traced_cell_keeps_it_ok(start_kernel, receiver, store_path):
    kernel = traced_kernel(start_kernel, receiver, env_endpoint=True)  # the destination outlives reloads
    for _ in range(5):
        kernel.ok("%reload_ext trace_ext")
    kernel.ok(
        "%%trace reloading\n"
        "_ids.append(format(_t.get_current_span().get_span_context().span_id, '016x'))\n"
        "%reload_ext trace_ext\n"
        "'still fine'"
    )
    kernel.ok(CELL.format(name="after"))
    left = kernel.value(
        "[__import__('gc').collect(), sum(isinstance(o, __import__('trace_ext._extension', fromlist=['x']).Extension)"
        " for o in __import__('gc').get_objects())][1]"
    )
    assert left == 1, f"{left} Extension objects are alive after 6 reloads"
    produced = kernel.value("_ids")
    flushed(kernel)
    assert assert_accounted(store_path, receiver, produced) == Counter(sent=3)
    (cell,) = [s for s in receiver.spans if s.name == "reloading"]
    assert cell.status_code != 2, f"the reloading cell's span is an error: {cell.status_message!r}"
    assert cell.attributes.get("output.value") == "'still fine'"
