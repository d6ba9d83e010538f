"""The span processor on the global tracer provider, and the in-memory buffer it fills.

``on_end`` runs on whatever thread ended the span (the cell's, usually), so it
only encodes the span and appends it to a list: no I/O, no waiting. The
post-cell hook moves the buffer into the store.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Callable

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

from ._otlp import OriginCache, SpanRecord, encode_span
from ._redact import Redactor, redacted_span

__all__ = ["BufferingSpanProcessor", "attach_processor"]

log = logging.getLogger("trace_ext")

# Past this many buffered spans the sender is asked to move them to disk, so a
# long-running cell that produces spans by the thousand doesn't hold them in RAM.
SPILL_THRESHOLD = 2000


class BufferingSpanProcessor(SpanProcessor):
    """Encodes ended spans into a buffer; inert until :meth:`activate` is called."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffer: list[SpanRecord] = []
        self._origins = OriginCache()
        self._active = False
        self._limit = 32_768
        self._on_spill: Callable[[], None] | None = None
        self._on_shutdown: Callable[[], None] | None = None
        self.encode_errors = 0
        self._redactor = Redactor()

    def activate(
        self,
        attribute_limit: int,
        on_spill: Callable[[], None],
        on_shutdown: Callable[[], None],
    ) -> None:
        self._limit = attribute_limit
        self._on_spill, self._on_shutdown = on_spill, on_shutdown
        self._active = True

    def deactivate(self) -> None:
        # The SDK offers no way to remove a processor from a provider, so an
        # unloaded extension leaves this one in place, doing nothing; loading
        # again re-activates the same instance instead of stacking a second.
        self._active = False
        self._on_spill = self._on_shutdown = None

    def set_redactor(self, redactor: Redactor) -> None:
        self._redactor = redactor

    def set_attribute_limit(self, limit: int) -> None:
        self._limit = limit

    def on_start(self, span, parent_context=None) -> None:
        pass

    def on_end(self, span) -> None:
        if not self._active:
            return
        try:
            record = encode_span(redacted_span(span, self._redactor), self._limit, self._origins)
        except Exception:  # a span we can't encode must not break the user's code
            self.encode_errors += 1
            log.exception("trace_ext could not encode span %r", getattr(span, "name", "?"))
            return
        with self._lock:
            self._buffer.append(record)
            size = len(self._buffer)
        # Every SPILL_THRESHOLD spans, not only at it: put_back() (a failed store
        # write) can leave the buffer past the threshold, and spills must go on.
        if size % SPILL_THRESHOLD == 0 and self._on_spill is not None:
            self._on_spill()

    def drain(self) -> list[SpanRecord]:
        with self._lock:
            records, self._buffer = self._buffer, []
        return records

    def put_back(self, records: list[SpanRecord]) -> None:
        """Return records that could not be stored, ahead of newer ones."""
        with self._lock:
            self._buffer[:0] = records

    def buffered(self) -> int:
        return len(self._buffer)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        # Other SDKs' flush() (Langfuse's, the provider's) lands here. Storing is
        # all we owe them: delivery happens in the background.
        callback = self._on_shutdown
        if callback is not None:
            callback()
        return True

    def shutdown(self) -> None:
        callback = self._on_shutdown
        if callback is not None:
            callback()


def default_resource() -> Resource:
    env = os.environ
    named = "OTEL_SERVICE_NAME" in env or "service.name=" in env.get("OTEL_RESOURCE_ATTRIBUTES", "")
    return Resource.create({} if named else {"service.name": "jupyter-notebook"})


def attach_processor(
    make_resource: Callable[[], Resource] = default_resource,
) -> tuple[BufferingSpanProcessor, TracerProvider, str]:
    """Find or add trace_ext's processor on the global tracer provider.

    Returns the processor, the provider traced cells use, and a warning (empty
    when all is well). An existing SDK provider is reused, never replaced; with
    none, one is created and made global.
    """
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider):
        trace.set_tracer_provider(TracerProvider(resource=make_resource()))
        provider = trace.get_tracer_provider()
    warning = ""
    if not isinstance(provider, TracerProvider):
        # Someone else's provider API: we can't see its spans, but cells still get traced.
        warning = (
            f"The global tracer provider is a {type(provider).__name__}, not the OpenTelemetry "
            "SDK's, so only %%trace cells are recorded."
        )
        provider = _private_provider(make_resource)
    existing = getattr(provider, "_trace_ext_processor", None)
    if isinstance(existing, BufferingSpanProcessor):
        return existing, provider, warning
    processor = BufferingSpanProcessor()
    provider.add_span_processor(processor)
    provider._trace_ext_processor = processor  # type: ignore[attr-defined]
    return processor, provider, warning


_PRIVATE: list[TracerProvider] = []


def _private_provider(make_resource: Callable[[], Resource]) -> TracerProvider:
    if not _PRIVATE:
        _PRIVATE.append(TracerProvider(resource=make_resource(), shutdown_on_exit=False))
    return _PRIVATE[0]
