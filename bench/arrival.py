"""What arrives when the kernel ends right after the last cell: Langfuse alone against Langfuse + trace_ext.

Run from the repository root: ``python -m bench --only arrival`` (not in the
default run: it is about durability, not cost).

A notebook of ``NOTEBOOK_CELLS`` cells, each calling two nested ``@observe``
functions (2 spans), in a real kernel with the real ``langfuse`` package whose
``LANGFUSE_BASE_URL`` is a loopback ``OtlpReceiver`` playing Langfuse's OTLP
endpoint (healthy, or answering every export after a delay). Right after the
last cell the kernel is shut down gracefully
(``KernelManager.shutdown_kernel(now=False)``: a shutdown request, then up to
5 s before it is killed) against a healthy backend and delays of 2 s and 10 s,
or abruptly (``now=True``: SIGKILL). Whenever spans are still missing with
trace_ext, a new kernel on the same store runs ``%load_ext trace_ext`` and
``%trace flush`` (what the next session of the notebook would do).

A span "arrived" when the receiver answered 2xx to a request carrying it
(counted once per span id; duplicates are reported separately). Loopback
only; every kernel is shut down, every receiver stopped.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter

from ._run import LANGFUSE_KEYS as KEYS, ROOT
from tests.kernel import Kernel
from tests.otlp_receiver import Delay, OtlpReceiver

__all__ = ["run"]

SPANS_PER_CELL = 2

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


def _arrived(receiver: OtlpReceiver) -> tuple[int, int]:
    """(distinct span ids accepted, extra copies accepted)."""
    counts = Counter(receiver.span_ids())
    return len(counts), sum(n - 1 for n in counts.values())


def _wait_arrived(receiver: OtlpReceiver, produced: int, timeout: float) -> None:
    receiver.wait_for(lambda r: len(set(r.span_ids())) >= produced, timeout)


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


# --------------------------------------------------------------------------- run

NOTEBOOK_CELLS = 5
SLOW_S = 2.0


def run(args, workdir: str) -> list[str]:
    tmp = os.path.join(workdir, "arrival")
    os.makedirs(tmp, exist_ok=True)
    arrival = []
    for abrupt, delays in ((False, (0.0, SLOW_S, 10.0)), (True, (0.0, SLOW_S))):
        for delay in delays:
            for trace_ext in (False, True):
                arrival.append(arrival_row(trace_ext, delay, abrupt, NOTEBOOK_CELLS, tmp))
                print(f"  arrival: {arrival[-1]['setup']} / {arrival[-1]['backend']} / {arrival[-1]['end']}",
                      file=sys.stderr, flush=True)
    lines = [
        f"### What arrives when the kernel ends right after the last cell ({NOTEBOOK_CELLS} cells, "
        f"{NOTEBOOK_CELLS * SPANS_PER_CELL} spans)",
        "",
        "| # | setup | backend | kernel end (time) | arrived by then | recovered by a new kernel | arrived / produced |",
        "|---|---|---|---|---:|---|---|",
    ]
    for i, r in enumerate(arrival, 1):
        lines.append(f"| {i} | {r['setup']} | {r['backend']} | {r['end']} | {r['at_end']} | {r['recovered']} "
                     f"| {r['arrived']} |")
    lines += [
        "",
        "- 'arrived by then': distinct span ids accepted within (delay + 2) s after the kernel ended "
        "(a request already on the wire is counted once the receiver answers it, even if the client is gone).",
        "- a '+N dup' is a span the receiver accepted twice: its request was answered after the kernel "
        "died, before the store could mark it sent, so the next kernel sent it again (at-least-once).",
    ]
    return lines
