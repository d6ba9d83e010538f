#!/usr/bin/env python
"""What trace_ext adds to the end of a cell that produced 100 spans, next to what people do today.

Run from the repository root::

    python bench/post_cell_hook.py            # N=200 cells per row (about a minute)
    python bench/post_cell_hook.py --quick    # N=30
    python bench/post_cell_hook.py --cells 500 --profile

Every trace_ext row runs trace_ext for real: an in-process IPython shell,
``%load_ext trace_ext``, the global OpenTelemetry tracer. Each iteration makes
one "cell's worth" of spans (a parent with 99 children, ~200 bytes of
attributes each) *outside* the timing, then times exactly one call of the
post-cell hook, ``Extension._post_run_cell(result)``, with
``time.perf_counter_ns``. The peers time ``TracerProvider.force_flush()`` of the
OpenTelemetry SDK's ``BatchSpanProcessor(OTLPSpanExporter(...))`` after the
same 100 spans, which is what users are told to call at the end of a cell.

Backends are ``tests/otlp_receiver.py``'s ``OtlpReceiver`` on 127.0.0.1 only:
nothing leaves the machine. Everything is bounded (fixed iteration counts,
receivers stopped, extension unloaded with a short shutdown timeout), so the
script ends by itself.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import math
import os
import platform
import pstats
import shutil
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from _machine import machine_line, version  # noqa: E402 - bench/ is on sys.path when a script runs

SPANS_PER_CELL = 100
WARMUP_CELLS = 5  # per row, not timed
SLOW_PEER_CELLS = 10  # the 2 s-delay peer row: each iteration costs ~2 s
SLOW_DELAY_S = 2.0
HANG_S = 30.0
# ~200 bytes of attribute data per span (keys + values), like a small LLM call.
_PROMPT = "Summarise the quarterly report for the board in three bullet points, plainly."


# --------------------------------------------------------------------------- helpers


def _quantile(ordered: list[int], q: float) -> int:
    """Nearest-rank quantile of an ascending list (q=0.5 is the median's upper middle)."""
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def _summary(samples_ns: list[int]) -> tuple[float, float, float, float]:
    ordered = sorted(samples_ns)
    n = len(ordered)
    median = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
    return (
        median / 1e6,
        _quantile(ordered, 0.95) / 1e6,
        _quantile(ordered, 0.99) / 1e6,
        ordered[-1] / 1e6,
    )


def make_cell_spans(tracer, cell: int) -> None:
    """One cell's worth of spans: a parent with 99 children, a few attributes each."""
    with tracer.start_as_current_span(
        "agent.run",
        attributes={"bench.cell": cell, "session.id": "bench-session", "input.value": _PROMPT},
    ):
        for child in range(SPANS_PER_CELL - 1):
            span = tracer.start_span(
                "llm.call",
                attributes={
                    "gen_ai.request.model": "gpt-4o-mini",
                    "gen_ai.usage.input_tokens": 412,
                    "gen_ai.usage.output_tokens": 96,
                    "input.value": _PROMPT,
                    "bench.child": child,
                },
            )
            span.end()


class Row:
    def __init__(self, name: str, timed: str, samples: list[int] | None, note: str = "") -> None:
        self.name, self.timed, self.samples, self.note = name, timed, samples, note


def _table(rows: list[Row]) -> str:
    lines = [
        "| # | row | what is timed | n | median ms | p95 ms | p99 ms | max ms |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for i, row in enumerate(rows, 1):
        if row.samples:
            med, p95, p99, top = _summary(row.samples)
            cells = f"{len(row.samples)} | {med:.3f} | {p95:.3f} | {p99:.3f} | {top:.3f}"
        else:
            cells = f"0 | skipped: {row.note} | | |"
        lines.append(f"| {i} | {row.name} | {row.timed} | {cells} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- trace_ext rows


def _shell():
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.hist_file = ":memory:"  # don't touch the user's history database
    config.TraceExt.widget = False  # no widget repr printed into the bench's output
    return InteractiveShell.instance(config=config)


def _plain_cell_result(shell, cell: int):
    from IPython.core.interactiveshell import ExecutionInfo, ExecutionResult

    info = ExecutionInfo(
        raw_cell=f"result_{cell} = agent.run(question)",
        store_history=True,
        silent=False,
        shell_futures=True,
        cell_id=None,
    )
    result = ExecutionResult(info)
    result.execution_count = shell.execution_count
    return result


def time_hook(
    ext, shell, tracer, cells: int, gap_s: float = 0.0, profile: cProfile.Profile | None = None
) -> list[int]:
    """Make 100 spans (untimed), then time one ``_post_run_cell`` call; ``cells`` times.

    ``gap_s`` is an untimed pause after each hook (a user reading the output);
    0 runs cells back to back, so the sender is busy while the next cell commits.
    """
    samples: list[int] = []
    for cell in range(WARMUP_CELLS + cells):
        if gap_s and cell:
            time.sleep(gap_s)
        make_cell_spans(tracer, cell)
        result = _plain_cell_result(shell, cell)
        buffered = ext.processor.buffered()
        if buffered != SPANS_PER_CELL:
            raise RuntimeError(f"expected {SPANS_PER_CELL} buffered spans, found {buffered}")
        if profile is not None and cell >= WARMUP_CELLS:
            profile.enable()
        start = time.perf_counter_ns()
        ext._post_run_cell(result)
        elapsed = time.perf_counter_ns() - start
        if profile is not None:
            profile.disable()
        if ext.processor.buffered():
            raise RuntimeError("the hook left spans in the buffer")
        if cell >= WARMUP_CELLS:
            samples.append(elapsed)
    return samples


def time_on_end(ext, repeats: int = 50) -> tuple[float, float, float]:
    """Per-span microseconds: trace_ext's on_end alone, and span end-to-end with/without it.

    (1) ``BufferingSpanProcessor.on_end`` called directly on 100 already-ended
        spans (encode to OTLP bytes + append to the buffer), median over ``repeats``.
    (2) creating and ending 100 spans on the global provider (trace_ext's
        processor attached) minus the same on a bare SDK TracerProvider with no
        processor: what trace_ext adds to the cell's own thread per span.
    """
    from opentelemetry import trace
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

    class Keep(SpanProcessor):
        def __init__(self) -> None:
            self.spans = []

        def on_end(self, span) -> None:
            self.spans.append(span)

    keep = Keep()
    scratch = TracerProvider()
    scratch.add_span_processor(keep)
    make_cell_spans(scratch.get_tracer("bench"), 0)
    ended = keep.spans
    assert len(ended) == SPANS_PER_CELL
    processor = ext.processor

    direct: list[int] = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for span in ended:
            processor.on_end(span)
        direct.append(time.perf_counter_ns() - start)
        processor.take()  # discard: this part measures encoding, not storing

    bare = TracerProvider().get_tracer("bench")
    traced = trace.get_tracer("bench")
    with_ext: list[int] = []
    without: list[int] = []
    for i in range(repeats):
        start = time.perf_counter_ns()
        make_cell_spans(traced, i)
        with_ext.append(time.perf_counter_ns() - start)
        processor.take()
        start = time.perf_counter_ns()
        make_cell_spans(bare, i)
        without.append(time.perf_counter_ns() - start)
    scratch.shutdown()

    def per_span_us(samples: list[int]) -> float:
        return sorted(samples)[len(samples) // 2] / SPANS_PER_CELL / 1e3

    return per_span_us(direct), per_span_us(with_ext), per_span_us(without)


def run_trace_ext_rows(args, rows: list[Row], extras: list[str]) -> None:
    from opentelemetry import trace

    from tests.otlp_receiver import Hang, OtlpReceiver
    import trace_ext._extension as extension_module

    shell = _shell()
    shell.run_line_magic("load_ext", "trace_ext")
    ext = extension_module.active(shell)
    if ext is None:
        raise RuntimeError("%load_ext trace_ext did not leave an active extension")
    tracer = trace.get_tracer("bench")
    timed = (
        f"`ext._post_run_cell(result)` after a plain cell that ended {SPANS_PER_CELL} spans "
        "(span creation not timed)"
    )
    healthy = OtlpReceiver().start()
    hanging = OtlpReceiver().start()
    hanging.default = Hang(HANG_S)
    try:
        # Row 1: no endpoint at all: the embedded default, spans stay in the store.
        profile = cProfile.Profile() if args.profile else None
        samples = time_hook(ext, shell, tracer, args.cells, args.gap, profile)
        rows.append(Row("trace_ext hook, no endpoint (embedded default)", timed, samples))
        if profile is not None:
            out = io.StringIO()
            pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(18)
            extras.append("cProfile of row 1's timed hook calls (cumulative):\n\n```\n" + out.getvalue().strip() + "\n```")

        direct, with_ext, without = time_on_end(ext)
        extras.append(
            "Cost on the cell's own thread while spans end (median of 50 x 100 spans):\n"
            f"- trace_ext `BufferingSpanProcessor.on_end` alone (OTLP encode + buffer append): "
            f"**{direct:.1f} µs per span** ({direct * SPANS_PER_CELL / 1e3:.2f} ms per 100 spans)\n"
            f"- create+end a span on the global provider with trace_ext's processor: {with_ext:.1f} µs per span; "
            f"on a bare SDK TracerProvider with no processor: {without:.1f} µs per span "
            f"(difference {with_ext - without:+.1f} µs per span)"
        )

        # Row 2: a healthy loopback backend; the sender delivers in the background.
        shell.run_line_magic("config", f'TraceExt.endpoint = "{healthy.url}"')
        ext.flush(5.0)  # start the row with an idle sender
        samples = time_hook(ext, shell, tracer, args.cells, args.gap)
        rows.append(Row("trace_ext hook, healthy loopback backend", timed, samples))
        expected = (WARMUP_CELLS + args.cells) * SPANS_PER_CELL
        report = ext.flush(20.0)
        delivered = len(healthy.spans)
        extras.append(
            f"Row 2 delivery check: the healthy receiver accepted {delivered} of {expected} spans "
            f"in {len(healthy.requests)} requests; after flush(20) pending={report.pending}."
        )

        # Row 3: a backend that reads the request and never answers.
        shell.run_line_magic("config", f'TraceExt.endpoint = "{hanging.url}"')
        samples = time_hook(ext, shell, tracer, args.cells, args.gap)
        rows.append(Row("trace_ext hook, backend that never answers (Hang 30 s)", timed, samples))
        counts = ext.store.counts()
        extras.append(
            f"Row 3 check: the hanging receiver got {len(hanging.requests)} request(s), answered none; "
            f"{counts.pending} spans pending in the store, state '{ext.status.state}'."
        )
    finally:
        # Unload with a short bound: the sender may be mid-request to the hanging
        # receiver, and the default shutdown_timeout (3 s) would only wait longer.
        try:
            shell.run_line_magic("config", "TraceExt.shutdown_timeout = 0.5")
            shell.run_line_magic("unload_ext", "trace_ext")
        finally:
            hanging.stop()
            healthy.stop()


# --------------------------------------------------------------------------- peers


def _peer_row(receiver_url: str, cells: int) -> list[int]:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(
        resource=Resource.create({"service.name": "bench-peer"}), shutdown_on_exit=False
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=receiver_url)))
    tracer = provider.get_tracer("bench")
    samples: list[int] = []
    warmup = min(WARMUP_CELLS, max(1, cells // 5))
    try:
        for cell in range(warmup + cells):
            make_cell_spans(tracer, cell)
            start = time.perf_counter_ns()
            provider.force_flush()
            elapsed = time.perf_counter_ns() - start
            if cell >= warmup:
                samples.append(elapsed)
    finally:
        provider.shutdown()
    return samples


def run_peer_rows(args, rows: list[Row], extras: list[str]) -> None:
    from tests.otlp_receiver import Delay, OtlpReceiver

    timed = f"`provider.force_flush()` after a cell that ended {SPANS_PER_CELL} spans"
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: F401
    except ImportError as exc:
        why = f"opentelemetry-exporter-otlp-proto-http is not importable ({exc})"
        print(f"Peer rows skipped: {why}.")
        rows.append(Row("OTel SDK BatchSpanProcessor + OTLPSpanExporter, healthy backend", timed, None, why))
        rows.append(Row("OTel SDK BatchSpanProcessor + OTLPSpanExporter, backend answers after 2 s", timed, None, why))
        return

    with OtlpReceiver() as healthy:
        samples = _peer_row(healthy.url, args.cells)
    rows.append(Row("OTel SDK BatchSpanProcessor + OTLPSpanExporter, healthy loopback backend", timed, samples))

    slow_cells = min(args.cells, SLOW_PEER_CELLS)
    with OtlpReceiver() as slow:
        slow.default = Delay(SLOW_DELAY_S)
        samples = _peer_row(slow.url, slow_cells)
    rows.append(
        Row(
            f"OTel SDK BatchSpanProcessor + OTLPSpanExporter, backend answers after {SLOW_DELAY_S:g} s "
            f"(only {slow_cells} cells: each costs ~{SLOW_DELAY_S:g} s)",
            timed,
            samples,
        )
    )
    extras.append(
        "Peer note: in opentelemetry-sdk "
        f"{version('opentelemetry-sdk')}, `BatchSpanProcessor.force_flush(timeout_millis)` "
        "ignores its timeout and exports synchronously on the caller's thread, so the cell "
        "waits for the backend's answer, bounded only by the exporter's own deadline per "
        "512-span batch (OTEL_EXPORTER_OTLP_TRACES_TIMEOUT, 10 s by default, retries included)."
    )


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=200, help="timed cells per row (default 200)")
    parser.add_argument("--quick", action="store_true", help="30 cells per row")
    parser.add_argument(
        "--gap-ms", type=float, default=0.0,
        help="untimed pause after each trace_ext cell, in ms (default 0: cells back to back)",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile row 1's hook calls and print the top entries")
    args = parser.parse_args()
    if args.quick:
        args.cells = 30
    if args.cells < 1:
        parser.error("--cells must be at least 1")
    if args.gap_ms < 0:
        parser.error("--gap-ms must not be negative")
    args.gap = args.gap_ms / 1e3

    # Only this process's environment: no destination may leak in from the shell
    # that started the bench (row 1 must be the embedded default), and no IPython
    # profile or trace_ext store of the user's is touched.
    for name in list(os.environ):
        if name.startswith(("OTEL_EXPORTER_OTLP_", "LANGFUSE_")):
            del os.environ[name]
    workdir = tempfile.mkdtemp(prefix="trace_ext-bench-")
    os.environ["TRACE_EXT_STORE_PATH"] = os.path.join(workdir, "spans.sqlite3")
    os.environ["IPYTHONDIR"] = os.path.join(workdir, "ipython")

    import IPython

    import trace_ext

    print("# trace_ext post-cell hook benchmark\n")
    print(machine_line())
    print(f"- Python {platform.python_version()} ({platform.python_implementation()})")
    print(
        f"- trace_ext {trace_ext.__version__}, opentelemetry-sdk {version('opentelemetry-sdk')}, "
        f"opentelemetry-exporter-otlp-proto-http {version('opentelemetry-exporter-otlp-proto-http')}, "
        f"ipython {IPython.__version__}, httpx {version('httpx')}"
    )
    print(
        f"- {args.cells} timed cells per row (after {WARMUP_CELLS} untimed warm-up cells), "
        f"{SPANS_PER_CELL} spans per cell (1 parent + {SPANS_PER_CELL - 1} children, ~200 B of attributes each), "
        f"{args.gap_ms:g} ms untimed pause between trace_ext cells; "
        f"store: SQLite WAL in a temp dir; backends: loopback OtlpReceiver on 127.0.0.1"
    )
    print()
    sys.stdout.flush()

    rows: list[Row] = []
    extras: list[str] = []
    started = time.monotonic()
    try:
        run_trace_ext_rows(args, rows, extras)
        run_peer_rows(args, rows, extras)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(_table(rows))
    print()
    for extra in extras:
        print(extra)
        print()
    print(f"Total run time: {time.monotonic() - started:.1f} s.")

    lingering = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if lingering:
        print("Non-daemon threads still running: " + ", ".join(t.name for t in lingering))
    sys.stdout.flush()
    return 1 if lingering else 0


if __name__ == "__main__":
    code = main()
    # Every thread left is a daemon (trace_ext's sender may still sit in an
    # export to the hanging receiver until its 10 s export_timeout; receiver
    # handler threads are daemons), so a normal exit is not blocked. If a
    # non-daemon thread did linger, main() said so above and we leave hard
    # rather than hang.
    if code:
        os._exit(code)
    sys.exit(code)
