"""The trace view: ``%trace show`` in a notebook, ``python -m trace_ext show`` in a terminal.

:class:`TraceView` is what both return: an object with ``_repr_html_`` (the
list and its waterfalls, :mod:`.html_view`) and ``_repr_pretty_``/``repr``
(the text form, :mod:`.text_view`), so every frontend shows the richest form
it can and a saved notebook keeps both. The filters are one set of
arguments for the magic and the command line.
"""

from __future__ import annotations

import argparse

from IPython.core.error import UsageError

from .._store.store import SpanStore
from .html_view import render_html
from .links import Backend
from .text_view import render_text
from .traces import MAX_TRACES, Query, TraceInfo, parse_since, read_traces, trace_prefix

__all__ = ["FILTER_USAGE", "TraceView", "add_filter_arguments", "query_from", "trace_view"]

FILTER_USAGE = (
    "[N] [--limit N] [--name TEXT] [--errors] [--session ID] [--user ID] [--tag TAG]... "
    "[--since AGE|DATE] [--trace ID]"
)


class TraceView:
    """Stored traces, shown as HTML (list and waterfalls) where a frontend can, as text elsewhere."""

    def __init__(self, traces: list[TraceInfo], query: Query | None = None, more: bool = False,
                 notes: tuple[str, ...] = ()) -> None:
        self.traces = traces
        self.query = query or Query()
        self.more = more
        self.notes = notes

    def _repr_html_(self) -> str:
        return render_html(self.traces, self.query, self.more, self.notes)

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        printer.text(self.text())

    def text(self) -> str:
        return render_text(self.traces, self.query, self.more, self.notes)

    def __repr__(self) -> str:
        return self.text()


def trace_view(store: SpanStore, query: Query, backend: Backend | None = None, notes: tuple[str, ...] = ()) -> TraceView:
    """Read what ``query`` picks from ``store``; traces with sent spans link to ``backend``."""
    traces, more = read_traces(store, query)
    if backend is not None:
        for trace in traces:
            if trace.sent:
                trace.link = (backend.name, backend.link(trace.trace_id))
    return TraceView(traces, query, more, notes)


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of traces, not {text!r}")
    return int(text)


def add_filter_arguments(parser: argparse.ArgumentParser, default_limit: int) -> None:
    """The trace list's filters, the same for ``%trace show`` and ``python -m trace_ext show``."""
    parser.add_argument("count", nargs="?", type=_count, metavar="N", help="how many traces (same as --limit)")
    parser.add_argument("--limit", type=_count, default=None, metavar="N",
                        help=f"how many traces, newest first (default: {default_limit}; at most {MAX_TRACES:,})")
    parser.add_argument("--name", metavar="TEXT", help="traces whose name contains TEXT (any case)")
    parser.add_argument("--errors", action="store_true", help="only traces with a span in error")
    parser.add_argument("--session", metavar="ID", help="only this session.id")
    parser.add_argument("--user", metavar="ID", help="only this user.id")
    parser.add_argument("--tag", action="append", default=[], metavar="TAG", help="only traces with this tag (repeat: all of them)")
    parser.add_argument("--since", metavar="AGE|DATE", help="only traces saved since: 30m, 1h, 2d, or 2026-12-01T14:00")
    parser.add_argument("--trace", metavar="ID", help="one trace, by its hex id or the start of it")


def query_from(ns: argparse.Namespace, default_limit: int) -> Query:
    """The query the parsed arguments ask for; a bad --since or --trace raises UsageError."""
    if ns.count is not None and ns.limit is not None and ns.count != ns.limit:
        raise UsageError(f"Give the number of traces once: N ({ns.count}) or --limit ({ns.limit}).")
    trace_id = trace_prefix(ns.trace)
    return Query(
        limit=ns.limit or ns.count or (MAX_TRACES if trace_id else default_limit),
        name=ns.name, errors=ns.errors, session=ns.session, user=ns.user, tags=tuple(ns.tag),
        since=parse_since(ns.since), trace_id=trace_id,
    )
