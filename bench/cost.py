"""Cost per span in the cell, and end-to-end delivery of the same cell.

One fresh kernel per row and round; rows alternate within a round (every
peer once, then the next round), so a change in the machine's load hits all
rows alike; every other round runs them in reverse order, so that no row
always follows the same neighbour (a kernel right after one of the Langfuse
``flush()`` rows, which wait minutes on a down or hung backend, measured up
to a fifth slower, whichever peer it ran). In each kernel: the peer's set-up, an untimed warm-up cell of
``WARM`` spans and its settle, then the timed cell of N spans (the loop of
``_run.span_loop``), timed client side from the execute request until the
kernel is idle (the post-cell hook included). µs per span = that time / N.

With the healthy backend the same run also gives the end-to-end time: from
the timed cell's execute request until the receiver has accepted all N spans.
"""

from __future__ import annotations

import sys
import time

from ._run import BACKENDS, PEERS, START, arrived, backend, session, span_loop, wait_arrived
from ._table import Cell, table

__all__ = ["run"]

WARM = 2_000
ROWS = ("bare", "bsp", "langfuse", "langfuse_flush", "trace_ext", "trace_ext_local")
# The floor and the embedded default do not talk to a backend: they run once per round.
BACKEND_FREE = ("bare", "trace_ext_local")


def _one(key: str, kind: str, n: int, workdir: str, e2e_timeout: float) -> tuple[float, list[float], float | None, int]:
    peer = PEERS[key]
    # A queue that holds the whole cell: the peer drops nothing (the SDK's default, 2,048, would).
    queue = n + WARM + 1_000 if key in ("bsp", "langfuse", "langfuse_flush") else None
    with backend(kind) as receiver, session(peer, receiver, workdir, queue) as s:
        s.ok(s.cell(span_loop(WARM, "warm")))
        if kind == "healthy":
            s.settle()
        began = time.monotonic()
        seconds = s.timed(START + s.cell(span_loop(n, "step")))
        inside = s.kernel.value('_bench["cells"][-1]')  # [wall, process CPU, main-thread CPU] in the kernel
        e2e, got = None, 0
        if kind == "healthy" and peer.delivers:
            got, last = wait_arrived(receiver, "step", n, e2e_timeout)
            if got >= n and last is not None:
                e2e = last - began
        elif kind == "healthy":
            got = arrived(receiver, "step")[0]
    return seconds, inside, e2e, got


def run(args, workdir: str) -> list[str]:
    n = args.spans
    # As many rounds down and hung as healthy: a median of two rounds is their mean, and on
    # this 2-core machine one kernel's timed cell ran 25 to 37 µs a span from round to round
    # (a hung backend, /tmp probe), more than the gap between the peers.
    rounds = {kind: args.rounds for kind in BACKENDS}
    kinds = [k for k in BACKENDS if k in args.backends]
    cost = {(key, kind): [] for key in ROWS for kind in kinds}
    cpu = {(key, kind, what): [] for key in ROWS for kind in kinds for what in (1, 2)}
    e2e: dict[str, list[float]] = {key: [] for key in ROWS}
    delivered: dict[str, list[int]] = {key: [] for key in ROWS}
    for kind in kinds:
        for r in range(rounds[kind]):
            for key in (ROWS if r % 2 == 0 else ROWS[::-1]):
                if key in BACKEND_FREE and kind != kinds[0]:
                    continue
                seconds, inside, end_to_end, got = _one(key, kind, n, workdir, args.e2e_timeout)
                cost[key, kind].append(seconds / n * 1e6)
                for what in (1, 2):
                    cpu[key, kind, what].append(inside[what] / n * 1e6)
                if kind == "healthy":
                    delivered[key].append(got)
                    if end_to_end is not None:
                        e2e[key].append(end_to_end)
                print(f"  cost: {kind} round {r + 1}: {key} {seconds / n * 1e6:.0f} µs/span", file=sys.stderr, flush=True)

    rows = []
    for key in ROWS:
        cells = []
        for kind in kinds:
            samples = cost[key, kind]
            if not samples and key in BACKEND_FREE:
                samples = cost[key, kinds[0]]
                cells.append(Cell(samples, "(no backend)") if samples else Cell(note="–"))
            else:
                cells.append(Cell(samples))
        rows.append((PEERS[key].label, cells))
    floor = Cell(cost["bare", kinds[0]]).value or 0.0
    added = {}
    for key in ROWS:
        added[PEERS[key].label] = [
            f"{(Cell(cost[key, kind]).value or floor) - floor:+.0f}" if cost[key, kind] else "–" for kind in kinds
        ]
    out = [table(
        f"Cost per span in the cell ({n:,} spans in one cell, post-cell hook included; one kernel per row and round)",
        "µs/span", kinds, rows, extra=added, extra_columns=[f"{k}: µs added over the floor" for k in kinds],
    )]
    for what, name in ((1, "CPU time of the kernel process (all its threads)"),
                       (2, "CPU time of the cell's own thread")):
        cpu_rows = []
        for key in ROWS:
            cells = []
            for kind in kinds:
                samples = cpu[key, kind, what] or (cpu[key, kinds[0], what] if key in BACKEND_FREE else [])
                cells.append(Cell(samples, "" if cpu[key, kind, what] else "(no backend)"))
            cpu_rows.append((PEERS[key].label, cells))
        out += ["", table(f"Same runs, {name} per span, cell start to the end of the post-cell hooks",
                          "µs/span", kinds, cpu_rows)]
    cpu_notes = []
    floor_cpu = Cell(cpu["bare", kinds[0], 1]).value or 0.0
    for kind in kinds:
        ours, bsp = Cell(cpu["trace_ext", kind, 1]).value, Cell(cpu["bsp", kind, 1]).value
        if ours is not None and bsp is not None and bsp - floor_cpu > 0:
            cpu_notes.append(f"{kind}: {(ours - floor_cpu) / (bsp - floor_cpu):.2f}")
    ratio_notes = []
    for kind in kinds:
        ours = Cell(cost["trace_ext", kind]).value
        bsp = Cell(cost["bsp", kind]).value
        if ours is not None and bsp is not None and bsp - floor > 0:
            ratio_notes.append(f"{kind}: {(ours - floor) / (bsp - floor):.2f}")
    out.append("")
    out.append(f"- rounds: {', '.join(f'{k} {rounds[k]}' for k in kinds)}; each round runs every row once, "
               f"in the order of the table, every other round in reverse; warm-up cell of {WARM:,} spans per "
               "kernel, untimed.")
    out.append("- µs trace_ext adds over the floor ÷ µs the batch processor adds (issue 13 asks ≤ 0.5 healthy, "
               "≤ 1 down or hung), wall time: " + ("; ".join(ratio_notes) or "–")
               + "; process CPU time: " + ("; ".join(cpu_notes) or "–"))
    out.append("- wall time is client side (execute request to idle) and feels the machine's other load; "
               "the CPU tables are measured in the kernel and do not, but miss time spent waiting for the GIL.")
    out.append(f"- batch processor and Langfuse rows: max_queue_size = N + {WARM + 1000:,}, so they drop nothing "
               "(Langfuse through OTEL_BSP_MAX_QUEUE_SIZE). Langfuse's rows use the OpenTelemetry tracer of its client "
               "(`get_client()._otel_tracer`): by default it exports only its own tracer's spans.")

    if "healthy" in kinds:
        rows = []
        notes = {}
        for key in ROWS:
            peer = PEERS[key]
            if not peer.delivers:
                rows.append((peer.label, [Cell(note="delivers nothing")]))
                continue
            rows.append((peer.label, [Cell(e2e[key])]))
            notes[peer.label] = [", ".join(f"{g:,}" for g in delivered[key]) + f" of {n:,}"]
        out.append("")
        out.append(table(
            f"End to end: {n:,} spans, from the cell's execute request until the receiver accepted the last one",
            "s", ["healthy"], rows, extra=notes, extra_columns=["spans accepted per round"],
        ))
        out.append("")
        out.append(f"- the same healthy-backend runs as the table above; rounds where not all spans arrived within "
                   f"{args.e2e_timeout:g} s are left out of the median.")
    return out
