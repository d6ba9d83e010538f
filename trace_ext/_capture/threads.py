"""Carry the OpenTelemetry context into threads, so their spans nest under the cell's.

asyncio tasks copy ``contextvars`` when they are created, so spans in tasks
nest on their own. A new ``threading.Thread`` starts with an empty context,
and a ``ThreadPoolExecutor`` runs every submitted call on a long-lived worker
thread. While :func:`install` is in effect:

- ``Thread.start()`` records the context current in the starting thread, and
  the new thread runs with it attached (for its whole life, whether it has a
  ``target`` or overrides ``run``);
- ``ThreadPoolExecutor.submit()`` (and so ``map`` and
  ``loop.run_in_executor``) runs each call in the context current at submit.

This is what ``opentelemetry-instrumentation-threading`` does, kept small.

trace_ext's own threads that do network work (the sender, other SDKs'
flushes) start instead from :func:`untraced_context`: no trace, and
instrumentation suppressed, as the SDK's exporters do while they export. An
HTTP client instrumentation (``opentelemetry-instrumentation-httpx``, ...)
would otherwise make a span of every POST, stored and sent by the next POST.
:func:`uninstall` puts the original methods back; if someone wrapped them on
top of ours meanwhile, ours stay in place but do nothing, so their wrapper
keeps working. Both are idempotent.
"""

from __future__ import annotations

import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import thread as _futures_thread

from opentelemetry import context as otel_context

__all__ = ["install", "installed", "uninstall", "untraced_context"]

# The keys instrumentations read (opentelemetry.instrumentation.utils.is_instrumentation_enabled):
# create_key() makes each one unique, so they must be these objects, not new keys of the same
# name. opentelemetry.context has them in every API this package supports (>= 1.25).
_SUPPRESS_KEYS = (
    getattr(otel_context, "_SUPPRESS_INSTRUMENTATION_KEY", "suppress_instrumentation"),
    getattr(otel_context, "_SUPPRESS_HTTP_INSTRUMENTATION_KEY", "suppress_http_instrumentation"),
)


def untraced_context() -> otel_context.Context:
    """A fresh context (no current span) in which instrumentations record nothing."""
    context = otel_context.Context()
    for key in _SUPPRESS_KEYS:
        context = otel_context.set_value(key, True, context)
    return context


_ATTRIBUTE = "_trace_ext_otel_context"
_lock = threading.Lock()
_active = False
_originals: dict[str, object] = {}  # name -> the method we replaced
_wrappers: dict[str, object] = {}  # name -> our wrapper, while it is in place

# Thread._bootstrap_inner runs in the new thread around run(): wrapping it covers
# subclasses that override run() too. Fall back to run() if it ever goes away.
_THREAD_METHOD = "_bootstrap_inner" if hasattr(threading.Thread, "_bootstrap_inner") else "run"


# An executor's worker threads outlive the call that started them: they get the
# submitter's context per call (submit), never a start-time one for their life.
_EXECUTOR_WORKER = getattr(_futures_thread, "_worker", None)


def _wrap_start(original):
    @functools.wraps(original)
    def start(self, *args, **kwargs):
        if _active and getattr(self, "_target", None) is not _EXECUTOR_WORKER:
            try:
                setattr(self, _ATTRIBUTE, otel_context.get_current())
            except Exception:  # a Thread subclass with __slots__ or a read-only attribute
                pass
        return original(self, *args, **kwargs)

    return start


def _wrap_thread_body(original):
    @functools.wraps(original)
    def body(self, *args, **kwargs):
        context = self.__dict__.pop(_ATTRIBUTE, None) if hasattr(self, "__dict__") else None
        if context is None or not _active:
            return original(self, *args, **kwargs)
        token = otel_context.attach(context)
        try:
            return original(self, *args, **kwargs)
        finally:
            otel_context.detach(token)

    return body


def _in_context(context, fn):
    @functools.wraps(fn)
    def call(*args, **kwargs):
        token = otel_context.attach(context)
        try:
            return fn(*args, **kwargs)
        finally:
            otel_context.detach(token)

    return call


def _wrap_submit(original):
    @functools.wraps(original)
    def submit(self, fn, /, *args, **kwargs):
        if _active and callable(fn):
            fn = _in_context(otel_context.get_current(), fn)
        return original(self, fn, *args, **kwargs)

    return submit


_TARGETS = (
    (threading.Thread, "start", _wrap_start),
    (threading.Thread, _THREAD_METHOD, _wrap_thread_body),
    (ThreadPoolExecutor, "submit", _wrap_submit),
)


def install() -> None:
    """Carry the OpenTelemetry context into new threads and executor calls (idempotent)."""
    global _active
    with _lock:
        for owner, name, wrap in _TARGETS:
            key = f"{owner.__name__}.{name}"
            if key in _wrappers:
                continue  # still ours (possibly under someone else's wrapper): just re-enable
            original = owner.__dict__[name]
            wrapper = wrap(original)
            _originals[key], _wrappers[key] = original, wrapper
            setattr(owner, name, wrapper)
        _active = True


def uninstall() -> None:
    """Stop carrying the context; put the original methods back where they are still ours (idempotent)."""
    global _active
    with _lock:
        _active = False
        for owner, name, _ in _TARGETS:
            key = f"{owner.__name__}.{name}"
            wrapper = _wrappers.get(key)
            if wrapper is not None and owner.__dict__.get(name) is wrapper:
                setattr(owner, name, _originals.pop(key))
                del _wrappers[key]


def installed() -> bool:
    return _active
