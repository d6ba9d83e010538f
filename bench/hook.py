"""The post-cell hook, and how soon the next cell answers, with a healthy, hung and down backend.

One fresh kernel per row and backend. After the peer's set-up the bench
registers a ``post_run_cell`` callback of its own, last, so it runs after any
hook the peer registered (trace_ext's). Each cell makes 100 spans, stamps the
time its code ended, then runs what the peer's users put at the end of a cell
(``force_flush()``, ``flush()``, or nothing). Timed, in the kernel: from that
stamp until the bench's callback, i.e. the end-of-cell call plus every
post-cell hook.

Next-cell latency: every timed cell is sent together with a trivial next
cell, as "Run All" does. Timed: from the first cell's stamp (in the kernel)
until the client sees the next cell's kernel go idle (both clocks are the
machine's monotonic clock).
"""

from __future__ import annotations

import sys
import time

from ._run import BACKENDS, PEERS, STAMP, backend, session, span_loop
from ._table import Cell, table

__all__ = ["run"]

SPANS = 100
ROWS = ("bare", "bsp_flush", "langfuse", "langfuse_flush", "trace_ext", "trace_ext_local")
BACKEND_FREE = ("bare", "trace_ext_local")
REFERENCE = ("bsp_flush", "langfuse_flush")  # the peers whose spans have left the process when the cell ends
SLOW_S = 1.0  # a warm-up cell slower than this marks a row whose every cell waits on the backend
SLOW_CELLS = 2

def _row(key: str, kind: str, cells: int, workdir: str) -> tuple[list[float], list[float], str]:
    peer = PEERS[key]
    with backend(kind) as receiver, session(peer, receiver, workdir) as s:
        cell = s.cell(span_loop(SPANS, "hook") + STAMP)
        warm = s.timed(cell, timeout=120)
        slow = warm > SLOW_S
        if not slow:
            s.timed(cell, timeout=120)
        s.ok('_bench["ends"].clear(); _bench["hook"].clear(); _bench["hookcpu"].clear()')
        timed = SLOW_CELLS if slow else cells
        seen_idle = []
        kernel = s.kernel
        for _ in range(timed):
            kernel.kc.execute(cell)
            nxt = kernel.kc.execute("_bench_next = 1")

            def idle(msg_id=nxt) -> bool:
                return any(
                    m["msg_type"] == "status" and m["content"]["execution_state"] == "idle"
                    and m["parent_header"].get("msg_id") == msg_id
                    for m in kernel._messages[-50:]
                )

            if not kernel.wait_for(idle, 120):
                raise TimeoutError(f"{key}/{kind}: the next cell never finished")
            seen_idle.append(time.perf_counter())
        got = s.kernel.value('{"ends": _bench["ends"], "hook": _bench["hook"], "cpu": _bench["hookcpu"]}')
    hook_ms = [h * 1e3 for h in got["hook"]]
    cpu_ms = [c * 1e3 for c in got["cpu"]]
    next_ms = [(idle - end) * 1e3 for idle, end in zip(seen_idle, got["ends"])]
    note = f"{timed} cells" + (" (each waits on the backend)" if slow else "")
    return hook_ms, cpu_ms, next_ms, note


def run(args, workdir: str) -> list[str]:
    kinds = [k for k in BACKENDS if k in args.backends]
    hook: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    nxt: dict[tuple[str, str], list[float]] = {}
    notes: dict[tuple[str, str], str] = {}
    for kind in kinds:
        for key in ROWS:
            if key in BACKEND_FREE and kind != kinds[0]:
                continue  # talks to no backend
            hook[key, kind], cpu[key, kind], nxt[key, kind], notes[key, kind] = _row(key, kind, args.cells, workdir)
            print(f"  hook: {kind}: {key} {notes[key, kind]}", file=sys.stderr, flush=True)

    def rows(data):
        out = []
        for key in ROWS:
            cells = []
            for kind in kinds:
                samples = data.get((key, kind)) or (data.get((key, kinds[0])) if key in BACKEND_FREE else None)
                cells.append(Cell(samples or [], "" if (key, kind) in data else "(no backend)"))
            out.append((PEERS[key].label, cells))
        return out

    reference = {PEERS[k].label for k in REFERENCE}
    counts = {PEERS[key].label: [", ".join(notes.get((key, k), "–") for k in kinds)] for key in ROWS}
    lines = [table(
        f"Post-cell hook: the end-of-cell call plus every post-cell hook, a cell of {SPANS} spans",
        "ms", kinds, rows(hook), spread="p95", reference=reference, extra=counts,
        extra_columns=["timed cells per backend"],
    )]
    lines += [
        "",
        f"- × best peer: against the better of {' and '.join(PEERS[k].label for k in REFERENCE)}, the peers whose "
        "spans have left the process when the cell ends. The others leave them in memory: nothing runs at the end "
        "of their cells (the SDK's batch processor without force_flush() is the same as the floor here).",
        f"- a row whose warm-up cell took over {SLOW_S:g} s waits on the backend in every cell: it runs "
        f"{SLOW_CELLS} timed cells; the others {args.cells}, after 2 untimed warm-up cells.",
        "",
    ]
    lines.append(table(
        "Same runs, CPU time of the cell's thread in the end-of-cell call and the post-cell hooks",
        "ms", kinds, rows(cpu), spread="p95", reference=reference,
    ))
    lines += ["", "- CPU time does not count waiting (for the network, the GIL, or a core the machine's other "
              "load holds); wall time does.", ""]
    lines.append(table(
        "Next-cell latency: a cell of 100 spans and a trivial next cell sent together (Run All); "
        "from the first cell's code ending until the next cell is done",
        "ms", kinds, rows(nxt), spread="p95", reference=reference,
    ))
    lines += ["", "- same runs as the table above; the hung backend reads each request and never answers."]
    return lines
