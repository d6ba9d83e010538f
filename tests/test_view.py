"""The trace view (`%trace show`) in real kernels: the list's rows, each waterfall's bars, errors, inputs and outputs.

The HTML is read with the standard library's parser, as a browser would build its
tree: which ``<details>`` hold which rows, bars and values. (Browser tests of the
same view run in JupyterLab once the browser harness is merged.)
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

SCRIPT_OR_NETWORK = re.compile(r"<script|<link|<iframe|@import|url\(|src=|https?://(?!127\.0\.0\.1)", re.I)


class Node:
    def __init__(self, tag: str, attrs: dict[str, str], parent: "Node | None") -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node] = []
        self.text_parts: list[str] = []

    def text(self) -> str:
        return "".join(self.text_parts) + "".join(c.text() for c in self.children)

    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def find_all(self, predicate) -> list["Node"]:
        found = [self] if predicate(self) else []
        for child in self.children:
            found += child.find_all(predicate)
        return found

    def find(self, predicate) -> "Node":
        found = self.find_all(predicate)
        assert found, "no such element"
        return found[0]


_VOID = {"br", "hr", "img", "meta", "input", "link", "wbr"}


class Tree(HTMLParser):
    """A minimal DOM: enough to ask which element holds which."""

    def __init__(self, markup: str) -> None:
        super().__init__()
        self.root = self.current = Node("root", {}, None)
        self.feed(markup)

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: v or "" for k, v in attrs}, self.current)
        self.current.children.append(node)
        if tag not in _VOID:
            self.current = node

    def handle_endtag(self, tag):
        node = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data):
        if self.current.tag != "style":
            self.current.text_parts.append(data)


def has_class(name: str):
    return lambda n: name in n.classes()


def trace_rows(tree: Tree) -> list[Node]:
    return tree.root.find_all(has_class("txv-tr"))


def span_rows(trace: Node) -> list[Node]:
    return trace.find_all(has_class("txv-sp"))


def bar_of(span: Node) -> tuple[float, float, str]:
    """(left %, width %, inline style) of the span's own bar (not a child's)."""
    bar = summary_of(span).find(has_class("txv-bar"))
    style = bar.attrs["style"]
    left = float(re.search(r"left:([\d.]+)%", style).group(1))
    width = float(re.search(r"width:([\d.]+)%", style).group(1))
    return left, width, style


def summary_of(node: Node) -> Node:
    return next(c for c in node.children if c.tag == "summary")


def name_of(span: Node) -> str:
    """The span's name, after its kind badge: "kind name" (or just the name)."""
    cell = summary_of(span).find(has_class("txv-nm"))
    badges = cell.find_all(has_class("txv-b"))
    name = "".join(cell.text_parts).strip()
    return f"{badges[0].text()} {name}" if badges else name


AGENT_CELL = """%%trace agent-run --tag demo --tag nightly --user ann --session s-42
import json, time
from opentelemetry import trace
tracer = trace.get_tracer('agent')
with tracer.start_as_current_span('plan', attributes={'openinference.span.kind': 'CHAIN'}):
    with tracer.start_as_current_span('search', attributes={
            'openinference.span.kind': 'RETRIEVER',
            'input.value': json.dumps({'query': 'otel', 'k': 3}), 'input.mime_type': 'application/json'}):
        time.sleep(0.02)
    with tracer.start_as_current_span('llm', attributes={
            'gen_ai.operation.name': 'chat', 'gen_ai.request.model': 'gpt-test',
            'gen_ai.usage.input_tokens': 12, 'gen_ai.usage.output_tokens': 7,
            'output.value': 'the answer is ' + 'x' * 600}):
        time.sleep(0.01)
with tracer.start_as_current_span('tool-call', attributes={'openinference.span.kind': 'TOOL'}) as s:
    try:
        raise KeyError('missing-key')
    except KeyError as exc:
        s.record_exception(exc)
        s.set_status(trace.Status(trace.StatusCode.ERROR, 'KeyError: missing-key'))
'done'
"""


@pytest.fixture
def shown(loaded):
    """The agent cell, a failing cell, and a plain one; then `%trace show`'s display."""
    loaded.ok(AGENT_CELL)
    loaded.execute("%%trace failing-cell\nraise ValueError('bad input')")
    loaded.ok("%%trace plain\n1 + 1")
    [display] = loaded.ok("%trace show").displays
    return loaded, display


def test_the_list_has_one_row_per_trace_newest_first_with_its_columns(shown):
    _kernel, display = shown
    markup = display["data"]["text/html"]
    assert not SCRIPT_OR_NETWORK.search(markup), SCRIPT_OR_NETWORK.search(markup)
    rows = trace_rows(Tree(markup))
    names = [summary_of(row).children[0].text().strip() for row in rows]
    assert names == ["plain", "failing-cell", "agent-run"]
    cells = [c.text().strip() for c in summary_of(rows[2]).children]
    # name, started, duration, spans, status, delivery, tags, session, user
    assert cells[3] == "5" and cells[4] == "ERROR" and cells[5] == "local"
    assert re.fullmatch(r"\d+ s ago", cells[1]) and re.search(r"\d (ms|s)$", cells[2])
    assert "demo" in cells[6] and "nightly" in cells[6]
    assert cells[7] == "s-42" and cells[8] == "ann"
    failing = [c.text().strip() for c in summary_of(rows[1]).children]
    assert failing[4] == "ERROR"
    plain = [c.text().strip() for c in summary_of(rows[0]).children]
    assert plain[3] == "1" and plain[4] == "OK"
    # The plain text form says the same, for frontends without HTML.
    text = display["data"]["text/plain"]
    assert text.splitlines()[0] == "3 traces, newest first"
    assert "trace agent-run ·" in text and "5 spans · ERROR · local · tags demo, nightly · session s-42 · user ann" in text


def test_a_waterfall_has_one_bar_per_span_in_order_and_nesting(shown):
    _kernel, display = shown
    [agent] = [r for r in trace_rows(Tree(display["data"]["text/html"])) if "agent-run" in r.text()]
    spans = span_rows(agent)
    assert [name_of(s) for s in spans] == ["cell agent-run", "chain plan", "retriever search", "generation llm",
                                           "tool tool-call"]
    depths = {name_of(s).split()[-1]: int(s.attrs["data-depth"]) for s in spans}
    assert depths == {"agent-run": 0, "plan": 1, "search": 2, "llm": 2, "tool-call": 1}
    # Each span row is a <details> inside the trace's, and holds exactly one bar of its own.
    for span in spans:
        assert len(summary_of(span).find_all(has_class("txv-bar"))) == 1
    bars = {name_of(s).split()[-1]: bar_of(s) for s in spans}
    assert bars["agent-run"][0] == 0 and bars["agent-run"][1] == pytest.approx(100, abs=0.01)
    # On one time axis: search (20 ms) before llm (10 ms), both inside plan, tool-call after plan.
    plan, search, llm, tool = (bars[n] for n in ("plan", "search", "llm", "tool-call"))
    assert plan[0] <= search[0] < llm[0] <= plan[0] + plan[1] + 0.01
    assert search[1] > llm[1] > 0
    assert tool[0] >= plan[0] + plan[1] - 0.01
    assert "--txv-err" in tool[2] and "--txv-err" not in plan[2]  # the failed span's bar is red


def test_a_selected_span_shows_its_input_output_error_and_usage(shown):
    _kernel, display = shown
    tree = Tree(display["data"]["text/html"])
    [agent] = [r for r in trace_rows(tree) if "agent-run" in r.text()]
    by_name = {name_of(s).split()[-1]: s for s in span_rows(agent)}

    def detail(name: str) -> Node:
        return next(c for c in by_name[name].children if "txv-d" in c.classes())

    search = detail("search")
    assert "Input" in search.text() and '"query": ' in search.text() and '"otel"' in search.text()
    llm = detail("llm").text()
    assert "gpt-test" in llm and "input 12 tokens" in llm and "output 7 tokens" in llm
    # A long output is folded behind its first characters, and is there whole when opened.
    folded = detail("llm").find(lambda n: n.tag == "details" and "characters" in n.text())
    assert "614 characters" in folded.text() and "x" * 600 in folded.text()
    tool = detail("tool-call")
    error = tool.find(has_class("txv-x"))
    assert "KeyError" in error.text() and "missing-key" in error.text()
    # The cell's source is its input (highlighted as Python), its value the output.
    cell = detail("agent-run")
    assert "tracer.start_as_current_span" in cell.text() and "'done'" in cell.text()
    assert cell.find_all(lambda n: n.tag == "span" and any(c.startswith("txv-p-") for c in n.classes()))
    # A failing cell: red, with the exception's type and message.
    [failing] = [r for r in trace_rows(tree) if "failing-cell" in r.text()]
    [root] = span_rows(failing)
    assert "color:var(--txv-err" in summary_of(root).find(has_class("txv-nm")).attrs["style"]
    root_detail = next(c for c in root.children if "txv-d" in c.classes())
    assert "ValueError: bad input" in root_detail.find(has_class("txv-x")).text()
    traceback = root_detail.find(lambda n: n.tag == "details" and n.text().startswith("Traceback"))
    assert "raise ValueError('bad input')" in traceback.text()


def test_filters_pick_traces(shown):
    kernel, _display = shown

    def names(line: str) -> list[str]:
        text = kernel.ok(line).displays[0]["data"]["text/plain"]
        return [m.group(1) for m in re.finditer(r"^trace (\S+) ·", text, re.M)]

    assert names("%trace show --errors") == ["failing-cell", "agent-run"]
    assert names("%trace show --tag nightly") == ["agent-run"]
    assert names("%trace show --tag nightly --tag nope") == []
    assert names("%trace show --user ann") == ["agent-run"]
    assert names("%trace show --session s-42") == ["agent-run"]
    assert names("%trace show --name FAIL") == ["failing-cell"]
    assert names("%trace show --limit 2") == ["plain", "failing-cell"]
    assert names("%trace show 1") == ["plain"]
    assert names("%trace show --since 1h") == ["plain", "failing-cell", "agent-run"]
    assert names("%trace show --since 2999-01-01") == []
    trace_id = kernel.value("__import__('trace_ext._extension', fromlist=['x']).active().store.recent_traces(1)[0][0].trace_id")
    assert names(f"%trace show --trace {trace_id[:10]}") == ["plain"]
    more = kernel.ok("%trace show 1").displays[0]["data"]
    assert "only the newest 1 are listed" in more["text/html"] and "--limit raises it" in more["text/plain"]
    for bad in ("%trace show --since soon", "%trace show --trace xyz", "%trace show 0", "%trace show --bogus"):
        run = kernel.execute(bad)
        assert run.status == "error" and run.reply["ename"] == "UsageError", bad


# -- links to the backend --------------------------------------------------------

from trace_ext._display.links import backend_of  # noqa: E402

TRACE = "0af7651916cd43dd8448eb211c80319c"


@pytest.mark.parametrize("url, headers, env, link", [
    ("https://cloud.langfuse.com/api/public/otel/v1/traces", {}, {},
     f"https://cloud.langfuse.com/trace/{TRACE}"),
    ("https://pk:sk@lf.example.org/base/api/public/otel/v1/traces", {}, {},
     f"https://lf.example.org/base/trace/{TRACE}"),
    ("http://127.0.0.1:5000/v1/traces", {"X-MLflow-Experiment-Id": "7"}, {},
     f"http://127.0.0.1:5000/#/experiments/7/traces?selectedEvaluationId=tr-{TRACE}&traceId=tr-{TRACE}"),
    ("http://localhost:6006/v1/traces", {}, {}, f"http://localhost:6006/redirects/traces/{TRACE}"),
    ("http://127.0.0.1:41234/v1/traces", {}, {"PHOENIX_COLLECTOR_ENDPOINT": "http://127.0.0.1:41234"},
     f"http://127.0.0.1:41234/redirects/traces/{TRACE}"),
    ("http://127.0.0.1:4318/v1/traces", {}, {}, None),  # a collector: nothing to link to
    (None, {}, {}, None),
])
def test_backend_links_follow_each_backends_url_scheme(monkeypatch, url, headers, env, link):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    backend = backend_of(url, headers)
    assert (backend.link(TRACE) if backend else None) == link


def test_a_trace_sent_to_phoenix_links_to_it(phoenix, start_kernel):
    kernel = start_kernel(PHOENIX_COLLECTOR_ENDPOINT=phoenix.base_url)
    kernel.ok("%load_ext trace_ext")
    kernel.ok("%%trace stays-local\n1")
    kernel.ok(f"%config TraceExt.endpoint = {phoenix.otlp_url!r}")
    kernel.ok("%%trace linked\n2")
    assert "0 still pending" in kernel.ok("%trace flush --timeout 30").stdout
    display = kernel.ok("%trace show").displays[0]["data"]
    rows = {summary_of(r).children[0].text().strip(): r for r in trace_rows(Tree(display["text/html"]))}
    links = rows["linked"].find_all(lambda n: n.tag == "a")
    trace_id = rows["linked"].attrs["data-trace-id"]
    assert [a.attrs["href"] for a in links] == [f"{phoenix.base_url}/redirects/traces/{trace_id}"]
    assert links[0].text() == "open in Phoenix ↗"
    assert not rows["stays-local"].find_all(lambda n: n.tag == "a")  # never sent: no link
    assert f"Phoenix: {phoenix.base_url}/redirects/traces/{trace_id}" in display["text/plain"]
    # Phoenix serves that route (its app resolves the OpenTelemetry id to the trace's page).
    import httpx

    assert httpx.get(f"{phoenix.base_url}/redirects/traces/{trace_id}", timeout=30).status_code == 200


# -- reading: durations, --since, odd span trees -----------------------------------

from trace_ext._display.traces import _walk, format_duration, parse_since  # noqa: E402
from trace_ext._store.store import StoredSpan  # noqa: E402


def test_durations_read_well_from_nanoseconds_to_hours():
    assert [format_duration(ns) for ns in (0, 850, 12_345, 999_499, 4_560_000, 123_456_789, 1_234_567_890,
                                           125 * 10**9, 3_720 * 10**9)] == [
        "0 ns", "850 ns", "12.3 µs", "999 µs", "4.56 ms", "123 ms", "1.23 s", "2m 05s", "1h 02m"]


def test_since_takes_an_age_or_a_date():
    now = 1_000_000.0
    assert parse_since("90s", now) == now - 90 and parse_since("15m", now) == now - 900
    assert parse_since("1h", now) == now - 3600 and parse_since("2d", now) == now - 2 * 86400
    assert parse_since("1w", now) == now - 7 * 86400 and parse_since("", now) == 0.0
    assert parse_since("2026-12-01T14:00") > 0
    from IPython.core.error import UsageError

    with pytest.raises(UsageError, match="--since takes an age"):
        parse_since("yesterday-ish")


def test_a_span_saved_twice_is_one_row_and_a_looping_parent_chain_is_still_shown():
    def span(span_id, parent, start=0):
        return StoredSpan("t" * 32, span_id, parent, span_id, start, start + 1, 0, "local", None, b"")

    spans = [span("a", None), span("b", "a", 1), span("b", "a", 1), span("c", "b", 2),
             span("x", "y", 3), span("y", "x", 4), span("z", "z", 5)]
    assert [(depth, s.span_id) for depth, s in _walk(spans)] == [
        (0, "a"), (1, "b"), (2, "c"), (0, "z"), (0, "x"), (1, "y")]


def test_names_and_values_are_escaped_not_run(loaded):
    loaded.ok(
        "%%trace\n"
        "from opentelemetry import trace\n"
        "with trace.get_tracer('t').start_as_current_span('<img src=x onerror=alert(1)>',\n"
        "        attributes={'input.value': '</pre><script>alert(2)</script>', 'k\"><b>': '<i>'}):\n"
        "    pass"
    )
    markup = loaded.ok("%trace show 1").displays[0]["data"]["text/html"]
    assert "<script" not in markup and "<img" not in markup and "<b>" not in markup
    assert "&lt;img src=x onerror=alert(1)&gt;" in markup and "&lt;/pre&gt;&lt;script&gt;" in markup


def test_a_saved_notebook_keeps_the_view_and_nbconvert_html_embeds_it_whole(tmp_path, store_path):
    """Run a notebook with `%trace show`, save it, convert it: the view is in the file as it was
    shown (HTML and text), and nbconvert's page holds the same elements (it re-serialises the
    HTML, so the bytes differ), with no script of the view's own."""
    import nbformat
    from nbconvert import HTMLExporter
    from nbformat.v4 import new_code_cell, new_notebook

    from .test_cli import cli

    notebook, saved = tmp_path / "view.ipynb", tmp_path / "ran.ipynb"
    cells = [new_code_cell(c) for c in ("%load_ext trace_ext", AGENT_CELL, "%trace show")]
    nbformat.write(new_notebook(cells=cells), str(notebook))
    run = cli("run", str(notebook), "--store", str(store_path), "--output", str(saved))
    assert run.returncode == 0, run.stdout + run.stderr
    [output] = [o for o in nbformat.read(str(saved), as_version=4).cells[2].outputs if o.output_type == "display_data"]
    markup, text = output.data["text/html"], output.data["text/plain"]
    assert "agent-run" in text and not SCRIPT_OR_NETWORK.search(markup)
    [trace] = trace_rows(Tree(markup))
    assert len(span_rows(trace)) == 5
    body, _resources = HTMLExporter().from_filename(str(saved))
    page = Tree(body)
    [converted] = trace_rows(page)
    assert [s.attrs["data-span-id"] for s in span_rows(converted)] == [s.attrs["data-span-id"] for s in span_rows(trace)]
    assert [name_of(s) for s in span_rows(converted)] == [name_of(s) for s in span_rows(trace)]
    [view] = page.root.find_all(has_class("txv"))
    assert not view.find_all(lambda n: n.tag in ("script", "link", "iframe", "img"))
