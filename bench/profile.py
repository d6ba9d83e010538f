"""Where trace_ext's in-cell cost per span goes: a cProfile of the cell's thread, and every thread's CPU.

In one real kernel with ``%load_ext trace_ext`` and a healthy loopback
backend: an untimed warm-up, then a cell of N spans timed *in the kernel*
(the span loop, then the post-cell hook called by hand on the same spans, so
the two are timed apart), with every thread's CPU time read from
``/proc/self/task/<tid>/stat`` before and after; then the same cell again under
cProfile (which profiles the cell's own thread only, and slows it down: its
shares matter, not its totals). Buckets group the profile's own time
(``tottime``) by module: the OpenTelemetry SDK making and ending spans,
trace_ext's ``on_end`` (redaction, watch), its OTLP encoding, the store's
save, SQLite, and the rest.

Then the garbage collector's share, peer beside peer (one kernel each): the
time spent in collections during the same cell, read from ``gc.callbacks``.
A span a processor keeps after its end is a dozen objects the collector walks
at every collection until they are let go; this is what made trace_ext keep
snapshots instead of the SDK's spans.
"""

from __future__ import annotations

import sys

from ._run import PEERS, START, backend, session, span_loop
from .cost import WARM

__all__ = ["run"]

HOOK_CELLS = 20


def _short(file: str) -> str:
    return file.split("site-packages/")[-1].split("/wt/bench/")[-1].split("/lib/python3.11/")[-1]

_PROBE = r'''
import cProfile, io, json, os, pstats, threading, time
from IPython.core.interactiveshell import ExecutionInfo, ExecutionResult
from trace_ext._extension import active as _active
_ext = _active(get_ipython())

def _cpu_by_thread():
    tick = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name for t in threading.enumerate()}
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(tid), f"native-{tid}")
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out

def _hook():
    info = ExecutionInfo(raw_cell="work()", store_history=True, silent=False, shell_futures=True, cell_id=None)
    _ext._post_run_cell(ExecutionResult(info))

def _bench_hook_idle_vs_busy(cells, spans):
    """The hook's wall time with the sender idle (flushed first) and busy (cells back to back)."""
    out = {"idle": [], "busy": []}
    for mode in ("idle", "busy"):
        trace_ext.flush(30)
        for _ in range(cells):
            if mode == "idle":
                trace_ext.flush(30)
            for _i in range(spans):
                with tracer.start_as_current_span("hooked", attributes={"i": _i}):
                    pass
            t0 = time.perf_counter()
            _hook()
            out[mode].append(time.perf_counter() - t0)
    return out

def _bench_profile_hook(cells, spans):
    """cProfile of the post-cell hook alone, called by hand after cells of ``spans`` spans."""
    trace_ext.flush(30)
    prof = cProfile.Profile()
    walls = []
    for _ in range(cells):
        for _i in range(spans):
            with tracer.start_as_current_span("hooked", attributes={"i": _i}):
                pass
        t0 = time.perf_counter()
        prof.enable()
        _hook()
        prof.disable()
        walls.append(time.perf_counter() - t0)
    stats = pstats.Stats(prof)
    rows = [[f, l, fn, nc, tt, ct] for (f, l, fn), (cc, nc, tt, ct, callers) in stats.stats.items()]
    return {"walls": walls, "rows": rows}

def _bench_profile_cell(n, profile):
    trace_ext.flush(30)
    before = _cpu_by_thread()
    prof = cProfile.Profile() if profile else None
    t0 = time.perf_counter()
    if prof: prof.enable()
    for _i in range(n):
        with tracer.start_as_current_span("profiled", attributes={"i": _i}):
            pass
    t1 = time.perf_counter()
    _hook()
    if prof: prof.disable()
    t2 = time.perf_counter()
    after = _cpu_by_thread()
    cpu = {k: round(after.get(k, 0) - before.get(k, 0), 3) for k in after if after.get(k, 0) - before.get(k, 0) > 0}
    result = {"loop": t1 - t0, "hook": t2 - t1, "cpu": cpu}
    if prof:
        stats = pstats.Stats(prof)
        rows = []
        for (file, line, func), (cc, nc, tt, ct, callers) in stats.stats.items():
            rows.append([file, line, func, nc, tt, ct])
        result["rows"] = rows
    return result
'''

# The garbage collector's time and collections per generation, from gc.callbacks.
_GC_PROBE = r'''
import gc as _gc, time as _gt
_gc_seen = {"s": 0.0, "n": [0, 0, 0], "t0": None}
def _gc_watch(phase, info):
    if phase == "start":
        _gc_seen["t0"] = _gt.perf_counter()
    elif _gc_seen["t0"] is not None:
        _gc_seen["s"] += _gt.perf_counter() - _gc_seen["t0"]
        _gc_seen["n"][info["generation"]] += 1
        _gc_seen["t0"] = None
_gc.callbacks.append(_gc_watch)
'''
GC_PEERS = ("bare", "bsp", "trace_ext")


def _gc_rows(n: int, workdir: str) -> list[str]:
    rows = []
    for key in GC_PEERS:
        peer = PEERS[key]
        queue = n + WARM + 1_000 if key == "bsp" else None  # as in the cost question: it drops nothing
        with backend("healthy") as receiver, session(peer, receiver, workdir, queue) as s:
            s.ok(_GC_PROBE)
            s.ok(span_loop(WARM, "warm"))
            s.settle()
            s.ok('_gc_seen["s"] = 0.0; _gc_seen["n"] = [0, 0, 0]')
            s.timed(START + span_loop(n, "step"))
            wall = s.kernel.value('_bench["cells"][-1][0]')
            seconds, counts = s.kernel.value('[_gc_seen["s"], _gc_seen["n"]]')
        rows.append(f"| {peer.label} | {wall / n * 1e6:.1f} | {seconds / n * 1e6:.1f} | "
                    f"{seconds / wall:.0%} | {counts[0]} / {counts[1]} / {counts[2]} |")
    return [
        "",
        f"The garbage collector during the same cell ({n:,} spans, post-cell hook included), one kernel per row:",
        "",
        "| set-up | cell µs/span | of it in the garbage collector, µs/span | share | collections (generation 0 / 1 / 2) |",
        "|---|---:|---:|---:|---:|",
        *rows,
    ]


BUCKETS = (
    ("trace_ext snapshots (at on_end) and OTLP encoding (trace_ext/_otlp.py)", ("trace_ext/_otlp",)),
    ("trace_ext on_end: redaction, watch, buffer (trace_ext/_recording, _redact)", ("trace_ext/_recording", "trace_ext/_redact")),
    ("trace_ext store save (trace_ext/_store)", ("trace_ext/_store",)),
    ("SQLite (sqlite3 C calls)", ("sqlite3",)),
    ("other trace_ext", ("trace_ext/",)),
    ("OpenTelemetry SDK and API: making, ending spans, context", ("opentelemetry/",)),
)


def _bucket(file: str, func: str) -> str:
    where = f"{file} {func}"
    for name, needles in BUCKETS:
        if any(needle in where for needle in needles):
            return name
    return "the cell's own loop, builtins and the rest"


def run(args, workdir: str) -> list[str]:
    n = args.spans
    peer = PEERS["trace_ext"]
    with backend("healthy") as receiver, session(peer, receiver, workdir) as s:
        s.ok(_PROBE)
        s.ok(span_loop(2_000, "warm"))
        plain = s.kernel.value(f"_bench_profile_cell({n}, False)")
        profiled = s.kernel.value(f"_bench_profile_cell({n}, True)")
        hooked = s.kernel.value(f"_bench_profile_hook({HOOK_CELLS}, 100)")
        contention = s.kernel.value(f"_bench_hook_idle_vs_busy({HOOK_CELLS}, 100)")
        s.ok("trace_ext.flush(30)")
    print("  profile: done", file=sys.stderr, flush=True)
    rows = profiled.pop("rows")
    total = sum(r[4] for r in rows) or 1.0
    buckets: dict[str, float] = {}
    for file, line, func, nc, tt, ct in rows:
        name = _bucket(file, func)
        buckets[name] = buckets.get(name, 0.0) + tt
    lines = [
        f"### Where trace_ext's in-cell cost goes ({n:,} spans in one cell, healthy loopback backend)",
        "",
        f"Without the profiler, timed in the kernel: the span loop {plain['loop'] / n * 1e6:.0f} µs/span "
        f"({plain['loop']:.2f} s), then the post-cell hook {plain['hook'] * 1e3:.0f} ms "
        f"({plain['hook'] / n * 1e6:.1f} µs/span).",
        "",
        "CPU seconds each thread used during that cell (loop + hook), against its "
        f"{plain['loop'] + plain['hook']:.2f} s of wall time:",
        "",
        "| thread | CPU s |",
        "|---|---:|",
    ]
    for name, cpu in sorted(plain["cpu"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {cpu:.2f} |")
    lines += [
        "",
        f"cProfile of the same cell on the cell's thread (own time, {total:.2f} s under the profiler; "
        f"the profiled loop took {profiled['loop']:.2f} s):",
        "",
        "| where | share of the cell thread's time | µs/span (profiled) |",
        "|---|---:|---:|",
    ]
    for name, tt in sorted(buckets.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {tt / total:.0%} | {tt / n * 1e6:.1f} |")
    lines += ["", "Top 15 functions by own time:", "", "```",
              f"{'own s':>7} {'cum s':>7} {'calls':>9}  function"]
    for file, line, func, nc, tt, ct in sorted(rows, key=lambda r: -r[4])[:15]:
        lines.append(f"{tt:7.3f} {ct:7.3f} {nc:9d}  {_short(file)}:{line}({func})")
    lines.append("```")
    walls = sorted(hooked["walls"])
    lines += [
        "",
        f"The post-cell hook alone, called by hand after each of {HOOK_CELLS} cells of 100 spans "
        f"(median {walls[len(walls) // 2] * 1e3:.2f} ms under the profiler); top 12 functions by cumulative time:",
        "", "```", f"{'own s':>7} {'cum s':>7} {'calls':>9}  function",
    ]
    for file, line, func, nc, tt, ct in sorted(hooked["rows"], key=lambda r: -r[5])[:12]:
        lines.append(f"{tt:7.3f} {ct:7.3f} {nc:9d}  {_short(file)}:{line}({func})")
    lines.append("```")
    idle, busy = sorted(contention["idle"]), sorted(contention["busy"])
    lines += [
        "",
        f"The same hook without the profiler, {HOOK_CELLS} cells of 100 spans each: with the sender idle "
        f"(`trace_ext.flush()` before each cell) median {idle[len(idle) // 2] * 1e3:.2f} ms, max "
        f"{idle[-1] * 1e3:.2f} ms; cells back to back (the sender still delivering the previous cell) median "
        f"{busy[len(busy) // 2] * 1e3:.2f} ms, max {busy[-1] * 1e3:.2f} ms.",
    ]
    lines += _gc_rows(n, workdir)
    print("  profile: garbage collector done", file=sys.stderr, flush=True)
    return lines
