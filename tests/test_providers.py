"""One tracer provider per notebook, whichever of trace_ext and the notebook's set-up comes first."""

from __future__ import annotations

import importlib.util

from .conftest import require

REGISTER = (
    "from phoenix.otel import register\n"
    "tp = register(endpoint={url!r}, project_name='handoff', batch=True, verbose=False)\n"
)


def test_a_provider_set_up_after_loading_becomes_global_and_is_recorded(start_kernel, receiver):
    require(importlib.util.find_spec("phoenix.otel") is not None, "arize-phoenix-otel is not installed")
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
    assert loaded.value(before) == "trace_ext._providers"
    loaded.ok("%unload_ext trace_ext")
    assert loaded.value(before) == "opentelemetry.trace"
