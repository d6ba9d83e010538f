"""Which tracer provider trace_ext's spans come from (stub: being written)."""

from __future__ import annotations

from opentelemetry import trace

from . import __version__

__all__ = ["api_tracer"]


def api_tracer() -> trace.Tracer:
    """The tracer ``trace_ext.observe`` and ``trace_ext.span`` use (call it per span: it is cheap)."""
    return trace.get_tracer("trace_ext", __version__)
