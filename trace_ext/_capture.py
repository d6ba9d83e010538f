"""Turning arbitrary cell values into bounded text, without ever raising or hanging.

The best text for a cell's value is the one the user saw: IPython's own
``text/plain``, which honours ``_repr_pretty_`` and is already computed, so
recording it costs nothing and calls no user code a second time. Without it,
``repr`` is called under a time limit (on the main thread) so a ``__repr__``
that never returns can't freeze the cell.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Callable

__all__ = ["REPR_TIME_LIMIT", "describe_exception", "describe_value", "safe_repr", "shown_text", "truncate"]

REPR_TIME_LIMIT = 1.0  # seconds one repr() of a cell's value may take
_MAX_COLUMNS_LISTED = 50


def truncate(text: str, limit: int) -> str:
    """Cut ``text`` to ``limit`` characters, ending with a marker saying how much went."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [truncated {len(text) - limit} of {len(text)} characters]"


class _TimeUp(BaseException):
    """Raised in the main thread by our SIGALRM handler (BaseException: ``except Exception`` can't eat it)."""


def _can_time_limit() -> bool:
    # getsignal() is None when a handler was set from C: we couldn't put it back.
    return (
        hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGALRM) is not None
    )


def call_with_time_limit(fn: Callable[[], object], seconds: float) -> tuple[bool, object]:
    """``(True, fn())``, or ``(False, None)`` if ``fn`` ran past ``seconds``.

    Uses a one-shot ``ITIMER_REAL``/``SIGALRM`` on the main thread; any handler
    and timer already set are put back (the timer with what remained of it, so
    one due meanwhile fires right after). Elsewhere (another thread, no
    SIGALRM, a SIGALRM handler set from C) ``fn`` runs without a limit. Code
    stuck inside one C call is only interrupted when it returns to Python.
    """
    if not _can_time_limit():
        return True, fn()

    def on_alarm(signum, frame):
        raise _TimeUp()

    started = time.monotonic()
    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        try:
            return True, fn()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)  # the timer fires at most once: it's one-shot
    except _TimeUp:
        return False, None
    finally:
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay > 0:
            remaining = max(old_delay - (time.monotonic() - started), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, remaining, old_interval)


def describe_exception(exc: BaseException) -> str:
    """``Type: message``; never raises, even when the exception's ``__str__`` does."""
    try:
        message = str(exc)
    except Exception:
        message = "<str() failed>"
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _type_name(value: object) -> str:
    try:
        return type(value).__name__
    except Exception:
        return "object"


def safe_repr(value: object, limit: int, time_limit: float = REPR_TIME_LIMIT) -> str:
    """``repr(value)`` capped at ``limit`` characters and ``time_limit`` seconds.

    A failing ``__repr__`` (an exception, a non-str result, no end in sight) is
    described instead. Huge str and bytes values are sliced before repr, so
    they are never copied whole.
    """
    name = _type_name(value)
    if isinstance(value, (str, bytes, bytearray)) and len(value) > limit:
        # Slice before repr: a 100 MB string must not be copied (and escaped) whole.
        kind = "str" if isinstance(value, str) else type(value).__name__
        unit = "characters" if isinstance(value, str) else "bytes"
        head = repr(value[: limit + 1])
        return truncate(head, limit) + f" (a {kind} of {len(value)} {unit})"
    try:
        finished, text = call_with_time_limit(lambda: repr(value), time_limit)
    except RecursionError:
        return f"<{name} object: repr() failed with RecursionError: nested too deeply>"
    except Exception as exc:  # the user's __repr__ is allowed to be broken
        try:
            message = str(exc)
        except Exception:
            message = "<str() failed>"
        return truncate(f"<{name} object: repr() failed with {type(exc).__name__}: {message}>", limit)
    if not finished:
        return f"<{name} object: repr() took longer than {time_limit:g} s>"
    if not isinstance(text, str):
        return f"<{name} object: repr() returned {type(text).__name__}>"
    return truncate(text, limit)


def _instance_of(value: object, module: str, name: str) -> bool:
    """``isinstance(value, module.name)`` without importing ``module`` (only if already loaded)."""
    mod = sys.modules.get(module)
    cls = getattr(mod, name, None) if mod is not None else None
    try:
        return isinstance(cls, type) and isinstance(value, cls)
    except Exception:
        return False


def _summary(value: object) -> str | None:
    """A one-line header for arrays and data frames: what they are before how they look."""
    try:
        if _instance_of(value, "numpy", "ndarray"):
            return f"{type(value).__name__} shape={tuple(value.shape)} dtype={value.dtype}"
        if _instance_of(value, "pandas", "DataFrame"):
            columns = [str(c) for c in list(value.columns[: _MAX_COLUMNS_LISTED + 1])]
            more = len(value.columns) - _MAX_COLUMNS_LISTED
            listed = ", ".join(columns[:_MAX_COLUMNS_LISTED]) + (f", … ({more} more)" if more > 0 else "")
            return f"{type(value).__name__} shape={tuple(value.shape)} columns=[{listed}]"
        if _instance_of(value, "pandas", "Series"):
            return f"{type(value).__name__} shape={tuple(value.shape)} dtype={value.dtype} name={value.name!s}"
    except Exception:
        return None
    return None


def describe_value(value: object, limit: int, shown: str | None = None) -> str:
    """Bounded text for a cell's value: ``shown`` (what IPython displayed) or a safe repr.

    NumPy arrays and pandas objects get a header with their shape, dtype or
    columns, followed by their own (already summarised) text.
    """
    text = truncate(shown, limit) if isinstance(shown, str) else safe_repr(value, limit)
    header = _summary(value)
    if header is None:
        return text
    return truncate(f"{header}\n{text}", limit)


def shown_text(shell, result) -> str | None:
    """The ``text/plain`` IPython displayed for ``result.result``, if it is known for sure.

    IPython's display hook logs it under the cell's execution count; it is
    trusted only when the output cache holds this very object under that count.
    """
    try:
        count = result.execution_count
        if shell is None or count is None or not getattr(shell.displayhook, "do_full_cache", False):
            return None
        history = shell.history_manager
        if history.output_hist.get(count) is not result.result:
            return None
        text = history.output_hist_reprs.get(count)
        return text if isinstance(text, str) else None
    except Exception:
        return None
