"""The trace view (`%trace show`) in a real JupyterLab 4 in headless Chromium, and in nbconvert HTML.

One notebook is written, run and saved once per module (a Lab server and a
browser take most of the time): it loads trace_ext with no endpoint (the
embedded default: spans stay in the local store), runs three ``%%trace``
cells (nested OpenTelemetry spans, an error, a JSON output) and ``%trace
show``. The tests read what a person sees: rows, bars placed on screen,
computed colours, and the contrast of text against its background. Screenshots
go to test-artifacts/screenshots/ (the README shows a selection from docs/screenshots/).
"""

from __future__ import annotations

import re
import subprocess
import sys
from urllib.parse import urlparse

import pytest

from .browser import (
    Browser,
    JupyterServer,
    browser_missing,
    command,
    run_all,
    screenshot,
    wait_app,
)
from .conftest import clean_env, require

NESTED = (
    "%%trace nested-spans\n"
    "import time\n"
    "from opentelemetry import trace\n"
    "tracer = trace.get_tracer('lib')\n"
    "with tracer.start_as_current_span('outer'):\n"
    "    with tracer.start_as_current_span('inner-a'):\n"
    "        time.sleep(0.02)\n"
    "    with tracer.start_as_current_span('inner-b'):\n"
    "        time.sleep(0.01)\n"
    "'nested done'"
)
FAILING = "%%trace failing-cell\nraise ValueError('bad input')"
JSON_OUTPUT = (
    "%%trace json-output\n"
    "import json\n"
    "from opentelemetry import trace\n"
    "answer = {'answer': 42, 'sources': ['alpha', 'beta', 'gamma'], 'usage': {'input': 12, 'output': 7}}\n"
    "with trace.get_tracer('tool').start_as_current_span('lookup', attributes={\n"
    "        'output.value': json.dumps(answer), 'output.mime_type': 'application/json'}):\n"
    "    pass\n"
    "answer"
)
VIEW = ".jp-OutputArea-output .txv"


# -- a few page helpers of this module's own (tests/browser.py is shared) ------------


def rows(page, root: str = VIEW) -> list[dict]:
    """Each trace row of the view: its cells' text and whether it is open."""
    return page.evaluate(
        """(root) => [...document.querySelectorAll(root + ' .txv-tr')].map(d => ({
            id: d.dataset.traceId, open: d.open,
            cells: [...d.querySelector(':scope > summary').children].map(c => c.innerText.trim())}))""",
        root,
    )


def open_trace(page, name: str):
    """The trace row called ``name``, opened (a click on its summary, as a person would)."""
    row = page.locator(f"{VIEW} .txv-tr").filter(has=page.locator(":scope > summary > span:first-child", has_text=name))
    if not row.evaluate("d => d.open"):
        row.locator(":scope > summary").click()
    page.wait_for_function("d => d.open", arg=row.element_handle())
    return row


def open_span(row, name: str):
    """The span called ``name`` in an opened trace row, opened to show its details."""
    span = row.locator(".txv-sp").filter(has=row.page.locator(":scope > summary .txv-nm", has_text=name)).first
    if not span.evaluate("d => d.open"):
        span.locator(":scope > summary").click()
    span.locator(":scope > .txv-d").wait_for(state="visible")
    return span


def spans_on_screen(row) -> list[dict]:
    """The waterfall's span rows as laid out: name, depth, where the name starts, the bar's box."""
    return row.evaluate(
        """d => [...d.querySelectorAll('.txv-sp')].map(s => {
            const sr = s.querySelector(':scope > .txv-sr');
            const nm = sr.querySelector('.txv-nm'), bar = sr.querySelector('.txv-bar');
            const marker = nm.querySelector('.txv-c').getBoundingClientRect();
            const b = bar.getBoundingClientRect(), r = sr.getBoundingClientRect();
            return {name: [...nm.childNodes].filter(n => n.nodeType === 3).map(n => n.textContent).join('').trim(),
                    depth: +s.dataset.depth, nameX: marker.left, top: r.top,
                    bars: sr.querySelectorAll('.txv-bar').length, duration: sr.querySelector('.txv-num').innerText,
                    left: b.left, right: b.right, visible: b.width > 0 && b.height > 0,
                    barColour: getComputedStyle(bar).backgroundColor, colour: getComputedStyle(nm).color};
        })"""
    )


def milliseconds(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.,]+) (ns|µs|ms|s)", text.strip()).groups()
    return float(number.replace(",", "")) * {"ns": 1e-6, "µs": 1e-3, "ms": 1, "s": 1e3}[unit]


def rgba(text: str) -> tuple[float, float, float, float]:
    """A computed colour: ``rgb()``/``rgba()``, or ``color(srgb r g b / a)`` (what color-mix() gives)."""
    numbers = [float(x) for x in re.findall(r"[\d.]+", text)]
    if text.startswith("color(srgb") and len(numbers) in (3, 4):
        return (*(255 * n for n in numbers[:3]), numbers[3] if len(numbers) == 4 else 1.0)
    assert text.startswith("rgb") and len(numbers) in (3, 4), f"not an rgb() colour: {text}"
    return (*numbers[:3], numbers[3] if len(numbers) == 4 else 1.0)


def reddish(text: str) -> bool:
    r, g, b, a = rgba(text)
    return a > 0.5 and r > 150 and r > g + 60 and r > b + 60


# Each text element's colour (with the opacity of it and its ancestors) and the
# backgrounds behind it, innermost first, as the browser computed them.
_COLOURS = """(els) => els.map(el => {
    let opacity = 1, backgrounds = [];
    for (let e = el; e; e = e.parentElement) {
        const s = getComputedStyle(e);
        opacity *= +s.opacity;
        backgrounds.push(s.backgroundColor);
    }
    return {text: el.innerText.trim().slice(0, 40), colour: getComputedStyle(el).color, opacity, backgrounds};
})"""


def _over(top: tuple, bottom: tuple) -> tuple:
    r, g, b, a = top
    return tuple(a * c + (1 - a) * d for c, d in zip((r, g, b), bottom[:3])) + (1.0,)


def _luminance(colour: tuple) -> float:
    def channel(c: float) -> float:
        c /= 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in colour[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(sample: dict) -> float:
    """WCAG contrast ratio of the text against what is painted behind it (white under all)."""
    ground = (255.0, 255.0, 255.0, 1.0)
    for layer in reversed(sample["backgrounds"]):
        ground = _over(rgba(layer), ground)
    r, g, b, a = rgba(sample["colour"])
    text = _over((r, g, b, a * sample["opacity"]), ground)
    light, dark = sorted((_luminance(text), _luminance(ground)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


# -- fixtures: one server, one browser, one executed notebook -------------------------


@pytest.fixture(scope="module")
def lab():
    require(not browser_missing(), browser_missing())
    with JupyterServer("lab") as server:
        yield server


@pytest.fixture(scope="module")
def chromium():
    require(not browser_missing(), browser_missing())
    with Browser() as browser:
        yield browser


@pytest.fixture(scope="module")
def notebook(lab, chromium, tmp_path_factory):
    """The notebook run in Lab and saved: (page, name)."""
    store = tmp_path_factory.mktemp("view-store") / "spans.sqlite3"
    setup = f"import os\nos.environ['TRACE_EXT_STORE_PATH'] = {str(store)!r}"
    name = lab.write_notebook("view.ipynb", [setup, "%load_ext trace_ext", NESTED, FAILING, JSON_OUTPUT, "%trace show"])
    import nbformat  # with Jupyter, as browser_missing() checked

    # Lab stops "run all" at an error, except in a cell tagged raises-exception.
    nb = lab.read_notebook(name)
    nb.cells[3].metadata["tags"] = ["raises-exception"]
    nbformat.write(nb, lab.root / name)
    page = chromium.open(lab.url(name), width=1200, height=800)
    wait_app(page)
    run_all(page)
    page.wait_for_selector(f"{VIEW} .txv-tr")
    command(page, "docmanager:save")
    saved = lab.read_notebook(name)
    assert any("text/html" in o.get("data", {}) and "txv" in o["data"]["text/html"]
               for o in saved.cells[-1].outputs), "the view is not in the saved notebook"
    return page, name


# -- the tests -------------------------------------------------------------------------


def test_the_list_shows_one_row_per_trace_newest_first_with_its_status(notebook):
    page, _name = notebook
    listed = rows(page)
    # name, started, duration, spans, status, delivery, tags, session, user
    assert [r["cells"][0] for r in listed] == ["json-output", "failing-cell", "nested-spans"]
    assert [r["cells"][4] for r in listed] == ["OK", "ERROR", "OK"]
    assert [r["cells"][3] for r in listed] == ["2", "1", "4"]
    assert {r["cells"][5] for r in listed} == {"local"}  # no endpoint: the embedded default keeps them
    assert all(re.fullmatch(r"\d+ s ago", r["cells"][1]) for r in listed)
    assert [r["open"] for r in listed] == [True, False, False]  # the newest opens at once
    # What the page shows is what a person can see, not hidden markup.
    assert page.locator(f"{VIEW} .txv-tr").first.is_visible()
    assert "3 traces, newest first" in page.inner_text(VIEW)
    page.locator(VIEW).scroll_into_view_if_needed()
    screenshot(page, "view-list", VIEW)


def test_a_waterfall_has_one_bar_per_span_in_order_and_nesting(notebook):
    page, _name = notebook
    row = open_trace(page, "nested-spans")
    spans = spans_on_screen(row)
    assert [(s["name"], s["depth"]) for s in spans] == [
        ("nested-spans", 0), ("outer", 1), ("inner-a", 2), ("inner-b", 2)]
    assert all(s["bars"] == 1 and s["visible"] for s in spans)
    assert row.locator(".txv-bar").count() == 4  # one bar per span, the row's span count
    # Rows top to bottom; deeper spans' names start further right.
    assert [s["top"] for s in spans] == sorted(s["top"] for s in spans)
    cell, outer, a, b = spans
    for s in spans:
        s["ms"] = milliseconds(s["duration"])
    assert cell["nameX"] < outer["nameX"] < a["nameX"] == pytest.approx(b["nameX"], abs=1)
    # On one time axis: the cell's bar spans it all; outer inside it; inner-a before inner-b, both inside outer.
    slack = 2  # pixels: rounding of percentages
    assert cell["left"] - slack <= outer["left"] and outer["right"] <= cell["right"] + slack
    assert outer["left"] - slack <= a["left"] < b["left"] and b["right"] <= outer["right"] + slack
    assert a["right"] <= b["left"] + slack
    # Bars are as long as the durations the rows print (20 ms and 10 ms of sleep, stretched by a busy machine).
    if a["ms"] > b["ms"] * 1.2:
        assert (a["right"] - a["left"]) > (b["right"] - b["left"])
    elif b["ms"] > a["ms"] * 1.2:
        assert (b["right"] - b["left"]) > (a["right"] - a["left"])
    assert not any(reddish(s["barColour"]) or reddish(s["colour"]) for s in spans)
    row.scroll_into_view_if_needed()
    screenshot(page, "view-waterfall-nested", f"{VIEW} .txv-tr[data-trace-id='{rows(page)[2]['id']}']")


def test_a_selected_span_shows_its_input_and_output(notebook):
    page, _name = notebook
    row = open_trace(page, "json-output")
    lookup = row.locator(".txv-sp").filter(has=page.locator(".txv-nm", has_text="lookup"))
    detail = lookup.locator(":scope > .txv-d")
    assert not detail.is_visible()
    lookup.locator(":scope > summary").click()
    detail.wait_for(state="visible")
    text = detail.inner_text()
    assert "Output" in text and '"answer": 42' in text and '"alpha"' in text  # JSON, pretty-printed
    # The cell's own span: its source as input (highlighted as Python), its value as output.
    cell = row.locator(".txv-sp").first
    cell.locator(":scope > summary").click()
    cell_detail = cell.locator(":scope > .txv-d")
    cell_detail.wait_for(state="visible")
    shown = cell_detail.inner_text()
    assert "Input" in shown and "start_as_current_span('lookup'" in shown
    assert "Output" in shown and "'answer': 42" in shown
    assert cell_detail.locator("pre span[class^='txv-p-']").count() > 0
    keyword = cell_detail.locator("pre .txv-p-kn, pre .txv-p-k").first
    assert rgba(keyword.evaluate("e => getComputedStyle(e).color")) != rgba(
        cell_detail.locator("pre").first.evaluate("e => getComputedStyle(e).color"))
    row.scroll_into_view_if_needed()
    screenshot(page, "view-waterfall", f"{VIEW} .txv-tr[data-trace-id='{rows(page)[0]['id']}']")


def test_an_error_is_red_in_the_list_the_waterfall_and_its_details(notebook):
    page, _name = notebook
    row = open_trace(page, "failing-cell")
    summary = row.locator(":scope > summary")
    name_colour = summary.locator(":scope > span").first.evaluate("e => getComputedStyle(e).color")
    badge_colour = summary.locator(".txv-s-ERROR").evaluate("e => getComputedStyle(e).color")
    assert reddish(name_colour) and reddish(badge_colour), (name_colour, badge_colour)
    [span] = spans_on_screen(row)
    assert reddish(span["colour"]) and reddish(span["barColour"]), span
    ok_badge = page.locator(f"{VIEW} .txv-s-OK").first.evaluate("e => getComputedStyle(e).color")
    assert not reddish(ok_badge)
    root = row.locator(".txv-sp").first
    root.locator(":scope > summary").click()
    error = root.locator(".txv-x").first
    error.wait_for(state="visible")
    assert "ValueError: bad input" in error.inner_text()
    assert reddish(error.evaluate("e => getComputedStyle(e).color"))
    screenshot(page, "view-error", f"{VIEW} .txv-tr[data-trace-id='{rows(page)[1]['id']}']")


# Body text: the list's cells and header, span names, a span's details (values, code, errors).
BODY_TEXT = [
    ".txv-hd > span", ".txv-tr > summary > span", ".txv-nm", ".txv-meta",
    ".txv-d h4", ".txv-d pre", ".txv-j div", ".txv-x",
]
BADGES = [".txv-st"]  # OK/ERROR and the delivery state, on their tinted pills


def lowest_contrast(page, selectors: list[str]) -> dict[str, tuple[float, str, str]]:
    """For each kind of text: (lowest contrast ratio, that text, its colour)."""
    worst = {}
    for selector in selectors:
        samples = [s for s in page.locator(f"{VIEW} {selector}").evaluate_all(_COLOURS) if s["text"]]
        assert samples, f"no text at {selector}"
        low = min(samples, key=contrast)
        worst[selector] = (round(contrast(low), 2), low["text"], low["colour"])
    return worst


@pytest.fixture(scope="module")
def themes(notebook):
    """The view's lowest contrasts in JupyterLab Light and JupyterLab Dark (the page is left light)."""
    page, _name = notebook
    open_trace(page, "nested-spans")
    open_span(open_trace(page, "failing-cell"), "failing-cell")  # its error and input
    json_row = open_trace(page, "json-output")
    open_span(json_row, "lookup")  # JSON output
    measured = {"light": lowest_contrast(page, BODY_TEXT + BADGES)}
    command(page, "apputils:change-theme", {"theme": "JupyterLab Dark"})
    try:
        page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'", timeout=30_000)
        # The theme's stylesheet is in once Lab's own background is dark.
        page.wait_for_function(
            """() => { const c = getComputedStyle(document.querySelector('.jp-Notebook')).backgroundColor
                                  .match(/[\\d.]+/g).map(Number);
                       return c[0] + c[1] + c[2] < 200; }""", timeout=30_000)
        measured["dark"] = lowest_contrast(page, BODY_TEXT + BADGES)
        # A picture that fits the window (an element taller than it is captured badly):
        # the list, the nested waterfall, and the error opened.
        json_row.locator(":scope > summary").click()
        page.wait_for_function("d => !d.open", arg=json_row.element_handle())
        page.locator(VIEW).scroll_into_view_if_needed()
        screenshot(page, "view-dark", VIEW)
    finally:
        command(page, "apputils:change-theme", {"theme": "JupyterLab Light"})
        page.wait_for_function("() => document.body.dataset.jpThemeLight === 'true'", timeout=30_000)
    print("lowest contrast per kind of text:", measured)
    return measured


@pytest.mark.parametrize("theme", ["dark", "light"])
def test_body_text_is_readable_in_each_theme(themes, theme):
    body = {k: v for k, v in themes[theme].items() if k in BODY_TEXT}
    assert all(ratio >= 4.5 for ratio, _t, _c in body.values()), body  # WCAG AA, normal-size text


def test_status_badges_are_readable_in_each_theme(themes):
    assert themes["light"][".txv-st"][0] >= 4.5, themes["light"]
    assert themes["dark"][".txv-st"][0] >= 4.5, themes["dark"]


def test_nbconvert_html_renders_the_view_with_no_script_errors(notebook, lab, chromium, tmp_path):
    _page, name = notebook
    out = tmp_path / "html"
    subprocess.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", "--output-dir", str(out), str(lab.root / name)],
        check=True, env=clean_env(), capture_output=True, timeout=120,
    )
    html_file = out / "view.html"
    markup = html_file.read_text()
    page = chromium.open("about:blank", width=1200, height=800)
    errors, blocked = [], []
    page.on("console", lambda m: errors.append(f"console: {m.text} @ {m.location.get('url')}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))

    def route(r):
        host = urlparse(r.request.url).hostname
        if r.request.url.startswith("file://") or host == "127.0.0.1":
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.goto(html_file.as_uri())
    page.wait_for_selector(".txv .txv-tr")
    page.wait_for_load_state("load")
    assert [r["cells"][0] for r in rows(page, ".txv")] == ["json-output", "failing-cell", "nested-spans"]
    # The newest trace's waterfall is open and laid out, with no script to draw it.
    assert page.locator(".txv .txv-tr[open] .txv-bar").first.is_visible()
    assert page.locator(".txv script, .txv link, .txv img, .txv iframe").count() == 0
    # The network is closed: nbconvert's own template asks a CDN for require.js and
    # MathJax (its <script> tags are outside the view, in the page's <head>); those
    # requests are refused here, and the console errors they cause are the
    # template's, so they are left out. Anything else the page asked for fails the test.
    head = markup.split("<body", 1)[0]
    assert all(url.split("?")[0] in head for url in blocked), blocked
    own = [e for e in errors
           if not (e.startswith("console: Failed to load resource") and any(u in e for u in blocked))]
    assert own == [], own
    page.locator(".txv").first.scroll_into_view_if_needed()
    screenshot(page, "view-nbconvert", ".txv")


def test_a_saved_notebook_reopened_after_the_kernel_is_gone_shows_the_view(notebook, lab, chromium):
    page, name = notebook
    lab.shutdown_kernels()
    page.close()
    reopened = chromium.open(lab.url(name), width=1200, height=800)
    reopened.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell")
    reopened.wait_for_selector(f"{VIEW} .txv-tr")
    listed = rows(reopened)
    assert [r["cells"][0] for r in listed] == ["json-output", "failing-cell", "nested-spans"]
    assert [r["cells"][4] for r in listed] == ["OK", "ERROR", "OK"]
    # It still opens and reads as before: a click shows a waterfall, errors in red.
    row = open_trace(reopened, "nested-spans")
    spans = spans_on_screen(row)
    assert [s["name"] for s in spans] == ["nested-spans", "outer", "inner-a", "inner-b"]
    assert all(s["visible"] for s in spans) and spans[2]["left"] < spans[3]["left"]  # bars laid out as before
    failing = reopened.locator(f"{VIEW} .txv-tr .txv-s-ERROR").first
    assert reddish(failing.evaluate("e => getComputedStyle(e).color"))
    screenshot(reopened, "view-reopened", VIEW)
