"""What the store tells the user: its problems (in memory, over its cap) on the status, and its retention settings."""

from __future__ import annotations

from ._status import DeliveryStatus

__all__ = ["StoreWatch"]


class StoreWatch:
    """Keeps the status in step with the current store."""

    def __init__(self, status: DeliveryStatus) -> None:
        self._status = status
        self._store = None
        self._shown = ""  # the store problem last put in last_error

    def watch(self, store, settings) -> None:
        """Follow ``store`` from now on (the old one, if any, is forgotten)."""
        self._store = store
        store.listener = lambda: self._changed(store)
        if store.notice:  # a damaged file was moved aside
            self._status.last_error = store.notice
        self.apply_retention(settings)
        self._changed(store)

    def apply_retention(self, settings) -> None:
        store = self._store
        store.retention_seconds = settings.retention_days * 86400 if settings.retention_days else None
        store.max_bytes = int(settings.retention_mb * 2**20) if settings.retention_mb else None
        store.settings_changed()  # pruned by the sender thread at its next checkpoint

    def _changed(self, store) -> None:
        if store is not self._store:
            return  # an old store, replaced meanwhile
        status = self._status
        warning, in_memory, dropped = store.warning, store.memory_count(), store.dropped
        with status.lock, status.hold_trait_notifications():
            if warning and not status.store_warning:
                status.last_error = self._shown = warning
            elif not warning and self._shown and status.last_error == self._shown:
                status.last_error = ""  # the store's problem is over: don't keep showing it
            status.store_warning = warning
            status.in_memory, status.dropped = in_memory, dropped
