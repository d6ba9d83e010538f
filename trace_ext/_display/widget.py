"""The status display: a live widget from stock ipywidgets, and a saved copy that stays true.

While the kernel runs, the widget (state, backlog bar, buttons) is what a
person sees. Beside it, a second output with a ``display_id`` carries the
same status as HTML and text; the kernel keeps it current with
``update_display`` (throttled). A notebook file keeps outputs, not widget
models: reopened without the kernel, exported with nbconvert, or rendered by
GitHub, the widget's output can't be drawn (JupyterLab says "Error displaying
widget: model not found", which the saved copy's CSS hides) and the saved copy
shows the status as the kernel last updated it. While the widget lives, its
CSS hides the saved copy, so the cell shows one status, not two.

Widgets are created and displayed on the cell's thread; afterwards one
daemon thread per display sets their traits (ipykernel >= 7.1 sends those comm
messages safely from any thread): at most every 0.25 s while counters
change, every second while a relative time or a countdown is on screen.
Frontends without widgets (a terminal IPython) get one text line.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from IPython.display import display, update_display

from .._delivery.status import DeliveryStatus
from . import states

__all__ = ["Actions", "StatusDisplay", "in_a_cell", "status_html", "status_text"]

UPDATE_INTERVAL = 0.25  # seconds between widget updates while counters change
TICK = 1.0  # seconds between redraws of relative times and countdowns
SAVED_INTERVAL = 1.0  # seconds between updates of the saved copy while the status changes
SAVED_HEARTBEAT = 30.0  # seconds: the saved copy's "as of" time moves on even when nothing changes
SHOWN_BY_BUTTON = 5  # traces the "Show traces" button lists (%trace show lists 20)


def status_text(s: DeliveryStatus, live: bool = True) -> str:
    """The status as one line (plus a line per detail), for terminals and text/plain."""
    return states.text(states.read(s, live=live), live=live)


def status_html(s: DeliveryStatus, live: bool = True) -> str:
    return states.html(states.read(s, live=live), live=live)


def in_a_cell(shell) -> bool:
    """False while a kernel starts (loaded by --ext): a display then has no cell to go to."""
    kernel = getattr(shell, "kernel", None)
    return kernel is None or bool(kernel.get_parent().get("header"))


@dataclass
class Actions:
    """What the buttons do: calls into the loaded extension (this package may not import it)."""

    flush: Callable[[float], Any]  # seconds -> DeliveryReport
    retry_now: Callable[[], str]
    show: Callable[[], Any]  # -> something to display (the trace view)


def _saved_bundle(s: DeliveryStatus) -> dict[str, str]:
    reading = states.read(s, live=False)
    return {"text/plain": states.text(reading, live=False), "text/html": states.html(reading, live=False)}


class StatusDisplay:
    """What ``%load_ext trace_ext`` and ``%trace status`` display (``show()``).

    With ``use_widget`` it is the live widget plus its saved copy; without, a
    text/plain and text/html bundle (``_repr_mimebundle_``).
    """

    def __init__(self, status: DeliveryStatus, use_widget: bool, actions: Actions | None = None) -> None:
        self._status = status
        self._actions = actions
        self._box = None
        self._saved_id = f"trace-ext-status-{uuid.uuid4().hex}"
        self._saved_shown = False
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        if use_widget:
            self._build()

    # -- building ---------------------------------------------------------------------

    def _build(self) -> None:
        import ipywidgets as widgets  # only when a widget is wanted: it's a heavy import

        self._label = widgets.HTML(value=status_html(self._status))
        self._feedback = widgets.HTML(value="")
        self._out = widgets.Output()
        buttons = []
        if self._actions is not None:
            for text, tip, handler in (
                ("Retry now", "Send what is pending now, and queue failed spans again", self._on_retry),
                ("Flush", "Wait up to 10 s for the pending spans to be delivered", self._on_flush),
                ("Show traces", f"The newest {SHOWN_BY_BUTTON} traces in the local store (%trace show)", self._on_show),
            ):
                button = widgets.Button(description=text, tooltip=tip, layout=widgets.Layout(width="auto"))
                button.on_click(handler)
                buttons.append(button)
        row = widgets.HBox(buttons)
        row.add_class("trace-ext-buttons")
        self._buttons = buttons
        self._box = widgets.VBox([self._label, row, self._feedback, self._out])
        self._box.add_class("trace-ext-box")
        self._status.observe(self._on_change)
        self._thread = threading.Thread(target=self._run, name="trace_ext-status", daemon=True)
        self._thread.start()

    @property
    def widget(self):
        return self._box

    def show(self) -> None:
        """Display the status: the widget and its saved copy, or the text bundle."""
        if self._box is None:
            display(self)
            return
        display(self._widget_bundle(), raw=True)
        display(_saved_bundle(self._status), raw=True, display_id=self._saved_id)
        self._saved_shown = True

    def _widget_bundle(self) -> dict:
        data = self._box._repr_mimebundle_()
        data = dict(data[0] if isinstance(data, tuple) else data)
        # The widget's own fallbacks carry no status: consoles (`jupyter console`) print this
        # output's text and nbconvert, GitHub and untrusted notebooks render its HTML, and
        # the status at display time would repeat, or contradict, the saved copy just
        # below, which is current. Without text/plain a console prints nothing for it.
        data.pop("text/plain", None)
        data["text/html"] = '<span class="trace-ext-widget-fallback"></span>'
        return data

    # -- keeping it current ---------------------------------------------------------------

    def _on_change(self, _change) -> None:
        self._wake.set()  # inside the status lock: only set an event

    def _run(self) -> None:
        last_label = last_saved = ""
        last_state = None
        saved_at = 0.0
        while not self._closed.is_set():
            changed = self._wake.wait(TICK)
            if self._closed.is_set():
                return
            if changed:
                self._wake.clear()
            try:
                label = status_html(self._status)
                if label != last_label and self._box is not None:
                    self._label.value = last_label = label
                now = time.monotonic()
                # A new state (sending -> all delivered, say) is saved at once, so a notebook
                # saved the moment the widget changed keeps it; counters at most every SAVED_INTERVAL.
                if self._saved_shown:
                    bundle = _saved_bundle(self._status)
                    content = bundle["text/plain"].rsplit("\n", 1)[0]  # without the "as of" line
                    state = content.split(" — ", 1)[0]  # "trace_ext: Sending", "trace_ext: Delivered", ...
                    due = now - saved_at >= SAVED_INTERVAL or state != last_state
                    if due and content != last_saved or now - saved_at >= SAVED_HEARTBEAT:
                        last_state = state
                        update_display(bundle, raw=True, display_id=self._saved_id)
                        last_saved, saved_at = content, now
            except Exception:  # a display must never take the kernel down; the next tick tries again
                pass
            if changed:
                self._closed.wait(UPDATE_INTERVAL)

    def final_update(self) -> None:
        """Bring the saved copy up to date now (unload, kernel exit)."""
        if self._saved_shown:
            try:
                update_display(_saved_bundle(self._status), raw=True, display_id=self._saved_id)
            except Exception:
                pass

    # -- the buttons -----------------------------------------------------------------

    def _say(self, text: str) -> None:
        import html

        # The clock time: an answer from a while ago must not pass for the status now.
        self._feedback.value = (
            f'<span class="trace-ext-feedback" style="color:var(--jp-content-font-color1, #212121)">'
            f'{time.strftime("%H:%M:%S")} · {html.escape(text)}</span>'
        )

    def _in_background(self, doing: str, work: Callable[[], str]) -> None:
        """Button work off the kernel's message thread: a flush may wait seconds."""
        self._say(doing)

        def run() -> None:
            try:
                self._say(work())
            except Exception as exc:
                self._say(f"That did not work: {type(exc).__name__}: {exc}")

        threading.Thread(target=run, name="trace_ext-button", daemon=True).start()

    def _on_retry(self, _button) -> None:
        self._in_background("Trying again now…", self._actions.retry_now)

    def _on_flush(self, _button) -> None:
        self._in_background("Flushing (up to 10 s)…", lambda: str(self._actions.flush(10.0)))

    def _on_show(self, _button) -> None:
        self._out.clear_output()
        with self._out:
            display(self._actions.show())
        self._say(f"The newest {SHOWN_BY_BUTTON} traces are below.")

    # -- the end ------------------------------------------------------------------------

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        if self._thread is not None:
            self._status.unobserve(self._on_change)
        self.final_update()
        if self._box is not None:
            # Closing the model makes JupyterLab hide this output and save it as hidden.
            # Every widget of the display, the buttons' row too: one left open stays in
            # ipywidgets' registry, and its buttons' handlers keep the extension alive.
            for child in [self._label, self._feedback, self._out, *self._buttons, *self._box.children]:
                child.close()
            self._box.close()
            self._box = None

    def _repr_mimebundle_(self, include=None, exclude=None):
        if self._box is not None:
            return self._widget_bundle()
        # No widget: a snapshot, so its HTML (which a notebook file keeps) says when it was taken.
        return {"text/plain": status_text(self._status), "text/html": status_html(self._status, live=False)}

    def __repr__(self) -> str:
        return status_text(self._status)
