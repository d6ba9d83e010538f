"""Sections 4 and 5 in real kernels: spans leave the notebook, at once and at exit, where configured."""

from __future__ import annotations

import base64
import time

import pytest

from trace_ext._store.store import SpanStore

from .conftest import journals_imported, wait_until
from .otlp_receiver import Delay, Hang

NESTED = (
    "%%trace {name}\n"
    "from opentelemetry import trace\n"
    "with trace.get_tracer('lib').start_as_current_span('inner'):\n"
    "    pass\n"
    "'done'"
)


def store_counts(store_path):
    # What the kernel saved is in its journal; the importer thread moves it into the
    # store file just after the cell, so wait for that before counting the file.
    assert wait_until(lambda: journals_imported(store_path), 20), "the journal was not imported within 20 s"
    store = SpanStore(str(store_path))
    try:
        return store.counts()
    finally:
        store.close()


def test_spans_are_in_the_store_when_the_cell_returns(start_kernel, receiver, store_path):
    receiver.default = Delay(3)  # a slow backend: delivery can't have happened yet
    kernel = start_kernel(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.base_url)
    kernel.ok("%load_ext trace_ext")
    started = time.monotonic()
    kernel.ok(NESTED.format(name="durable"))
    assert time.monotonic() - started < 2  # the cell did not wait for the backend
    assert store_counts(store_path).pending == 2
    receiver.default = None


def test_traced_cell_is_delivered_in_the_background(start_kernel, receiver):
    kernel = start_kernel(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.base_url)
    kernel.ok("%load_ext trace_ext")
    kernel.ok(NESTED.format(name="delivered"))
    spans = {s.name: s for s in receiver.wait_for_spans(2)}
    assert spans["inner"].parent_span_id == spans["delivered"].span_id
    assert spans["delivered"].attributes["langfuse.observation.output"] == "'done'"
    assert {r.path for r in receiver.requests} == {"/v1/traces"}


def test_kernel_exit_delivers_what_is_left(start_kernel, receiver):
    kernel = start_kernel(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.base_url)
    kernel.ok("%load_ext trace_ext\n%config TraceExt.flush_after_cell = False")
    kernel.ok(NESTED.format(name="at-exit"))
    kernel.shutdown(now=False)
    names = sorted(s.name for s in receiver.wait_for_spans(2, timeout=10))
    assert names == ["at-exit", "inner"]


def test_exit_with_backend_down_is_bounded_and_the_next_kernel_sends(start_kernel, receiver, store_path):
    receiver.default = Hang(60)
    kernel = start_kernel(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.base_url)
    kernel.ok("%load_ext trace_ext\n%config TraceExt.shutdown_timeout = 1")
    kernel.ok(NESTED.format(name="survivor"))
    started = time.monotonic()
    kernel.shutdown(now=False)
    took = time.monotonic() - started
    assert took < 1 + 2.0, f"shutdown took {took:.1f} s"
    assert store_counts(store_path).pending == 2 and receiver.spans == []

    receiver.default = None
    again = start_kernel(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.base_url)
    again.ok("%load_ext trace_ext")
    assert again.ok("%trace flush --timeout 10").stdout.startswith("All 2 spans delivered")
    assert sorted(s.name for s in receiver.spans) == ["inner", "survivor"]
    assert len(set(receiver.span_ids())) == len(receiver.span_ids())


def test_langfuse_environment_variables(start_kernel, receiver):
    kernel = start_kernel(
        LANGFUSE_BASE_URL=receiver.base_url + "/", LANGFUSE_PUBLIC_KEY="pk-lf-1", LANGFUSE_SECRET_KEY="sk-lf-2"
    )
    kernel.ok("%load_ext trace_ext")
    kernel.ok("%%trace\n1")
    receiver.wait_for_spans(1)
    [request] = receiver.requests
    assert request.path == "/api/public/otel/v1/traces"
    assert request.headers["authorization"] == "Basic " + base64.b64encode(b"pk-lf-1:sk-lf-2").decode()
    assert request.headers["x-langfuse-ingestion-version"] == "4"
    assert "sk-lf-2" not in kernel.ok("%trace status").text()


def test_otel_traces_endpoint_and_headers(start_kernel, receiver):
    kernel = start_kernel(
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=receiver.base_url + "/custom/path",
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9",  # the signal-specific one wins
        OTEL_EXPORTER_OTLP_HEADERS="x-api-key=abc%20def,x-team=ml",
    )
    kernel.ok("%load_ext trace_ext")
    kernel.ok("%%trace\n1")
    receiver.wait_for_spans(1)
    [request] = receiver.requests
    assert request.path == "/custom/path"
    assert request.headers["x-api-key"] == "abc def" and request.headers["x-team"] == "ml"


def test_config_takes_effect_at_once(loaded, receiver, store_path):
    loaded.ok("%%trace before\n1")
    assert store_counts(store_path).local == 1
    loaded.ok(f"%config TraceExt.endpoint = '{receiver.url}'")
    loaded.ok("%config TraceExt.protocol = 'http/json'")
    loaded.ok("%%trace after\n2")
    [span] = receiver.wait_for_spans(1)
    assert span.name == "after" and receiver.requests[0].content_type == "application/json"
    # What was recorded with no destination stays local: it was never meant to leave.
    assert store_counts(store_path).local == 1


@pytest.mark.parametrize(
    "assignment, says",
    [
        ("endpoint = 'ftp://example'", "TraceExt.endpoint must be an http:// or https:// URL"),
        ("endpoint = 'not a url'", "TraceExt.endpoint must be an http:// or https:// URL"),
        ("protocol = 'grpc'", "TraceExt.protocol must be 'http/protobuf' or 'http/json'"),
        ("shutdown_timeout = -1", "TraceExt.shutdown_timeout must be at least 0 seconds"),
        ("shutdown_timeout = 'soon'", "TraceExt.shutdown_timeout expected a float"),
        ("compression = 'brotli'", "TraceExt.compression must be 'gzip' or 'none'"),
        ("no_such_setting = 1", "TraceExt has no setting 'no_such_setting'"),
    ],
)
def test_invalid_settings_raise_usage_error_and_keep_the_old_value(loaded, receiver, assignment, says):
    loaded.ok(f"%config TraceExt.endpoint = '{receiver.url}'")
    loaded.ok("%config TraceExt.shutdown_timeout = 2")
    run = loaded.execute(f"%config TraceExt.{assignment}")
    assert run.status == "error" and run.reply["ename"] == "UsageError"
    assert says in run.reply["evalue"]
    assert loaded.value("get_ipython().run_line_magic('config', 'TraceExt.endpoint')") == receiver.url
    assert loaded.value("get_ipython().run_line_magic('config', 'TraceExt.shutdown_timeout')") == 2
    loaded.ok("%%trace still-working\n1")
    assert [s.name for s in receiver.wait_for_spans(1)] == ["still-working"]


def test_ipython_config_file(start_kernel, receiver, tmp_path):
    profile = tmp_path / "ipython" / "profile_default"
    profile.mkdir(parents=True)
    (profile / "ipython_kernel_config.py").write_text(
        f"c.TraceExt.endpoint = {receiver.url!r}\nc.TraceExt.compression = 'none'\n"
    )
    kernel = start_kernel(IPYTHONDIR=str(tmp_path / "ipython"))
    kernel.ok("%load_ext trace_ext")
    kernel.ok("%%trace from-config\n1")
    [span] = receiver.wait_for_spans(1)
    assert span.name == "from-config" and receiver.requests[0].content_encoding in ("", None)


def test_embedded_default_keeps_spans_local(loaded, store_path):
    loaded.ok("%%trace local\n1")
    out = loaded.ok("%trace flush").stdout
    assert "Nothing to send" in out and "stored locally" in out
    counts = store_counts(store_path)
    assert (counts.local, counts.pending, counts.sent) == (1, 0, 0)
    assert "stored locally" in loaded.ok("%trace status").displays[-1]["data"]["text/plain"]


def test_public_flush_returns_a_delivery_report(start_kernel, receiver):
    kernel = start_kernel(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.base_url)
    kernel.ok("%load_ext trace_ext\n%config TraceExt.flush_after_cell = False")
    kernel.ok(NESTED.format(name="reported"))
    report = kernel.value("vars(__import__('trace_ext').flush(10))")
    assert report == {"sent": 2, "failed": 0, "pending": 0, "local": 0,
                      "destination": f"127.0.0.1:{receiver.port}", "timed_out": False,
                      # where the store stands: delivered / failed since load, and why not, if not
                      "delivered": 2, "failed_total": 0, "reason": ""}


def test_retry_sends_spans_that_failed_once_the_cause_is_fixed(start_kernel, receiver):
    from .otlp_receiver import Respond

    receiver.default = Respond(404, body="wrong path")
    kernel = start_kernel(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.base_url)
    kernel.ok("%load_ext trace_ext")
    kernel.ok(NESTED.format(name="retried"))
    assert "2 failed" in kernel.ok("%trace flush --timeout 10").stdout
    receiver.default = None
    assert kernel.ok("%trace retry").stdout.strip() == "2 failed spans queued again."
    assert sorted(s.name for s in receiver.wait_for_spans(2)) == ["inner", "retried"]
    assert "0 failed; 0 still pending" in kernel.ok("%trace flush --timeout 10").stdout
    status = kernel.ok("%trace status").displays[-1]["data"]["text/plain"]  # the saved copy: what a console prints
    assert "0 pending · 2 sent · 0 failed" in status


def test_a_cell_with_thousands_of_spans_is_saved_whole(loaded, store_path):
    loaded.ok(
        "%%trace many\n"
        "from opentelemetry import trace\n"
        "tracer = trace.get_tracer('bulk')\n"
        "for i in range(5000):\n"
        "    tracer.start_span(f's{i}').end()\n"
        "from trace_ext._extension import active\n"
        "peak = active().processor.buffered()"
    )
    # The sender moved spans to disk while the cell ran, so the buffer never held them all.
    assert loaded.value("peak") < 5000
    assert store_counts(store_path).local == 5001


def test_store_path_can_change_at_runtime(loaded, tmp_path):
    other = tmp_path / "other" / "spans.sqlite3"
    loaded.ok(f"%config TraceExt.store_path = {str(other)!r}")
    loaded.ok("%%trace moved\n1")
    assert store_counts(other).local == 1
    senders = "sum(t.name == 'trace_ext-sender' for t in __import__('threading').enumerate())"
    assert loaded.value(senders) == 1
    bad = loaded.execute("%config TraceExt.store_path = '/proc/no/such/dir/s.sqlite3'")
    assert bad.status == "error" and bad.reply["ename"] == "UsageError"
    assert "can't use /proc/no/such/dir/s.sqlite3" in bad.reply["evalue"]
    assert loaded.value("get_ipython().run_line_magic('config', 'TraceExt.store_path')") == str(other)


def test_environment_set_after_loading_is_noticed_at_the_next_cell(loaded, receiver):
    loaded.ok(f"import os; os.environ['OTEL_EXPORTER_OTLP_ENDPOINT'] = {receiver.base_url!r}")
    loaded.ok("%%trace after-env\n1")
    assert [s.name for s in receiver.wait_for_spans(1)] == ["after-env"]


# An httpx instrumentation (OpenAI's SDK uses httpx, so LLM notebooks often load one), and
# another SDK's processor whose flush() itself sends over httpx, on the thread that calls it.
HTTPX_INSTRUMENTED = """
import httpx
from opentelemetry import trace
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
HTTPXClientInstrumentor().instrument()
class PostsOnFlush(BatchSpanProcessor):
    flushes = 0
    def force_flush(self, timeout_millis=30000):
        httpx.post({elsewhere!r}, content=b"")
        PostsOnFlush.flushes += 1
        return super().force_flush(timeout_millis)
trace.get_tracer_provider().add_span_processor(PostsOnFlush(InMemorySpanExporter()))
"""


def http_spans(spans) -> list:
    """Spans the httpx instrumentation made (old or new HTTP semantic conventions)."""
    return [s for s in spans if {"http.method", "http.request.method"} & set(s.attributes)]


def test_an_httpx_instrumentation_never_traces_trace_exts_own_requests(start_kernel, receiver, store_path):
    """trace_ext's sender and the threads that flush other SDKs suppress instrumentation, as the
    SDK's own exporters do: otherwise each POST would be a span, sent by the next POST."""
    from .conftest import installed, require, wait_until
    from .otlp_receiver import OtlpReceiver

    require(installed("opentelemetry.instrumentation.httpx"), "opentelemetry-instrumentation-httpx is not installed")
    elsewhere = OtlpReceiver().start()
    try:
        kernel = start_kernel(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.base_url)
        kernel.ok("%load_ext trace_ext")
        kernel.ok(HTTPX_INSTRUMENTED.format(elsewhere=elsewhere.url))
        # The instrumentation works in this kernel: the cell's own request is a span.
        kernel.ok(f"%%trace user-request\nhttpx.post({elsewhere.url!r}, content=b'')")
        for i in range(4):  # several deliveries: a span of one POST would go out with the next
            kernel.ok(NESTED.format(name=f"cell-{i}"))
            kernel.ok("%trace flush --timeout 20")
        assert wait_until(lambda: kernel.value("PostsOnFlush.flushes") >= 3, 20)  # the flush thread posted
        kernel.ok("%trace flush --timeout 20")
        kernel.ok("%trace flush --timeout 20")

        received = receiver.spans
        names = sorted(s.name for s in received)
        # One request per flushed cell at least (the first cell's spans may share one).
        assert names.count("inner") == 4 and len(receiver.requests) >= 4, names
        cell = next(s for s in received if s.name == "user-request")
        others = [(s.name, s.attributes.get("http.url") or s.attributes.get("url.full"))
                  for s in http_spans(received) if s.parent_span_id != cell.span_id]
        assert not others, f"trace_ext's own requests were traced: {others}"
        assert len(http_spans(received)) == 1  # the cell's own request, under the cell
        stored = store_names(store_path)
        assert len(stored) == len(received) == 10, stored
    finally:
        elsewhere.stop()


def store_names(store_path) -> list[str]:
    import sqlite3

    conn = sqlite3.connect(str(store_path))
    try:
        return sorted(name for (name,) in conn.execute("SELECT name FROM spans"))
    finally:
        conn.close()
