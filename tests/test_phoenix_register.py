"""``phoenix.otel.register()`` beside trace_ext, in real kernels: the notebook's own set-up
plus ``%%trace`` cells, against the real Phoenix server and a loopback receiver.

Phoenix ignores a span whose id it already has (``UNIQUE(span_id) ON CONFLICT
IGNORE`` in its schema), so reading Phoenix back can't show a span sent twice.
"Each span exactly once" is therefore checked where it can be seen: at a
loopback ``OtlpReceiver`` that ``register()`` points at, counting span ids per
HTTP request. The Phoenix test checks what a user sees: the tree, one trace,
every span there.
"""

from __future__ import annotations

import importlib.util
import uuid
from collections import Counter

import pytest

from .conftest import require

EXT = "__import__('trace_ext._extension', fromlist=['x']).active()"

# Run in the kernel: span ids as lowercase hex (what the receiver and Phoenix show).
HELPERS = """
from opentelemetry import trace
made = []  # (name, span id hex, parent span id hex or None) of every span a cell made by hand

def _note(span, name):
    ctx = span.get_span_context()
    parent = getattr(span, 'parent', None)
    made.append((name, format(ctx.span_id, '016x'), format(parent.span_id, '016x') if parent else None))

def work(tracer, name):
    '''A span with a nested child, as a helper function would make them.'''
    with tracer.start_as_current_span(name) as outer:
        with tracer.start_as_current_span(name + '.inner') as inner:
            _note(inner, name + '.inner')
        _note(outer, name)

def cell_ids():
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, '032x'), format(ctx.span_id, '016x')
"""

# The %%trace cell: spans from register()'s provider, from the global API, and nested helpers.
TRACED = """%%trace {name}
trace_id, cell_span = cell_ids()
with tp.get_tracer(__name__).start_as_current_span('from-register-provider') as s:
    _note(s, 'from-register-provider')
with trace.get_tracer('notebook').start_as_current_span('from-global-api') as s:
    work(trace.get_tracer('helpers'), 'helper')
    _note(s, 'from-global-api')
work(tp.get_tracer('helpers'), 'tp-helper')
"""
# Spans per TRACED cell besides the cell span: 1 + (1 + 2) + 2.
TRACED_CHILDREN = 6
TOP_LEVEL = {"from-register-provider", "from-global-api", "tp-helper"}


@pytest.fixture(autouse=True)
def _phoenix_otel_installed():
    require(
        importlib.util.find_spec("phoenix") is not None and importlib.util.find_spec("phoenix.otel") is not None,
        "arize-phoenix-otel (module phoenix.otel) is not installed",
    )


def register_code(endpoint: str, project: str) -> str:
    return (
        "from phoenix.otel import register\n"
        f"tp = register(endpoint={endpoint!r}, project_name={project!r}, batch=True, verbose=False)\n"
    )


def settle(kernel) -> None:
    """trace_ext's store delivered, and every other SDK's after-cell flush over."""
    report = kernel.ok("%trace flush --timeout 30").stdout
    assert "0 still pending" in report, report
    assert kernel.value(f"{EXT}.sdks.flushes.wait(15)") is True


def assert_register_processor_kept(kernel) -> None:
    """register()'s own span processor is still on its provider, beside trace_ext's.

    Phoenix's ``TracerProvider.add_span_processor`` removes (and shuts down) the
    processor register() installed unless called with ``replace_default_processor=False``;
    with it gone there is no exporter left to follow or hand over.
    """
    names = kernel.value("[type(p).__name__ for p in tp._active_span_processor._span_processors]")
    assert "BufferingSpanProcessor" in names and len(names) == 2, (
        f"processors on register()'s provider: {names}; register()'s own BatchSpanProcessor is gone"
    )


def made_in(kernel) -> list[tuple[str, str, str | None]]:
    return [tuple(m) for m in kernel.value("made")]


def assert_tree(spans_by_id: dict, made: list, cell_span: str, trace_id: str) -> None:
    """Every hand-made span arrived once, under the parent it had in the kernel, in the cell's trace."""
    for name, span_id, parent in made:
        assert span_id in spans_by_id, f"{name} ({span_id}) never arrived"
        got = spans_by_id[span_id]
        assert got["name"] == name
        assert got["trace_id"] == trace_id, name
        assert got["parent"] == parent, name  # as the kernel saw it when the span was made
        if name in TOP_LEVEL:
            assert parent == cell_span, name  # a span the cell made directly: under the cell span
    assert spans_by_id[cell_span]["parent"] is None  # the cell span is the root


def once_each(receiver) -> Counter:
    counts = Counter(receiver.span_ids())
    twice = {i: n for i, n in counts.items() if n > 1}
    assert not twice, f"spans delivered more than once: {twice}"
    return counts


def from_receiver(receiver) -> dict:
    return {
        s.span_id: {"name": s.name, "trace_id": s.trace_id, "parent": s.parent_span_id, "resource": s.resource}
        for s in receiver.spans
    }


def test_register_and_a_traced_cell_arrive_in_phoenix_nested(phoenix, start_kernel):
    project = f"register-{uuid.uuid4().hex[:8]}"
    kernel = start_kernel()
    kernel.ok("%load_ext trace_ext")
    kernel.ok(register_code(phoenix.otlp_url, project) + HELPERS)
    assert_register_processor_kept(kernel)
    kernel.ok(TRACED.format(name="phoenix-register-cell"))
    settle(kernel)
    trace_id, cell_span = kernel.value("[trace_id, cell_span]")
    made = made_in(kernel)
    assert len(made) == TRACED_CHILDREN

    records = phoenix.wait_for_spans(trace_id, 1 + TRACED_CHILDREN, timeout=60, project=project)
    ids = Counter(r["context"]["span_id"] for r in records)
    assert all(n == 1 for n in ids.values()), ids
    assert len(ids) == 1 + TRACED_CHILDREN, [r["name"] for r in records]
    by_id = {
        r["context"]["span_id"]: {"name": r["name"], "trace_id": r["context"]["trace_id"], "parent": r["parent_id"]}
        for r in records
    }
    assert by_id[cell_span]["name"] == "phoenix-register-cell"
    assert_tree(by_id, made, cell_span, trace_id)
    # trace_ext delivered them all (it follows register()'s exporter and took it over).
    status = kernel.execute("%trace status").text()
    assert f"127.0.0.1:{phoenix.http_port}" in status, status
    assert f"0 pending · {1 + TRACED_CHILDREN} sent · 0 failed" in status, status


@pytest.mark.parametrize("order", ["load_ext-then-register", "register-then-load_ext"])
def test_register_with_trace_ext_delivers_each_span_exactly_once(start_kernel, receiver, order):
    """Counted per HTTP request at a loopback receiver playing Phoenix (which would hide a duplicate)."""
    kernel = start_kernel()
    setup = register_code(receiver.url, "once") + HELPERS
    if order == "load_ext-then-register":
        kernel.ok("%load_ext trace_ext")
        kernel.ok(setup)
    else:
        kernel.ok(setup)
        kernel.ok("%load_ext trace_ext")
    assert_register_processor_kept(kernel)
    kernel.ok(TRACED.format(name="once-cell"))
    kernel.ok("work(tp.get_tracer('plain'), 'untraced-cell')")  # a plain cell: no %%trace
    settle(kernel)
    kernel.ok("tp.force_flush()")  # anything register()'s own processor still held goes now
    trace_id, cell_span = kernel.value("[trace_id, cell_span]")
    made = made_in(kernel)

    expected = 1 + len(made)
    assert receiver.wait_for(lambda r: len(r.spans) >= expected, timeout=15), (len(receiver.spans), expected)
    counts = once_each(receiver)
    assert len(counts) == expected
    spans = from_receiver(receiver)
    in_cell = [m for m in made if not m[0].startswith("untraced-cell")]
    assert_tree(spans, in_cell, cell_span, trace_id)
    untraced = next(m for m in made if m[0] == "untraced-cell")
    assert spans[untraced[1]]["parent"] is None and spans[untraced[1]]["trace_id"] != trace_id
    # Every span carries register()'s resource, so Phoenix files it under the project.
    assert {s["resource"].get("openinference.project.name") for s in spans.values()} == {"once"}
    assert {r.path for r in receiver.requests} == {"/v1/traces"}
    # One deliverer: trace_ext sent them all (register()'s exporter was handed over).
    status = kernel.execute("%trace status").text()
    assert f"0 pending · {expected} sent · 0 failed → 127.0.0.1:{receiver.port}" in status, status


def test_rerunning_register_and_reloading_the_extension_never_duplicates_or_loses_a_span(start_kernel, receiver):
    kernel = start_kernel()
    setup = register_code(receiver.url, "rerun") + HELPERS
    kernel.ok("%load_ext trace_ext")
    kernel.ok(setup)
    kernel.ok("tp_first = tp")
    kernel.ok(TRACED.format(name="before-rerun"))
    # The set-up cell again: register() makes a second provider, which can't become
    # global (OpenTelemetry logs "Overriding of current TracerProvider is not allowed").
    # Its spans are exported by register()'s own processor, which trace_ext doesn't see.
    kernel.ok(setup.replace("made = []", "made = made"))
    assert kernel.value("tp is not tp_first and trace.get_tracer_provider() is tp_first") is True
    kernel.ok("work(tp.get_tracer('second'), 'second-provider')\n"
              "work(tp_first.get_tracer('first'), 'first-provider')\n"
              "work(trace.get_tracer('api'), 'global-api')")
    kernel.ok("%reload_ext trace_ext")
    kernel.ok(TRACED.format(name="after-reload"))
    kernel.ok("work(tp.get_tracer('second'), 'second-provider-2')\n"
              "work(tp_first.get_tracer('first'), 'first-provider-2')\n"
              "work(trace.get_tracer('api'), 'global-api-2')")
    settle(kernel)
    kernel.ok("tp.force_flush(); tp_first.force_flush()")
    made = made_in(kernel)
    cells = 2
    expected = cells + len(made)
    assert receiver.wait_for(lambda r: len(r.spans) >= expected, timeout=20), (len(receiver.spans), expected)
    counts = once_each(receiver)
    assert set(counts) >= {span_id for _, span_id, _ in made}, "a span never arrived"
    assert len(counts) == expected
    assert Counter(s.name for s in receiver.spans)["after-reload"] == 1
    ours = kernel.value(
        "sum(type(p).__name__ == 'BufferingSpanProcessor' for p in "
        "tp_first._active_span_processor._span_processors)"
    )
    assert ours == 1
