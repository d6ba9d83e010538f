"""Small in-process checks of how trace_ext recognises and stands in for another SDK's exporter.
(The behaviour end to end is in test_langfuse.py, test_providers.py and test_phoenix_register.py.)"""

from __future__ import annotations

import time

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from trace_ext._sdks.peers import HandedOver, Peers, same_url


def test_same_url_ignores_what_does_not_change_the_endpoint():
    assert same_url("http://127.0.0.1:3000//api/public/otel/v1/traces", "http://127.0.0.1:3000/api/public/otel/v1/traces")
    assert same_url("HTTPS://Cloud.Langfuse.com/api/public/otel/v1/traces/", "https://cloud.langfuse.com:443/api/public/otel/v1/traces")
    assert not same_url("http://127.0.0.1:6006/v1/traces", "http://127.0.0.1:6007/v1/traces")
    assert not same_url("http://127.0.0.1:6006/v1/traces", "https://127.0.0.1:6006/v1/traces")
    assert not same_url("http://127.0.0.1:6006/v1/traces", "http://[::1")  # unparsable: not the same


def test_handed_over_records_only_spans_that_ended_before_trace_ext_joined():
    """Later spans reached trace_ext's own processor already; earlier ones never did."""
    tracer = TracerProvider(shutdown_on_exit=False).get_tracer("t")
    joined = time.time_ns()
    spans = []
    for name, end in (("queued-before", joined - 1_000_000), ("seen-by-trace_ext", joined + 1_000_000)):
        span = tracer.start_span(name, start_time=joined - 5_000_000)
        span.end(end_time=end)
        spans.append(span)
    recorded = []
    result = HandedOver(InMemorySpanExporter(), joined, recorded.extend).export(spans)
    assert result is SpanExportResult.SUCCESS
    assert [s.name for s in recorded] == ["queued-before"]


def test_a_matching_exporter_is_handed_over_and_given_back():
    provider = TracerProvider(shutdown_on_exit=False)
    original = InMemorySpanExporter()
    theirs = SimpleSpanProcessor(original)
    provider.add_span_processor(theirs)
    ours = object()
    peers = Peers(ours, lambda spans: None)
    peers.add_provider(provider, time.time_ns())
    peer = peers.peers[0]
    # An in-memory exporter has no URL: never followed or handed over, whatever trace_ext sends to.
    peers.deliver_to("http://127.0.0.1:1/v1/traces")
    assert peer.url is None and theirs.span_exporter is original
    # Pretend it sends where trace_ext does.
    peer.url = "http://127.0.0.1:1//v1/traces"
    peers._apply()
    assert isinstance(theirs.span_exporter, HandedOver) and theirs.span_exporter.original is original
    peers.release()
    assert theirs.span_exporter is original
