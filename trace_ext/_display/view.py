"""Stored traces as a readable tree: ``%trace show`` in a notebook, ``python -m trace_ext show``."""

from __future__ import annotations

import html
from typing import Iterator

from .._otlp import attributes_to_dict, decode_span
from .._store.store import StoredSpan

__all__ = ["TraceView", "render_text"]

_STATUS = {0: "", 1: "ok", 2: "ERROR"}
_INPUT_KEYS = ("langfuse.observation.input", "input.value", "gen_ai.prompt")
_OUTPUT_KEYS = ("langfuse.observation.output", "output.value", "gen_ai.completion")
PREVIEW = 80  # characters of input/output shown per span


def _first(attributes: dict, keys: tuple[str, ...]) -> str | None:
    for key in keys:
        if key in attributes:
            return str(attributes[key])
    return None


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= PREVIEW else flat[: PREVIEW - 1] + "…"


def _walk(spans: list[StoredSpan]) -> Iterator[tuple[int, StoredSpan]]:
    """Depth-first, children in start order; spans whose parent isn't stored are roots."""
    ids = {s.span_id for s in spans}
    children: dict[str | None, list[StoredSpan]] = {}
    for span in spans:
        parent = span.parent_id if span.parent_id in ids else None
        children.setdefault(parent, []).append(span)
    stack = [(0, s) for s in reversed(children.get(None, []))]
    while stack:
        depth, span = stack.pop()
        yield depth, span
        stack += [(depth + 1, c) for c in reversed(children.get(span.span_id, []))]


def _lines(span: StoredSpan) -> tuple[str, list[str]]:
    duration = (span.end_ns - span.start_ns) / 1e6
    status = _STATUS.get(span.status, "")
    head = f"{span.name}  {duration:.1f} ms"
    if status == "ERROR":
        head += "  ERROR"
    head += f"  [{span.state}]"
    details = []
    try:
        message = decode_span(span.payload)
        attributes = attributes_to_dict(message.attributes)
        if message.status.message:
            details.append(f"error: {_one_line(message.status.message)}")
    except Exception:
        attributes = {}
    for label, keys in (("in", _INPUT_KEYS), ("out", _OUTPUT_KEYS)):
        value = _first(attributes, keys)
        if value:
            details.append(f"{label}: {_one_line(value)}")
    if span.state == "failed" and span.error:
        details.append(f"not delivered: {_one_line(span.error)}")
    return head, details


def render_text(traces: list[list[StoredSpan]]) -> str:
    if not traces:
        return "No traces recorded yet."
    out = []
    for spans in traces:
        out.append(f"trace {spans[0].trace_id}")
        for depth, span in _walk(spans):
            head, details = _lines(span)
            pad = "  " * (depth + 1)
            out.append(f"{pad}{head}")
            out += [f"{pad}    {d}" for d in details]
    return "\n".join(out)


def _render_html(traces: list[list[StoredSpan]]) -> str:
    if not traces:
        return "<p>No traces recorded yet.</p>"
    parts = []
    for spans in traces:
        rows = []
        for depth, span in _walk(spans):
            head, details = _lines(span)
            indent = 1.2 * depth
            detail = "".join(f"<div style='color:#555'>{html.escape(d)}</div>" for d in details)
            rows.append(
                f"<div style='margin-left:{indent}em'><b>{html.escape(head)}</b>{detail}</div>"
            )
        parts.append(
            f"<details open><summary><code>trace {spans[0].trace_id}</code></summary>{''.join(rows)}</details>"
        )
    return "<div style='font-family:monospace;font-size:90%'>" + "".join(parts) + "</div>"


class TraceView:
    """Displays as a tree: HTML in notebooks, text in terminals."""

    def __init__(self, traces: list[list[StoredSpan]]) -> None:
        self._traces = traces

    def _repr_html_(self) -> str:
        return _render_html(self._traces)

    def __repr__(self) -> str:
        return render_text(self._traces)
