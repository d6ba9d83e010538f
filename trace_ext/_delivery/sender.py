"""The sender thread: stored spans to an OTLP/HTTP endpoint, with retries.

One named daemon thread per extension. It sleeps on an Event that the
post-cell hook sets, claims a size-bounded batch from the store, posts it with
httpx and records the outcome in the store and the status counters. Every wait
has a timeout, and nothing here ever runs on the cell's thread except
:meth:`flush` and :meth:`shutdown`, which the user (or kernel exit) asked for.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from typing import Callable

import httpx
from opentelemetry import context as otel_context

from .._store.store import CHECKPOINT_INTERVAL, Claimed, SpanStore
from .._capture.threads import untraced_context
from .destination import SenderConfig
from .policy import (
    SPLIT,
    Failed,
    Outcome,
    Retry,
    Sent,
    TooLarge,
    backoff_delay,
    deliver_shrunk,
    longer_timeout,
)
from .request import encode_batch, export, new_client
from .status import DeliveryReport, DeliveryState, DeliveryStatus

__all__ = ["Sender"]

log = logging.getLogger("trace_ext")

POLL_INTERVAL = 5.0  # seconds: look for spans other kernels left, or when not woken per cell


class Sender:
    """Delivers the store's pending spans in the background."""

    def __init__(self, store: SpanStore, status: DeliveryStatus, save: Callable[[], None]) -> None:
        self._store = store
        self._status = status
        self._save = save  # moves the in-memory buffer into the store
        self._wake = threading.Event()
        self._progress = threading.Condition()
        self._config: SenderConfig | None = None
        self._client: httpx.Client | None = None
        self._client_for: SenderConfig | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._flush_now = False
        self._save_now = False
        self._attempt = 0
        self._retry_at = 0.0  # epoch seconds; no request before it
        self._server_wait_until = 0.0  # epoch seconds: the server's own Retry-After
        # Seconds the next request waits for its answer (None: export_timeout): longer
        # after a time-out (see policy.longer_timeout), back to export_timeout once an
        # answer comes within it.
        self._timeout: float | None = None
        self._deadline: float | None = None  # monotonic; set while shutting down
        self._in_flight: list[int] = []  # store ids of the request being sent
        self._checkpointed = 0.0  # monotonic time of the last checkpoint
        self._delivery_trouble = False  # last_error currently describes a delivery problem
        # The retry reason last_error shows (as redacted), which says why pending spans wait:
        # true only while some do. A later message (a rejection, a failure) is not it.
        self._held_up: str | None = None
        self.periodic = False  # True: send every POLL_INTERVAL rather than when woken

    # -- control, from the cell's thread ------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="trace_ext-sender", daemon=True)
            self._thread.start()

    @property
    def config(self) -> SenderConfig | None:
        return self._config

    def configure(self, config: SenderConfig | None) -> None:
        """Switch destination or settings; a changed destination is tried at once."""
        if config == self._config:
            return
        self._config = config
        self._attempt, self._retry_at, self._server_wait_until = 0, 0.0, 0.0
        self._timeout = None
        self._trouble_over()  # it was the old destination's
        self._flush_now = True
        self._wake.set()

    def wake(self) -> None:
        if not self.periodic:
            self._wake.set()

    def request_save(self) -> None:
        self._save_now = True
        self._wake.set()

    def flush(self, timeout: float) -> DeliveryReport:
        """Wait until nothing is pending or ``timeout`` seconds pass, and say what happened."""
        sent0, failed0 = self._status.sent, self._status.failed
        config = self._config
        deadline = time.monotonic() + max(timeout, 0.0)
        if config is not None and self._thread is not None and self._thread.is_alive():
            # Someone is waiting: try now rather than when our own backoff ends
            # (the backend may be back), but a server that asked for time
            # (Retry-After) still gets it.
            self._retry_at = min(self._retry_at, self._server_wait_until)
            self._wake.set()
            with self._progress:
                while self._store.pending() and time.monotonic() < deadline:
                    self._progress.wait(min(0.25, max(deadline - time.monotonic(), 0.0)))
        counts = self._store.counts()
        return DeliveryReport(
            sent=self._status.sent - sent0,
            failed=self._status.failed - failed0,
            pending=counts.pending,
            local=counts.local,
            destination=config.destination.host if config else "",
            timed_out=bool(counts.pending) and config is not None,
        )

    def shutdown(self, timeout: float) -> DeliveryReport:
        """Flush for at most ``timeout`` seconds, then stop the thread. Safe to call twice."""
        start = time.monotonic()
        self._deadline = start + timeout
        report = self.flush(timeout)
        self._stopping = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            # A request in flight is bounded by the deadline too (see _post); if the
            # thread still isn't done, it dies with the process.
            # A little slack past the deadline only: a request still in flight then is
            # not waited for (its spans are given back below), and the kernel must be
            # gone within shutdown_timeout + 1 s, process teardown included.
            thread.join(max(self._deadline - time.monotonic(), 0.0) + 0.1)
            in_flight = list(self._in_flight)
            if thread.is_alive() and in_flight:
                # Give that request's spans back now, not when the lease ends, so the
                # next kernel sends them at once (a re-send, if the server kept them).
                try:  # briefly: the exit must stay bounded; else the lease runs out instead
                    self._store.release(in_flight, wait=0.2)
                except sqlite3.Error:
                    log.info("trace_ext left %d spans leased (the store was locked); the lease runs out", len(in_flight))
        self._status.state = DeliveryState.STOPPED
        return report

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the thread -----------------------------------------------------------

    def _wait_time(self) -> float:
        until_retry = self._retry_at - time.time()
        return min(until_retry, POLL_INTERVAL) if until_retry > 0 else POLL_INTERVAL

    def _run(self) -> None:
        # Whatever context the thread was started in (a traced cell's, say), the
        # sender's own work belongs to no trace, and an HTTP instrumentation must
        # not make a span of each POST (which the next POST would send).
        otel_context.attach(untraced_context())
        while not self._stopping:
            self._wake.wait(self._wait_time())
            self._wake.clear()
            try:
                self._step()
            except Exception as exc:  # keep the thread alive whatever happens
                if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                    # Another writer holds the store: not a bug. The store's warning says so,
                    # and goes once a write gets in (the next step, or the saver's import).
                    log.info("trace_ext sender waits for its store's lock (%s)", exc)
                else:
                    log.exception("trace_ext sender step failed")
                    self._status.last_error = f"The sender hit an internal error: {exc}."
            with self._progress:
                self._progress.notify_all()
        self._close_client()

    def _step(self) -> None:
        if self._save_now:
            self._save_now = False
            self._save()
        if self._stopping:
            return
        if time.monotonic() - self._checkpointed > CHECKPOINT_INTERVAL:
            # Here rather than in a cell's COMMIT: the store has automatic checkpoints off.
            self._checkpointed = time.monotonic()
            self._store.checkpoint()
        config = self._config
        if config is None:
            return
        if time.time() < self._retry_at and not self._flush_now:
            if not self._store.pending():  # sent by another kernel meanwhile: nothing to retry
                self._attempt, self._retry_at = 0, 0.0
                self._set_state(DeliveryState.IDLE)
            return
        self._flush_now = False
        while not self._stopping or self._deadline is not None:
            if self._deadline is not None and time.monotonic() >= self._deadline:
                return
            if self._config is not config:
                return  # reconfigured mid-way: the next step uses the new settings
            # The lease outlasts the request, however long it may now wait for its answer.
            lease = max(30.0, 2 * (self._timeout or config.export_timeout))
            batch = self._store.claim(config.max_batch_spans, config.max_batch_bytes, lease)
            if not batch:
                self._attempt = 0
                self._set_state(DeliveryState.IDLE)
                return
            retry = self._deliver(config, batch)
            with self._progress:
                self._progress.notify_all()
            if retry is not None:
                # A failed try rewrote its spans' pages twice (the lease, then its release), and
                # the log keeps both until a checkpoint: with tries closer than the interval (a
                # flush) it outgrew its limit by megabytes, and on a nearly full disk the next
                # import failed for that space. Fold it now; the backend is not answering anyway.
                self._checkpointed = time.monotonic()
                self._store.checkpoint()
                self._schedule_retry(retry)
                return
            if self._stopping and self._deadline is None:
                return

    def _schedule_retry(self, retry: Retry) -> None:
        backoff = backoff_delay(self._attempt)
        self._attempt += 1
        # Never sooner than the server asked, nor sooner than our backoff: a
        # "Retry-After: 0" answered to everything must not become a busy loop.
        delay = backoff if retry.delay is None else max(retry.delay, backoff)
        self._retry_at = time.time() + delay
        self._server_wait_until = time.time() + (retry.delay or 0.0)
        with self._status.lock, self._status.hold_trait_notifications():
            self._status.state = DeliveryState.PAUSED if retry.auth else DeliveryState.RETRYING
            self._status.last_error = retry.reason
            self._delivery_trouble = True
            self._held_up = self._status.last_error
            self._status.pending = self._store.pending()

    def _set_state(self, state: DeliveryState) -> None:
        with self._status.lock, self._status.hold_trait_notifications():
            pending = self._store.pending()
            if state is DeliveryState.IDLE and not pending and self._held_up == self._status.last_error:
                self._trouble_over()  # what held spans up holds nothing up now
            self._status.state = state
            self._status.pending = pending

    def _trouble_over(self) -> None:
        """The delivery problem last_error describes is no longer true: stop showing it.
        (A failed span's reason stays: it explains the failed count.)"""
        with self._status.lock:
            if self._delivery_trouble:
                self._delivery_trouble = False
                self._status.last_error = ""
            self._held_up = None

    def _deliver(self, config: SenderConfig, batch: list[Claimed]) -> Retry | None:
        """Send a batch, halving it on 413/400 to isolate what the server refuses; a lone 413 span is cut down."""
        parts = [batch]
        while parts:
            part = parts.pop()
            outcome = self._post(config, part)
            if isinstance(outcome, TooLarge):  # one span over the server's limit: cut it down
                resend = lambda shrunk, note: self._post(config, [shrunk], note)  # noqa: E731
                outcome = deliver_shrunk(resend, part[0], outcome)
                if isinstance(outcome, Failed):
                    self._record_failed([part[0].id], outcome.reason)
                    continue
            if outcome is SPLIT:
                middle = len(part) // 2
                parts += [part[middle:], part[:middle]]
            elif isinstance(outcome, Retry):
                waiting = [span.id for p in parts + [part] for span in p]
                self._store.release(waiting, time.time() + (outcome.delay or 0.0))
                return outcome
        return None

    def _client_for_config(self, config: SenderConfig) -> httpx.Client:
        if self._client is None or self._client_for != config:
            self._close_client()
            self._client, self._client_for = new_client(config), config
        return self._client

    def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _post(self, config: SenderConfig, batch: list[Claimed], note: str | None = None) -> Outcome | None:
        """One request. Marks the batch's spans (sent: with ``note``), or returns SPLIT, TooLarge or Retry."""
        try:
            client = self._client_for_config(config)
        except ValueError as exc:
            return Retry(None, str(exc))
        body, headers = encode_batch(config, self._store.origins(span.origin for span in batch), batch)
        limit = self._timeout or config.export_timeout
        timeout = limit
        if self._deadline is not None:
            timeout = max(min(timeout, self._deadline - time.monotonic()), 0.1)
        self._set_state(DeliveryState.SENDING)
        ids = [span.id for span in batch]
        self._in_flight = ids
        started = time.monotonic()
        try:
            outcome = export(client, config, body, headers, len(ids), timeout)
        finally:
            self._in_flight = []
        if isinstance(outcome, Retry):
            if outcome.timed_out:
                # The server may have the batch: giving up at the same limit again would
                # send it again after every time-out, for ever.
                self._timeout = longer_timeout(limit, config.export_timeout)
        elif time.monotonic() - started <= config.export_timeout:
            self._timeout = None  # answered within the setting: back to it
        # An answer slower than export_timeout keeps the longer limit: the next batch
        # would time out at export_timeout and be sent twice.
        if isinstance(outcome, Sent):
            self._record_sent(config, ids, outcome, note)
            return None
        if isinstance(outcome, Failed):
            self._record_failed(ids, outcome.reason)
            return None
        return outcome

    def _record_sent(self, config: SenderConfig, ids: list[int], outcome: Sent, note: str | None) -> None:
        if outcome.rejected:
            # OTLP's partial_success counts the spans the server dropped but never says
            # which: every span of the request is failed, so the store, the counters and
            # `%trace retry` agree by id (a retry sends the accepted ones again too). The
            # reason gives no advice: every display of failed spans adds `%trace retry`.
            host, count, rejected = config.destination.host, len(ids), outcome.rejected
            said = f": {outcome.message.rstrip('.')}" if outcome.message else ""
            if rejected >= count:
                reason = f"{host} rejected {'this span' if count == 1 else f'these {count} spans'}{said}."
            else:
                reason = (
                    f"{host} accepted {count - rejected} of these {count} spans and rejected {rejected} "
                    f"without saying which, so all {count} count as failed{said}."
                )
            self._record_failed(ids, f"{note}; {reason}" if note else reason)
            self._status.last_delivery = time.time()  # a 2xx all the same
            return
        self._store.mark_sent(ids, note)
        with self._status.lock, self._status.hold_trait_notifications():
            self._status.add(sent=len(ids))
            self._status.last_delivery = time.time()
            if self._delivery_trouble:  # recovered: don't keep showing the old problem
                self._status.last_error = ""
            self._delivery_trouble = False

    def _record_failed(self, ids: list[int], reason: str) -> None:
        self._store.mark_failed(ids, reason)
        with self._status.lock, self._status.hold_trait_notifications():
            self._status.add(failed=len(ids))
            self._status.last_error = reason
            # Lasting: later successes must not wipe the one explanation of "failed".
            self._delivery_trouble = False
