"""Which tracer providers trace_ext records from, and its own one that only holds the place.

An SDK provider that is global when trace_ext loads is used as it is. With
none, trace_ext makes its own global at once, so OpenTelemetry API calls in
the very next cell are recorded. But a notebook's own set-up
(``phoenix.otel.register()``, a ``TracerProvider`` made by hand) must still
be able to become global, even when trace_ext was loaded first, as it is by
the "Python 3 (trace_ext)" kernel. The API allows setting the global
provider only once, so while trace_ext's own is global, ``set_tracer_provider``
is wrapped: the notebook's provider replaces trace_ext's (which keeps
recording spans from tracers taken earlier) instead of being refused, and
trace_ext's processor is added to it right away.
"""

from __future__ import annotations

import inspect
import os
import threading
import time
from typing import Callable

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.util._once import Once

from .._version import __version__
from .processor import BufferingSpanProcessor

__all__ = ["Providers", "api_tracer", "default_resource", "processors_of"]

# One processor for the whole process: a provider keeps whatever processor it
# was given (the SDK can't remove one), so %reload_ext reuses this instance.
_PROCESSOR = BufferingSpanProcessor()
if hasattr(os, "register_at_fork"):  # a forked child records nothing (README, "How it works")
    os.register_at_fork(after_in_child=_PROCESSOR.forget_after_fork)
_OWN: list[TracerProvider] = []  # trace_ext's own provider, made once per process


def default_resource() -> Resource:
    env = os.environ
    named = "OTEL_SERVICE_NAME" in env or "service.name=" in env.get("OTEL_RESOURCE_ATTRIBUTES", "")
    return Resource.create({} if named else {"service.name": "jupyter-notebook"})


def processors_of(provider: object) -> tuple:
    """The span processors on an SDK provider, in the order it calls them."""
    multi = getattr(provider, "_active_span_processor", None)
    return tuple(getattr(multi, "_span_processors", ()))


class Providers:
    """The SDK providers carrying trace_ext's processor, and the tracer its own spans use."""

    def __init__(self, on_attach: Callable[[TracerProvider, int], None]) -> None:
        self.processor = _PROCESSOR
        #: (provider, time_ns just after trace_ext's processor was on it) for each one.
        self.attached: list[tuple[TracerProvider, int]] = []
        self.warning = ""
        self._on_attach = on_attach
        self._lock = threading.RLock()
        self._tracers: dict[int, trace.Tracer] = {}

    def refresh(self) -> bool:
        """Attach to the global provider if it is an SDK one we are not on yet; True if we did."""
        provider = trace.get_tracer_provider()
        if isinstance(provider, trace.ProxyTracerProvider):
            return False
        if not isinstance(provider, TracerProvider):
            # Someone else's provider API: we can't see its spans, but our own still get recorded.
            self.warning = (
                f"The global tracer provider is a {type(provider).__name__}, not the OpenTelemetry "
                "SDK's, so only %%trace cells and trace_ext.observe/span are recorded."
            )
            return False
        return self._attach(provider)

    def claim(self) -> TracerProvider:
        """The provider trace_ext's own spans use, making trace_ext's provider global if none is."""
        with self._lock:
            self.refresh()
            provider = trace.get_tracer_provider()
            if isinstance(provider, trace.ProxyTracerProvider):
                _ORIGINAL_SET(self._own())
                provider = trace.get_tracer_provider()
            if not isinstance(provider, TracerProvider):
                provider = self._own()  # kept private: the global one is not the SDK's
            self._attach(provider)
            return provider

    def tracer(self) -> trace.Tracer:
        # One tracer per provider (one instrumentation scope): the SDK makes a new
        # one per call, and each would be encoded anew. Called for every observed
        # call, so a global provider we already trace from skips claim().
        tracer = self._tracers.get(id(trace.get_tracer_provider()))
        if tracer is not None:
            return tracer
        provider = self.claim()
        tracer = self._tracers.get(id(provider))
        if tracer is None:
            tracer = self._tracers[id(provider)] = provider.get_tracer("trace_ext", __version__)
        return tracer

    def yield_place(self) -> None:
        """Let a provider the notebook sets later replace trace_ext's own as the global one."""
        _LOADED[:] = [self]
        trace.set_tracer_provider = _set_tracer_provider

    def stop_yielding(self) -> None:
        _LOADED.clear()
        trace.set_tracer_provider = _ORIGINAL_SET

    def _own(self) -> TracerProvider:
        if not _OWN:
            _OWN.append(TracerProvider(resource=default_resource()))
        return _OWN[0]

    def _attach(self, provider: TracerProvider) -> bool:
        with self._lock:
            if any(known is provider for known, _ in self.attached):
                return False
            if getattr(provider, "_trace_ext_processor", None) is not self.processor:
                _add_beside(provider, self.processor)
                provider._trace_ext_processor = self.processor  # type: ignore[attr-defined]
            # Spans that ended before this moment never reached our processor.
            since = time.time_ns()
            self.attached.append((provider, since))
        self._on_attach(provider, since)
        return True


def _add_beside(provider: TracerProvider, processor: BufferingSpanProcessor) -> None:
    """Add our processor without displacing any: Phoenix's provider shuts down the
    exporter register() gave it when another processor is added, unless told not to."""
    try:
        keeps_default = "replace_default_processor" in inspect.signature(provider.add_span_processor).parameters
    except (TypeError, ValueError):
        keeps_default = False
    if keeps_default:
        provider.add_span_processor(processor, replace_default_processor=False)  # type: ignore[call-arg]
    else:
        provider.add_span_processor(processor)


_ORIGINAL_SET = trace.set_tracer_provider
# The Providers of the loaded extension (at most one per process): told of a provider the
# notebook sets, and the source of the tracer trace_ext.observe/span use.
_LOADED: list[Providers] = []


def _set_tracer_provider(tracer_provider) -> None:
    """``opentelemetry.trace.set_tracer_provider`` while trace_ext is loaded."""
    if _OWN and trace.get_tracer_provider() is _OWN[0] and tracer_provider is not _OWN[0]:
        # Ours only held the place: reset the API's set-once guard (private, but
        # unchanged since OpenTelemetry 1.0) so the notebook's provider is taken.
        trace._TRACER_PROVIDER_SET_ONCE = Once()  # type: ignore[attr-defined]
        trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]
    _ORIGINAL_SET(tracer_provider)
    for providers in list(_LOADED):
        providers.refresh()


def api_tracer() -> trace.Tracer:
    """The tracer ``trace_ext.observe`` and ``trace_ext.span`` use (call it per span: it is cheap)."""
    loaded = _LOADED[0] if _LOADED else None
    if loaded is not None:
        return loaded.tracer()
    return trace.get_tracer("trace_ext", __version__)
