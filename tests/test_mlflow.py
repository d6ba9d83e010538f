"""End to end against a real MLflow tracking server (OTLP/HTTP ingestion, installed in its own
virtualenv): traced cells in a real kernel, configured the two ways a user would, read back
through MLflow's REST API.

MLflow upserts a span it already has (same trace and span id), so reading MLflow back can't
show a span sent twice; "each span once" is checked as far as it can be seen here (every span
id once, exactly as many spans as the kernel made) and by trace_ext's own count of sent spans.
Delivery exactly once per span is counted per request at the loopback receiver in other tests.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from .conftest import require

# Run in the kernel before the traced cells: an observed function, a generation, and the ids
# of what the cells make, as lowercase hex (how OpenTelemetry prints them, and MLflow too).
SETUP = """
import trace_ext
from opentelemetry import trace
made = {}  # span name -> (trace id hex, span id hex, parent span id hex or None)

def _note(name):
    span = trace.get_current_span()
    ctx, parent = span.get_span_context(), getattr(span, 'parent', None)
    made[name] = (format(ctx.trace_id, '032x'), format(ctx.span_id, '016x'),
                  format(parent.span_id, '016x') if parent else None)

@trace_ext.observe
def retrieve(question, k=2):
    _note('retrieve')
    return [f'doc-{i}' for i in range(k)]

@trace_ext.observe(as_type='generation', model='tiny-model')
def generate(prompt):
    _note('generate')
    return {'text': 'MLflow is an open source platform.',
            'usage': {'prompt_tokens': 12, 'completion_tokens': 7, 'total_tokens': 19}}
"""

ASK_BODY = """_note('ask')
with trace_ext.span('rerank', input={'question': 'what is mlflow?'}, candidates=2):
    _note('rerank')
    docs = retrieve('what is mlflow?', k=2)
answer = generate('Answer from ' + ', '.join(docs))
'answer: ' + answer['text']"""
ASK_CELL = "%%trace ask\n" + ASK_BODY
ASK_SPANS = ("ask", "rerank", "retrieve", "generate")
# The tree the kernel made: span name -> name of its parent.
ASK_PARENTS = {"ask": None, "rerank": "ask", "retrieve": "rerank", "generate": "ask"}

BROKEN_CELL = """%%trace broken
_note('broken')
retrieve('will this work?', k=1)
raise ValueError('no answer today')"""
BROKEN_SPANS = ("broken", "retrieve")

ALL_SPANS = len(ASK_SPANS) + len(BROKEN_SPANS)


@pytest.fixture(scope="module")
def mlflow_server():
    from .backends import MLFLOW_VENV, MLFLOW_VERSION, MlflowServer, mlflow_installed

    require(
        mlflow_installed(MLFLOW_VENV),
        f"MLflow {MLFLOW_VERSION} is not installed at {MLFLOW_VENV}; run `python -m tests.backends install`",
    )
    server = MlflowServer()
    server.start()
    yield server
    server.close()


def configure(start_kernel, server, way: str):
    """A kernel with trace_ext loaded, sending to MLflow as a user would set it up."""
    if way == "config":
        kernel = start_kernel()
        kernel.ok("%load_ext trace_ext")
        kernel.ok(f"%config TraceExt.endpoint = {server.otlp_url!r}")
        kernel.ok(f"%config TraceExt.headers = {server.otlp_headers!r}")
    else:
        # The OpenTelemetry variables, written as a user would put them in a shell or .env file.
        kernel = start_kernel(
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=server.otlp_url,
            OTEL_EXPORTER_OTLP_TRACES_HEADERS=f"x-mlflow-experiment-id={server.experiment_id}",
        )
        kernel.ok("%load_ext trace_ext")
    return kernel


@pytest.mark.parametrize("way", ["config", "environment"])
def test_traced_cells_arrive_in_mlflow_nested_with_state_inputs_and_outputs(mlflow_server, start_kernel, way):
    kernel = configure(start_kernel, mlflow_server, way)
    kernel.ok(SETUP)
    run = kernel.ok(ASK_CELL)
    assert run.result["data"]["text/plain"] == "'answer: MLflow is an open source platform.'"
    failed = kernel.execute(BROKEN_CELL)
    assert failed.status == "error" and "no answer today" in failed.text()
    report = kernel.ok("%trace flush --timeout 30").stdout
    # The report counts what this flush sent; the sender may have sent some after each cell.
    assert "0 failed; 0 still pending" in report, report
    made = {name: tuple(ids) for name, ids in kernel.value("made").items()}
    # `made` has one 'retrieve': the broken cell's, which ran last.
    broken_retrieve = made["retrieve"]
    ask_trace_id = made["ask"][0]
    broken_trace_id = made["broken"][0]
    assert ask_trace_id != broken_trace_id

    # The answered cell: one trace, every span once, nested as in the kernel.
    ask = mlflow_server.wait_for_trace(ask_trace_id, len(ASK_SPANS), timeout=60)
    assert ask.trace_id == f"tr-{ask_trace_id}"
    assert ask.info["trace_location"]["mlflow_experiment"]["experiment_id"] == mlflow_server.experiment_id
    assert Counter(span.span_id for span in ask.spans).most_common(1)[0][1] == 1
    spans = {span.name: span for span in ask.spans}
    assert sorted(spans) == sorted(ASK_SPANS) and len(ask.spans) == len(ASK_SPANS)
    for name, parent in ASK_PARENTS.items():
        span = spans[name]
        assert span.trace_id == ask_trace_id, name
        assert span.parent_id == (spans[parent].span_id if parent else None), name
        if name != "retrieve":  # the kernel's 'retrieve' entry is the broken cell's
            assert (span.trace_id, span.span_id, span.parent_id) == made[name], name
    assert ask.state == "OK"
    assert all(span.status != "ERROR" for span in ask.spans)

    # What MLflow shows: the cell's source as the trace's request, its value as the response.
    root = spans["ask"]
    assert root.span_type == "CHAIN"
    assert root.inputs == ASK_BODY
    assert root.outputs == "'answer: MLflow is an open source platform.'"
    assert json.loads(ask.info["request_preview"]) == ASK_BODY
    assert json.loads(ask.info["response_preview"]) == "'answer: MLflow is an open source platform.'"
    assert spans["rerank"].inputs == {"question": "what is mlflow?"}
    assert spans["rerank"].attributes["candidates"] == 2
    assert spans["retrieve"].span_type == "CHAIN"
    assert spans["retrieve"].inputs == {"question": "what is mlflow?", "k": 2}
    assert spans["retrieve"].outputs == ["doc-0", "doc-1"]
    assert spans["generate"].span_type == "LLM"  # a generation is an LLM span in MLflow
    assert spans["generate"].inputs == {"prompt": "Answer from doc-0, doc-1"}
    assert spans["generate"].outputs["text"] == "MLflow is an open source platform."

    # The failing cell: its own trace, in ERROR, with the exception, and its child under it.
    broken = mlflow_server.wait_for_trace(broken_trace_id, len(BROKEN_SPANS), timeout=60)
    assert sorted(span.name for span in broken.spans) == sorted(BROKEN_SPANS)
    assert len({span.span_id for span in broken.spans}) == len(BROKEN_SPANS)
    cell, child = (next(s for s in broken.spans if s.name == name) for name in BROKEN_SPANS)
    assert broken.state == "ERROR"
    assert cell.status == "ERROR" and "no answer today" in cell.status_message
    assert cell.parent_id is None and (cell.trace_id, cell.span_id, None) == made["broken"]
    assert (child.trace_id, child.span_id, child.parent_id) == broken_retrieve
    assert child.parent_id == cell.span_id and child.status != "ERROR"
    assert child.outputs == ["doc-0"]
    exception = next(event for event in cell.events if event["name"] == "exception")
    assert exception["attributes"]["exception.type"] == "ValueError"
    assert exception["attributes"]["exception.message"] == "no answer today"

    # trace_ext counted every span as sent to MLflow, none pending or failed.
    status = kernel.execute("%trace status").text()
    assert f"0 pending · {ALL_SPANS} sent · 0 failed → 127.0.0.1:{mlflow_server.port}" in status, status
