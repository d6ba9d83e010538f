"""Delivery state and counters, shared by the sender (which writes them) and the status displays."""

from __future__ import annotations

import enum
import threading
import time
from dataclasses import dataclass

from traitlets import Float, HasTraits, Int, Unicode, observe, validate

__all__ = ["DeliveryReport", "DeliveryState", "DeliveryStatus"]


class DeliveryState(str, enum.Enum):
    """What the sender is doing. (What a stored span is: :class:`.._store.schema.SpanState`.)"""

    #: No destination: spans are kept in the local store (the embedded default).
    EMBEDDED = "embedded"
    #: Nothing left to send.
    IDLE = "idle"
    #: A request is under way.
    SENDING = "sending"
    #: The last request failed in a way worth retrying; the next try is scheduled.
    RETRYING = "retrying"
    #: The backend rejected the credentials: waiting for new ones.
    PAUSED = "paused"
    #: The sender was shut down (unload, kernel exit).
    STOPPED = "stopped"

    def __str__(self) -> str:
        return self.value


class DeliveryStatus(HasTraits):
    """What the status widget shows. Traits, so views observe them and update live."""

    state = Unicode(DeliveryState.EMBEDDED, help="what the sender is doing (a DeliveryState)")
    pending = Int(0, help="spans in the store waiting to be sent")
    local = Int(0, help="spans kept in the store only (no destination was configured)")
    sent = Int(0, help="spans delivered since the extension was loaded")
    failed = Int(0, help="spans the backend refused since the extension was loaded")
    destination = Unicode("", help="host (and port) spans go to; never credentials")
    store_path = Unicode("")
    last_delivery = Float(None, allow_none=True, help="epoch seconds of the last 2xx")
    last_error = Unicode("", help="the last problem, in one sentence")
    store_warning = Unicode("", help="what is wrong with the local store while it lasts (in memory, over its cap)")
    setting_problem = Unicode("", help="what is wrong with the destination's settings while it lasts (an unusable URL or header)")
    in_memory = Int(0, help="spans kept in memory only, because the store's file can't be written")
    peers = Unicode("", help="how the last flush of each other SDK (Langfuse, other span processors) went")
    dropped = Int(0, help="spans that could be kept nowhere (memory limit reached while the store was unwritable)")
    destination_source = Unicode("", help="the setting or variable the destination came from")
    # Written by the extension from the sender's schedule (see _extension.Extension._on_state).
    next_try = Float(None, allow_none=True, help="epoch seconds of the next try while retrying")
    attempts = Int(0, help="tries that failed in a row (0 once a request succeeds)")
    # Kept by this class itself, for the displays.
    sending_since = Float(None, allow_none=True, help="epoch seconds since the sender has waited for an answer")
    backlog_base = Int(0, help="sent + failed when the current backlog began: the bar counts this backlog only")

    def __init__(self, **kwargs) -> None:
        self.redactor = lambda text: text  # set by the extension: secrets never reach a display
        super().__init__(**kwargs)
        # Traits are written by the sender thread and the cell's thread; a lock
        # keeps read-modify-write updates (counters) whole.
        self.lock = threading.RLock()

    @validate("state")
    def _a_delivery_state(self, proposal) -> DeliveryState:
        return DeliveryState(proposal["value"])  # ValueError (a TraitError) for a word that is not one

    @validate("last_error", "peers", "setting_problem")
    def _redacted(self, proposal) -> str:
        return self.redactor(proposal["value"])

    @observe("state")
    def _track_sending(self, change) -> None:
        if change["new"] == DeliveryState.SENDING:
            if change["old"] != DeliveryState.SENDING:
                self.sending_since = time.time()
        else:
            self.sending_since = None

    @observe("sent", "failed")
    def _an_answer_came(self, _change) -> None:
        if self.sending_since is not None:  # a batch was answered; the next one starts its own wait
            self.sending_since = time.time()

    @observe("pending")
    def _track_backlog(self, change) -> None:
        if change["old"] == 0 and change["new"] > 0:
            self.backlog_base = self.sent + self.failed

    def add(self, *, sent: int = 0, failed: int = 0) -> None:
        with self.lock, self.hold_trait_notifications():
            self.sent += sent
            self.failed += failed


@dataclass(frozen=True)
class DeliveryReport:
    """What a flush achieved and where the store stands: returned by ``%trace flush`` and ``trace_ext.flush()``.

    ``sent``/``failed`` count what this flush did; ``delivered`` and ``failed_total``
    count since the extension was loaded; ``pending`` is what the store still holds.
    """

    sent: int
    failed: int
    pending: int
    local: int = 0
    destination: str = ""
    timed_out: bool = False
    delivered: int = 0
    failed_total: int = 0
    reason: str = ""

    def __str__(self) -> str:
        if not self.destination:
            return (
                f"Nothing to send: no endpoint is configured, so {self.local} spans are "
                "stored locally (see `%trace show`)."
            )
        delivered = max(self.delivered, self.sent)
        failed = max(self.failed_total, self.failed)
        spans = "span" if delivered == 1 else "spans"
        if not self.pending and not failed:
            head = f"All {delivered} {spans} delivered to {self.destination}"
        else:
            head = f"{delivered} {spans} delivered to {self.destination}"
        text = f"{head} ({self.sent} by this flush); {failed} failed"
        if failed and self.reason and not self.pending:
            text += f" ({self.reason.rstrip('.')}; `%trace retry` sends them again)"
        if self.pending:
            total = delivered + failed + self.pending
            why = f": {self.reason.rstrip('.').removesuffix('; retrying')}" if self.reason else ""
            if self.timed_out and not why:
                why = ": no answer in time"
            text += (
                f"; {self.pending} of {total} still pending{why}; "
                "they are on disk and keep being retried."
            )
            return text
        return text + "; 0 still pending."
