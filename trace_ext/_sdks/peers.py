"""Other SDKs' span processors on the providers trace_ext records from.

trace_ext is the one deliverer to its endpoint (README, "Langfuse, Phoenix and
other SDKs"):

- An OTLP/HTTP exporter that sends to the same URL as trace_ext (Langfuse's,
  ``phoenix.otel.register()``'s, one set up by hand) is *handed over*: its
  export is replaced by :class:`HandedOver`, so each span reaches that
  endpoint once, from trace_ext's store, with retries. Unloading puts the
  original exporter back.
- With no endpoint of its own, trace_ext *follows* the first such exporter
  (Langfuse's first): same URL, same headers.
- Every other processor keeps working as it was, and is flushed after each
  cell off the cell's thread (``_peer_flush``).

The SDKs keep the exporter in attributes that are not public API; each access
is guarded, and a processor we can't read is simply left alone and flushed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Sequence
from urllib.parse import urlsplit

from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from .._delivery.destination import Destination
from .._recording.providers import processors_of
from . import langfuse

__all__ = ["HandedOver", "Peer", "Peers", "same_url"]

_OTLP_HTTP = ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "OTLPSpanExporter")
_OTLP_GRPC = ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter", "OTLPSpanExporter")
_NOT_FORWARDED = {"content-type", "user-agent", "content-encoding"}


def same_url(a: str, b: str) -> bool:
    """Equal as endpoints: case of scheme and host, default ports and doubled slashes don't count."""

    def key(url: str) -> tuple:
        parts = urlsplit(url.strip())
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
        path = "/" + "/".join(p for p in parts.path.split("/") if p)
        return parts.scheme.lower(), (parts.hostname or "").lower(), port, path, parts.query

    try:
        return key(a) == key(b)
    except ValueError:
        return False


class HandedOver(SpanExporter):
    """Stands in for another SDK's exporter whose spans trace_ext delivers.

    Spans that ended after trace_ext's processor joined the provider were
    recorded by it already, so they are dropped here. Earlier ones (queued
    before trace_ext was loaded or attached) never reached it: they are
    recorded now, so nothing the other SDK queued is lost.
    """

    def __init__(self, original: SpanExporter, since_ns: int, record: Callable[[Sequence], None]) -> None:
        self.original = original
        self._since = since_ns
        self._record = record

    def export(self, spans) -> SpanExportResult:
        unseen = [span for span in spans if (span.end_time or 0) < self._since]
        if unseen:
            self._record(unseen)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass  # the original is handed back on unload, still usable

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


@dataclass
class Peer:
    """One other processor: where its exporter lives and where it sends."""

    processor: object
    name: str
    holder: object | None = None  # the object whose attribute holds the exporter
    attribute: str = ""
    url: str | None = None  # OTLP/HTTP traces URL, when it has one
    headers: dict | None = None
    grpc: str | None = None  # host:port of an OTLP/gRPC exporter (we can't follow it)
    since: int = 0  # time_ns trace_ext's processor joined this processor's provider

    @property
    def exporter(self):
        return getattr(self.holder, self.attribute, None) if self.holder is not None else None

    @property
    def handed_over(self) -> bool:
        return isinstance(self.exporter, HandedOver)


def _name(processor: object) -> str:
    module = type(processor).__module__
    if langfuse.is_langfuse(processor):
        return langfuse.NAME
    if module.startswith("phoenix"):
        return "Phoenix"
    return type(processor).__name__


def _otlp(exporter: object, kind: tuple[str, str] = _OTLP_HTTP) -> object | None:
    for _ in range(3):
        if any((c.__module__, c.__name__) == kind for c in type(exporter).__mro__):
            return exporter
        exporter = langfuse.inner_exporter(exporter)
        if exporter is None:
            return None
    return None


def _headers(exporter: object) -> dict:
    for owner, attribute in ((exporter, "_headers"), (getattr(exporter, "_client", None), "_headers"),
                             (getattr(exporter, "_session", None), "headers")):
        found = getattr(owner, attribute, None) if owner is not None else None
        if found:
            return {str(k): str(v) for k, v in dict(found).items() if str(k).lower() not in _NOT_FORWARDED}
    return {}


def describe(processor: object) -> Peer:
    """Find a processor's exporter (batch or simple) and, if it is OTLP/HTTP, its URL and headers."""
    peer = Peer(processor, _name(processor))
    batch = getattr(processor, "_batch_processor", None)
    if batch is not None and hasattr(batch, "_exporter"):
        peer.holder, peer.attribute = batch, "_exporter"
    elif hasattr(processor, "span_exporter"):
        peer.holder, peer.attribute = processor, "span_exporter"
    exporter = peer.exporter
    if isinstance(exporter, HandedOver):
        exporter = exporter.original
    otlp = _otlp(exporter) if exporter is not None else None
    if otlp is not None and isinstance(getattr(otlp, "_endpoint", None), str):
        peer.url, peer.headers = otlp._endpoint, _headers(otlp)
    grpc = _otlp(exporter, _OTLP_GRPC) if exporter is not None and otlp is None else None
    if grpc is not None:
        peer.grpc = str(getattr(grpc, "_endpoint", "") or "its gRPC endpoint")
    return peer


class Peers:
    """Hand over, follow and list the other processors on the providers trace_ext is on."""

    def __init__(self, ours: object, record: Callable[[Sequence], None]) -> None:
        self._ours = ours
        self._record = record
        self._lock = threading.RLock()
        self._providers: list[tuple[object, int]] = []
        self._seen: list[tuple] = []
        # (provider's processor list holder, its list as last seen) per provider: what
        # check() compares, twice per span, so it must cost no more than an identity test.
        self._watched: list[list] = []
        self._url: str | None = None
        self.peers: list[Peer] = []
        self.generation = 0  # counts rescans: what was followed may have changed

    # -- which processors exist ---------------------------------------------

    def add_provider(self, provider: object, since_ns: int) -> None:
        with self._lock:
            self._providers.append((provider, since_ns))
            self._seen.append(())
            self._watched.append([getattr(provider, "_active_span_processor", None), ()])
            self.check()

    def check(self) -> None:
        """Rescan if a processor was added since we last looked (an identity test per provider).

        The SDK adds a processor by making a new tuple of them, so the same tuple
        object means the same processors."""
        for watched in self._watched:
            if getattr(watched[0], "_span_processors", ()) is not watched[1]:
                self._rescan()
                return

    def _rescan(self) -> None:
        with self._lock:
            peers = []
            for index, (provider, since) in enumerate(self._providers):
                found = processors_of(provider)
                self._seen[index] = found
                multi = getattr(provider, "_active_span_processor", None)
                self._watched[index] = [multi, getattr(multi, "_span_processors", ())]
                for processor in found:
                    if processor is not self._ours:
                        peer = describe(processor)
                        peer.since = since
                        peers.append(peer)
            self.peers = peers
            self.generation += 1
            self._apply()

    # -- who delivers --------------------------------------------------------

    def followable(self) -> Destination | None:
        """Where to send when nothing is configured: the first OTLP/HTTP exporter found, Langfuse's first."""
        with self._lock:
            candidates = sorted((p for p in self.peers if p.url), key=lambda p: p.name != langfuse.NAME)
        if not candidates:
            return None
        peer = candidates[0]
        return Destination(peer.url, f"the {peer.name} exporter", dict(peer.headers or {}))

    def grpc_hint(self) -> str:
        """Why spans stay local although an SDK exports over gRPC, and what to do; '' if none does."""
        with self._lock:
            grpc = next((p for p in self.peers if p.grpc), None)
        if grpc is None or any(p.url for p in self.peers):
            return ""
        return (
            f"The {grpc.name} exporter sends over gRPC ({grpc.grpc}), which trace_ext does not speak, so "
            "spans stay in the local store: set %config TraceExt.endpoint to the backend's OTLP/HTTP URL "
            "(Phoenix: http://<host>:6006/v1/traces), or call register(protocol=\"http/protobuf\")."
        )

    def deliver_to(self, url: str | None) -> None:
        """trace_ext now sends to ``url``: hand over the exporters that send there, give back the rest."""
        with self._lock:
            self._url = url
            self._apply()

    def _apply(self) -> None:
        for peer in self.peers:
            mine = bool(self._url and peer.url and same_url(peer.url, self._url))
            try:
                if mine and not peer.handed_over:
                    setattr(peer.holder, peer.attribute, HandedOver(peer.exporter, peer.since, self._record))
                elif not mine and peer.handed_over:
                    _empty_queue(peer.processor)
                    setattr(peer.holder, peer.attribute, peer.exporter.original)
            except (AttributeError, TypeError):
                peer.url = None  # can't swap it: leave it sending on its own

    def release(self) -> None:
        """Give every exporter back (unload): the other SDKs deliver on their own again."""
        self.deliver_to(None)
        with self._lock:
            self._providers.clear()
            self._seen.clear()
            self._watched.clear()
            self.peers = []

    def give_back_after_fork(self) -> None:
        """In a child made by ``os.fork()``: the other SDKs send the child's spans themselves,
        as without trace_ext. (Their processors emptied their queues at the fork; no lock:
        a thread of the parent may have held it, and the child has only this one.)"""
        for peer in self.peers:
            if peer.handed_over:
                try:
                    setattr(peer.holder, peer.attribute, peer.exporter.original)
                except (AttributeError, TypeError):
                    pass
        self._lock = threading.RLock()

    # -- what to flush after a cell ------------------------------------------

    def flush_jobs(self, timeout_s: float) -> list[tuple[str, Callable[[], object]]]:
        """``(name, flush)`` for each other SDK with something of its own to flush."""
        jobs: list[tuple[str, Callable[[], object]]] = []
        jobs.extend(langfuse.flushes())
        langfuse_flushed = bool(jobs)
        millis = int(timeout_s * 1000)
        with self._lock:
            peers = list(self.peers)
        for peer in peers:
            if peer.handed_over or (langfuse_flushed and peer.name == langfuse.NAME):
                continue
            if peer.holder is None or peer.attribute == "span_exporter":
                continue  # nothing queued: a simple processor exports as each span ends
            label = f"{peer.name} → {Destination(peer.url, '').host}" if peer.url else peer.name
            jobs.append((label, lambda p=peer.processor: p.force_flush(millis)))
        return jobs


def _empty_queue(processor: object) -> None:
    """Before giving an exporter back: the spans still queued are ours already, and the
    original would send them a second time. (Quick: the export they go to does nothing.)"""
    try:
        processor.force_flush(1000)  # type: ignore[attr-defined]
    except Exception:
        pass

