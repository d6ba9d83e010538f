"""Section 3: %%trace in a real kernel — what the span records, and that the cell behaves as untraced."""

from __future__ import annotations

import re

import pytest

from trace_ext._otlp import attributes_to_dict, decode_span
from trace_ext._store.store import SpanStore

from .conftest import journals_imported, wait_until

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def stored_traces(store_path, count=10):
    # The saver thread imports a cell's journal into the store just after the cell.
    assert wait_until(lambda: journals_imported(store_path), 20), "timed out waiting for the import"
    store = SpanStore(str(store_path))
    try:
        return store.recent_traces(count)
    finally:
        store.close()


def span_attributes(span) -> dict:
    return attributes_to_dict(decode_span(span.payload).attributes)


# -- the span -----------------------------------------------------------------


def test_traced_cell_is_a_root_span_with_input_output_and_langfuse_attributes(loaded, store_path):
    body = (
        "from opentelemetry import trace\n"
        "with trace.get_tracer('my.lib').start_as_current_span('child'):\n"
        "    answer = 6 * 7\n"
        "{'answer': answer}"
    )
    run = loaded.ok(
        f"%%trace my-cell --session s-1 --user u-1 --tag a --tag b --metadata team=ml\n{body}"
    )
    assert run.result["data"]["text/plain"] == "{'answer': 42}"
    [spans] = stored_traces(store_path, 1)
    by_name = {s.name: s for s in spans}
    root, child = by_name["my-cell"], by_name["child"]
    assert root.parent_id is None
    assert child.parent_id == root.span_id and child.trace_id == root.trace_id
    assert root.start_ns <= child.start_ns <= child.end_ns <= root.end_ns
    attributes = span_attributes(root)
    assert attributes["langfuse.observation.input"] == body
    assert attributes["langfuse.observation.output"] == "{'answer': 42}"
    assert attributes["langfuse.trace.name"] == "my-cell"
    assert attributes["session.id"] == "s-1"
    assert attributes["user.id"] == "u-1"
    assert attributes["langfuse.trace.tags"] == ["a", "b"]
    assert attributes["langfuse.trace.metadata.team"] == "ml"
    assert attributes["jupyter.execution_count"] == run.reply["execution_count"]


def test_default_name_and_per_kernel_session_id(loaded, store_path):
    first = loaded.ok("%%trace\n1")
    loaded.ok("%%trace\n2")
    traces = stored_traces(store_path)
    names = [t[0].name for t in traces]
    assert names == [f"In [{first.reply['execution_count']}]", f"In [{first.reply['execution_count'] + 1}]"]
    sessions = {span_attributes(t[0])["session.id"] for t in traces}
    assert len(sessions) == 1 and sessions.pop()  # one non-empty id for the kernel session
    loaded.ok("%config TraceExt.session_id = 'mine'")
    loaded.ok("%%trace\n3")
    assert span_attributes(stored_traces(store_path, 1)[0][0])["session.id"] == "mine"


def test_a_new_root_even_when_an_earlier_cell_left_a_span_current(loaded, store_path):
    loaded.ok(
        "from opentelemetry import trace, context\n"
        "leak = trace.get_tracer('leaky').start_span('leaked')\n"
        "_token = context.attach(trace.set_span_in_context(leak))"
    )
    loaded.ok("%%trace fresh\n'x'")
    [spans] = stored_traces(store_path, 1)
    [fresh] = [s for s in spans if s.name == "fresh"]
    assert fresh.parent_id is None


def test_an_exception_gives_error_status_type_message_and_traceback(loaded, store_path):
    run = loaded.execute("%%trace doomed\ndef f():\n    raise ValueError('no good')\nf()")
    assert run.status == "error" and run.reply["ename"] == "ValueError"
    [[span]] = stored_traces(store_path, 1)
    message = decode_span(span.payload)
    assert message.status.code == 2 and "ValueError: no good" in message.status.message
    [event] = [e for e in message.events if e.name == "exception"]
    event_attributes = attributes_to_dict(event.attributes)
    assert event_attributes["exception.type"] == "ValueError"
    assert event_attributes["exception.message"] == "no good"
    stack = event_attributes["exception.stacktrace"]
    assert "raise ValueError('no good')" in stack and "in f" in stack
    assert "trace_ext" not in stack and "interactiveshell" not in stack


def test_huge_output_is_capped_with_a_marker(loaded, store_path):
    loaded.ok("%config TraceExt.max_attribute_length = 1000")
    run = loaded.ok("%%trace\n'x' * 50_000")
    assert len(run.result["data"]["text/plain"]) > 50_000  # the cell shows all of it
    output = span_attributes(stored_traces(store_path, 1)[0][0])["langfuse.observation.output"]
    assert len(output) < 1200 and "truncated" in output


def test_help_is_real_help(loaded):
    run = loaded.ok("%%trace?")
    page = run.reply["payload"][0]["data"]["text/plain"]
    assert "--session" in page and "--metadata KEY=VALUE" in page and "%trace flush" in page


@pytest.mark.parametrize(
    "line, says",
    [
        ("%%trace --bogus", "unrecognized arguments: --bogus"),
        ("%%trace --metadata novalue", "--metadata takes KEY=VALUE"),
        ("%%trace 'unclosed", "No closing quotation"),
    ],
)
def test_bad_arguments_raise_a_one_sentence_usage_error(loaded, store_path, line, says):
    run = loaded.execute(f"{line}\nprint('body must not run')")
    assert run.status == "error" and run.reply["ename"] == "UsageError"
    assert says in run.reply["evalue"] and "\n" not in run.reply["evalue"].strip()
    assert "body must not run" not in run.stdout
    assert stored_traces(store_path) == []


def test_bad_line_commands_raise_usage_errors(loaded):
    for line in ("%trace nonsense", "%trace show zero", "%trace flush --timeout -1"):
        run = loaded.execute(line)
        assert run.status == "error" and run.reply["ename"] == "UsageError", line


# -- a traced cell behaves exactly like the untraced cell ------------------------

SETUP = (
    "_calls = {'pre': 0, 'post': 0}\n"
    "def _pre(info):\n    _calls['pre'] += 1\n"
    "def _post(result):\n    _calls['post'] += 1\n"
    "get_ipython().events.register('pre_run_cell', _pre)\n"
    "get_ipython().events.register('post_run_cell', _post)\n"
)

CELLS = [
    "x = 6 * 7\nx",
    "print('to stdout')\nimport sys; print('to stderr', file=sys.stderr)\n"
    "from IPython.display import display, Markdown\ndisplay(Markdown('**shown**'))",
    "def inner():\n    return 1 / 0\ndef outer():\n    return inner()\nouter()",
    "import asyncio\nawait asyncio.sleep(0.01)\n'awaited'",
    "%env TRACE_EXT_DEMO=1\n%precision 3\nimport math\nmath.pi",
    "6 * 7;",
    "def broken(:\n    pass",
    "raise KeyboardInterrupt",
    # IPython's prefilter applies to a one-line cell: automagic, aliases, autocall, help.
    "pwd",
    "cd /tmp",
    "pwd",
    "ls -d /",
    "len?",
    # Cleanup of a cell that starts indented or with blank lines, as pasted.
    "    y = 1",
    "\n\n    y = 2\n    y",
    # Other cell magics after %%trace, as IPython runs them in a cell of their own.
    "%%capture captured\nprint('hidden')\n'not shown'",
    "captured.stdout",
    "%%bash\necho from bash",
    "_calls",
]


def _traceback_text(lines: list[str]) -> list[str]:
    """A traceback without colours, line numbers and blank lines (the %%trace line is one)."""
    out = []
    for line in ANSI.sub("", "\n".join(lines)).splitlines():
        line = re.sub(r"line \d+", "line N", line)
        line = re.sub(r"^(\s*-*>?\s*)\d+ ", r"\1", line).rstrip()
        if line.strip():
            out.append(line)
    return out


def _observable(run) -> dict:
    """Everything a notebook user can see of a cell's execution."""
    error = run.errors[0] if run.errors else None
    return {
        "status": run.reply["status"],
        "execution_count": run.reply["execution_count"],
        "ename": run.reply.get("ename"),
        # A SyntaxError names the cell's file (a hash of its text) and the line in
        # the cell as written, which has one more line when it starts with %%trace.
        "evalue": re.sub(r"\(\d+\.py, line \d+\)", "(<cell>, line N)", run.reply.get("evalue") or ""),
        "result": run.result and (run.result["execution_count"], run.result["data"]),
        "stdout": run.stdout,
        "stderr": run.stderr,
        "displays": [d["data"] for d in run.displays],
        "payload": run.reply.get("payload"),  # e.g. the help page of `len?`
        "traceback": error and _traceback_text(error["traceback"]),
    }


def test_traced_cells_behave_exactly_like_untraced_cells(start_kernel, store_path, tmp_path):
    plain = start_kernel(store=tmp_path / "unused.sqlite3")
    traced = start_kernel()
    plain.ok("pass")  # keeps In[n] aligned with the %load_ext cell below
    traced.ok("%load_ext trace_ext")
    plain.ok(SETUP)
    traced.ok(SETUP)
    for body in CELLS:
        expected = _observable(plain.execute(body))
        actual = _observable(traced.execute(f"%%trace\n{body}"))
        assert actual == expected, body
        assert "trace_ext" not in str(actual["traceback"])
    # Every traced cell became exactly one span, and the user's hooks fired once per cell
    # (and once more for the cell that %%capture runs), plus once for the `value` call.
    traces = stored_traces(store_path, 50)
    assert len(traces) == len(CELLS)
    calls = len(CELLS) + 2
    assert traced.value("_calls") == plain.value("_calls") == {"pre": calls, "post": calls}


def test_a_traced_cells_history_entry_is_the_cell_as_typed(loaded):
    loaded.ok("%%trace named\npwd")
    assert loaded.value("[In[-2], _i, _ih[-2]]") == ["%%trace named\npwd"] * 3
    history = loaded.ok("%history -n -l 2").stdout
    assert history.splitlines()[1:3] == ["%%trace named", "pwd"]


def test_time_after_trace_times_the_body_in_the_traced_cell(loaded, store_path):
    run = loaded.ok("%%trace timed\n%%time\nx = 1")
    assert "Wall time" in run.stdout and loaded.value("x") == 1
    [spans] = stored_traces(store_path, 1)
    assert [s.name for s in spans] == ["timed"]


@pytest.mark.parametrize("code", ["%%trace", "%%trace my-step --tag a", "%%trace\nx = 1"])
def test_the_completeness_check_answers_as_for_any_cell_magic(loaded, code):
    """A terminal (IPython, jupyter console, qtconsole) shows its continuation prompt."""
    expected = _is_complete(loaded, code.replace("%%trace", "%%time", 1))
    assert _is_complete(loaded, code) == expected == "incomplete"


def _is_complete(kernel, code: str) -> str:
    kernel.kc.is_complete(code)
    return kernel.kc.get_shell_msg(timeout=30)["content"]["status"]


def test_trace_show_renders_the_last_traces_as_a_tree(loaded):
    loaded.ok(
        "%%trace parent-cell\n"
        "from opentelemetry import trace\n"
        "with trace.get_tracer('t').start_as_current_span('child-step'):\n"
        "    pass\n"
        "'the output'"
    )
    loaded.execute("%%trace failing\nraise RuntimeError('kaput')")
    [shown] = loaded.ok("%trace show 2").displays
    text = shown["data"]["text/plain"]
    lines = text.splitlines()
    # Span lines start with the span's name (the trace's heading line with "trace NAME ·").
    parent = next(line for line in lines if line.strip().startswith("parent-cell  "))
    child = next(line for line in lines if line.strip().startswith("child-step  "))
    assert len(child) - len(child.lstrip()) > len(parent) - len(parent.lstrip())  # nested deeper
    assert re.search(r"\d (ns|µs|ms|s) ", parent) and "[local]" in parent
    assert "out: 'the output'" in text and "in: from opentelemetry import trace" in text
    assert any("failing" in line and "ERROR" in line for line in lines)
    assert "RuntimeError: kaput" in text
    assert "<details" in shown["data"]["text/html"] and "child-step" in shown["data"]["text/html"]
    # Only the last N traces.
    assert "parent-cell" not in loaded.ok("%trace show 1").displays[0]["data"]["text/plain"]


def test_calling_the_cell_magic_directly_nests_a_span_and_returns_the_value(loaded, store_path):
    run = loaded.ok("%%trace outer\nget_ipython().run_cell_magic('trace', 'inner-magic', 'x = 20\\nx + 22')")
    assert run.result["data"]["text/plain"] == "42"
    [spans] = stored_traces(store_path, 1)
    by_name = {s.name: s for s in spans}
    assert by_name["inner-magic"].parent_id == by_name["outer"].span_id


def test_an_exception_whose_str_fails_is_still_recorded(loaded, store_path):
    run = loaded.execute(
        "%%trace\nclass Weird(Exception):\n    def __str__(self):\n        raise RuntimeError('no str')\n"
        "raise Weird()"
    )
    assert run.status == "error"  # (IPython itself reports the failing __str__ here)
    [[span]] = stored_traces(store_path, 1)
    message = decode_span(span.payload)
    # The span says what the user was told, whichever exception IPython reported.
    assert message.status.code == 2 and message.status.message.startswith(run.reply["ename"])
    assert [e.name for e in message.events] == ["exception"]


# Times IPython's traceback rendering (formatting the frames, as the user will see them).
TIME_RENDERING = """
import time
_ip = get_ipython()
_rendering = []
_format = _ip.InteractiveTB.structured_traceback
def _timed_format(*args, **kwargs):
    started = time.time_ns()
    try:
        return _format(*args, **kwargs)
    finally:
        _rendering.append([started, time.time_ns()])
_ip.InteractiveTB.structured_traceback = _timed_format
"""


def test_a_failing_cells_span_ends_when_its_code_does_not_after_the_traceback(loaded, store_path):
    loaded.ok(TIME_RENDERING)
    for i in range(3):
        run = loaded.execute(f"%%trace failing-{i}\nraise ValueError('at once')")
        assert run.status == "error" and run.reply["ename"] == "ValueError"
    rendering = loaded.value("_rendering")
    spans = sorted((span for [span] in stored_traces(store_path, 3)), key=lambda s: s.start_ns)
    assert [s.name for s in spans] == ["failing-0", "failing-1", "failing-2"] and len(rendering) == 3
    for span, (render_start, render_end) in zip(spans, rendering):
        took = (render_end - render_start) / 1e6
        assert span.end_ns <= render_start, (
            f"{span.name} ended {(span.end_ns - render_start) / 1e6:.1f} ms after the traceback's "
            f"rendering began (rendering took {took:.1f} ms)"
        )
        assert span.start_ns < span.end_ns
