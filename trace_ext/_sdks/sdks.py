"""trace_ext beside the tracing SDKs a notebook already uses: providers, peers, their flushes.

The extension calls :meth:`Sdks.after_cell` from its post-cell hook; everything
here returns at once.
"""

from __future__ import annotations

from typing import Callable, Sequence

from .._delivery.destination import Destination
from .._delivery.status import DeliveryStatus
from .._recording.providers import Providers
from .flushes import PeerFlush
from .peers import Peers

__all__ = ["Sdks"]


class Sdks:
    def __init__(self, status: DeliveryStatus, save: Callable[[], None], flush_timeout: float) -> None:
        self.providers = Providers(on_attach=self._on_attach)
        self.processor = self.providers.processor
        self.peers = Peers(self.processor, self._record_handed_over)
        self.flushes = PeerFlush(status, flush_timeout)
        self._save = save
        self._generation = -1  # the peers' generation the destination was worked out for
        self.processor.watch = self.peers.check
        self.providers.claim()  # the global provider, or ours made global
        self.providers.yield_place()

    def _on_attach(self, provider, since_ns: int) -> None:
        self.peers.add_provider(provider, since_ns)

    def _record_handed_over(self, spans: Sequence) -> None:
        # Spans another SDK queued before trace_ext saw its provider: store them now.
        for span in spans:
            self.processor.record(span)
        self._save()

    def followable(self) -> Destination | None:
        self._generation = self.peers.generation  # read first: a rescan meanwhile shows next cell
        return self.peers.followable()

    def after_cell(self) -> bool:
        """Attach to a provider set up by the cell; True if the other processors changed, so the
        destination (followed exporter, gRPC hint) must be worked out again."""
        self.providers.refresh()
        self.peers.check()  # processors added by a cell that made no span yet
        return self.peers.generation != self._generation

    def flush_after_cell(self) -> None:
        self.flushes.request(self.peers.flush_jobs(self.flushes.timeout))

    def stop(self) -> None:
        self.providers.stop_yielding()
        self.flushes.stop()
        self.peers.release()

