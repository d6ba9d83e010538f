#!/usr/bin/env python
"""Time from Shift+Enter on ``%load_ext trace_ext`` to a visible status, in a real JupyterLab.

Run from the repository root (needs Debian's chromium and the [test] extra)::

    python bench/display_latency.py            # 8 fresh kernels
    python bench/display_latency.py --runs 20

Each run restarts the kernel (so the import of trace_ext, OpenTelemetry and
ipywidgets is paid, as in a fresh notebook), runs the setup cell, then presses
Shift+Enter in the ``%load_ext trace_ext`` cell. The page itself stamps the
moment just before the keystroke (``performance.now()``) and, with a
MutationObserver, the first mutation after which the live status is in the
DOM and visible. For comparison the same is measured for a plain ``print`` cell
right after. Loopback only: a private JupyterLab on 127.0.0.1 and the tests'
OTLP receiver; nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench._machine import machine_line, version  # noqa: E402
from tests.browser import (  # noqa: E402
    Browser,
    JupyterServer,
    accept_dialog,
    browser_missing,
    command,
    run_cell,
    wait_app,
    wait_idle,
)
from tests.otlp_receiver import OtlpReceiver  # noqa: E402

ARM = """([selector, text]) => {
    window.__t0 = null; window.__t1 = null;
    const seen = () => [...document.querySelectorAll(selector)]
        .some(e => e.offsetParent !== null && (!text || e.innerText.includes(text)));
    const observer = new MutationObserver(() => {
        if (window.__t0 !== null && window.__t1 === null && seen()) {
            window.__t1 = performance.now(); observer.disconnect();
        }
    });
    observer.observe(document.body, {subtree: true, childList: true, attributes: true, characterData: true});
}"""


def measure(page, index: int, selector: str, text: str = "") -> float:
    """Seconds from the Shift+Enter keystroke to ``selector`` being visible (stamped in the page)."""
    page.evaluate(ARM, [selector, text])
    page.evaluate(
        "(i) => { const nb = window.jupyterapp.shell.currentWidget.content; nb.activeCellIndex = i; nb.mode = 'command'; }",
        index,
    )
    page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".jp-InputPrompt").click()
    # The clock starts in the page just before the keystroke is sent (a loopback round trip, < 5 ms).
    page.evaluate("() => { window.__t0 = performance.now(); }")
    page.keyboard.press("Shift+Enter")
    page.wait_for_function("() => window.__t1 !== null", timeout=60_000)
    wait_idle(page)
    return page.evaluate("() => window.__t1 - window.__t0") / 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=8)
    args = parser.parse_args()
    missing = browser_missing()
    if missing:
        print(f"cannot run: {missing}")
        return 1
    store = os.path.join(tempfile.mkdtemp(prefix="trace-ext-bench-"), "spans.sqlite3")
    loads, prints = [], []
    with OtlpReceiver() as rx, JupyterServer("lab") as server, Browser() as browser:
        setup = (
            f"import os\nos.environ['TRACE_EXT_STORE_PATH'] = {store!r}\n"
            f"os.environ['OTEL_EXPORTER_OTLP_ENDPOINT'] = {rx.base_url!r}"
        )
        name = server.write_notebook("latency.ipynb", [setup, "%load_ext trace_ext", "print('plain cell')"])
        page = browser.open(server.url(name))
        wait_app(page)
        for run in range(args.runs + 1):  # run 0 warms the OS file cache; not counted
            if run:
                command(page, "notebook:restart-kernel", wait=False)
                accept_dialog(page)
                wait_idle(page)
            run_cell(page, 0)
            load = measure(page, 1, ".trace-ext-live")
            plain = measure(page, 2, ".jp-OutputArea-output", "plain cell")
            if run:
                loads.append(load)
                prints.append(plain)
            print(f"run {run}: %load_ext → status {load * 1000:.0f} ms; print cell → output {plain * 1000:.0f} ms"
                  + ("  (warm-up)" if not run else ""), flush=True)
    print()
    print(machine_line())
    print(f"jupyterlab {version('jupyterlab')}, ipywidgets {version('ipywidgets')}, "
          f"ipykernel {version('ipykernel')}, chromium via playwright {version('playwright')}")
    print()
    print("| cell | median | min | max |")
    print("|---|---|---|---|")
    for label, values in (("`%load_ext trace_ext` → status visible", loads), ("`print(...)` → output visible", prints)):
        print(f"| {label} | {statistics.median(values) * 1000:.0f} ms | {min(values) * 1000:.0f} ms "
              f"| {max(values) * 1000:.0f} ms |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
