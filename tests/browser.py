"""A real JupyterLab 4 / Notebook 7 in headless Chromium, for tests and bench scripts.

``JupyterServer`` runs ``jupyter lab`` on 127.0.0.1 with a private HOME,
Jupyter directories and token; its kernels run *this* interpreter with the
worktree on ``PYTHONPATH`` (the tests' kernelspec). ``Browser`` drives Debian's
``chromium`` with Playwright (Playwright's own browser download cannot work
here). Notebooks are written with nbformat and opened, which is more reliable
than creating them through the UI::

    with JupyterServer() as server, Browser() as browser:
        path = server.write_notebook("n.ipynb", ["%load_ext trace_ext"])
        page = browser.open(server.lab_url(path))
        run_all(page)

JupyterLab is started with ``expose_app_in_browser`` so a test can run the
same commands a menu would (``run all``, ``save``, ``restart``) through
``window.jupyterapp.commands``; keystrokes (Shift+Enter) go through the page.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx

from .conftest import ROOT, clean_env
from .kernel import KERNEL_NAME, kernelspec_dir

__all__ = [
    "ARTIFACTS",
    "Browser",
    "JupyterServer",
    "browser_missing",
    "command",
    "run_all",
    "screenshot",
    "wait_idle",
]

ARTIFACTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def browser_missing() -> str:
    """Why the browser tests can't run here, or "" when they can."""
    if shutil.which("chromium") is None:
        return "Debian's chromium is not installed (`python -m tests.backends install` installs it)"
    for module in ("playwright", "jupyterlab", "notebook", "nbconvert"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install -e '.[test]')"
    return ""


def _free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterServer:
    """``jupyter lab`` (or ``jupyter notebook``) on 127.0.0.1, private to one test run."""

    def __init__(self, app: str = "lab", env: dict[str, str] | None = None) -> None:
        self.app = app
        self.home = Path(tempfile.mkdtemp(prefix="trace-ext-jupyter-"))
        self.root = self.home / "notebooks"
        self.root.mkdir()
        self.token = secrets.token_hex(16)
        self.port = _free_port()
        self._env = env or {}
        self._process: subprocess.Popen[bytes] | None = None
        self._log = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.home / "server.log"

    def start(self, timeout: float = 90) -> JupyterServer:
        data = self.home / "data"
        kernels = Path(kernelspec_dir())
        env = clean_env(
            HOME=str(self.home),
            JUPYTER_DATA_DIR=str(data),
            JUPYTER_CONFIG_DIR=str(self.home / "config"),
            JUPYTER_RUNTIME_DIR=str(self.home / "runtime"),
            # The tests' kernelspec (this interpreter) first; lab extensions (ipywidgets) from sys.prefix.
            JUPYTER_PATH=os.pathsep.join([str(kernels), str(Path(sys.prefix) / "share" / "jupyter")]),
            IPYTHONDIR=str(self.home / "ipython"),
            **self._env,
        )
        self._log = open(self.log_path, "wb")
        app_module = "jupyterlab" if self.app == "lab" else "notebook"
        self._process = subprocess.Popen(
            [
                sys.executable, "-m", app_module, "--no-browser", "--allow-root",
                "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
                "--ServerApp.port_retries=0",
                f"--IdentityProvider.token={self.token}",
                f"--ServerApp.root_dir={self.root}",
                "--LabApp.expose_app_in_browser=True" if self.app == "lab"
                else "--JupyterNotebookApp.expose_app_in_browser=True",
                # No news, no update checks, no extension manager: the network is closed.
                "--LabServerApp.extra_labextensions_path=[]",
            ],
            env=env, cwd=str(self.root), stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._write_settings()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"jupyter {self.app} exited:\n{self.log_tail()}")
            try:
                r = httpx.get(f"{self.base_url}/api/status", params={"token": self.token}, timeout=2)
                if r.status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)  # polling a starting process: there is no event to wait on
        raise TimeoutError(f"jupyter {self.app} did not answer in {timeout} s:\n{self.log_tail()}")

    def _write_settings(self) -> None:
        """User settings that keep Lab quiet and offline: no news, no update check, no autosave."""
        settings = self.home / "config" / "lab" / "user-settings"  # JUPYTER_CONFIG_DIR/lab/user-settings
        overrides = {
            "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
                "fetchNews": "false", "checkForUpdates": False,
            },
            "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
        }
        for name, value in overrides.items():
            path = settings / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(value))

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, 15)
                process.wait(15)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(process.pid, 9)
                except ProcessLookupError:
                    pass
                process.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> JupyterServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- notebooks --------------------------------------------------------------

    def write_notebook(self, name: str, cells: list[str]) -> str:
        """A notebook of code cells with the tests' kernelspec; returns its path under the root."""
        import nbformat

        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "trace_ext tests", "language": "python"}
        nb.metadata["language_info"] = {"name": "python"}
        nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
        nbformat.write(nb, self.root / name)
        return name

    def read_notebook(self, name: str):
        import nbformat

        return nbformat.read(self.root / name, as_version=4)

    def url(self, name: str, app: str | None = None) -> str:
        app = app or self.app
        if app == "lab":  # reset: don't restore the tabs an earlier test left open (one workspace per server)
            return f"{self.base_url}/lab/tree/{name}?reset&token={self.token}"
        return f"{self.base_url}/notebooks/{name}?token={self.token}"

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(
            method, f"{self.base_url}{path}", headers={"Authorization": f"token {self.token}"},
            timeout=30, **kwargs,
        )

    def sessions(self) -> list[dict]:
        return self.api("GET", "/api/sessions").json()

    def shutdown_kernels(self) -> None:
        for kernel in self.api("GET", "/api/kernels").json():
            self.api("DELETE", f"/api/kernels/{kernel['id']}")


class Browser:
    """Headless Debian chromium driven by Playwright; one context, pages on demand."""

    def __init__(self, color_scheme: str = "light") -> None:
        self._color_scheme = color_scheme
        self._pw = None
        self._browser = None
        self.pages: list[Any] = []

    def __enter__(self) -> Browser:
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        self._browser = self._pw.chromium.launch(
            executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS, headless=True
        )
        return self

    def open(self, url: str, width: int = 1100, height: int = 700):
        context = self._browser.new_context(viewport={"width": width, "height": height})
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(url)
        self.pages.append(page)
        return page

    def __exit__(self, *exc: object) -> None:
        for page in self.pages:
            try:
                page.context.close()
            except Exception:
                pass
        if self._browser is not None:
            self._browser.close()
        if self._pw is not None:
            self._pw.stop()


# -- driving a page -------------------------------------------------------------------


def wait_app(page, timeout: float = 60) -> None:
    """Until JupyterLab (or Notebook 7) has started and the notebook's kernel is idle."""
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell", timeout=timeout * 1000)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=timeout * 1000)
    page.evaluate("() => { const s = window.jupyterapp.shell; if (s.collapseLeft) s.collapseLeft(); }")
    wait_idle(page, timeout)


_KERNEL_STATUS = """() => {
    const w = window.jupyterapp.shell.currentWidget;
    const s = w && w.sessionContext;
    return s && s.session && s.session.kernel ? s.session.kernel.status : null;
}"""


def kernel_status(page) -> str | None:
    return page.evaluate(_KERNEL_STATUS)


def wait_idle(page, timeout: float = 60) -> None:
    page.wait_for_function(f"() => ({_KERNEL_STATUS})() === 'idle'", timeout=timeout * 1000)


def command(page, name: str, args: dict | None = None, wait: bool = True) -> Any:
    """Run a JupyterLab command, as a menu item would.

    ``wait=False`` for a command that opens a dialog (restart, shut down): its promise
    settles only once the dialog is answered (see ``accept_dialog``).
    """
    if wait:
        return page.evaluate(
            "([name, args]) => window.jupyterapp.commands.execute(name, args)", [name, args or {}]
        )
    page.evaluate(
        "([name, args]) => { window.jupyterapp.commands.execute(name, args); }", [name, args or {}]
    )
    return None


def accept_dialog(page, timeout: float = 30) -> None:
    """Press the accepting button (Restart, Shut Down, ...) of the dialog on screen."""
    button = page.locator(".jp-Dialog .jp-mod-accept").first
    button.wait_for(timeout=timeout * 1000)
    button.click()


def run_all(page, timeout: float = 90) -> None:
    """Run every cell and wait until each has an execution count and the kernel is idle."""
    command(page, "notebook:run-all-cells")
    page.wait_for_function(
        """() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
                 .every(p => /\\[\\d+\\]/.test(p.textContent))""",
        timeout=timeout * 1000,
    )
    wait_idle(page, timeout)


def run_cell(page, index: int, timeout: float = 60) -> None:
    """Select cell ``index`` and press Shift+Enter in it, as a person would."""
    page.evaluate(
        "(i) => { const nb = window.jupyterapp.shell.currentWidget.content; nb.activeCellIndex = i; nb.mode = 'command'; }",
        index,
    )
    page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".jp-InputPrompt").click()
    page.keyboard.press("Shift+Enter")
    wait_idle(page, timeout)


CONTRAST = r"""(selector) => {
    // WCAG 2 contrast of each text element under selector against what is painted behind it.
    const parse = c => { const m = c.match(/[\d.]+/g).map(Number); return [m[0], m[1], m[2], m.length > 3 ? m[3] : 1]; };
    const lum = ([r, g, b]) => { const f = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
                                 return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
    const background = el => {
        const layers = [];
        for (let e = el; e; e = e.parentElement) {
            const c = parse(getComputedStyle(e).backgroundColor);
            if (c[3] > 0) { layers.push(c); if (c[3] >= 1) break; }
        }
        let rgb = [255, 255, 255];
        for (const c of layers.reverse()) rgb = rgb.map((v, i) => c[i] * c[3] + v * (1 - c[3]));
        return rgb;
    };
    const out = [];
    for (const el of document.querySelectorAll(selector)) {
        if (!el.offsetParent || !el.innerText.trim() || el.closest('[aria-hidden]')) continue;
        const bg = background(el), fg = parse(getComputedStyle(el).color);
        const rgb = fg.slice(0, 3).map((v, i) => v * fg[3] + bg[i] * (1 - fg[3]));
        const [a, b] = [lum(rgb), lum(bg)].sort((x, y) => y - x);
        out.push({text: el.innerText.slice(0, 40), ratio: (a + 0.05) / (b + 0.05)});
    }
    return out;
}"""


def contrasts(page, selector: str) -> list[dict]:
    """[{text, ratio}] for each visible element under ``selector`` (WCAG contrast ratio)."""
    return page.evaluate(CONTRAST, selector)


def status_text(page) -> str:
    """The visible text of every trace_ext status on the page (live or saved)."""
    return page.evaluate(
        """() => [...document.querySelectorAll('.trace-ext-status')]
                 .filter(e => e.offsetParent !== null).map(e => e.innerText).join('\\n')"""
    )


def screenshot(page, name: str, selector: str | None = None, cell: int | None = None) -> Path:
    """Save a screenshot (of ``selector``, or of the notebook's cell number ``cell``, or the page)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    if cell is not None:
        page.locator(".jp-Notebook .jp-Cell").nth(cell).screenshot(path=str(path))
    elif selector:
        page.locator(selector).first.screenshot(path=str(path))
    else:
        page.screenshot(path=str(path))
    return path
