#!/usr/bin/env python
"""How long the trace view takes to build, and how big it is, for large stores.

Run from the repository root::

    python bench/view_render.py            # 3 runs per row (about a minute)
    python bench/view_render.py --runs 1

Each row fills a temporary store with real spans (made by the OpenTelemetry
SDK, encoded by trace_ext, saved as a cell would save them), then times, in
this process, what ``%trace show`` does: reading and decoding the traces
(``read``), building the HTML (``html``) and the text form (``text``). The
sizes are what the notebook would hold. Rows:

1. one trace of 10,000 spans (the waterfall's cap), agent-like attributes;
2. one trace of 12,000 spans: 10,000 embedded, and the view says so;
3. a list of 1,000 traces of 5 spans (the list's cap);
4. 1,000 traces of 30 spans: the view's 10,000-span budget gives the newest
   traces waterfalls and lists the rest without one;
5. ``%trace show``'s default, the newest 20 traces, from a store of 100,000 spans.

The time a browser takes to lay the HTML out is not measured here (no browser
harness yet); the HTML needs no script, so that is the browser's parse and
layout of the bytes below.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench._machine import machine_line, version  # noqa: E402


def _spans(traces: int, per_trace: int):
    """``traces`` traces of ``per_trace`` spans each: a cell, a chain, then generations and tools."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    from trace_ext._otlp import OriginCache, encode_span

    class Keep(SpanExporter):
        def __init__(self) -> None:
            self.spans = []

        def export(self, spans):
            self.spans += spans
            return SpanExportResult.SUCCESS

    keep = Keep()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(keep))
    tracer = provider.get_tracer("bench")
    for n in range(traces):
        with tracer.start_as_current_span(f"In [{n}]", attributes={
            "jupyter.execution_count": n, "langfuse.trace.name": f"cell-{n}", "session.id": "bench",
            "input.value": "for q in questions:\n    answer(q)\n", "langfuse.trace.tags": ["bench"],
        }):
            with tracer.start_as_current_span("agent", attributes={"openinference.span.kind": "CHAIN"}):
                for i in range(per_trace - 2):
                    generation = i % 3 != 2
                    attributes = {
                        "openinference.span.kind": "LLM" if generation else "TOOL",
                        "input.value": '{"messages": [{"role": "user", "content": "question %d"}]}' % i,
                        "input.mime_type": "application/json",
                        "output.value": "an answer of about a hundred characters, " * 2,
                    }
                    if generation:
                        attributes.update({"gen_ai.request.model": "gpt-bench", "gen_ai.usage.input_tokens": 42,
                                           "gen_ai.usage.output_tokens": 17})
                    with tracer.start_as_current_span(f"step-{i}", attributes=attributes):
                        pass
    cache = OriginCache()
    return [encode_span(s, 100_000, cache) for s in keep.spans]


def _row(label: str, traces: int, per_trace: int, limit: int, runs: int) -> str:
    from trace_ext._display.traces import Query
    from trace_ext._display.view import trace_view
    from trace_ext._store.schema import SpanState
    from trace_ext._store.store import SpanStore

    records = _spans(traces, per_trace)
    with tempfile.TemporaryDirectory(prefix="trace-ext-bench-") as folder:
        store = SpanStore(os.path.join(folder, "spans.sqlite3"))
        try:
            for start in range(0, len(records), 2000):
                store.save(records[start:start + 2000], SpanState.LOCAL)
            reads, htmls, texts = [], [], []
            for _ in range(runs):
                t0 = time.perf_counter()
                view = trace_view(store, Query(limit=limit))
                t1 = time.perf_counter()
                markup = view._repr_html_()
                t2 = time.perf_counter()
                text = view.text()
                t3 = time.perf_counter()
                reads.append(t1 - t0)
                htmls.append(t2 - t1)
                texts.append(t3 - t2)
        finally:
            store.close()
    embedded = sum(len(t.spans or ()) for t in view.traces)
    ms = lambda xs: f"{statistics.median(xs) * 1000:,.0f}"  # noqa: E731
    return (f"| {label} | {len(records):,} | {len(view.traces):,} | {embedded:,} | {ms(reads)} | {ms(htmls)} | "
            f"{len(markup.encode()) / 2**20:.1f} | {ms(texts)} | {len(text.encode()) / 2**20:.1f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs per row (median shown; default 3)")
    args = parser.parse_args(argv)
    print(machine_line())
    print(f"trace_ext {version('trace_ext')} · opentelemetry-sdk {version('opentelemetry-sdk')} · "
          f"protobuf {version('protobuf')} · Pygments {version('Pygments')}")
    print()
    print("| row | spans stored | traces listed | spans embedded | read ms | html ms | html MB | text ms | text MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = (
        ("1 trace × 10,000 spans", 1, 10_000, 1),
        ("1 trace × 12,000 spans (capped)", 1, 12_000, 1),
        ("1,000 traces × 5 spans", 1_000, 5, 1_000),
        ("1,000 traces × 30 spans (budget)", 1_000, 30, 1_000),
        ("newest 20 of 2,000 traces × 50 spans", 2_000, 50, 20),
    )
    for label, traces, per_trace, limit in rows:
        print(_row(label, traces, per_trace, limit, args.runs), flush=True)
    print()
    print("median of the runs; read = store query and decoding, html/text = building the view from that.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
