#!/usr/bin/env python
"""Langfuse's own ``flush()`` in a cell against trace_ext, in real kernels, healthy and slow backend.

Run from the repository root::

    python bench/langfuse_flush.py            # about 2.5 minutes
    python bench/langfuse_flush.py --cells 10 # fewer timed cells per row

Part 1, cell latency: each row starts a real Jupyter kernel (this interpreter,
``tests/kernel.py``) with ``LANGFUSE_BASE_URL`` pointing at a loopback
``OtlpReceiver`` (``tests/otlp_receiver.py``) that plays Langfuse's OTLP
endpoint, healthy or answering every export after ``--delay`` seconds. A cell
calls two nested ``@observe`` functions (2 spans). Timed: one cell, from the
``execute_request`` to the kernel going idle again (client side, so hooks
are in). Rows:

- Langfuse alone, the cell ends with ``get_client().flush()`` (what people
  add today so nothing stays in memory);
- Langfuse alone, no flush call (the floor: spans wait in memory);
- Langfuse + ``%load_ext trace_ext``, no flush call (trace_ext's post-cell
  hook stores the spans and flushes Langfuse off the cell's thread).

Part 2, what arrives: a notebook of ``--notebook-cells`` @observe-only cells,
then the kernel is shut down right after the last cell:

- gracefully (``KernelManager.shutdown_kernel(now=False)``: a shutdown
  request, then up to 5 s before the kernel is killed), with and without
  trace_ext, against a healthy backend and against delays of 2 s and 10 s;
- abruptly (``now=True``: SIGKILL).

Whenever spans are still missing with trace_ext, a new kernel on the same
store runs ``%load_ext trace_ext`` and ``%trace flush`` (what the next session
of the notebook would do) and the table says what that recovered.

A span "arrived" when the receiver answered 2xx to a request carrying it
(counted once per span id; duplicates are reported separately). Loopback
only; every kernel is shut down, every receiver stopped.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
BENCH = os.path.join(ROOT, "bench")
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

from _machine import machine_line, version  # noqa: E402

from tests.kernel import Kernel, kernelspec_dir  # noqa: E402
from tests.otlp_receiver import Delay, OtlpReceiver  # noqa: E402

KEYS = {"LANGFUSE_PUBLIC_KEY": "pk-lf-bench", "LANGFUSE_SECRET_KEY": "sk-lf-bench"}
SPANS_PER_CELL = 2
WARMUP_CELLS = 2

DEFINE = """
from langfuse import observe, get_client

@observe()
def retrieve(query):
    return [query, query[::-1]]

@observe(name="answer")
def answer(query):
    return " ".join(retrieve(query))
"""


# --------------------------------------------------------------------------- helpers


def _env(store: str, receiver: OtlpReceiver) -> dict[str, str]:
    routing = ("LANGFUSE_", "OTEL_", "TRACE_EXT_", "PHOENIX_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(routing)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    env.update(KEYS, LANGFUSE_BASE_URL=receiver.base_url, TRACE_EXT_STORE_PATH=store)
    return env


def _start(store: str, receiver: OtlpReceiver, cwd: str, trace_ext: bool) -> Kernel:
    kernel = Kernel(env=_env(store, receiver), cwd=cwd)
    if trace_ext:
        kernel.ok("%load_ext trace_ext")
    kernel.ok(DEFINE)
    return kernel


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def _arrived(receiver: OtlpReceiver) -> tuple[int, int]:
    """(distinct span ids accepted, extra copies accepted)."""
    counts = Counter(receiver.span_ids())
    return len(counts), sum(n - 1 for n in counts.values())


def _wait_arrived(receiver: OtlpReceiver, produced: int, timeout: float) -> None:
    receiver.wait_for(lambda r: len(set(r.span_ids())) >= produced, timeout)


# --------------------------------------------------------------------------- part 1: latency

LATENCY_ROWS = [
    # (name, trace_ext loaded, cell code)
    ("Langfuse + `get_client().flush()` in the cell", False, "answer('q{i}')\nget_client().flush()"),
    ("Langfuse, no flush call (spans wait in memory)", False, "answer('q{i}')"),
    ("Langfuse + trace_ext, no flush call", True, "answer('q{i}')"),
]


def latency_row(name: str, trace_ext: bool, code: str, delay: float, cells: int, tmp: str) -> dict:
    with OtlpReceiver() as receiver:
        receiver.default = Delay(delay) if delay else None
        store = os.path.join(tmp, f"latency-{time.monotonic_ns()}.sqlite3")
        kernel = _start(store, receiver, tmp, trace_ext)
        try:
            for i in range(WARMUP_CELLS):
                kernel.ok(code.format(i=f"warm{i}"))
            samples = []
            for i in range(cells):
                began = time.perf_counter()
                kernel.ok(code.format(i=i))
                samples.append((time.perf_counter() - began) * 1000)
            produced = (WARMUP_CELLS + cells) * SPANS_PER_CELL
            # Untimed: let every row deliver what it can (trace_ext: its own flush; else Langfuse's).
            settle = "import trace_ext; trace_ext.flush(20)" if trace_ext else "get_client().flush()"
            kernel.ok(settle, timeout=120)
            _wait_arrived(receiver, produced, 5 + delay)
        finally:
            kernel.shutdown(now=True)
        arrived, extra = _arrived(receiver)
    ordered = sorted(samples)
    return {
        "name": name, "backend": f"answers after {delay:g} s" if delay else "healthy",
        "n": len(samples), "p50": ordered[(len(ordered) - 1) // 2], "p95": _quantile(ordered, 0.95),
        "max": ordered[-1], "arrived": f"{arrived}/{produced}" + (f" (+{extra} dup)" if extra else ""),
    }


# --------------------------------------------------------------------------- part 2: what arrives


def arrival_row(trace_ext: bool, delay: float, abrupt: bool, cells: int, tmp: str) -> dict:
    with OtlpReceiver() as receiver:
        receiver.default = Delay(delay) if delay else None
        store = os.path.join(tmp, f"arrival-{time.monotonic_ns()}.sqlite3")
        kernel = _start(store, receiver, tmp, trace_ext)
        for i in range(cells):
            kernel.ok(f"answer('question {i}')")
        produced = cells * SPANS_PER_CELL
        began = time.monotonic()
        kernel.shutdown(now=abrupt)
        shutdown_s = time.monotonic() - began
        # What was on the wire when the kernel went is answered after `delay`.
        _wait_arrived(receiver, produced, delay + 2)
        before, _ = _arrived(receiver)
        recovered = ""
        if trace_ext and before < produced:  # the rest is in the store: the next kernel sends it
            began = time.monotonic()
            second = Kernel(env=_env(store, receiver), cwd=tmp)
            try:
                second.ok("%load_ext trace_ext")
                second.ok("%trace flush --timeout 30", timeout=60)
                _wait_arrived(receiver, produced, 2)
            finally:
                second.shutdown(now=True)
            recovered = f"{_arrived(receiver)[0] - before} in {time.monotonic() - began:.1f} s"
        arrived, extra = _arrived(receiver)
    how = "SIGKILL" if abrupt else "graceful"
    return {
        "setup": "Langfuse + trace_ext" if trace_ext else "Langfuse alone",
        "backend": f"answers after {delay:g} s" if delay else "healthy",
        "end": f"{how} ({shutdown_s:.1f} s)", "at_end": f"{before}/{produced}",
        "recovered": recovered or ("-" if trace_ext else "nothing kept"),
        "arrived": f"{arrived}/{produced}" + (f" (+{extra} dup)" if extra else ""),
    }


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=20, help="timed cells per healthy-backend row (default 20)")
    parser.add_argument("--slow-cells", type=int, default=8,
                        help="timed cells for the flush() row against the slow backend (each costs --delay)")
    parser.add_argument("--delay", type=float, default=2.0, help="the slow backend's answer delay, s (default 2)")
    parser.add_argument("--notebook-cells", type=int, default=5, help="cells in part 2's notebook (default 5)")
    args = parser.parse_args()

    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [kernelspec_dir(), os.environ.get("JUPYTER_PATH")]))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="trace-ext-bench-") as tmp:
        latency = []
        for delay in (0.0, args.delay):
            for name, trace_ext, code in LATENCY_ROWS:
                slow_flush = delay and "flush()" in code
                cells = args.slow_cells if slow_flush else args.cells
                latency.append(latency_row(name, trace_ext, code, delay, cells, tmp))
                print(f"  ... {name} / {latency[-1]['backend']}: done", file=sys.stderr, flush=True)
        arrival = []
        for abrupt, delays in ((False, (0.0, args.delay, 10.0)), (True, (0.0, args.delay))):
            for delay in delays:
                for trace_ext in (False, True):
                    arrival.append(arrival_row(trace_ext, delay, abrupt, args.notebook_cells, tmp))
                    print(f"  ... {arrival[-1]['setup']} / {arrival[-1]['backend']} / {arrival[-1]['end']}: done",
                          file=sys.stderr, flush=True)

    print("## Cell latency: Langfuse's flush() in the cell vs trace_ext (real kernels)\n")
    print("| # | setup | backend | n | p50 ms | p95 ms | max ms | arrived / produced |")
    print("|---|---|---|---:|---:|---:|---:|---|")
    for i, r in enumerate(latency, 1):
        print(f"| {i} | {r['name']} | {r['backend']} | {r['n']} | {r['p50']:.1f} | {r['p95']:.1f} | "
              f"{r['max']:.1f} | {r['arrived']} |")
    print()
    print(f"## What arrives when the kernel ends right after the last cell ({args.notebook_cells} cells, "
          f"{args.notebook_cells * SPANS_PER_CELL} spans)\n")
    print("| # | setup | backend | kernel end (time) | arrived by then | recovered by a new kernel | arrived / produced |")
    print("|---|---|---|---|---:|---|---|")
    for i, r in enumerate(arrival, 1):
        print(f"| {i} | {r['setup']} | {r['backend']} | {r['end']} | {r['at_end']} | {r['recovered']} | {r['arrived']} |")
    print()
    print(machine_line())
    print(f"- versions: trace_ext {version('trace_ext')}, langfuse {version('langfuse')}, "
          f"opentelemetry-sdk {version('opentelemetry-sdk')}, ipykernel {version('ipykernel')}, "
          f"jupyter_client {version('jupyter_client')}, Python {sys.version.split()[0]}")
    print(f"- cell latency: client-side wall time of one execute_request until the kernel is idle; "
          f"{WARMUP_CELLS} untimed warm-up cells per row; p95 nearest-rank; each cell makes "
          f"{SPANS_PER_CELL} spans (two nested @observe calls).")
    print("- 'arrived / produced' in the latency table: distinct span ids the receiver accepted after an "
          "untimed settle (`trace_ext.flush(20)` or `get_client().flush()`).")
    print("- 'arrived by then': distinct span ids accepted within (delay + 2) s after the kernel ended "
          "(a request already on the wire is counted once the receiver answers it, even if the client is gone).")
    print("- a '+N dup' is a span the receiver accepted twice: its request was answered after the kernel "
          "died, before the store could mark it sent, so the next kernel sent it again (at-least-once).")
    print(f"- whole run: {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
