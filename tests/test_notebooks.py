"""The example notebooks (notebooks/langfuse.ipynb, notebooks/phoenix.ipynb) run top to bottom in
a real kernel with nbclient, and what they record arrives once each, nested.

Langfuse has no server to run, so a loopback ``OtlpReceiver`` plays its OTLP endpoint;
the Phoenix notebook runs against the real Phoenix server and, to count deliveries per
request (Phoenix ignores a span id it already has), against a loopback receiver too.
"""

from __future__ import annotations

import importlib.util
import uuid
from collections import Counter
from pathlib import Path

import nbformat
import pytest

from trace_ext._store.store import SpanStore

from .conftest import ROOT, clean_env, require
from .kernel import KERNEL_NAME

LANGFUSE = ROOT / "notebooks" / "langfuse.ipynb"
PHOENIX = ROOT / "notebooks" / "phoenix.ipynb"
LANGFUSE_PATH = "/api/public/otel/v1/traces"


def run_notebook(path: Path, tmp_path: Path, **env: str) -> nbformat.NotebookNode:
    """Execute every cell in a kernel running this interpreter; CellExecutionError on a failing cell."""
    from nbclient import NotebookClient

    nb = nbformat.read(str(path), as_version=4)
    client = NotebookClient(
        nb,
        timeout=120,
        # The notebook says "python3"; tests run it on this interpreter (conftest's kernelspec).
        kernel_name=KERNEL_NAME,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute(env=clean_env(TRACE_EXT_STORE_PATH=str(tmp_path / "store" / "spans.sqlite3"), **env))
    return nb


def outputs_text(nb: nbformat.NotebookNode) -> str:
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                parts.append(output.text)
            elif output.output_type in ("execute_result", "display_data"):
                parts.append(output.data.get("text/plain", ""))
            elif output.output_type == "error":
                parts.append("\n".join(output.traceback))
    return "\n".join(parts)


def by_name(spans) -> dict:
    names = Counter(s.name for s in spans)
    assert all(n == 1 for n in names.values()), names
    return {s.name: s for s in spans}


def once_each(receiver) -> Counter:
    counts = Counter(receiver.span_ids())
    assert all(n == 1 for n in counts.values()), {i: n for i, n in counts.items() if n > 1}
    return counts


def stored_trace_id(tmp_path: Path, root: str) -> str:
    store = SpanStore(str(tmp_path / "store" / "spans.sqlite3"))
    try:
        [span] = [s for trace in store.recent_traces(20) for s in trace if s.name == root]
        return span.trace_id
    finally:
        store.close()


@pytest.mark.parametrize("path", [LANGFUSE, PHOENIX], ids=["langfuse", "phoenix"])
def test_example_notebooks_are_committed_clean(path):
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert any(c.cell_type == "markdown" for c in nb.cells)


def test_langfuse_notebook_runs_and_each_observation_arrives_once_nested(tmp_path, receiver):
    require(importlib.util.find_spec("langfuse") is not None, "the langfuse package is not installed")
    nb = run_notebook(
        LANGFUSE, tmp_path,
        LANGFUSE_BASE_URL=receiver.base_url, LANGFUSE_PUBLIC_KEY="pk-lf-notebook", LANGFUSE_SECRET_KEY="sk-lf-notebook",
    )
    text = outputs_text(nb)
    assert "0 still pending" in text, text
    assert "sk-lf-notebook" not in text

    # The traced cell (3 spans) and the plain one (2); the kernel is gone, nothing more can come.
    assert receiver.wait_for(lambda r: len(r.spans) >= 5, timeout=15), len(receiver.spans)
    assert len(once_each(receiver)) == 5
    assert {r.path for r in receiver.requests} == {LANGFUSE_PATH}
    names = Counter(s.name for s in receiver.spans)
    assert names == {"ask-langfuse": 1, "answer": 2, "retrieve": 2}

    cell = next(s for s in receiver.spans if s.name == "ask-langfuse")
    traced = [s for s in receiver.spans if s.trace_id == cell.trace_id]
    spans = by_name(traced)
    assert set(spans) == {"ask-langfuse", "answer", "retrieve"}
    assert cell.parent_span_id is None
    assert spans["answer"].parent_span_id == cell.span_id
    assert spans["retrieve"].parent_span_id == spans["answer"].span_id

    plain = by_name([s for s in receiver.spans if s.trace_id != cell.trace_id])
    assert plain["answer"].parent_span_id is None
    assert plain["retrieve"].parent_span_id == plain["answer"].span_id
    assert "And without" in plain["answer"].attributes["langfuse.observation.input"]


def assert_phoenix_tree(spans: dict) -> None:
    """spans: name -> (span id, parent id) for the demo cell's trace."""
    assert set(spans) == {"phoenix-demo", "rag", "retrieve", "generate"}, set(spans)
    assert spans["phoenix-demo"][1] is None
    assert spans["rag"][1] == spans["phoenix-demo"][0]
    assert spans["retrieve"][1] == spans["rag"][0]
    assert spans["generate"][1] == spans["rag"][0]


def _require_phoenix_otel():
    require(importlib.util.find_spec("phoenix") is not None and importlib.util.find_spec("phoenix.otel") is not None,
            "arize-phoenix-otel (module phoenix.otel) is not installed")


def test_phoenix_notebook_runs_and_its_trace_arrives_in_phoenix_nested(tmp_path, phoenix):
    _require_phoenix_otel()
    project = f"notebook-{uuid.uuid4().hex[:8]}"
    nb = run_notebook(PHOENIX, tmp_path, PHOENIX_COLLECTOR_ENDPOINT=phoenix.base_url, PHOENIX_PROJECT_NAME=project)
    text = outputs_text(nb)
    assert "0 still pending" in text, text

    trace_id = stored_trace_id(tmp_path, "phoenix-demo")
    records = phoenix.wait_for_spans(trace_id, 4, timeout=60, project=project)
    assert len(records) == 4, [r["name"] for r in records]
    spans = {r["name"]: (r["context"]["span_id"], r["parent_id"]) for r in records}
    assert_phoenix_tree(spans)
    kinds = {r["name"]: r["span_kind"] for r in records}
    assert kinds["generate"] == "LLM" and kinds["phoenix-demo"] == "CHAIN", kinds


def test_phoenix_notebook_sends_each_span_once(tmp_path, receiver):
    """The same notebook against a loopback receiver playing Phoenix: deliveries counted per request."""
    _require_phoenix_otel()
    nb = run_notebook(PHOENIX, tmp_path, PHOENIX_COLLECTOR_ENDPOINT=receiver.base_url, PHOENIX_PROJECT_NAME="once")
    assert "0 still pending" in outputs_text(nb)
    assert receiver.wait_for(lambda r: len(r.spans) >= 4, timeout=15), len(receiver.spans)
    assert len(once_each(receiver)) == 4
    spans = {s.name: (s.span_id, s.parent_span_id) for s in receiver.spans}
    assert_phoenix_tree(spans)
    assert {s.resource.get("openinference.project.name") for s in receiver.spans} == {"once"}
    assert {r.path for r in receiver.requests} == {"/v1/traces"}
