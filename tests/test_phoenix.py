"""End to end against a real Arize Phoenix server (installed in its own virtualenv)."""

from __future__ import annotations

PHOENIX_CELL = (
    "%%trace phoenix-cell --tag e2e\n"
    "from opentelemetry import trace\n"
    "with trace.get_tracer('e2e').start_as_current_span('retrieve') as span:\n"
    "    span.set_attribute('documents', 3)\n"
    "answer = 'forty-two'\n"
    "answer.upper()"
)


def _attribute(record: dict, key: str):
    """Phoenix returns attributes flat ('input.value') or nested ({'input': {'value'}})."""
    attributes = record.get("attributes") or {}
    if key in attributes:
        return attributes[key]
    node = attributes
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def test_traced_cell_arrives_in_phoenix_with_its_nested_span(phoenix, start_kernel, store_path):
    kernel = start_kernel()
    kernel.ok("%load_ext trace_ext")
    kernel.ok(f"%config TraceExt.endpoint = {phoenix.otlp_url!r}")
    run = kernel.ok(PHOENIX_CELL)
    assert run.result["data"]["text/plain"] == "'FORTY-TWO'"
    report = kernel.ok("%trace flush --timeout 30").stdout
    assert report.startswith("All 2 spans delivered") and "0 still pending" in report, report

    trace_id = kernel.value(
        "[t for t in __import__('trace_ext._extension', fromlist=['x']).active().store.recent_traces(1)][0][0].trace_id"
    )
    records = {r["name"]: r for r in phoenix.wait_for_spans(trace_id, 2, timeout=60)}
    root, child = records["phoenix-cell"], records["retrieve"]
    assert root["parent_id"] is None
    assert child["parent_id"] == root["context"]["span_id"]
    assert child["context"]["trace_id"] == root["context"]["trace_id"] == trace_id
    body = PHOENIX_CELL.split("\n", 1)[1]
    assert _attribute(root, "input.value") == body
    assert _attribute(root, "output.value") == "'FORTY-TWO'"
    assert _attribute(root, "langfuse.observation.output") == "'FORTY-TWO'"
    assert _attribute(child, "documents") == 3
    assert root["span_kind"] == "CHAIN"  # OpenInference kind: how Phoenix shows the cell
