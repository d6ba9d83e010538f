"""One tracer provider per notebook, whichever of trace_ext and the notebook's set-up comes first."""

from __future__ import annotations

import time

from .conftest import installed, require, wait_until

REGISTER = (
    "from phoenix.otel import register\n"
    "tp = register(endpoint={url!r}, project_name='handoff', batch=True, verbose=False)\n"
)


def test_a_provider_set_up_after_loading_becomes_global_and_is_recorded(start_kernel, receiver):
    require(installed("phoenix.otel"), "arize-phoenix-otel is not installed")
    kernel = start_kernel()
    kernel.ok("%load_ext trace_ext")
    kernel.ok("from opentelemetry import trace\nearly = trace.get_tracer('early')")
    run = kernel.ok(REGISTER.format(url=receiver.url))
    assert "Overriding of current TracerProvider is not allowed" not in run.text()
    assert kernel.value("trace.get_tracer_provider() is tp") is True
    kernel.ok(
        "%%trace cell\n"
        "with trace.get_tracer('late').start_as_current_span('late-child'):\n"
        "    early.start_span('early-child').end()"
    )
    kernel.ok("import trace_ext; trace_ext.flush(10)")
    spans = {s.name: s for s in receiver.wait_for_spans(3)}
    # trace_ext sends where register() does (it followed that exporter), each span once.
    assert len(receiver.span_ids()) == len(set(receiver.span_ids())) == 3
    assert spans["late-child"].parent_span_id == spans["cell"].span_id
    assert spans["early-child"].parent_span_id == spans["late-child"].span_id
    # The cell's span comes from register()'s provider, so Phoenix files it under that project.
    assert spans["cell"].resource.get("openinference.project.name") == "handoff"


def test_unloading_puts_the_api_back(loaded):
    before = "__import__('opentelemetry.trace').trace.set_tracer_provider.__module__"
    assert loaded.value(before) == "trace_ext._recording.providers"
    loaded.ok("%unload_ext trace_ext")
    assert loaded.value(before) == "opentelemetry.trace"


def test_other_processors_are_flushed_after_each_cell_without_holding_it_up(start_kernel, receiver):
    """A BatchSpanProcessor sending elsewhere would wait a minute to send; trace_ext flushes it
    after the cell, on a thread of its own, and says so."""
    from .otlp_receiver import Delay, OtlpReceiver

    elsewhere = OtlpReceiver().start()
    try:
        elsewhere.default = Delay(1.5)
        kernel = start_kernel(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.base_url)
        kernel.ok("%load_ext trace_ext")
        kernel.ok(
            "from opentelemetry import trace\n"
            "from opentelemetry.sdk.trace.export import BatchSpanProcessor\n"
            "from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter\n"
            f"exporter = OTLPSpanExporter(endpoint={elsewhere.url!r})\n"
            "trace.get_tracer_provider().add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=60_000))"
        )
        started = time.monotonic()
        kernel.ok("%%trace cell\ntrace.get_tracer('lib').start_span('child').end()")
        assert time.monotonic() - started < 1.0  # the 1.5 s export happens beside the cell
        assert {s.name for s in elsewhere.wait_for_spans(2, timeout=10)} == {"cell", "child"}
        assert wait_until(
            lambda: f"BatchSpanProcessor → 127.0.0.1:{elsewhere.port} flushed in"
            in loaded_status(kernel), 10
        ), loaded_status(kernel)
        assert len(receiver.wait_for_spans(2)) == 2  # trace_ext's own copy, to its own endpoint
    finally:
        elsewhere.stop()


def loaded_status(kernel) -> str:
    return kernel.execute("%trace status").text()


def test_a_grpc_exporter_gets_a_sentence_saying_what_to_set(start_kernel):
    kernel = start_kernel()
    kernel.ok("%load_ext trace_ext")
    kernel.ok(
        "from opentelemetry import trace\n"
        "from opentelemetry.sdk.trace.export import BatchSpanProcessor\n"
        "from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter\n"
        "trace.get_tracer_provider().add_span_processor(\n"
        "    BatchSpanProcessor(OTLPSpanExporter(endpoint='http://127.0.0.1:9', insecure=True)))"
    )
    status = loaded_status(kernel)
    assert "sends over gRPC (127.0.0.1:9)" in status, status
    assert "TraceExt.endpoint" in status and "stored locally" in status


# A provider that samples nothing but still records every span for its processors, as
# AlwaysRecordSampler (OpenTelemetry SDK) does for span-counting processors; and one of
# those processors, to see that the spans did reach processors.
UNSAMPLED_PROVIDER = """
from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, SamplingResult, TraceIdRatioBased
class RecordOnly(Sampler):
    def __init__(self, root):
        self._root = root
    def should_sample(self, *args, **kwargs):
        result = self._root.should_sample(*args, **kwargs)
        if result.decision is Decision.DROP:
            return SamplingResult(Decision.RECORD_ONLY, result.attributes, result.trace_state)
        return result
    def get_description(self):
        return "RecordOnly"
class Counting(SpanProcessor):
    ended = []
    def on_end(self, span):
        Counting.ended.append(span.name)
early = trace.get_tracer('early')  # taken from trace_ext's provider, which samples everything
provider = TracerProvider(sampler=RecordOnly(ParentBased(TraceIdRatioBased(0))))
provider.add_span_processor(Counting())
trace.set_tracer_provider(provider)
"""


def test_spans_that_were_not_sampled_are_neither_stored_nor_sent(start_kernel, receiver, store_path):
    import sqlite3

    kernel = start_kernel(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.base_url)
    kernel.ok("%load_ext trace_ext")
    kernel.ok(UNSAMPLED_PROVIDER)
    assert kernel.value("trace.get_tracer_provider() is provider") is True
    for i in range(3):
        kernel.ok(
            f"%%trace unsampled-{i}\n"
            f"with trace.get_tracer('lib').start_as_current_span('unsampled-child-{i}'):\n"
            "    pass"
        )
    kernel.ok("early.start_span('sampled').end()")
    kernel.ok("%trace flush --timeout 20")
    # The provider's processors saw the spans: they were recorded, only not sampled.
    assert sorted(kernel.value("Counting.ended")) == sorted(
        [f"unsampled-{i}" for i in range(3)] + [f"unsampled-child-{i}" for i in range(3)]
    )
    assert [s.name for s in receiver.wait_for_spans(1)] == ["sampled"]
    conn = sqlite3.connect(str(store_path))
    try:
        stored = [name for (name,) in conn.execute("SELECT name FROM spans")]
    finally:
        conn.close()
    assert stored == ["sampled"]
    kernel.ok("%trace flush --timeout 5")
    assert [s.name for s in receiver.spans] == ["sampled"]
