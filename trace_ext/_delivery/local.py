"""Local spans sent when the user chooses, from a terminal: ``python -m trace_ext send``.

Spans recorded with no destination stay in the store as *local*. In a kernel,
``%trace send`` makes them pending and the kernel's own sender takes them.
Outside one, this module runs the same :class:`~.sender.Sender` (the same
batches, retries, backoff, splitting and accounting) on a view of the store
that offers it only the chosen local spans: they are claimed while still
local, so no kernel sharing the store sends them to its own endpoint meanwhile,
and no kernel's pending spans are taken to this one.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._store.store import Claimed, Counts, SpanStore
from .destination import SenderConfig
from .sender import Sender
from .status import DeliveryStatus

__all__ = ["LocalSendReport", "send_local_spans"]


class _ChosenLocalSpans:
    """The store as the sender sees it: pending means the chosen local spans not yet sent."""

    def __init__(self, store: SpanStore, since: float, trace_id: str | None) -> None:
        self._store = store
        self._since = since
        self._trace_id = trace_id

    def claim(self, max_spans: int, max_bytes: int, lease_seconds: float) -> list[Claimed]:
        return self._store.claim_local(max_spans, max_bytes, lease_seconds, self._since, self._trace_id)

    def pending(self) -> int:
        return self._store.count_local(self._since, self._trace_id)

    def counts(self) -> Counts:
        return self._store.counts()._replace(pending=self.pending())

    def __getattr__(self, name: str):  # release, mark_sent, mark_failed, origins, checkpoint …
        return getattr(self._store, name)


@dataclass(frozen=True)
class LocalSendReport:
    chosen: int  # local spans that matched
    sent: int
    failed: int
    left: int  # still local: not delivered before the timeout
    destination: str
    last_error: str

    def __str__(self) -> str:
        if not self.chosen:
            return "No local spans match: nothing to send."
        text = f"Sent {self.sent} of {self.chosen} local spans to {self.destination}; {self.failed} failed"
        if self.left:
            text += f"; {self.left} not delivered within the time limit (they stay local: run send again)"
        text += "."
        if (self.failed or self.left) and self.last_error:
            text += f" Last problem: {self.last_error}"
        return text


def send_local_spans(
    store: SpanStore, config: SenderConfig, timeout: float, since: float = 0.0, trace_id: str | None = None
) -> LocalSendReport:
    """Send the local spans saved since ``since`` (of traces matching ``trace_id``) to
    ``config``'s endpoint, for at most ``timeout`` seconds; what happened."""
    chosen = _ChosenLocalSpans(store, since, trace_id)
    count = chosen.pending()
    status = DeliveryStatus()
    if not count:
        return LocalSendReport(0, 0, 0, 0, config.destination.host, "")
    sender = Sender(chosen, status, lambda: None)  # type: ignore[arg-type]  # the view quacks as a store
    sender.configure(config)
    sender.start()
    sender.shutdown(timeout)  # delivers for up to ``timeout`` seconds, then stops
    return LocalSendReport(count, status.sent, status.failed, chosen.pending(), config.destination.host, status.last_error)
