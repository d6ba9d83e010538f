"""Wiring for one IPython shell: settings, store, processor, sender, hooks, magics, widget.

``load`` builds everything in order; ``unload`` takes it apart in reverse, so
``%reload_ext trace_ext`` leaves exactly one of each behind.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import signal
import sqlite3
import sys
import threading
import time
import uuid
from contextlib import contextmanager

from IPython.core.error import UsageError

from ._capture import threads
from ._capture.cells import CellTracer, run_body_as_cell, watch_error_reports
from ._delivery.destination import (
    SENDER_SETTINGS,
    destination_intended,
    environment_fingerprint,
    sender_config,
)
from ._delivery.sender import Sender
from ._delivery.status import DeliveryReport, DeliveryState, DeliveryStatus
from ._display.links import backend_of
from ._display.magics import TraceMagics, wrap_config_magic, wrap_load_ext_magic
from ._display.traces import Query
from ._display.view import TraceView, trace_view
from ._display.widget import SHOWN_BY_BUTTON, Actions, StatusDisplay, in_a_cell
from ._log import LOG_FILTER, log, log_to_process_stderr
from ._redact import Redactor, secrets_of
from ._sdks.sdks import Sdks
from ._store.export import export_json_lines
from ._store.saver import REPLY_GRACE, Saver
from ._store.schema import SpanState
from ._store.store import open_store
from .config import settings_from

__all__ = ["Extension", "StoreWatch", "active", "load", "unload"]

# Seconds of shutdown_timeout kept for what follows delivery: the sender's join slack (0.1 s),
# giving an in-flight request's spans back (at most 0.2 s), the display's last word and
# closing the store (its last connection checkpoints what the exit imported: 0.12-0.25 s
# after a busy thread's spans). Kept inside the limit, the kernel's own teardown (0.2-0.3 s)
# fits in the second the exit is allowed beyond it, on a busy machine too.
EXIT_RESERVE = 0.5

_ACTIVE: dict[int, "Extension"] = {}
# A %%trace cell's open span, kept by an extension %reload_ext unloads for the one it loads next.
_CELLS_FOR_NEXT_LOAD: dict[int, CellTracer] = {}
_SESSION_IDS: dict[int, str] = {}  # one per kernel process, kept across %reload_ext

# The packages trace_ext runs on (and trace_ext itself), by their modules' top-level names.
_RUNS_ON = ("trace_ext", "opentelemetry", "google.protobuf", "google._upb", "httpx", "httpcore", "h11",
            "anyio", "sniffio", "certifi", "idna", "ipywidgets")
_RUNS_ON_PACKAGES = tuple(name + "." for name in _RUNS_ON)


class Extension:
    """trace_ext loaded into one shell."""

    def __init__(self, shell) -> None:
        self.shell = shell
        self.settings, problems = settings_from(shell.config.get("TraceExt", {}))
        self.status = DeliveryStatus()
        if problems:
            self.status.last_error = problems[-1]
        self.session_id = _SESSION_IDS.setdefault(
            id(shell), time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]
        )
        self._displays: list[StatusDisplay] = []
        self._env = environment_fingerprint()
        self._destination = None
        self._store_watch = StoreWatch(self.status)
        self._sending = False  # spans are saved pending (True) or local
        self._unusable = False  # a destination is set but can't be used (see _apply_destination)
        self._pid = os.getpid()  # a child made by os.fork() inherits this object, not the process
        self._cell_started: float | None = None  # monotonic start of the running cell (see Saver)

    # -- lifecycle ----------------------------------------------------------

    def load(self) -> None:
        log_to_process_stderr()
        shell, s = self.shell, self.settings
        self.store = open_store(s.store_path, fallback=True)  # unwritable: in memory, with a warning
        self._store_watch.watch(self.store, self.settings)
        self.status.store_path = s.store_path
        counts = self.store.counts()
        self.status.local, self.status.pending = counts.local, counts.pending
        # The global provider is used; with none, ours holds the place (see _providers).
        self.sdks = Sdks(self.status, self.save, s.sdk_flush_timeout)
        if self.sdks.providers.warning:
            self.status.last_error = self.sdks.providers.warning
        self.processor = self.sdks.processor
        self.sender = Sender(self.store, self.status, self.save)
        self.sender.periodic = not s.flush_after_cell
        self.saver = self._new_saver(self.store)
        self.processor.activate(s.max_attribute_length, self.saver.wake, self.save)
        self._apply_destination()
        self.saver.start()
        self.sender.start()
        # Spans from threads and executor tasks a cell starts nest under the cell.
        threads.install()
        self.cells = CellTracer(self.sdks.providers.tracer, s, self.session_id)
        taken_over = _CELLS_FOR_NEXT_LOAD.pop(id(shell), None)  # %reload_ext in a %%trace cell
        if taken_over is not None:
            taken_over.hand_over(self.cells)
        shell.events.register("pre_run_cell", self._pre_run_cell)
        shell.events.register("post_run_cell", self._post_run_cell)
        self._modules_seen = 0
        self._keep_through_reset()
        self._unwrap_cells = run_body_as_cell(shell)
        self._unwatch_errors = watch_error_reports(shell, self.cells.error_reported)
        self.magics = TraceMagics(shell, self)
        shell.register_magics(self.magics)
        self._restore_config = wrap_config_magic(shell, s)
        # Running the `%load_ext trace_ext` cell again shows the status again.
        self._restore_load_ext = wrap_load_ext_magic(shell, self._show_status_again)
        shell.configurables.append(s)
        s.observe(self._on_setting)
        self.status.observe(self._on_state, "state")
        atexit.register(self._at_exit)
        if s.widget and in_a_cell(shell):
            self.status_display().show()

    def unload(self, reloading: bool = False) -> None:
        """Take everything apart; when ``reloading`` (``%reload_ext``), the open cell span
        is kept for the extension loaded next, which ends it with the cell."""
        shell, s = self.shell, self.settings
        atexit.unregister(self._at_exit)
        s.unobserve(self._on_setting)
        self._restore_load_ext()
        if s in shell.configurables:
            shell.configurables.remove(s)
        self._restore_config()
        for kind in ("line", "cell"):
            shell.magics_manager.magics[kind].pop("trace", None)
        shell.magics_manager.registry.pop(type(self.magics).__name__, None)
        if self.magics in shell.configurables:  # register_magics put it there: it would keep us alive
            shell.configurables.remove(self.magics)
        self._unwatch_errors()
        self._unwrap_cells()
        shell.events.unregister("post_run_cell", self._post_run_cell)
        shell.events.unregister("pre_run_cell", self._pre_run_cell)
        threads.uninstall()
        if reloading:
            holder = CellTracer(self.sdks.providers.tracer, s, self.session_id)
            self.cells.hand_over(holder)
            _CELLS_FOR_NEXT_LOAD[id(shell)] = holder
        self.cells.end_open_span("trace_ext was unloaded while the cell ran.")
        deadline = time.monotonic() + s.shutdown_timeout
        self.saver.save()
        self.processor.deactivate()
        self.sdks.stop()  # other SDKs' exporters are theirs again
        self._stop_delivery(deadline)
        self.status.unobserve(self._on_state, "state")
        self.store.close()
        self._close_displays()

    def _stop_delivery(self, deadline: float):
        """Saver, then sender, within ``deadline`` (monotonic) in all: the exit stays bounded.

        Saving is one append to the journal; importing it gets up to half the time
        (or 1 s), the sender the rest but the reserve (EXIT_RESERVE, or a quarter of
        a shorter limit) the caller's closing steps take. What isn't imported stays
        in the journal and what isn't sent stays pending: the next kernel does both.
        """
        left = max(deadline - time.monotonic(), 0.0)
        reserve = min(EXIT_RESERVE, left / 4)
        self.saver.stop(min((left - reserve) / 2, 1.0))
        return self.sender.shutdown(max(deadline - time.monotonic() - reserve, 0.0))

    def _at_exit(self) -> None:
        if os.getpid() != self._pid:
            return  # a forked child's exit: the store, the spans and the sender are the parent's
        try:
            deadline = time.monotonic() + self.settings.shutdown_timeout
            # A thread of the user's still running Python (making spans, say) holds the GIL
            # for the whole switch interval (5 ms) each time this thread asks for it, and the
            # exit asks hundreds of times: with a busy thread it overran shutdown_timeout by
            # 0.3 s. The process is ending, so nothing else feels a shorter interval.
            sys.setswitchinterval(min(sys.getswitchinterval(), 0.0005))
            self.cells.end_open_span("The kernel exited while the cell ran.")
            # Spans ended from here on could not be saved anyway; a thread still making
            # them would only slow the exit down.
            self.processor.deactivate()
            report = self._stop_delivery(deadline)
            for view in self._displays:  # the notebook file keeps this last word
                view.final_update()
            # Closed here, within the time limit: left to the interpreter's teardown, the
            # connections' finalizers made the kernel's exit 0.7 s slower.
            self.store.close()
            if report.pending:
                log.info("%s spans stay in %s and are sent next time.", report.pending, self.store.path)
        except Exception:
            log.exception("trace_ext could not finish at exit")

    # -- hooks (never raise into the user's cell) ----------------------------

    def leave_to_parent(self) -> None:
        """In a child made by ``os.fork()`` (multiprocessing's default on Linux): stay out of the way.

        The child has no sender thread and runs no cells, so it records nothing
        (the processor forgets itself at the fork, see _recording.providers),
        never touches the parent's store, and gives other SDKs their exporters back.
        """
        self.sdks.peers.give_back_after_fork()
        self.saver.forget_after_fork()
        self.store.forget_after_fork()

    def _pre_run_cell(self, info) -> None:
        self._cell_started = time.monotonic()
        try:
            count = self.shell.execution_count - (1 if info.store_history else 0)
            self.cells.pre_run_cell(info, count)
        except Exception as exc:
            self._internal_error("starting the cell's span", exc)

    def _post_run_cell(self, result) -> None:
        # The user may press stop just as the cell ends: an interrupt landing here
        # would leave the cell's span open or its spans unsaved. The cell is over,
        # so it has nothing left to interrupt; the interrupt is held, then dropped.
        with _interrupts_held():
            self._after_cell(result)

    def _after_cell(self, result) -> None:
        self._cell_started = None
        try:
            self.cells.post_run_cell(result)
        except Exception as exc:
            self._internal_error("ending the cell's span", exc)
        try:
            self._keep_through_reset()
        except Exception as exc:
            self._internal_error("keeping its modules through %reset", exc)
        try:
            peers_changed = self.sdks.after_cell()
            if peers_changed or self._env != environment_fingerprint():
                self._env = environment_fingerprint()
                self._apply_destination()
            self.save()
            self.sender.wake()
            self.sdks.flush_after_cell()
        except Exception as exc:
            self._internal_error("saving the cell's spans", exc)

    def _keep_through_reset(self) -> None:
        """Keep the modules trace_ext runs on out of ``%reset --aggressive``'s cull.

        That cull deletes from ``sys.modules`` whatever was imported after the kernel
        started, but trace_ext stays loaded (its hooks, threads and message classes
        live on): the next import made fresh copies beside the live ones. A second
        copy of protobuf's generated classes over the one C extension crashed the
        kernel; a fresh ``opentelemetry`` lost the global provider and context, and
        ``%reload_ext`` found no trace_ext to unload and loaded a second one. Modules
        imported later (httpcore on the first send, say) are added after the cell
        that imported them; the scan runs only when ``sys.modules`` has grown.
        """
        kept = getattr(self.shell, "_sys_modules_keys", None)  # IPython's start-up snapshot
        if not isinstance(kept, set) or len(sys.modules) == self._modules_seen:
            return
        names = list(sys.modules)
        self._modules_seen = len(names)
        kept.update(n for n in names if n in _RUNS_ON or n.startswith(_RUNS_ON_PACKAGES))

    def _internal_error(self, doing: str, exc: Exception) -> None:
        log.warning("trace_ext failed %s", doing, exc_info=exc)
        self.status.last_error = f"trace_ext failed {doing} ({type(exc).__name__}: {exc}); the cell itself was not affected."

    # -- the pipeline ---------------------------------------------------------

    def save(self) -> None:
        """Save buffered spans (to the journal): durable once this returns.

        The importer thread imports them into the store (encoding them is part of
        that) and then wakes the sender: nothing here waits on SQLite's lock,
        another writer, or the encoding of a big cell's spans.
        """
        self.saver.save()
        # Only the importer: the hook has just saved, and every thread it wakes
        # competes with the rest of the hook for the GIL; and only once the
        # kernel has replied, for the same reason.
        self.saver.wake_import(after=REPLY_GRACE)

    def _new_saver(self, store) -> Saver:
        def state() -> SpanState:
            return SpanState.PENDING if self._sending else SpanState.LOCAL

        def saved(count: int, state: SpanState) -> None:
            with self.status.lock:
                if state is SpanState.PENDING:
                    self.status.pending += count
                else:
                    self.status.local += count

        def problem(message: str) -> None:
            self.status.last_error = message

        def cell_time() -> float | None:
            started = self._cell_started
            return None if started is None else time.monotonic() - started

        return Saver(store, self.processor, state, saved, problem, self.status.lock, cell_time, self.sender.wake)

    def _apply_destination(self) -> None:
        config, destination, warning = sender_config(self.settings, self.sdks.followable())
        warning = warning or ("" if destination else self.sdks.peers.grpc_hint())
        self._destination = destination
        # Also while the configured destination can't be used: its spans wait for the fix.
        self._sending = config is not None or destination_intended(self.settings)
        # Exporters of other SDKs sending to the same URL are handed over to us.
        self.sdks.peers.deliver_to(destination.url if destination else None)
        self._update_redactor()
        # First: a changed destination ends the old one's delivery problem (its message
        # goes), and the warning below is about the new one.
        self.sender.configure(config)
        unusable = config is None and self._sending  # a destination is set, but a setting is wrong
        with self.status.lock, self.status.hold_trait_notifications():
            self.status.destination = destination.host if destination else ""
            self.status.destination_source = destination.source if destination else ""
            if unusable:
                self.status.state = DeliveryState.PAUSED  # the spans wait for the fix
            elif destination is None:
                self.status.state = DeliveryState.EMBEDDED
            elif self.status.state is DeliveryState.EMBEDDED or self._unusable:
                self.status.state = DeliveryState.IDLE
            self._unusable = unusable
            # Shown while true: once the settings are fixed, their warning goes too.
            previous = self.status.setting_problem
            self.status.setting_problem = warning
            if warning and warning != previous:
                self.status.last_error = warning
            elif previous and self.status.last_error == previous:
                self.status.last_error = ""

    def _on_setting(self, change) -> None:
        name = change["name"]
        if name in SENDER_SETTINGS:
            self._apply_destination()
        elif name == "redact":
            self._update_redactor()
        elif name == "sdk_flush_timeout":
            self.sdks.flushes.timeout = change["new"]
        elif name == "max_attribute_length":
            self.processor.set_attribute_limit(change["new"])
        elif name == "flush_after_cell":
            self.sender.periodic = not change["new"]
        elif name == "store_path":
            self._switch_store(change)
        elif name in ("retention_days", "retention_mb"):
            self._store_watch.apply_retention(self.settings)
        elif name == "widget":
            if change["new"]:
                self.status_display().show()
            else:
                self._close_displays()

    def _update_redactor(self) -> None:
        """Redact the current secrets and ``TraceExt.redact`` patterns from spans, status and log."""
        headers = dict(self.settings.headers)
        urls = [self.settings.endpoint or ""]
        if self._destination is not None:
            headers.update(self._destination.headers)
            urls.append(self._destination.url)
        redactor = Redactor(self.settings.redact, secrets_of(headers, urls))
        self.processor.set_redactor(redactor)
        self.status.redactor = redactor
        LOG_FILTER.redactor = redactor

    def _switch_store(self, change) -> None:
        try:
            store = open_store(change["new"])
        except UsageError:
            # Put the old path back (quietly: the observer must not run again).
            with self.settings.hold_trait_notifications():
                self.settings.set_trait("store_path", change["old"])
            raise
        self._stop_delivery(time.monotonic() + min(self.settings.shutdown_timeout, 1.0))
        self.store.close()
        self.store, path = store, change["new"]
        self._store_watch.watch(store, self.settings)
        counts = self.store.counts()
        with self.status.lock, self.status.hold_trait_notifications():
            self.status.store_path = path
            self.status.local, self.status.pending = counts.local, counts.pending
        self.sender = Sender(self.store, self.status, self.save)
        self.sender.periodic = not self.settings.flush_after_cell
        self.saver = self._new_saver(self.store)
        self.processor.activate(self.settings.max_attribute_length, self.saver.wake, self.save)
        self._apply_destination()
        self.saver.start()
        self.sender.start()

    # -- what the magics and the public API use -------------------------------

    def status_display(self) -> StatusDisplay:
        in_kernel = getattr(self.shell, "kernel", None) is not None
        actions = Actions(
            flush=self.flush, retry_now=self.retry_now, show=lambda: self.view(Query(limit=SHOWN_BY_BUTTON))
        )
        view = StatusDisplay(self.status, use_widget=self.settings.widget and in_kernel, actions=actions)
        self._displays.append(view)
        return view

    def _show_status_again(self) -> None:
        """`%load_ext trace_ext` once it is loaded: the status, rather than IPython's "already loaded"."""
        if in_a_cell(self.shell):
            self.status_display().show()

    def _on_state(self, change) -> None:
        """Copy the sender's retry schedule into the status, so displays can say when and how often."""
        state = change["new"]
        with self.status.lock, self.status.hold_trait_notifications():
            if state in (DeliveryState.RETRYING, DeliveryState.PAUSED):
                # Set by the sender before it writes the state (Sender._schedule_retry).
                self.status.next_try = getattr(self.sender, "_retry_at", None) or None
                self.status.attempts = getattr(self.sender, "_attempt", 0)
            elif state == DeliveryState.IDLE:
                self.status.next_try, self.status.attempts = None, 0

    def _close_displays(self) -> None:
        for view in self._displays:
            view.close()
        self._displays.clear()

    def flush(self, timeout: float) -> DeliveryReport:
        """Deliver what is stored, wait up to ``timeout`` s; the report says where the store stands."""
        deadline = time.monotonic() + max(timeout, 0.0)
        sent, failed = self.status.sent, self.status.failed
        self.saver.sync(timeout)  # the sender sends from the store: import the journal first
        report = self.sender.flush(max(deadline - time.monotonic(), 0.0))
        with self.status.lock:
            # What was sent while the journal was imported counts too.
            return dataclasses.replace(
                report, sent=self.status.sent - sent, failed=self.status.failed - failed,
                delivered=self.status.sent, failed_total=self.status.failed,
                reason=self.status.last_error if (report.pending or self.status.failed) else "",
            )

    def retry_now(self) -> str:
        """The widget's "Retry now": failed spans queued again, and a try at once (up to 5 s)."""
        requeued = self.retry_failed() if self.status.failed else ""
        report = self.flush(5.0)
        return " ".join(filter(None, [requeued, str(report)]))

    def view(self, query: Query) -> TraceView:
        self.saver.sync(2.0)  # the view reads the store: import the journal first
        config = self.sender.config
        backend = backend_of(config.destination.url, config.destination.headers) if config else None
        return trace_view(self.store, query, backend)

    def export(self, path: str, since: float = 0.0, trace_id: str | None = None) -> int:
        """Write stored spans to ``path`` as OTLP JSON lines; how many."""
        self.saver.sync(2.0)  # written from the store: import the journal first
        return export_json_lines(self.store, path, since, trace_id)

    def send_local(self, since: float = 0.0, trace_id: str | None = None) -> str:
        """Queue spans kept locally (recorded with no destination) for the configured endpoint."""
        self.saver.sync(2.0)
        config = self.sender.config
        if config is None:
            raise UsageError(
                "%trace send: no endpoint is configured, so there is nowhere to send; set "
                "%config TraceExt.endpoint = '...' (or the environment) first."
            )
        count = self.store.queue_local(since, trace_id)
        if not count:
            return "No local spans match: nothing to send."
        with self.status.lock, self.status.hold_trait_notifications():
            self.status.local = max(self.status.local - count, 0)
            self.status.pending += count
        self.sender.wake()
        return (f"{count} local spans queued for {config.destination.host}: they are sent as live spans are "
                "(`%trace status` shows them go, `%trace flush` waits for them).")

    def retry_failed(self) -> str:
        count = self.store.requeue_failed()
        if count:
            with self.status.lock, self.status.hold_trait_notifications():
                self.status.pending += count
                # They are no longer failed: don't count them twice once they're sent.
                self.status.failed = max(self.status.failed - count, 0)
            self.sender.wake()
        return f"{count} failed spans queued again."


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


@contextmanager
def _interrupts_held():
    """SIGINT (the kernel's interrupt) is held off while this runs on the main thread, then dropped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    try:
        previous = signal.getsignal(signal.SIGINT)
        if previous is None:
            raise ValueError("not installed from Python")
        signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    except (ValueError, OSError, TypeError):
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held:
            log.info("trace_ext held back an interrupt that came as the cell ended, until its spans were saved")


def _after_fork_in_child() -> None:
    for extension in _ACTIVE.values():
        try:
            extension.leave_to_parent()
        except Exception:  # the child must go on, whatever happens here
            log.exception("trace_ext could not step aside in a forked child")
    _ACTIVE.clear()  # trace_ext is not loaded in the child: trace_ext.flush() says so


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def active(shell=None) -> Extension | None:
    if shell is None:
        return next(iter(_ACTIVE.values()), None)
    return _ACTIVE.get(id(shell))


def load(shell) -> None:
    current = _ACTIVE.pop(id(shell), None)
    if current is not None:
        current.unload(reloading=True)
    extension = Extension(shell)
    extension.load()
    _ACTIVE[id(shell)] = extension


def unload(shell) -> None:
    extension = _ACTIVE.pop(id(shell), None)
    if extension is not None:
        extension.unload(reloading=_reloading())


def _reloading() -> bool:
    """Whether IPython's ``%reload_ext`` is unloading us (it loads us again right after)."""
    frame = sys._getframe(1)
    for _ in range(8):
        frame = frame.f_back
        if frame is None:
            return False
        if frame.f_code.co_name == "reload_extension":
            return True
    return False
