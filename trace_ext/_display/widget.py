"""The status display: a live widget from stock ipywidgets, with text and HTML fallbacks.

The widget is created and displayed on the cell's thread; afterwards the
sender only sets its traits (ipykernel >= 7.1 sends those comm messages safely
from any thread), at most a few times a second. Frontends without widget
support render the ``text/plain`` or ``text/html`` part of the same bundle.
"""

from __future__ import annotations

import html
import threading
import time
from typing import Callable

from .._delivery.status import DeliveryState, DeliveryStatus

_TROUBLE = (DeliveryState.RETRYING, DeliveryState.PAUSED, DeliveryState.STOPPED)

__all__ = ["StatusDisplay", "in_a_cell", "status_html", "status_text"]

UPDATE_INTERVAL = 0.25  # seconds between widget updates while counters change


def _when(epoch: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch)) if epoch else "never"


def _headline(s: DeliveryStatus) -> str:
    if s.state is DeliveryState.EMBEDDED or not s.destination:
        text = f"{s.local} span{'' if s.local == 1 else 's'} stored locally (no endpoint configured)"
        if s.pending:  # left by a kernel that had an endpoint: sent once one is set
            text += f" · {s.pending} waiting for an endpoint"
        return text
    counts = f"{s.pending} pending · {s.sent} sent · {s.failed} failed"
    return f"{counts} → {s.destination} · last delivery {_when(s.last_delivery)}"


def status_text(s: DeliveryStatus) -> str:
    """One or two lines for terminals and static renderers."""
    with s.lock:
        text = f"trace_ext: {_headline(s)}"
        if s.state in _TROUBLE:
            text += f" [{s.state}]"
        if s.store_warning:
            text += f"\n  store: {s.store_warning}"
        if s.last_error and s.last_error != s.store_warning:
            text += f"\n  last error: {s.last_error}"
        if s.peers:
            text += f"\n  other SDKs: {s.peers}"
    return text


def status_html(s: DeliveryStatus) -> str:
    with s.lock:
        head = html.escape(_headline(s))
        state = f" <em>({html.escape(str(s.state))})</em>" if s.state in _TROUBLE else ""
        error = (
            f'<br><span style="color:#b00020">{html.escape(s.last_error)}</span>'
            if s.last_error and s.last_error != s.store_warning else ""
        )
        if s.store_warning:
            error = f'<br><span style="color:#b36b00">{html.escape(s.store_warning)}</span>' + error
        if s.peers:
            error += f'<br><span style="color:#555">other SDKs: {html.escape(s.peers)}</span>'
    return f"<span><b>trace_ext</b>: {head}{state}{error}</span>"


def in_a_cell(shell) -> bool:
    """False while a kernel starts (loaded by --ext): a display then has no cell to go to."""
    kernel = getattr(shell, "kernel", None)
    return kernel is None or bool(kernel.get_parent().get("header"))


class _Throttle:
    """Call ``fn`` at most every ``interval`` seconds, always ending with a last call."""

    def __init__(self, fn: Callable[[], None], interval: float) -> None:
        self._fn, self._interval = fn, interval
        self._lock = threading.Lock()
        self._last = 0.0
        self._timer: threading.Timer | None = None

    def __call__(self) -> None:
        with self._lock:
            wait = self._last + self._interval - time.monotonic()
            if wait > 0:
                if self._timer is None:  # a trailing call is already due otherwise
                    self._timer = threading.Timer(wait, self._fire)
                    self._timer.daemon = True
                    self._timer.start()
                return
            self._last = time.monotonic()
        self._fn()

    def _fire(self) -> None:
        with self._lock:
            self._timer = None
            self._last = time.monotonic()
        self._fn()

    def cancel(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None


class StatusDisplay:
    """What ``%load_ext trace_ext`` and ``%trace status`` display.

    With ``use_widget`` it renders as an ipywidgets view that stays live; its
    bundle always carries ``text/plain`` and ``text/html`` for other frontends.
    """

    def __init__(self, status: DeliveryStatus, use_widget: bool) -> None:
        self._status = status
        self._box = None
        self._throttle: _Throttle | None = None
        if use_widget:
            self._build()

    def _build(self) -> None:
        import ipywidgets as widgets  # only when a widget is wanted: it's a heavy import

        self._bar = widgets.IntProgress(
            value=0, min=0, max=1, description="", layout=widgets.Layout(width="120px")
        )
        self._label = widgets.HTML(value=status_html(self._status))
        self._box = widgets.HBox([self._bar, self._label])
        self._refresh()
        self._throttle = _Throttle(self._refresh, UPDATE_INTERVAL)
        self._status.observe(self._on_change)

    def _on_change(self, _change) -> None:
        if self._throttle is not None:
            self._throttle()

    def _refresh(self) -> None:
        box = self._box
        if box is None:
            return
        s = self._status
        with s.lock:
            done = s.sent + s.failed
            total = done + s.pending
            style = {DeliveryState.RETRYING: "warning", DeliveryState.PAUSED: "danger"}.get(s.state, "success" if not s.failed else "warning")
        with box.hold_sync():
            self._bar.max = max(total, 1)
            self._bar.value = done if total else (1 if s.state is not DeliveryState.EMBEDDED else 0)
            self._bar.bar_style = style
            self._label.value = status_html(s)

    @property
    def widget(self):
        return self._box

    def close(self) -> None:
        if self._throttle is not None:
            self._throttle.cancel()
            self._status.unobserve(self._on_change)
        if self._box is not None:
            self._box.close()
            self._box = None

    def _repr_mimebundle_(self, include=None, exclude=None):
        bundle = {}
        if self._box is not None:
            self._refresh()  # show current numbers even if an update is still throttled
            data = self._box._repr_mimebundle_(include=include, exclude=exclude)
            bundle.update(data[0] if isinstance(data, tuple) else data)
        bundle["text/plain"] = status_text(self._status)
        bundle["text/html"] = status_html(self._status)
        return bundle

    def __repr__(self) -> str:
        return status_text(self._status)
