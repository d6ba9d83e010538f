"""Flushing other SDKs after each cell, where it can't hold up the notebook.

Langfuse's ``flush()`` takes no timeout, and the SDK's ``BatchSpanProcessor``
ignores the one it is given, so either can block for as long as their
backend is slow. Each SDK gets a daemon thread of its own: the post-cell
hook only wakes it. A flush still running ``timeout`` seconds after it
started is reported in the status as not finished; requests made meanwhile
fold into one more flush after it.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from opentelemetry import context as otel_context

from .._delivery.status import DeliveryStatus
from .._log import log
from .._capture.threads import untraced_context

__all__ = ["PeerFlush"]


class _Worker:
    def __init__(self, name: str, owner: "PeerFlush") -> None:
        self.name, self._owner = name, owner
        self.flush: Callable[[], object] = lambda: None
        self.wanted = threading.Event()
        self.started: float | None = None  # monotonic time the running flush began
        self.outcome = ""
        self.finished = threading.Event()
        thread = threading.Thread(target=self._run, name=f"trace_ext flush {name}", daemon=True)
        thread.start()

    def _run(self) -> None:
        # Another SDK's flush may send over an instrumented HTTP client: as for the
        # sender, that is no span of the notebook's (nor nested under a cell).
        otel_context.attach(untraced_context())
        while not self._owner.stopped:
            self.wanted.wait()
            self.wanted.clear()
            if self._owner.stopped:
                return
            self.finished.clear()
            self.started = time.monotonic()
            self._owner.show()
            try:
                result = self.flush()
                took = time.monotonic() - self.started
                self.outcome = (
                    f"{self.name} flushed in {_duration(took)}"
                    if result is not False
                    else f"{self.name} flush gave up after {_duration(took)}"
                )
            except Exception as exc:  # another SDK's failure must not stop ours
                log.warning("%s flush failed", self.name, exc_info=exc)
                self.outcome = f"{self.name} flush failed ({type(exc).__name__}: {exc})"
            self.started = None
            self.finished.set()
            self._owner.show()


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


class PeerFlush:
    """One flushing thread per other SDK; the status says how each last flush went."""

    def __init__(self, status: DeliveryStatus, timeout: float) -> None:
        self._status = status
        self.timeout = timeout
        self._workers: dict[str, _Worker] = {}
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self.stopped = False

    def request(self, jobs: list[tuple[str, Callable[[], object]]]) -> None:
        """Start (or queue) a flush of each job; returns at once."""
        if self.stopped or not jobs:
            return
        with self._lock:
            for name, flush in jobs:
                worker = self._workers.get(name)
                if worker is None:
                    worker = self._workers[name] = _Worker(name, self)
                worker.flush = flush
                worker.wanted.set()
            if self._timer is None:
                # Re-check once the limit has passed, to say which flushes are overdue.
                self._timer = threading.Timer(self.timeout, self._overdue)
                self._timer.daemon = True
                self._timer.start()

    def _overdue(self) -> None:
        with self._lock:
            self._timer = None
        self.show()

    def wait(self, timeout: float) -> bool:
        """Wait for the flushes under way (tests, ``%trace flush``); True if all finished."""
        deadline = time.monotonic() + timeout
        for worker in list(self._workers.values()):
            if worker.started is not None or worker.wanted.is_set():
                if not worker.finished.wait(max(deadline - time.monotonic(), 0)):
                    return False
        return True

    def show(self) -> None:
        parts = []
        now = time.monotonic()
        for worker in list(self._workers.values()):
            started = worker.started
            if started is not None and now - started >= self.timeout:
                parts.append(
                    f"{worker.name} flush still running after {_duration(now - started)} "
                    f"(over TraceExt.sdk_flush_timeout = {self.timeout:g} s; cells don't wait for it)"
                )
            elif started is not None:
                parts.append(f"{worker.name} flushing…")
            elif worker.outcome:
                parts.append(worker.outcome)
        text = "; ".join(parts)
        if text != self._status.peers:
            self._status.peers = text
        running = [now - t for t in (w.started for w in list(self._workers.values())) if t is not None]
        if running:
            # Keep the running time current: every second at first, then every 10 s
            # (a flush stuck for good must not keep the widget busy).
            every = 1.0 if max(running) < 60 else 10.0
            with self._lock:
                if self._timer is None and not self.stopped:
                    self._timer = threading.Timer(every, self._overdue)
                    self._timer.daemon = True
                    self._timer.start()

    def stop(self) -> None:
        self.stopped = True
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            for worker in self._workers.values():
                worker.wanted.set()  # lets an idle thread see `stopped` and end
