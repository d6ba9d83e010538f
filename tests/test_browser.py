"""The status display in a real JupyterLab 4 and Notebook 7, in headless Chromium.

Each test writes a notebook (nbformat), opens it, runs it with the commands
the menus run (or Shift+Enter), and reads what a person would see: visible
text only (``offsetParent``), so a hidden error or a hidden duplicate counts
as not seen. Screenshots go to test-artifacts/screenshots/; the README shows
a selection copied to docs/screenshots/.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .browser import (
    ARTIFACTS,
    Browser,
    JupyterServer,
    accept_dialog,
    browser_missing,
    command,
    contrasts,
    run_all,
    run_cell,
    screenshot,
    status_text,
    wait_app,
    wait_idle,
)
from .conftest import clean_env, require
from .otlp_receiver import Hang, Respond

THREE_SPANS = (
    "%%trace browser-test\n"
    "from opentelemetry import trace\n"
    "with trace.get_tracer('lib').start_as_current_span('a'):\n"
    "    with trace.get_tracer('lib').start_as_current_span('b'):\n"
    "        pass"
)
STATUS = ".trace-ext-status"


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


def wait_state(page, state: str, live: bool = True, timeout: float = 30) -> None:
    kind = "live" if live else "saved"
    page.locator(f".trace-ext-{kind}[data-state={state}]").first.wait_for(state="visible", timeout=timeout * 1000)


def visible_text(page) -> str:
    return page.inner_text(".jp-Notebook")


def open_and_run(lab, chromium, name: str, cells: list[str]):
    path = lab.write_notebook(name, cells)
    page = chromium.open(lab.url(path))
    wait_app(page)
    run_all(page)
    return page


def delivered_notebook(lab, chromium, receiver, tmp_path, name: str):
    page = open_and_run(
        lab, chromium, name, [setup_cell(tmp_path / "s.sqlite3", receiver.base_url), "%load_ext trace_ext", THREE_SPANS]
    )
    wait_state(page, "delivered")
    return page


def test_live_widget_reaches_all_delivered_and_its_buttons_answer(lab, chromium, receiver, tmp_path):
    page = delivered_notebook(lab, chromium, receiver, tmp_path, "delivered.ipynb")
    page.wait_for_selector(".jp-OutputArea-output .trace-ext-box")  # a live ipywidgets view, not text
    assert receiver.wait_for_spans(3, timeout=10)
    shown = status_text(page)
    assert f"All 3 spans delivered to 127.0.0.1:{receiver.port} (from OTEL_EXPORTER_OTLP_ENDPOINT)" in shown, shown
    assert "0 pending · 3 sent · 0 failed" in shown
    assert shown.count("trace_ext") == 1, shown  # the saved copy is hidden while the widget lives
    assert page.locator(".trace-ext-backlog:visible").count() == 0  # no bar without a backlog
    page.wait_for_function("() => /the last one \\d+ s ago/.test(document.body.innerText)")  # relative, and ticking
    screenshot(page, "lab-delivered", cell=1)

    page.get_by_role("button", name="Flush").click()
    page.locator(".trace-ext-feedback", has_text="All 3 spans delivered").wait_for()
    page.get_by_role("button", name="Show traces").click()
    page.locator(".trace-ext-feedback", has_text="The newest 5 traces").wait_for()
    page.locator(".jp-OutputArea-output .widget-output", has_text="browser-test").wait_for()
    screenshot(page, "lab-buttons", cell=1)


def test_saved_notebook_reopened_without_its_kernel_shows_the_last_real_status(lab, chromium, receiver, tmp_path):
    page = delivered_notebook(lab, chromium, receiver, tmp_path, "reopened.ipynb")
    command(page, "docmanager:save")
    # The file keeps the kernel's last update, not the state at display time.
    saved = [o for cell in lab.read_notebook("reopened.ipynb").cells for o in cell.get("outputs", [])]
    texts = [o["data"].get("text/plain", "") for o in saved if o.get("output_type") == "display_data"]
    assert any("0 pending · 3 sent · 0 failed" in t for t in texts), texts
    page.context.close()
    lab.shutdown_kernels()

    page = chromium.open(lab.url("reopened.ipynb"))
    page.wait_for_selector(".jp-Notebook .jp-Cell")
    wait_state(page, "delivered", live=False)
    # JupyterLab gives up on the widget (its model died with the kernel); that text stays hidden.
    page.wait_for_function(
        "() => [...document.querySelectorAll('.jp-OutputArea-output')]"
        ".some(e => /Error displaying widget|Loading widget/.test(e.textContent))"
    )
    shown = visible_text(page)
    assert "Error displaying widget" not in shown and "Loading widget" not in shown, shown
    status = status_text(page)
    assert f"All 3 spans delivered to 127.0.0.1:{receiver.port}" in status and "3 sent" in status, status
    assert "Status as of" in status and "the kernel last updated it" in status
    screenshot(page, "lab-reopened", cell=1)

    # nbconvert HTML: the same last status, readable without JavaScript or any network.
    out = tmp_path / "export"
    subprocess.run(
        [sys.executable, "-m", "nbconvert", "--to", "html", "--output-dir", str(out), str(lab.root / "reopened.ipynb")],
        check=True, capture_output=True, env=clean_env(HOME=str(lab.home)), timeout=120,
    )
    exported = (out / "reopened.html").read_text()
    assert "html-manager" not in exported and "widget-state+json" not in exported  # no widget JS to fetch
    context = chromium._browser.new_context(java_script_enabled=False, offline=True)
    static = context.new_page()
    static.goto((out / "reopened.html").as_uri(), wait_until="domcontentloaded")
    text = static.inner_text("body")
    assert f"All 3 spans delivered to 127.0.0.1:{receiver.port}" in text and "0 pending · 3 sent · 0 failed" in text
    assert text.count("All 3 spans delivered") == 1, text
    assert "Nothing recorded yet" not in text, text  # never the state at display time
    static.locator(STATUS).first.screenshot(path=str(ARTIFACTS / "nbconvert-html.png"))
    context.close()


def test_restart_marks_old_displays_and_the_load_cell_shows_the_status_again(lab, chromium, receiver, tmp_path):
    page = delivered_notebook(lab, chromium, receiver, tmp_path, "restarted.ipynb")
    command(page, "notebook:restart-kernel", wait=False)
    accept_dialog(page)
    page.locator(".trace-ext-stale").first.wait_for(state="visible")
    shown = status_text(page)
    assert "This status is from a previous kernel and no longer updates" in shown, shown
    assert page.get_by_role("button", name="Flush").count() == 0 or not page.get_by_role("button", name="Flush").is_visible()
    wait_idle(page)
    screenshot(page, "lab-restarted", cell=1)

    run_all(page)  # the new kernel's status replaces the old one
    wait_state(page, "delivered")
    assert "previous kernel" not in status_text(page)
    run_cell(page, 1)  # `%load_ext trace_ext` again: the status, not "already loaded"
    wait_state(page, "delivered")
    shown = visible_text(page)
    assert "already loaded" not in shown, shown
    assert "All 3 spans delivered" in status_text(page)


def test_backend_down_hanging_and_503_each_say_what_is_going_on(lab, chromium, receiver, tmp_path):
    receiver.stop()
    page = open_and_run(
        lab, chromium, "outage.ipynb",
        [setup_cell(tmp_path / "s.sqlite3", receiver.base_url), "%load_ext trace_ext", THREE_SPANS],
    )
    wait_state(page, "retrying")
    page.wait_for_function("() => /next try in \\d+ s \\(attempt \\d+\\)/.test(document.body.innerText)")
    shown = status_text(page)
    assert f"Could not reach 127.0.0.1:{receiver.port}" in shown and "3 spans safe on disk" in shown, shown
    assert page.locator(".trace-ext-backlog:visible").count() == 1  # the backlog: 0 of 3 answered
    screenshot(page, "lab-retrying", cell=1)

    receiver.start()
    receiver.default = Hang(15)
    page.get_by_role("button", name="Retry now").click()
    wait_state(page, "waiting", timeout=20)  # about 2 s without an answer, not 10
    assert f"Waiting for an answer from 127.0.0.1:{receiver.port}" in status_text(page)
    screenshot(page, "lab-waiting", cell=1)

    receiver.default = Respond(503)
    page.get_by_role("button", name="Retry now").click()
    page.wait_for_function("() => /answered HTTP 503/.test(document.body.innerText)", timeout=40_000)
    wait_state(page, "retrying")
    screenshot(page, "lab-503", cell=1)

    receiver.default = None
    page.get_by_role("button", name="Retry now").click()
    wait_state(page, "delivered", timeout=40)
    assert "All 3 spans delivered" in status_text(page)


def test_dark_theme_keeps_the_status_readable(lab, chromium, tmp_path):
    page = open_and_run(lab, chromium, "local.ipynb", [setup_cell(tmp_path / "s.sqlite3"), "%load_ext trace_ext", THREE_SPANS])
    wait_state(page, "local")
    page.wait_for_function("() => /3 spans stored locally/.test(document.body.innerText)")
    screenshot(page, "lab-local", cell=1)
    worst_by_theme = {}
    for theme in ("JupyterLab Light", "JupyterLab Dark"):
        command(page, "apputils:change-theme", {"theme": theme})
        page.wait_for_function(
            "(t) => document.body.dataset.jpThemeName === t", arg=theme, timeout=30_000
        )
        ratios = contrasts(page, ".trace-ext-status, .trace-ext-status *")
        assert ratios, "no visible status text"
        worst = min(ratios, key=lambda r: r["ratio"])
        assert worst["ratio"] >= 4.5, (theme, worst)
        worst_by_theme[theme] = worst
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "contrast.json").write_text(json.dumps(worst_by_theme, indent=1))  # for the reviewer
    screenshot(page, "lab-dark-local", cell=1)
    command(page, "apputils:change-theme", {"theme": "JupyterLab Light"})


def test_notebook_7_shows_the_same_live_status(chromium, receiver, tmp_path):
    require(not browser_missing(), browser_missing())
    with JupyterServer("notebook") as server:
        page = open_and_run(
            server, chromium, "nb7.ipynb",
            [setup_cell(tmp_path / "s.sqlite3", receiver.base_url), "%load_ext trace_ext", THREE_SPANS],
        )
        wait_state(page, "delivered")
        assert f"All 3 spans delivered to 127.0.0.1:{receiver.port}" in status_text(page)
        screenshot(page, "notebook7-delivered", cell=1)
