"""The span processor on the global tracer provider, and the in-memory buffer it fills.

``on_end`` runs on whatever thread ended the span (the cell's, usually). It
takes the span as plain data (:func:`.._otlp.snapshot`: redacted, strings cut
at the limit; about 1 µs) and appends that to a list: no encoding, no I/O, no
waiting. Copying at once is cheaper for the cell than keeping the SDK's span:
a kept span is a dozen objects the garbage collector walks again and again
until the saver takes them (6 µs a span in a kernel, measured), while a
snapshot is a few tuples it soon stops looking at (0.3 µs). The saver
(``_store.saver``) reads the buffer with :meth:`peek` and empties it with
:meth:`drop` only once the spans are saved, every 0.2 s and after each cell.
Encoding into OTLP happens later still, when the journal is imported.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from opentelemetry.sdk.trace import SpanProcessor

from .._otlp import OriginCache, Snapshot, SpanRecord, encode_snapshot, snapshot
from .._redact import Redactor, redacted_span

__all__ = ["BufferingSpanProcessor"]

log = logging.getLogger("trace_ext")

# Every this many buffered spans the saver is woken at once (not only every 0.2 s),
# so a cell that makes spans by the thousand doesn't hold them in RAM.
SAVE_THRESHOLD = 2000


class BufferingSpanProcessor(SpanProcessor):
    """Keeps ended spans in a buffer; inert until :meth:`activate` is called."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffer: list = []  # ended spans as snapshots, oldest first
        self._origins = OriginCache()
        self._active = False
        self._limit = 32_768
        self._on_full: Callable[[], None] | None = None  # the buffer is big: ask for a save
        self._save: Callable[[], None] | None = None  # save the buffer now, on this thread
        self.encode_errors = 0
        self._redactor = Redactor()
        # Called at each span's start and end, to notice processors other SDKs
        # add (see _peers.Peers.check): it must be cheap.
        self.watch: Callable[[], None] = lambda: None

    def activate(
        self,
        attribute_limit: int,
        on_full: Callable[[], None],
        save: Callable[[], None],
    ) -> None:
        self._limit = attribute_limit
        self._on_full, self._save = on_full, save
        self._active = True

    def deactivate(self) -> None:
        # The SDK offers no way to remove a processor from a provider, so an
        # unloaded extension leaves this one in place, doing nothing; loading
        # again re-activates the same instance instead of stacking a second.
        self._active = False
        self._on_full = self._save = None
        # And forget the unloaded extension's watcher: it would keep that whole extension alive.
        self.watch = lambda: None

    def forget_after_fork(self) -> None:
        """In a child made by ``os.fork()``: inert, with an empty buffer of its own.

        The child has no post-cell hook and no sender, so what it recorded would
        only pile up in memory; the inherited buffer is the parent's to save.
        The lock is new: another thread of the parent may have held it at the fork.
        """
        self._lock = threading.Lock()
        self._buffer = []
        self.deactivate()

    def set_redactor(self, redactor: Redactor) -> None:
        self._redactor = redactor

    def set_attribute_limit(self, limit: int) -> None:
        self._limit = limit

    def on_start(self, span, parent_context=None) -> None:
        if self._active:
            self.watch()

    def on_end(self, span) -> None:
        if not self._active:
            return
        self.watch()
        # A sampler that records without sampling (RECORD_ONLY) hands its spans to
        # processors for counting, not for export: the SDK's own processors drop them too.
        if not span.context.trace_flags.sampled:
            return
        self.record(span)

    def record(self, span) -> None:
        """Keep one ended span (also for spans another SDK hands us)."""
        try:
            taken = snapshot(redacted_span(span, self._redactor), self._limit, self._origins)
        except Exception:  # a span we can't read must not cost the others, or the cell
            self.encode_errors += 1
            log.exception("trace_ext could not encode span %r", getattr(span, "name", "?"))
            return
        with self._lock:
            self._buffer.append(taken)
            size = len(self._buffer)
        # Every SAVE_THRESHOLD spans, not only at it: a failed save leaves the
        # buffer past the threshold, and saves must go on.
        if size % SAVE_THRESHOLD == 0 and self._on_full is not None:
            self._on_full()

    def peek(self, limit: int) -> list[tuple[Snapshot, bytes, bytes]]:
        """The oldest ``limit`` spans as snapshots (see :func:`.._otlp.snapshot`),
        left in the buffer (see :meth:`drop`)."""
        with self._lock:
            return self._buffer[:limit]

    def drop(self, count: int) -> None:
        """Remove the oldest ``count`` spans, once they are saved."""
        with self._lock:
            del self._buffer[:count]

    def take(self) -> list[SpanRecord]:
        """Empty the buffer into encoded records: what saving then importing make of it."""
        with self._lock:
            snapshots, self._buffer = self._buffer, []
        return [encode_snapshot(*s) for s in snapshots]

    def buffered(self) -> int:
        return len(self._buffer)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        # Other SDKs' flush() (Langfuse's, the provider's) lands here. Storing is
        # all we owe them: delivery happens in the background.
        callback = self._save
        if callback is not None:
            callback()
        return True

    def shutdown(self) -> None:
        callback = self._save
        if callback is not None:
            callback()
