"""The delivery status in words: which state a person should read, as one line of text or as HTML.

``read`` turns the live counters (:class:`.._delivery.status.DeliveryStatus`)
into a :class:`Reading`: one state with a title, one sentence, the counts and,
while there is a backlog, how far through it the sender is. ``text`` and
``html`` render a reading for terminals and for notebooks.

Two flavours, because the same status is read at two moments:

- *live* (the widget while the kernel runs): relative times ("2 s ago",
  "next try in 4 s"), refreshed every second;
- *saved* (the output the notebook file keeps, nbconvert, GitHub): absolute
  times and the moment the kernel last updated it, because it is read later.

Colours come from JupyterLab's theme variables (``--jp-*``) with fallbacks for
renderers without them; text keeps the theme's own font colours, so it reads
at the theme's contrast, and the state's colour is carried by a bar and a dot.
"""

from __future__ import annotations

import html as _html
import time
from dataclasses import dataclass, field

from .._delivery.status import DeliveryState, DeliveryStatus

__all__ = ["Reading", "WAITING_AFTER", "ago", "html", "read", "text"]

WAITING_AFTER = 2.0  # seconds without an answer before the status says it is waiting for one

# The state's colour: a theme variable, then a fallback for renderers without JupyterLab's CSS.
_TONES = {
    "ok": "var(--jp-success-color1, #388e3c)",
    "busy": "var(--jp-brand-color1, #1976d2)",
    "warn": "var(--jp-warn-color1, #f57c00)",
    "error": "var(--jp-error-color1, #d32f2f)",
    "info": "var(--jp-info-color1, #0097a7)",
    "off": "var(--jp-border-color1, #9e9e9e)",
}
_TEXT = "var(--jp-content-font-color1, #212121)"
_MUTED = "var(--jp-content-font-color2, #5f5f5f)"
_FONT = "var(--jp-ui-font-family, system-ui, sans-serif)"


@dataclass
class Reading:
    kind: str  # local, ready, sending, waiting, retrying, paused, failed, delivered, stopped
    tone: str  # a key of _TONES
    title: str  # two or three words: what a glance should take away
    sentence: str  # what is going on, what is safe, what to do
    counts: str = ""  # "3 pending · 12 sent · 0 failed → host (from X) · last delivery 2 s ago"
    details: list[str] = field(default_factory=list)
    backlog: tuple[int, int] | None = None  # (done, total) of the current backlog
    as_of: float = 0.0


def _spans(n: int) -> str:
    return f"{n} span{'' if n == 1 else 's'}"


def ago(seconds: float) -> str:
    """ "just now", "4 s ago", "3 min ago", "2 h ago" """
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return "just now"
    if seconds < 60:
        return f"{int(seconds)} s ago"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    return f"{int(seconds // 3600)} h ago"


def _clock(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch))


def _stamp(epoch: float) -> str:
    return time.strftime("%d %b %Y %H:%M:%S", time.localtime(epoch))


def read(s: DeliveryStatus, now: float | None = None, live: bool = True) -> Reading:
    """The one state a person should read now (``live``: relative times; else clock times)."""
    now = time.time() if now is None else now
    with s.lock:
        return _read(s, now, live)


def _when(epoch: float | None, now: float, live: bool) -> str:
    if not epoch:
        return "never"
    return ago(now - epoch) if live else f"at {_clock(epoch)}"


def _read(s: DeliveryStatus, now: float, live: bool) -> Reading:
    host = s.destination
    used_error = False  # last_error went into the sentence: don't repeat it below
    problem = s.setting_problem.strip()
    if s.state == DeliveryState.PAUSED and not host:
        # A destination is configured but a setting makes it unusable: spans wait for the fix.
        safe = f"{_spans(s.pending)} safe on disk wait" if s.pending else "Spans recorded meanwhile wait"
        why = problem or s.last_error.strip() or "The destination settings cannot be used."
        sentence = f"{why} {safe} and are sent once it is fixed."
        used_error, problem = True, ""
        reading = Reading("paused", "error", "Setting to fix", sentence)
    elif s.state == DeliveryState.EMBEDDED or not host:
        sentence = f"{_spans(s.local)} stored locally"
        if s.store_path:
            sentence += f" in {s.store_path}"
        sentence += (
            ". No endpoint is set, so nothing is sent: set one with "
            '`%config TraceExt.endpoint = "https://…/v1/traces"` or OTEL_EXPORTER_OTLP_ENDPOINT '
            "(or LANGFUSE_HOST with its keys); `%trace show` lists what is recorded."
        )
        if s.pending:
            sentence += f" {_spans(s.pending)} left by an earlier kernel wait for an endpoint."
        reading = Reading("local", "info", "Recording locally", sentence)
    else:
        source = f" (from {s.destination_source})" if s.destination_source else ""
        counts = (
            f"{s.pending} pending · {s.sent} sent · {s.failed} failed → {host}{source}"
            f" · last delivery {_when(s.last_delivery, now, live)}"
        )
        safe = f"{_spans(s.pending)} safe on disk" if s.pending else "nothing waiting"
        reason = s.last_error.strip()
        retrying = s.state == DeliveryState.RETRYING or (s.state == DeliveryState.SENDING and s.attempts > 0)
        waited = now - s.sending_since if s.state == DeliveryState.SENDING and s.sending_since else 0.0
        if s.state == DeliveryState.STOPPED:
            if s.pending:
                sentence = (
                    f"trace_ext stopped sending (unloaded, or the kernel ended); {safe} "
                    "are sent the next time trace_ext loads."
                )
                reading = Reading("stopped", "warn", "Stopped", sentence)
            else:
                reading = Reading("stopped", "off", "Stopped", "trace_ext stopped sending; nothing was left to send.")
        elif s.state == DeliveryState.PAUSED:
            used_error = bool(reason)
            sentence = f"{reason or host + ' rejected the credentials.'} {safe}; sending resumes as soon as the credentials change."
            reading = Reading("paused", "error", "Paused for credentials", sentence)
        elif waited >= WAITING_AFTER:
            attempt = f" (attempt {s.attempts + 1})" if s.attempts else ""
            sentence = f"Waiting for an answer from {host} for {int(waited)} s{attempt}; {safe}."
            reading = Reading("waiting", "warn", "Waiting for an answer", sentence)
        elif retrying:
            used_error = bool(reason)
            if s.state == DeliveryState.SENDING:
                attempt = f"attempt {s.attempts + 1} under way"
            elif s.next_try:
                wait = s.next_try - now
                when = (f"next try in {max(int(wait + 0.999), 0)} s" if live else f"next try at {_clock(s.next_try)}")
                attempt = f"{when} (attempt {s.attempts + 1})" if wait > 0 or not live else f"trying again now (attempt {s.attempts + 1})"
            else:
                attempt = f"{s.attempts} tries so far" if s.attempts else "trying again soon"
            sentence = f"{reason or 'The last request failed.'} {safe}; {attempt}."
            reading = Reading("retrying", "warn", "Retrying", sentence)
        elif s.pending:
            reading = Reading("sending", "busy", "Sending", f"Sending {_spans(s.pending)} to {host}; they are safe on disk.")
        elif s.failed:
            used_error = bool(reason)
            why = f": {reason}" if reason else "."
            sentence = (
                f"{_spans(s.failed)} failed{why} `%trace retry` sends them again. "
                f"{_spans(s.sent)} delivered."
            )
            reading = Reading("failed", "error", "Failed spans", sentence)
        elif s.sent:
            sentence = f"All {_spans(s.sent)} delivered to {host}{source}, the last one {_when(s.last_delivery, now, live)}."
            reading = Reading("delivered", "ok", "All delivered", sentence)
        else:
            reading = Reading("ready", "off", "Ready", f"Nothing recorded yet; spans will go to {host}{source}.")
        reading.counts = counts
        if s.pending and reading.kind in ("sending", "waiting", "retrying", "paused"):
            done = max(s.sent + s.failed - s.backlog_base, 0)
            reading.backlog = (done, done + s.pending)
    if s.store_warning:
        reading.details.append(f"store: {s.store_warning}")
    if problem:  # shown while true, whatever last_error says meanwhile
        reading.details.append(f"settings: {problem}")
    if s.last_error and not used_error and s.last_error not in (s.store_warning, s.setting_problem):
        reading.details.append(f"last error: {s.last_error}")
    if s.dropped:
        reading.details.append(f"{_spans(s.dropped)} could be kept nowhere and were dropped.")
    if s.peers:
        reading.details.append(f"other SDKs: {s.peers}")
    reading.as_of = now
    return reading


def text(reading: Reading, live: bool = True) -> str:
    """The state as one line (and a line per detail), for terminals and text/plain."""
    line = f"trace_ext: {reading.title} — {reading.sentence}"
    if reading.counts:
        line += f" [{reading.counts}]"
    if reading.kind in ("retrying", "paused", "stopped"):
        line += f" [{reading.kind}]"
    lines = [line] + [f"  {d}" for d in reading.details]
    if not live:
        lines.append(f"  (status as of {_stamp(reading.as_of)}, the kernel's last update)")
    return "\n".join(lines)


def _bar(reading: Reading, colour: str) -> str:
    if reading.backlog is None:
        return ""
    done, total = reading.backlog
    share = 100 * done / total if total else 0
    return (
        f'<div class="trace-ext-backlog" title="{done} of {total} spans of this backlog answered" '
        f'style="margin-top:3px;height:6px;max-width:320px;background:var(--jp-layout-color3, #e0e0e0);'
        f'border-radius:3px;overflow:hidden">'
        f'<div style="width:{share:.0f}%;min-width:4px;height:100%;background:{colour}"></div></div>'
    )


def html(reading: Reading, live: bool = True) -> str:
    """The state as a block of HTML (``live``: the widget's label; else the saved output)."""
    esc = _html.escape
    colour = _TONES[reading.tone]
    parts = [
        f'<div class="trace-ext-status trace-ext-{"live" if live else "saved"} trace-ext-{reading.kind}" '
        f'data-state="{reading.kind}" style="font-family:{_FONT};font-size:var(--jp-ui-font-size1, 13px);'
        f'color:{_TEXT};border-left:4px solid {colour};padding:2px 8px;line-height:1.45">',
        f'<div><b>trace_ext</b> <span class="trace-ext-title" style="white-space:nowrap">'
        f'<span style="color:{colour}" aria-hidden="true">●</span> <b>{esc(reading.title)}</b></span> · '
        f"{_code(esc(reading.sentence))}</div>",
    ]
    if reading.counts:
        parts.append(f'<div class="trace-ext-counts" style="color:{_MUTED}">{esc(reading.counts)}</div>')
    parts.append(_bar(reading, colour))
    parts += [f'<div class="trace-ext-detail" style="color:{_MUTED}">{esc(d)}</div>' for d in reading.details]
    if live:
        parts.append(
            '<div class="trace-ext-stale" style="display:none;font-weight:bold">'
            "This status is from a previous kernel and no longer updates. Run "
            "<code>%load_ext trace_ext</code> again for the current one.</div>"
            f"<style>{_LIVE_CSS}</style>"
        )
    else:
        parts.append(
            f'<div class="trace-ext-asof" style="color:{_MUTED}">Status as of {_stamp(reading.as_of)}, '
            "as the kernel last updated it.</div>"
            f"<style>{_SAVED_CSS}</style>"
        )
    parts.append("</div>")
    return "".join(parts)


def _code(escaped: str) -> str:
    """`...` in a sentence as <code>."""
    pieces = escaped.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(pieces))


# While the widget lives, the saved copy in the same output area is hidden (it says
# the same); once the widget is disconnected (kernel restarted or gone), the live
# view says it is from a previous kernel and its buttons go away.
_LIVE_CSS = (
    ".jp-OutputArea:has(.trace-ext-live) > .jp-OutputArea-child:has(.trace-ext-saved){display:none}"
    ".jupyter-widgets-disconnected .trace-ext-stale{display:block !important}"
    ".trace-ext-buttons.jupyter-widgets-disconnected{display:none !important}"
    ".trace-ext-box.jupyter-widgets-disconnected .trace-ext-buttons{display:none !important}"
)
# Reopened without the kernel, the widget's output says "Loading widget..." and then
# "Error displaying widget: model not found": text in a renderer that (unlike every
# other renderer's output) has no data-mime-type. In an output area with a saved
# status and no live widget drawn, hide it: the saved status beside it is true.
# (:has() cannot be nested, hence the two conditions on the output area.)
_SAVED_CSS = (
    ".jp-OutputArea:has(.trace-ext-saved):not(:has(.trace-ext-box)) > "
    ".jp-OutputArea-child:has(> .jp-OutputArea-output:not([data-mime-type])){display:none}"
)
