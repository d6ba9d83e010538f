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

Then, when Debian's ``chromium`` and Playwright for Python are installed, each
row's HTML is written as-is into a minimal ``<html><body>`` page and opened
in headless Chromium (a fresh page per run): ``load`` is the time from
``page.goto(file://...)`` to the load event plus a forced layout (reading
``document.body``'s height); ``open`` is the time, inside the page, to click
the biggest trace's ``<summary>`` (closing it first if the view opened it)
and lay the page out again, the waterfall expanding in place. Without a
browser the bench says why and shows "n/a" in those columns.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Run as a script, bench/ is sys.path[0], and bench/profile.py would shadow the
# standard library's profile module (which IPython imports through cProfile).
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.join(ROOT, "bench")]
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


CHROMIUM_ARGS = [  # the same as tests/browser.py's: nothing from the network, no GPU
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class _Browser:
    """Headless Debian chromium through Playwright, or ``missing`` saying why not."""

    def __init__(self) -> None:
        self.missing = ""
        self._pw = self._browser = None
        chromium = shutil.which("chromium")
        if chromium is None:
            self.missing = "Debian's chromium is not installed"
            return
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            self.missing = "playwright (for Python) is not installed"
            return
        try:
            self._pw = sync_playwright().start()
            self._browser = self._pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        except Exception as exc:  # a broken install should not stop the Python columns
            self.missing = f"chromium did not start: {exc}".splitlines()[0]
            self.close()

    def measure(self, path: str, trace_id: str) -> tuple[float, float]:
        """Seconds to load and lay out the page, then to open ``trace_id``'s row and lay out again."""
        context = self._browser.new_context(viewport={"width": 1100, "height": 700})
        try:
            page = context.new_page()
            page.set_default_timeout(300_000)
            t0 = time.perf_counter()
            page.goto("file://" + path, wait_until="load")
            page.evaluate("document.body.getBoundingClientRect().height")
            t1 = time.perf_counter()
            # Timed in the page, so that Playwright's round trip isn't counted; the
            # summary's click toggles ``open`` synchronously, and reading the height
            # forces the layout of the expanded waterfall.
            opened = page.evaluate("""(id) => {
                const row = document.querySelector(`details.txv-tr[data-trace-id="${id}"]`);
                const summary = row.querySelector(':scope > summary');
                if (row.open) { summary.click(); document.body.getBoundingClientRect().height; }
                const t = performance.now();
                summary.click();
                const height = document.body.getBoundingClientRect().height;
                if (!row.open || !height) throw new Error('the row did not open');
                return performance.now() - t;
            }""", trace_id)
            return t1 - t0, opened / 1000
        finally:
            context.close()

    def close(self) -> None:
        if self._browser is not None:
            self._browser.close()
        if self._pw is not None:
            self._pw.stop()
        self._browser = self._pw = None


def _row(label: str, traces: int, per_trace: int, limit: int, runs: int, browser: _Browser) -> str:
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
        loads, opens = [], []
        if not browser.missing:
            page = os.path.join(folder, "view.html")
            with open(page, "w", encoding="utf-8") as f:
                f.write(f"<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>{markup}</body></html>")
            biggest = max(view.traces, key=lambda t: len(t.spans or ()))
            for _ in range(runs):
                load, opened = browser.measure(page, str(biggest.trace_id))
                loads.append(load)
                opens.append(opened)
    embedded = sum(len(t.spans or ()) for t in view.traces)
    ms = lambda xs: f"{statistics.median(xs) * 1000:,.0f}" if xs else "n/a"  # noqa: E731
    return (f"| {label} | {len(records):,} | {len(view.traces):,} | {embedded:,} | {ms(reads)} | {ms(htmls)} | "
            f"{len(markup.encode()) / 2**20:.1f} | {ms(texts)} | {len(text.encode()) / 2**20:.1f} | "
            f"{ms(loads)} | {ms(opens)} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs per row (median shown; default 3)")
    args = parser.parse_args(argv)
    print(machine_line())
    print(f"trace_ext {version('trace_ext')} · opentelemetry-sdk {version('opentelemetry-sdk')} · "
          f"protobuf {version('protobuf')} · Pygments {version('Pygments')}")
    browser = _Browser()
    if browser.missing:
        print(f"browser columns: n/a ({browser.missing})")
    else:
        print(f"browser: {browser._browser.version} headless (Debian chromium, Playwright {version('playwright')})")
    print()
    print("| row | spans stored | traces listed | spans embedded | read ms | html ms | html MB | text ms | text MB "
          "| browser load ms | browser open ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = (
        ("1 trace × 10,000 spans", 1, 10_000, 1),
        ("1 trace × 12,000 spans (capped)", 1, 12_000, 1),
        ("1,000 traces × 5 spans", 1_000, 5, 1_000),
        ("1,000 traces × 30 spans (budget)", 1_000, 30, 1_000),
        ("newest 20 of 2,000 traces × 50 spans", 2_000, 50, 20),
    )
    try:
        for label, traces, per_trace, limit in rows:
            print(_row(label, traces, per_trace, limit, args.runs, browser), flush=True)
    finally:
        browser.close()
    print()
    print("median of the runs; read = store query and decoding, html/text = building the view from that;")
    print("browser load = goto to the load event plus layout, open = clicking the biggest trace's row open and layout.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
