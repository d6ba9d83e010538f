"""One cell of a million small spans: how long it takes, the kernel's peak memory, what arrives.

One fresh kernel per row, healthy backend. After a warm-up cell of 2,000
spans, one timed cell of N spans (client side, post-cell hook included). The
kernel's peak RSS (``VmHWM``) is read from outside, and its growth over the
RSS before the cell. Then the peer is told to deliver, untimed, and the row
counts the distinct spans accepted; trace_ext's rows also say what its store
holds. The peers keep their default queue here: one big enough for a million
spans would hold them all in memory (see the outage question for what that
costs).
"""

from __future__ import annotations

import sys

from ._run import HELD, PEERS, STORED, backend, memory_mb, session, span_loop, wait_arrived
from ._table import Cell, table

__all__ = ["run"]


def _peers(rows) -> set[str]:
    """The best peer is the best of those that deliver: the floor keeps nothing, so its memory is no yardstick;
    a row that made fewer spans (marked in bold) is no yardstick for the cell's time either."""
    return {name for name, _ in rows
            if not name.startswith(("trace_ext", "OpenTelemetry SDK, no processor")) and "**" not in name}

WARM = 2_000
ROWS = ("bare", "bsp", "langfuse_flush", "trace_ext")


def _row(key: str, n: int, workdir: str, deliver_timeout: float) -> dict:
    peer = PEERS[key]
    with backend("healthy") as receiver, session(peer, receiver, workdir) as s:
        s.ok(HELD + (STORED if key.startswith("trace_ext") else ""))
        s.ok(s.cell(span_loop(WARM, "warm")))
        s.settle()
        pid = s.pid()
        rss0, _ = memory_mb(pid)
        seconds = s.timed(s.cell(span_loop(n, "big")), timeout=1800)
        _, peak = memory_mb(pid)
        stored = None
        kept = 0
        if peer.delivers:
            s.settle(timeout=deliver_timeout + 30)
            kept, _ = wait_arrived(receiver, "big", n, deliver_timeout, poll=1.0)
        if key.startswith("trace_ext"):
            pending, sent, _ = s.kernel.value("_bench_stored()")
            stored = pending + sent
    return {"s": seconds, "peak": peak, "grow": peak - rss0, "kept": kept, "stored": stored, "delivers": peer.delivers}


def run(args, workdir: str) -> list[str]:
    n = args.big_spans
    rows, extra = [], {}
    for key in ROWS:
        # Langfuse's row spent ~600 µs a span in trial runs (its exporter works through a full queue
        # all the time): a million would take ten minutes, so it makes a tenth of them.
        size = n // 10 if key == "langfuse_flush" and n >= 100_000 else n
        r = _row(key, size, workdir, args.e2e_timeout * 2)
        label = PEERS[key].label
        if key in ("bsp", "langfuse_flush"):
            label += ", default queue (2,048)"
        if size != n:
            label += f", **{size:,} spans**"
        print(f"  big: {label}: {r}", file=sys.stderr, flush=True)
        rows.append((label, [Cell([r["s"]]), Cell([r["s"] / size * 1e6]), Cell([r["peak"]]), Cell([r["grow"]])]))
        extra[label] = [
            f"{r['kept']:,}" if r["delivers"] else "delivers nothing",
            f"{r['stored']:,} (pending + sent)" if r["stored"] is not None else "–",
        ]
    lines = [table(
        f"{n:,} spans in one cell, healthy backend, one kernel per row",
        "", ["cell s", "µs/span", "kernel peak RSS MB", "peak RSS growth MB"], rows, extra=extra, reference=_peers(rows),
        extra_columns=["spans accepted by the receiver", "in trace_ext's store"],
    )]
    lines += [
        "",
        f"- one round; the timed cell follows an untimed warm-up of {WARM:,} spans; accepted: distinct spans the "
        f"receiver accepted after the peer was told to deliver (`force_flush()`, `flush()`, `trace_ext.flush(…)`), "
        f"waiting at most {args.e2e_timeout * 2:g} s more.",
        "- × best peer: against the best of the peers that deliver (the floor keeps nothing).",
        "- the Langfuse row flushes at the end of its cell: for one cell that is the only difference from no flush.",
    ]
    return lines
