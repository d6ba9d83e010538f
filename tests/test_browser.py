"""The status display in a real JupyterLab 4 and Notebook 7, in headless Chromium.

Each test writes a notebook (nbformat), opens it, runs it with the same
commands the menus run, and reads what a person would see. Screenshots go to
test-artifacts/screenshots/ (the README shows a selection from docs/screenshots/).
"""

from __future__ import annotations

import pytest

from .browser import (
    Browser,
    JupyterServer,
    browser_missing,
    run_all,
    screenshot,
    status_text,
    wait_app,
)
from .conftest import require

THREE_SPANS = (
    "%%trace browser-test\n"
    "from opentelemetry import trace\n"
    "with trace.get_tracer('lib').start_as_current_span('a'):\n"
    "    with trace.get_tracer('lib').start_as_current_span('b'):\n"
    "        pass"
)


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


def setup_cell(store, endpoint: str | None = None) -> str:
    """The notebook's first cell: this test's store and endpoint (the server's env is shared)."""
    lines = ["import os", f"os.environ['TRACE_EXT_STORE_PATH'] = {str(store)!r}"]
    if endpoint:
        lines.append(f"os.environ['OTEL_EXPORTER_OTLP_ENDPOINT'] = {endpoint!r}")
    return "\n".join(lines)


def test_the_status_renders_as_a_widget_and_reaches_all_delivered(lab, chromium, receiver, tmp_path):
    name = lab.write_notebook(
        "delivered.ipynb", [setup_cell(tmp_path / "s.sqlite3", receiver.base_url), "%load_ext trace_ext", THREE_SPANS]
    )
    page = chromium.open(lab.url(name))
    wait_app(page)
    run_all(page)
    page.wait_for_selector(".jp-OutputArea-output .widget-hbox")  # a live ipywidgets view, not text
    page.wait_for_function(
        "() => /0 pending · 3 sent · 0 failed/.test(document.body.innerText)", timeout=30_000
    )
    assert receiver.wait_for_spans(3, timeout=10)
    assert f"127.0.0.1:{receiver.port}" in page.inner_text(".jp-Notebook")
    screenshot(page, "lab-delivered")
