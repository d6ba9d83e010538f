#!/usr/bin/env python
"""How trace_ext's sender behaves against a backend that answers 503 to everything, next to the OpenTelemetry SDK.

Run from the repository root: ``python -m bench --only storm [--storm-duration 20]``.

Two loopback ``OtlpReceiver``s on 127.0.0.1 answer every export with HTTP 503
for the whole run. Both exporters see the same "notebook": a cell of
``--spans-per-cell`` spans every ``--cell-every`` seconds.

- trace_ext: a real ``Sender`` over a SQLite store in a temp dir; after every
  cell the spans are appended to the store and the sender is woken, exactly
  as the post-cell hook does.
- peer: the OpenTelemetry SDK's ``BatchSpanProcessor(OTLPSpanExporter(...))``
  (opentelemetry-exporter-otlp-proto-http), the exporter wrapped only to count
  which batches it gave up on.

The table counts the requests each receiver saw and the intervals between
them, and where the spans are at the end: delivered (none can be), kept for
later, or dropped. Nothing leaves the machine and the run ends by itself.
"""

from __future__ import annotations

import logging
import os
import statistics
import threading
import time

from . import _run as _kernels  # noqa: F401 - puts the repository root on sys.path for tests.otlp_receiver

__all__ = ["run"]

CELL_EVERY = 5.0
SPANS_PER_CELL = 10


def _intervals(receiver, until: float) -> list[float]:
    """Seconds between consecutive requests received before ``until`` (monotonic)."""
    times = [r.received_at for r in receiver.requests if r.received_at <= until]
    return [b - a for a, b in zip(times, times[1:])]


def _gap_cells(gaps: list[float]) -> str:
    if not gaps:
        return "– | – | –"
    return f"{min(gaps):.2f} | {statistics.median(gaps):.2f} | {max(gaps):.2f}"


class CountingExporter:
    """Passes batches to the real exporter and counts the ones it reports as failed (dropped)."""

    def __init__(self, exporter) -> None:
        self.exporter = exporter
        self.exported = self.dropped = 0

    def export(self, spans):
        from opentelemetry.sdk.trace.export import SpanExportResult

        result = self.exporter.export(spans)
        if result is SpanExportResult.SUCCESS:
            self.exported += len(spans)
        else:
            self.dropped += len(spans)
        return result

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.exporter.force_flush(timeout_millis)


def _make_cell(tracer, cell: int, spans: int) -> None:
    with tracer.start_as_current_span("cell", attributes={"bench.cell": cell}):
        for i in range(spans - 1):
            tracer.start_span("llm.call", attributes={"bench.child": i, "input.value": "x" * 200}).end()


def _run(duration: float, cell_every: float, spans_per_cell: int, workdir: str) -> tuple[list[str], list[str]]:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from tests.otlp_receiver import OtlpReceiver, Respond
    from trace_ext._delivery.destination import Destination
    from trace_ext._delivery.destination import SenderConfig
    from trace_ext._recording.processor import BufferingSpanProcessor
    from trace_ext._delivery.sender import Sender
    from trace_ext._delivery.status import DeliveryStatus
    from trace_ext._store.store import PENDING, SpanStore

    resource = Resource.create({"service.name": "retry-storm"})
    ours_rx, peer_rx = OtlpReceiver().start(), OtlpReceiver().start()
    ours_rx.default = peer_rx.default = Respond(503, body="overloaded")

    store = SpanStore(os.path.join(workdir, "spans.sqlite3"))
    status = DeliveryStatus()
    sender = Sender(store, status, lambda: None)
    sender.configure(SenderConfig(Destination(ours_rx.url, "bench", {})))
    buffering = BufferingSpanProcessor()
    ours = TracerProvider(resource=resource, shutdown_on_exit=False)
    ours.add_span_processor(buffering)
    buffering.activate(32_768, lambda: None, lambda: None)

    counting = CountingExporter(OTLPSpanExporter(endpoint=peer_rx.url))
    batch = BatchSpanProcessor(counting)
    peer = TracerProvider(resource=resource, shutdown_on_exit=False)
    peer.add_span_processor(batch)

    sender.start()
    start = time.monotonic()
    cells, tick = 0, threading.Event()
    while time.monotonic() - start < duration:
        _make_cell(ours.get_tracer("bench"), cells, spans_per_cell)
        store.save(buffering.take(), PENDING)
        sender.wake()  # what the post-cell hook does
        _make_cell(peer.get_tracer("bench"), cells, spans_per_cell)
        cells += 1
        tick.wait(max(0.0, min(start + cells * cell_every, start + duration) - time.monotonic()))
    end = time.monotonic()

    produced = cells * spans_per_cell
    counts = store.counts()
    ours_gaps, peer_gaps = _intervals(ours_rx, end), _intervals(peer_rx, end)
    ours_requests = sum(r.received_at <= end for r in ours_rx.requests)
    peer_requests = sum(r.received_at <= end for r in peer_rx.requests)
    peer_memory = produced - counting.exported - counting.dropped

    sender.shutdown(0.5)
    store.close()
    # The peer may be inside its own retry loop; shut it down without waiting on it.
    threading.Thread(target=peer.shutdown, daemon=True).start()
    ours_rx.stop()
    peer_rx.stop()

    rows = [
        "| exporter | requests | interval min s | median s | max s | spans produced | delivered "
        "| kept for later | only in memory | dropped |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| trace_ext Sender | {ours_requests} | {_gap_cells(ours_gaps)} | {produced} | {counts.sent} "
        f"| {counts.pending} (SQLite) | 0 | {counts.failed} |",
        f"| OTel SDK BatchSpanProcessor + OTLPSpanExporter | {peer_requests} | {_gap_cells(peer_gaps)} "
        f"| {produced} | {counting.exported} | 0 | {peer_memory} | {counting.dropped} |",
    ]
    notes = [
        "trace_ext intervals, in order (s): " + ", ".join(f"{g:.1f}" for g in ours_gaps),
        "peer intervals, in order (s): " + ", ".join(f"{g:.1f}" for g in peer_gaps),
        f"trace_ext's last status: {status.last_error}",
    ]
    return rows, notes


def run(args, workdir: str) -> list[str]:
    # The peer logs a warning per failed export; the table says the same, once.
    logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)
    lines = [
        f"### A backend answering HTTP 503 to everything for {args.storm_duration:g} s",
        "",
        f"- a cell of {SPANS_PER_CELL} spans every {CELL_EVERY:g} s for each exporter; two loopback "
        "OtlpReceivers on 127.0.0.1 answering 503 to everything; in this process (no kernel): trace_ext's "
        "Sender over a SQLite store, woken after every cell as the post-cell hook does",
        "",
    ]
    storm_dir = os.path.join(workdir, "storm")
    os.makedirs(storm_dir, exist_ok=True)
    rows, notes = _run(args.storm_duration, CELL_EVERY, SPANS_PER_CELL, storm_dir)
    return lines + rows + [""] + [f"- {note}" for note in notes]
