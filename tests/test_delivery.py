"""Sections 4 and 5 in real kernels: spans leave the notebook, at once and at exit, where configured."""

from __future__ import annotations

import base64
import time

import pytest

from trace_ext._store import SpanStore

from .otlp_receiver import Delay, Hang

NESTED = (
    "%%trace {name}\n"
    "from opentelemetry import trace\n"
    "with trace.get_tracer('lib').start_as_current_span('inner'):\n"
    "    pass\n"
    "'done'"
)


def store_counts(store_path):
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
    assert again.ok("%trace flush --timeout 10").stdout.startswith("Sent 2 spans")
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
    assert "stored locally" in loaded.ok("%trace status").displays[0]["data"]["text/plain"]
