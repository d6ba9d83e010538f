"""Memory through an outage of N spans, and what is delivered once the backend is back.

One fresh kernel per row. The backend is down from the start (connections
refused). The kernel makes 2,000 warm-up spans, then N spans in cells of
10,000 (each cell ends as the peer's users end it); the kernel's RSS and peak
(``VmRSS``, ``VmHWM`` of its process) are read from outside before and after.
Then the receiver comes back on the same port, the peer is told to deliver
(``force_flush()``, ``flush()``, ``trace_ext.flush()``) and the row counts the
distinct outage spans accepted.
"""

from __future__ import annotations

import sys
import time

from ._run import HELD, PEERS, STORED, backend, memory_mb, session, span_loop, wait_arrived
from ._table import Cell, table

__all__ = ["run"]


def _peers(rows) -> set[str]:
    """The best peer is the best of those that deliver: the floor keeps nothing, so its memory is no yardstick."""
    return {name for name, _ in rows if not name.startswith(("trace_ext", "OpenTelemetry SDK, no processor"))}

WARM = 2_000
CELL = 10_000
# (peer, queue size, row label)
ROWS = (
    ("bare", None, None),
    ("bsp", None, "SDK + BatchSpanProcessor + OTLP/HTTP, default queue (2,048)"),
    ("bsp", "all", "SDK + BatchSpanProcessor + OTLP/HTTP, queue for all (N + 2,000)"),
    ("langfuse", None, "Langfuse SDK, no flush (default queue)"),
    ("langfuse_flush", None, "Langfuse SDK, `flush()` per cell (default queue)"),
    ("trace_ext", None, None),
)


def _row(key: str, queue: int | None, n: int, workdir: str, recover: float) -> dict:
    peer = PEERS[key]
    with backend("down") as receiver, session(peer, receiver, workdir, queue) as s:
        s.ok(HELD + (STORED if key.startswith("trace_ext") else ""))
        s.ok(s.cell(span_loop(WARM, "warm")))
        pid = s.pid()
        rss0, _ = memory_mb(pid)
        produce = 0.0
        for done in range(0, n, CELL):
            produce += s.timed(s.cell(span_loop(min(CELL, n - done), "outage")))
        rss1, peak = memory_mb(pid)
        if key.startswith("trace_ext"):
            pending, _, size = s.kernel.value("_bench_stored()")
            held, disk = pending, size / 2**20
        else:
            held, disk = s.kernel.value("_bench_held()"), None
        kept, deliver = 0, None
        if peer.delivers:
            receiver.start()
            began = time.monotonic()
            s.settle(timeout=recover + 30)
            kept, _ = wait_arrived(receiver, "outage", n, 5)
            deliver = time.monotonic() - began
    return {
        "grow": rss1 - rss0, "peak": peak - rss0, "held": held, "disk": disk, "kept": kept,
        "deliver": deliver, "produce": produce / n * 1e6, "delivers": peer.delivers,
    }


def run(args, workdir: str) -> list[str]:
    n = args.outage_spans
    rows, extra = [], {}
    for key, queue, label in ROWS:
        size = n + WARM if queue == "all" else None
        r = _row(key, size, n, workdir, args.e2e_timeout)
        label = label or PEERS[key].label
        print(f"  outage: {label}: {r}", file=sys.stderr, flush=True)
        rows.append((label, [Cell([r["grow"]]), Cell([r["peak"]]), Cell([r["produce"]])]))
        extra[label] = [
            f"{r['disk']:.1f}" if r["disk"] is not None else "–",
            f"{r['held']:,}",
            f"{r['kept']:,}" if r["delivers"] else "keeps nothing",
            f"{n - r['kept']:,}" if r["delivers"] else "–",
            f"{r['deliver']:.1f}" if r["deliver"] is not None else "–",
        ]
    lines = [table(
        f"Memory through an outage of {n:,} spans (backend refusing connections), one kernel per row",
        "", ["RSS growth MB", "peak RSS growth MB", "µs/span in the cells"], rows, extra=extra, reference=_peers(rows),
        extra_columns=["store on disk MB", "held while down", "delivered after recovery", "lost",
                       "s to deliver after recovery"],
    )]
    lines += [
        "",
        f"- one round per row (the numbers are the kernel's own); RSS growth: VmRSS after the outage's cells "
        f"minus VmRSS after {WARM:,} warm-up spans; peak: VmHWM minus the same baseline; cells of {CELL:,} spans.",
        "- held while down: spans in the store (trace_ext: pending rows) or in the peer's queue, warm-up included; "
        "delivered, lost: the N outage spans only. After recovery each peer is told to deliver: "
        "`force_flush()`, Langfuse's `flush()`, `trace_ext.flush(…)`.",
        "- × best peer: against the best of the peers that deliver (the floor keeps nothing).",
    ]
    return lines
