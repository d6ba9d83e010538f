"""The Langfuse SDK (the real package, in real kernels) beside trace_ext, against a loopback
receiver that plays Langfuse's OTLP endpoint."""

from __future__ import annotations

import base64
import importlib.util
import time
from collections import Counter

import pytest

from .conftest import require, wait_until
from .otlp_receiver import Delay

OTEL_PATH = "/api/public/otel/v1/traces"
KEYS = {"LANGFUSE_PUBLIC_KEY": "pk-lf-test", "LANGFUSE_SECRET_KEY": "sk-lf-test"}

DEFINE = """
from langfuse import observe, get_client

@observe()
def retrieve(query):
    return [query, query[::-1]]

@observe(name="answer")
def answer(query):
    docs = retrieve(query)
    return " ".join(docs)
"""


@pytest.fixture(autouse=True)
def _langfuse_installed():
    require(importlib.util.find_spec("langfuse") is not None, "the langfuse package is not installed")


def langfuse_kernel(start_kernel, receiver, **env):
    return start_kernel(LANGFUSE_BASE_URL=receiver.base_url, **KEYS, **env)


def once_each(receiver) -> Counter:
    counts = Counter(s.span_id for s in receiver.spans)
    assert all(n == 1 for n in counts.values()), [i for i, n in counts.items() if n > 1]
    return counts


def settle(kernel, receiver, expected: int) -> None:
    """All spans delivered and every Langfuse flush over, so a late duplicate would show."""
    kernel.ok("import trace_ext; trace_ext.flush(10)")
    assert receiver.wait_for(lambda r: len(r.spans) >= expected, timeout=15), len(receiver.spans)
    ext = "__import__('trace_ext._extension')._extension.active()"
    kernel.ok(f"{ext}.sdks.flushes.wait(10)")


def test_observe_in_a_traced_cell_nests_under_the_cell_and_arrives_once(start_kernel, receiver):
    kernel = langfuse_kernel(start_kernel, receiver)
    kernel.ok("%load_ext trace_ext")
    kernel.ok(DEFINE)
    kernel.ok("%%trace question\nanswer('what is otel')")
    settle(kernel, receiver, 3)
    spans = {s.name: s for s in receiver.spans}
    assert set(spans) == {"question", "answer", "retrieve"}
    assert spans["answer"].parent_span_id == spans["question"].span_id
    assert spans["retrieve"].parent_span_id == spans["answer"].span_id
    assert len({s.trace_id for s in spans.values()}) == 1
    assert spans["answer"].scope == "langfuse-sdk"
    assert "what is otel" in spans["answer"].attributes["langfuse.observation.input"]
    once_each(receiver)
    token = base64.b64encode(b"pk-lf-test:sk-lf-test").decode()
    assert {r.path for r in receiver.requests} == {OTEL_PATH}
    assert {r.headers.get("authorization") for r in receiver.requests} == {f"Basic {token}"}


def test_langfuse_only_notebook_arrives_whole_when_the_kernel_shuts_down_right_after(start_kernel, receiver):
    """The scenario that started the project: @observe only, no %%trace, shut down at once."""
    kernel = langfuse_kernel(start_kernel, receiver)
    kernel.ok("%load_ext trace_ext")
    kernel.ok(DEFINE)
    for i in range(5):
        kernel.ok(f"answer('question {i}')")
    kernel.shutdown(now=False)
    assert receiver.wait_for(lambda r: len(r.spans) >= 10, timeout=15), len(receiver.spans)
    counts = once_each(receiver)
    assert len(counts) == 10
    assert Counter(s.name for s in receiver.spans) == {"answer": 5, "retrieve": 5}


def test_a_client_made_in_code_is_followed_and_handed_over(start_kernel, receiver):
    """No LANGFUSE_* variables: trace_ext sends where the notebook's Langfuse client does, once."""
    kernel = start_kernel()
    kernel.ok("%load_ext trace_ext")
    kernel.ok(
        "from langfuse import Langfuse\n"
        f"client = Langfuse(public_key='pk-lf-code', secret_key='sk-lf-code', base_url={receiver.base_url!r})\n"
        + DEFINE
    )
    kernel.ok("answer('first')")  # spans Langfuse queued before trace_ext looked: handed to us
    kernel.ok("answer('second')")
    settle(kernel, receiver, 4)
    assert len(once_each(receiver)) == 4
    token = base64.b64encode(b"pk-lf-code:sk-lf-code").decode()
    assert {r.headers.get("authorization") for r in receiver.requests} == {f"Basic {token}"}
    status = kernel.execute("%trace status").text()
    assert receiver.base_url.split("//")[1] in status
    assert "sk-lf-code" not in status and token not in status


def test_unloading_gives_the_exporter_back_without_sending_anything_twice(start_kernel, receiver):
    kernel = langfuse_kernel(start_kernel, receiver)
    kernel.ok("%load_ext trace_ext")
    kernel.ok(DEFINE)
    # In one cell, so no after-cell flush empties Langfuse's queue (it waits 5 s) first.
    kernel.ok("answer('before unload')\nget_ipython().run_line_magic('unload_ext', 'trace_ext')")
    kernel.ok("answer('after unload')")  # Langfuse's own exporter sends these
    kernel.ok("get_client().flush()")
    assert receiver.wait_for(lambda r: len(r.spans) >= 4, timeout=15), len(receiver.spans)
    assert len(once_each(receiver)) == 4


def test_reloading_and_rerunning_setup_never_duplicates(start_kernel, receiver):
    kernel = langfuse_kernel(start_kernel, receiver)
    kernel.ok("%load_ext trace_ext")
    kernel.ok(DEFINE)
    kernel.ok("answer('one')")
    kernel.ok("%reload_ext trace_ext")
    kernel.ok(DEFINE + "get_client()")  # the set-up cell, run again
    kernel.ok("%%trace\nanswer('two')")
    settle(kernel, receiver, 5)
    assert len(once_each(receiver)) == 5
    ours = kernel.value(
        "sum(type(p).__name__ == 'BufferingSpanProcessor' for p in "
        "__import__('opentelemetry.trace').trace.get_tracer_provider()._active_span_processor._span_processors)"
    )
    assert ours == 1


def test_langfuse_flush_runs_beside_the_cell_and_the_status_says_how_it_went(start_kernel, receiver):
    """Langfuse sending elsewhere (its own slow backend): its flush must not hold up cells."""
    from .otlp_receiver import OtlpReceiver

    langfuse_backend = OtlpReceiver().start()
    try:
        langfuse_backend.default = Delay(4.5)  # slow, but answers within Langfuse's own 5 s timeout
        kernel = start_kernel(LANGFUSE_BASE_URL=langfuse_backend.base_url, **KEYS,
                              OTEL_EXPORTER_OTLP_ENDPOINT=receiver.base_url)
        kernel.ok(f"%load_ext trace_ext\n%config TraceExt.endpoint = {receiver.url!r}\n"
                  "%config TraceExt.sdk_flush_timeout = 3")
        kernel.ok(DEFINE)
        started = time.monotonic()
        kernel.ok("answer('slow backend')")
        # The cell didn't wait for Langfuse's flush, not even sdk_flush_timeout (3 s): a
        # margin for a busy machine, where the cell alone took up to 1.8 s.
        assert time.monotonic() - started < 2.5
        assert wait_until(lambda: "Langfuse flush still running" in kernel.execute("%trace status").text(), 10)
        assert wait_until(lambda: "Langfuse flushed in" in kernel.execute("%trace status").text(), 30)
        assert {s.name for s in langfuse_backend.wait_for_spans(2)} == {"answer", "retrieve"}
        # The live widget (shown by %load_ext) said both, without being asked again.
        labels = kernel.label_history()
        assert any("Langfuse flush still running" in label for label in labels), labels
        assert wait_until(lambda: "Langfuse flushed in" in kernel.label_history()[-1], 5)
        assert len(receiver.wait_for_spans(2)) == 2  # trace_ext's own delivery was not held up
    finally:
        langfuse_backend.stop()


def test_spans_langfuse_queued_before_loading_are_taken_into_the_store(start_kernel, receiver):
    kernel = langfuse_kernel(start_kernel, receiver)
    kernel.ok(DEFINE)
    kernel.ok("answer('before trace_ext')")  # waits in Langfuse's queue (5 s) when trace_ext loads
    kernel.ok("%load_ext trace_ext")
    kernel.ok("answer('after')")
    settle(kernel, receiver, 4)
    assert len(once_each(receiver)) == 4
    assert {r.headers.get("user-agent", "").split("/")[0] for r in receiver.requests} == {"trace_ext"}
