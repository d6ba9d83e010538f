"""The trace view as plain text: for terminals, ``python -m trace_ext show`` and frontends without HTML.

One heading line per trace (name, start, duration, span count, status,
delivery state, tags, session, user), then its spans as an indented tree
with a bar on the trace's time axis, each span's kind and state, and one
line each of its error, input and output. Times are clock times, not "ago",
so the same store prints the same text.
"""

from __future__ import annotations

import time
from typing import Iterable

from .traces import DETAILED_SPANS, MAX_EMBEDDED_SPANS, MAX_SPANS_PER_TRACE, MAX_TRACES, Query, SpanInfo, TraceInfo, format_duration

__all__ = ["render_text"]

PREVIEW = 100  # characters of an input, output or error shown per span
BAR = 24  # characters of the time axis


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= PREVIEW else flat[: PREVIEW - 1] + "…"


def _first_line(text: str) -> str:
    """Code and other text of several lines: the first non-empty one, and how many there are."""
    lines = text.strip("\n").split("\n")
    if len(lines) == 1:
        return _one_line(text)
    return f"{_one_line(lines[0])} … ({len(lines)} lines)"


def _clock(ns: int, today: str) -> str:
    day = time.strftime("%Y-%m-%d", time.localtime(ns / 1e9))
    clock = time.strftime("%H:%M:%S", time.localtime(ns / 1e9))
    return clock if day == today else f"{day} {clock}"


def _bar(span: SpanInfo, start: int, total: int) -> str:
    first = min(int((span.start_ns - start) * BAR / total), BAR - 1)
    length = max(1, round(span.duration_ns * BAR / total))
    length = min(length, BAR - first)
    return "▕" + " " * first + "█" * length + " " * (BAR - first - length) + "▏"


def _heading(trace: TraceInfo, today: str) -> str:
    parts = [
        f"trace {trace.name}", _clock(trace.start_ns, today), format_duration(trace.duration_ns),
        f"{trace.span_count} span{'' if trace.span_count == 1 else 's'}", "ERROR" if trace.error else "OK", trace.state,
    ]
    if trace.tags:
        parts.append("tags " + ", ".join(trace.tags))
    if trace.session:
        parts.append(f"session {trace.session}")
    if trace.user:
        parts.append(f"user {trace.user}")
    return " · ".join(parts)


def _span_lines(span: SpanInfo, width: int, start: int, total: int, detailed: bool) -> list[str]:
    pad = "  " * (span.depth + 1)
    head = f"{pad}{span.name.ljust(width - len(pad))}  {_bar(span, start, total)}  {format_duration(span.duration_ns):>8}"
    if span.kind:
        head += f"  {span.kind}"
    if span.error:
        head += "  ERROR"
    head += f"  [{span.state}]"
    lines = [head]
    if not detailed:
        return lines
    detail = pad + "    "
    if span.error and (span.exception or span.status_message):
        lines.append(f"{detail}error: {_one_line(span.exception or span.status_message)}")
    if span.model or span.tokens:
        usage = ", ".join(f"{k} {v}" for k, v in span.tokens.items())
        lines.append(f"{detail}model: {span.model or '—'}{'  tokens: ' + usage if usage else ''}")
    for label, value in (("in", span.input), ("out", span.output)):
        if value is not None and value.text:
            shown = _first_line(value.text) if value.form == "python" else _one_line(value.text)
            lines.append(f"{detail}{label}: {shown}")
    if span.not_delivered:
        lines.append(f"{detail}not delivered: {_one_line(span.not_delivered)}")
    return lines


def _trace_lines(trace: TraceInfo, today: str) -> list[str]:
    lines = [_heading(trace, today)]
    ids = f"  id {trace.trace_id}"
    if trace.link:
        ids += f" · {trace.link[0]}: {trace.link[1]}"
    lines.append(ids)
    spans = trace.spans
    if spans is None:
        lines.append(f"  (spans not shown: one view holds {MAX_EMBEDDED_SPANS:,} at most; "
                     f"show --trace {trace.trace_id[:12]} shows them)")
        return lines
    if len(spans) < trace.span_count:
        lines.append(f"  (the first {len(spans):,} of {trace.span_count:,} spans by start time: "
                     f"a trace shows {MAX_SPANS_PER_TRACE:,} at most)")
    start = min((s.start_ns for s in spans), default=trace.start_ns)
    total = max(max((s.end_ns for s in spans), default=trace.end_ns) - start, 1)
    width = max((2 * (s.depth + 1) + len(s.name) for s in spans), default=0)
    if any(not s.detailed for s in spans):
        lines.append(f"  (inputs, outputs and errors are shown for the first {DETAILED_SPANS:,} spans of a view)")
    for span in spans:
        lines += _span_lines(span, width, start, total, span.detailed)
    return lines


def render_text(traces: list[TraceInfo], query: Query, more: bool, notes: Iterable[str] = ()) -> str:
    """The whole view as text, newest trace first."""
    today = time.strftime("%Y-%m-%d")
    described = query.describe()
    if not traces:
        return "No traces match." if described else "No traces recorded yet."
    count = len(traces)
    top = f"{count} trace{'' if count == 1 else 's'}, newest first"
    if described:
        top += f" · filters: {described}"
    out = [top]
    if more:
        cap = min(query.limit, MAX_TRACES)
        out.append(f"(more traces match: only the newest {cap} are listed"
                   + ("; narrow the filters)" if cap >= MAX_TRACES else f"; --limit raises it, up to {MAX_TRACES})"))
    out += [f"({n})" for n in notes]
    for trace in traces:
        out += _trace_lines(trace, today)
    return "\n".join(out)
