"""Stored traces read for looking at: which traces a query picks, and what each span says.

The store keeps spans as OTLP bytes; this module decodes them into what the
views show (:mod:`.html_view`, :mod:`.text_view`): a trace's name, tags,
session, user and delivery state; a span's kind, input, output, error, model
and token usage, read from the Langfuse, OpenInference and ``gen_ai``
attributes spans carry. It also owns the caps on what one view holds.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from IPython.core.error import UsageError

from .._otlp import attributes_to_dict, decode_span
from .._store.store import SpanStore, StoredSpan, StoredTrace

__all__ = [
    "DETAILED_SPANS", "MAX_EMBEDDED_SPANS", "MAX_SPANS_PER_TRACE", "MAX_TRACES", "Query", "SpanInfo", "TraceInfo",
    "delivery_state", "format_duration", "parse_since", "read_traces", "trace_prefix",
]

#: Most traces one list holds (the newest); the view says when more matched.
MAX_TRACES = 1_000
#: Most spans one waterfall holds (the earliest); the view says how many more the trace has.
MAX_SPANS_PER_TRACE = 10_000
#: Most spans all waterfalls of one view hold together; later traces are listed without one.
MAX_EMBEDDED_SPANS = 10_000
#: Spans of one view shown with their details (input, output, attributes); the rest as bars only.
DETAILED_SPANS = 2_000

_INPUT_KEYS = ("langfuse.observation.input", "input.value", "gen_ai.prompt")
_OUTPUT_KEYS = ("langfuse.observation.output", "output.value", "gen_ai.completion")
_MIME_KEYS = {"input": "input.mime_type", "output": "output.mime_type"}
_MODEL_KEYS = ("gen_ai.response.model", "langfuse.observation.model.name", "llm.model_name", "gen_ai.request.model")
_TOKEN_KEYS = {
    "input": ("gen_ai.usage.input_tokens", "llm.token_count.prompt", "gen_ai.usage.prompt_tokens"),
    "output": ("gen_ai.usage.output_tokens", "llm.token_count.completion", "gen_ai.usage.completion_tokens"),
    "total": ("llm.token_count.total",),
}
# Kinds, in the words the views show: from Langfuse's observation type, OpenInference's span
# kind, and the gen_ai operation, in that order of trust.
_LANGFUSE_KINDS = {
    "generation": "generation", "span": "chain", "chain": "chain", "tool": "tool", "retriever": "retriever",
    "agent": "agent", "embedding": "embedding", "evaluator": "evaluator", "guardrail": "guardrail",
    "event": "event",
}
_OPENINFERENCE_KINDS = {
    "LLM": "generation", "CHAIN": "chain", "TOOL": "tool", "RETRIEVER": "retriever", "AGENT": "agent",
    "EMBEDDING": "embedding", "RERANKER": "retriever", "EVALUATOR": "evaluator", "GUARDRAIL": "guardrail",
}
_GEN_AI_KINDS = {
    "chat": "generation", "text_completion": "generation", "generate_content": "generation",
    "embeddings": "embedding", "execute_tool": "tool", "invoke_agent": "agent", "create_agent": "agent",
}
_SINCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)?\s*$", re.I)
_SINCE_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str | None, now: float | None = None) -> float:
    """``--since`` as epoch seconds: an age (``90s``, ``15m``, ``1h``, ``2d``, ``1w``; a bare number is
    seconds) or an ISO date and time (``2026-12-01``, ``2026-12-01T14:00``). None or "": 0."""
    if not text:
        return 0.0
    now = time.time() if now is None else now
    match = _SINCE.match(text)
    if match:
        number, unit = match.groups()
        return now - float(number) * _SINCE_SECONDS[(unit or "s").lower()]
    from datetime import datetime

    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"--since takes an age such as 30m, 1h or 2d, or a date such as 2026-12-01T14:00, not {text!r}."
        ) from None
    return when.timestamp()


def trace_prefix(text: str | None) -> str | None:
    """``--trace``: a trace id in hex, or the start of one, in lowercase."""
    if text is None:
        return None
    prefix = text.strip().lower()
    if not prefix or any(c not in "0123456789abcdef" for c in prefix):
        raise UsageError(f"--trace takes a trace id in hex (or the start of one), not {text!r}.")
    return prefix


def format_duration(ns: int) -> str:
    """A duration that reads well from nanoseconds to hours: 850 ns, 12.3 µs, 4.56 ms, 1.23 s, 2m 05s."""
    ns = max(int(ns), 0)
    if ns < 1_000:
        return f"{ns} ns"
    for unit, size, below in (("µs", 1e3, 999.5), ("ms", 1e6, 999.5), ("s", 1e9, 59.95)):
        value = ns / size
        if value < below:  # three significant digits
            digits = 2 if value < 9.995 else 1 if value < 99.95 else 0
            return f"{value:.{digits}f} {unit}"
    seconds = round(ns / 1e9)
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def delivery_state(trace: StoredTrace) -> str:
    """One word for a trace's spans: failed, pending (some still to send), local, or sent (all)."""
    if trace.failed:
        return "failed"
    if trace.pending:
        return "pending"
    if trace.local:
        return "local"
    return "sent"


def _first(attributes: dict, keys: tuple[str, ...]) -> Any:
    for key in keys:
        value = attributes.get(key)
        if value not in (None, ""):
            return value
    return None


def _decode(span: StoredSpan):
    """(Span message, attributes) of a stored span; a payload that won't decode gives empty ones."""
    try:
        message = decode_span(span.payload)
        return message, attributes_to_dict(message.attributes)
    except Exception:
        return None, {}


def kind_of(attributes: dict, is_root: bool) -> str:
    """The span's kind badge: cell, generation, chain, tool, retriever, agent, embedding, … or ""."""
    if "jupyter.execution_count" in attributes and is_root:
        return "cell"
    for key, table in (
        ("langfuse.observation.type", _LANGFUSE_KINDS),
        ("openinference.span.kind", _OPENINFERENCE_KINDS),
        ("gen_ai.operation.name", _GEN_AI_KINDS),
    ):
        value = attributes.get(key)
        if isinstance(value, str):
            found = table.get(value if table is _OPENINFERENCE_KINDS else value.lower())
            if found:
                return found
    return ""


def _tokens(attributes: dict) -> dict[str, int]:
    usage: dict[str, int] = {}
    for which, keys in _TOKEN_KEYS.items():
        value = _first(attributes, keys)
        if isinstance(value, int):
            usage[which] = value
    details = attributes.get("langfuse.observation.usage_details")
    if isinstance(details, str) and not usage:
        try:
            parsed = json.loads(details)
            usage = {k: v for k, v in parsed.items() if isinstance(v, int)} if isinstance(parsed, dict) else {}
        except ValueError:
            pass
    return usage


@dataclass
class Value:
    """An input or output: its text and what it is (``json``, ``python`` code, or ``text``)."""

    text: str
    form: str


@dataclass
class EventInfo:
    name: str
    offset_ns: int  # from the span's start
    attributes: dict[str, Any]


@dataclass
class SpanInfo:
    """One span as the waterfall shows it."""

    span_id: str
    parent_id: str | None
    name: str
    depth: int
    start_ns: int
    end_ns: int
    error: bool
    state: str
    kind: str = ""
    status_message: str = ""
    exception: str = ""  # "Type: message" of its exception event
    traceback: str = ""  # that event's exception.stacktrace
    input: Value | None = None
    output: Value | None = None
    model: str = ""
    tokens: dict[str, int] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)  # the rest, shown as a table
    events: list[EventInfo] = field(default_factory=list)
    not_delivered: str = ""  # why the backend refused it
    detailed: bool = True  # False: beyond the view's DETAILED_SPANS, only name, kind, timing and error were read

    @property
    def duration_ns(self) -> int:
        return max(self.end_ns - self.start_ns, 0)


@dataclass
class TraceInfo:
    """One row of the trace list, and (when embedded) its waterfall."""

    trace_id: str
    name: str
    start_ns: int
    end_ns: int
    span_count: int
    error: bool
    state: str  # delivery state: local, pending, sent, failed
    tags: list[str]
    session: str
    user: str
    sent: int = 0  # spans the backend took
    spans: list[SpanInfo] | None = None  # None: the waterfall is not embedded (over the view's cap)
    link: tuple[str, str] | None = None  # (backend name, URL) of the trace where it was sent

    @property
    def duration_ns(self) -> int:
        return max(self.end_ns - self.start_ns, 0)


@dataclass
class Query:
    """What ``%trace show`` and ``python -m trace_ext show`` were asked for."""

    limit: int = 20
    name: str | None = None  # part of the trace's name, any case
    errors: bool = False
    session: str | None = None
    user: str | None = None
    tags: tuple[str, ...] = ()  # every one of them
    since: float = 0.0  # epoch seconds
    trace_id: str | None = None  # a prefix of the hex id

    def describe(self) -> str:
        """The filters in the words the user typed, for the view's heading."""
        parts = []
        if self.name:
            parts.append(f"name ~ {self.name!r}")
        if self.errors:
            parts.append("errors only")
        if self.session:
            parts.append(f"session {self.session}")
        if self.user:
            parts.append(f"user {self.user}")
        parts += [f"tag {t}" for t in self.tags]
        if self.since:
            parts.append("since " + time.strftime("%Y-%m-%d %H:%M", time.localtime(self.since)))
        if self.trace_id:
            parts.append(f"trace {self.trace_id}")
        return ", ".join(parts)


def _trace_fields(trace: StoredTrace) -> tuple[str, list[str], str, str]:
    """(name, tags, session, user) from the root span's attributes."""
    _message, attributes = _decode(trace.root)
    name = attributes.get("langfuse.trace.name") or trace.root.name
    tags = attributes.get("langfuse.trace.tags") or []
    if isinstance(tags, str):
        tags = [tags]
    return (
        str(name),
        [str(t) for t in tags] if isinstance(tags, list) else [],
        str(attributes.get("session.id") or ""),
        str(attributes.get("user.id") or ""),
    )


def _matches(query: Query, fields: tuple[str, list[str], str, str]) -> bool:
    name, tags, session, user = fields
    if query.name and query.name.lower() not in name.lower():
        return False
    if query.session and query.session != session:
        return False
    if query.user and query.user != user:
        return False
    return all(tag in tags for tag in query.tags)


def _walk(spans: list[StoredSpan]) -> Iterator[tuple[int, StoredSpan]]:
    """Depth-first, children in start order; spans whose parent isn't stored are roots.

    Each span id is shown once (a span saved twice, say re-sent by another SDK, is one
    span), and spans that no root leads to (a parent chain that loops) come last, as roots.
    """
    unique: dict[str, StoredSpan] = {}
    for span in spans:
        unique.setdefault(span.span_id, span)
    children: dict[str | None, list[StoredSpan]] = {}
    for span in unique.values():
        parent = span.parent_id if span.parent_id in unique and span.parent_id != span.span_id else None
        children.setdefault(parent, []).append(span)
    shown: set[str] = set()
    for root in children.get(None, []) + list(unique.values()):
        if root.span_id in shown:
            continue
        stack = [(0, root)]
        while stack:
            depth, span = stack.pop()
            if span.span_id in shown:
                continue
            shown.add(span.span_id)
            yield depth, span
            stack += [(depth + 1, c) for c in reversed(children.get(span.span_id, []))]


def _value(attributes: dict, keys: tuple[str, ...], which: str, kind: str) -> Value | None:
    text = _first(attributes, keys)
    if text is None:
        return None
    if not isinstance(text, str):
        try:
            return Value(json.dumps(text, indent=2, ensure_ascii=False, default=str), "json")
        except (TypeError, ValueError):
            text = str(text)
    mime = attributes.get(_MIME_KEYS[which], "")
    if which == "input" and kind == "cell":
        return Value(text, "python")
    if mime == "application/json" or text[:1] in "{[":
        try:
            json.loads(text)
            return Value(text, "json")
        except ValueError:
            pass
    return Value(text, "text")


# Attributes shown in their own place (input, output, kind, model, usage): not repeated in the table.
_SHOWN_ELSEWHERE = frozenset(
    _INPUT_KEYS + _OUTPUT_KEYS + tuple(_MIME_KEYS.values()) + _MODEL_KEYS
    + tuple(k for keys in _TOKEN_KEYS.values() for k in keys)
    + ("langfuse.observation.usage_details", "langfuse.observation.status_message")
)


_KIND_KEYS = ("jupyter.execution_count", "langfuse.observation.type", "openinference.span.kind", "gen_ai.operation.name")


def _bare_info(span: StoredSpan, depth: int, is_root: bool) -> SpanInfo:
    """What a row without details shows: the kind read from its few attributes, no values decoded."""
    attributes: dict = {}
    message = None
    try:
        message = decode_span(span.payload)
        attributes = attributes_to_dict(kv for kv in message.attributes if kv.key in _KIND_KEYS)
    except Exception:
        pass
    return SpanInfo(
        span_id=span.span_id, parent_id=span.parent_id, name=span.name, depth=depth,
        start_ns=span.start_ns, end_ns=span.end_ns, error=span.status == 2, state=span.state,
        kind=kind_of(attributes, is_root), status_message=message.status.message if message else "", detailed=False,
    )


def span_info(span: StoredSpan, depth: int, is_root: bool, detailed: bool = True) -> SpanInfo:
    if not detailed:
        return _bare_info(span, depth, is_root)
    message, attributes = _decode(span)
    kind = kind_of(attributes, is_root)
    info = SpanInfo(
        span_id=span.span_id, parent_id=span.parent_id, name=span.name, depth=depth,
        start_ns=span.start_ns, end_ns=span.end_ns, error=span.status == 2, state=span.state, kind=kind,
        not_delivered=span.error or "" if span.state == "failed" else "",
    )
    if message is not None:
        info.status_message = message.status.message
        for event in message.events:
            event_attributes = attributes_to_dict(event.attributes)
            info.events.append(EventInfo(event.name, event.time_unix_nano - span.start_ns, event_attributes))
            if event.name == "exception" and not info.exception:
                kind_name = event_attributes.get("exception.type", "")
                text = event_attributes.get("exception.message", "")
                info.exception = f"{kind_name}: {text}" if kind_name else str(text)
                info.traceback = str(event_attributes.get("exception.stacktrace", ""))
    info.input = _value(attributes, _INPUT_KEYS, "input", kind)
    info.output = _value(attributes, _OUTPUT_KEYS, "output", kind)
    info.model = str(_first(attributes, _MODEL_KEYS) or "")
    info.tokens = _tokens(attributes)
    info.attributes = {k: v for k, v in sorted(attributes.items()) if k not in _SHOWN_ELSEWHERE}
    return info


def read_spans(store: SpanStore, trace_id: str, limit: int = MAX_SPANS_PER_TRACE, detailed: int = DETAILED_SPANS) -> list[SpanInfo]:
    """A trace's first ``limit`` spans (by start), in waterfall order (depth first, children by
    start); the first ``detailed`` with their details."""
    spans = store.trace_spans(trace_id, limit)
    return [span_info(s, depth, depth == 0, i < detailed) for i, (depth, s) in enumerate(_walk(spans))]


def read_traces(store: SpanStore, query: Query, embed_spans: int = MAX_EMBEDDED_SPANS) -> tuple[list[TraceInfo], bool]:
    """The traces ``query`` picks, the most recently saved first, and whether more matched than ``query.limit``.

    Each trace gets its waterfall while the view's span budget (``embed_spans``) lasts.
    """
    limit = min(query.limit, MAX_TRACES)
    fields: dict[str, tuple[str, list[str], str, str]] = {}

    def keep(trace: StoredTrace) -> bool:
        fields[trace.trace_id] = found = _trace_fields(trace)
        return _matches(query, found)

    rows = store.traces(limit + 1, query.since, query.trace_id, query.errors, keep)
    more = len(rows) > limit
    traces = []
    budget, detailed = embed_spans, DETAILED_SPANS
    for row in rows[:limit]:
        name, tags, session, user = fields[row.trace_id]
        info = TraceInfo(
            trace_id=row.trace_id, name=name, start_ns=row.start_ns, end_ns=row.end_ns, span_count=row.spans,
            error=row.errors > 0, state=delivery_state(row), tags=tags, session=session, user=user,
            sent=row.sent,
        )
        wanted = min(row.spans, MAX_SPANS_PER_TRACE)
        if wanted <= budget:
            info.spans = read_spans(store, row.trace_id, wanted, detailed)
            budget -= wanted
            detailed = max(detailed - len(info.spans), 0)
        traces.append(info)
    return traces, more
