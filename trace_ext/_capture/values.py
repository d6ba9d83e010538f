"""Values as bounded text, without ever raising or hanging: the one capture path
for a cell's value and an observed function's arguments, results and yields.

- The best text for a value the notebook displayed is the one the user saw:
  IPython's own ``text/plain``, which honours ``_repr_pretty_`` and is already
  computed, so recording it costs nothing and calls no user code a second time.
- Otherwise a value that is plain JSON (dicts with scalar keys, lists, tuples,
  strings, numbers, booleans, None) is written as compact JSON, so Langfuse and
  Phoenix can show it as a tree; anything else, or inside it, becomes its
  ``repr``, called under a time limit (on the main thread) so a ``__repr__``
  that never returns can't freeze the cell. Only the exact built-in types are
  walked: a subclass could run user code (``__iter__``, ``items``).
- NumPy arrays and pandas objects get a header line with their shape, dtype or
  columns.
- One limit for all of them: ``MAX_VALUE_LENGTH`` characters, the default of
  ``TraceExt.max_attribute_length`` (which the encoder applies on top). Work is
  bounded as well as the text: strings are sliced before they are encoded, a
  walk stops after ``limit`` values, and all the ``repr`` calls of one value
  share one time budget.

Imports nothing of trace_ext.
"""

from __future__ import annotations

import inspect
import json
import math
import signal
import sys
import threading
import time
from typing import Any, Callable

__all__ = [
    "JSON", "MAX_VALUE_LENGTH", "REPR_TIME_LIMIT", "TEXT", "Collector", "bind_arguments", "capture",
    "describe_exception", "safe_repr", "shown_text", "truncate",
]

REPR_TIME_LIMIT = 1.0  # seconds the repr() calls of one value may take in all
# Characters kept of one value: the default of TraceExt.max_attribute_length.
MAX_VALUE_LENGTH = 32_768
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


JSON, TEXT = "application/json", "text/plain"  # OpenInference's mime types (openinference.semconv.trace.OpenInferenceMimeTypeValues)
_MAX_DEPTH = 20  # deeper nesting is written as a placeholder, not walked
_SCALARS = (bool, int, float, type(None))


class _Budget:
    """What one captured value may still cost: values walked and time spent in ``repr``."""

    def __init__(self, limit: int) -> None:
        self.values = limit
        self.chars = limit  # string characters copied; beyond limit the text is cut anyway
        self.deadline = time.monotonic() + REPR_TIME_LIMIT
        self.limit = limit

    def spent(self) -> bool:
        return self.values <= 0 or self.chars < 0


def _described(value: Any, budget: _Budget) -> str:
    left = budget.deadline - time.monotonic()
    if left <= 0:
        # Earlier reprs used up the time: say what it is without running its code.
        try:
            return f"<{type(value).__name__} object>"
        except Exception:
            return "<object>"
    # Rounded, so a placeholder reads "took longer than 1 s", not "0.999998 s".
    text = safe_repr(value, max(budget.chars, 0) + 1, time_limit=max(round(left, 1), 0.1))
    budget.chars -= len(text)
    return text


def _tree(value: Any, budget: _Budget, depth: int) -> Any:
    """A copy of ``value`` made only of JSON types, cut to what the text can hold."""
    budget.values -= 1
    kind = type(value)
    if kind in _SCALARS:
        if kind is float and not math.isfinite(value):
            return str(value)  # JSON has no NaN or Infinity
        return value
    if kind is str:
        piece = value[: max(budget.chars, 0) + 1]  # sliced: the text is cut at limit anyway
        budget.chars -= len(piece)
        return piece
    if kind in (list, tuple, dict) and depth >= _MAX_DEPTH:
        return f"<{kind.__name__} nested deeper than {_MAX_DEPTH} levels>"
    if kind in (list, tuple):
        items = []
        for item in value:
            if budget.spent():
                items.append("…")  # the text is longer than the limit: it gets the marker
                break
            items.append(_tree(item, budget, depth + 1))
        return items
    if kind is dict:
        mapping = {}
        for key, item in value.items():
            if budget.spent():
                mapping["…"] = "…"
                break
            if type(key) is not str:
                key = json.dumps(key) if type(key) in _SCALARS else _described(key, budget)
            mapping[key] = _tree(item, budget, depth + 1)
        return mapping
    return _described(value, budget)


def _dump(tree: Any, limit: int) -> str:
    """Compact JSON of ``tree``, encoded only as far as ``limit`` characters (plus a marker)."""
    encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)
    parts, size = [], 0
    # iterencode yields piece by piece, so a huge value is not encoded whole.
    for part in encoder.iterencode(tree):
        parts.append(part)
        size += len(part)
        if size > limit:
            return "".join(parts)[:limit] + f"… [truncated at {limit} characters]"
    return "".join(parts)


def capture(
    value: Any, limit: int = MAX_VALUE_LENGTH, *, displayed: bool = False, shown: str | None = None
) -> tuple[str, str]:
    """``(text, mime type)`` for ``value``, at most ``limit`` characters plus a marker
    saying it was cut. Never raises.

    A value the notebook ``displayed`` (a cell's value) is recorded as the user saw
    it: ``shown``, IPython's ``text/plain``, else a safe repr (what IPython falls
    back to). Any other value (arguments, results) is compact JSON if it is JSON
    data, else a safe repr; a str is kept as it is. NumPy arrays and pandas
    objects get a header with their shape, dtype or columns either way.
    """
    try:
        header = _summary(value)
        if displayed or header is not None:
            text = truncate(shown, limit) if isinstance(shown, str) else safe_repr(value, limit)
            return (truncate(f"{header}\n{text}", limit) if header else text), TEXT
        if type(value) is str:
            return truncate(value, limit), TEXT
        if type(value) not in (*_SCALARS, list, tuple, dict):
            return safe_repr(value, limit), TEXT
        return _dump(_tree(value, _Budget(limit), 0), limit), JSON
    except BaseException as exc:  # capture must never break the user's call
        if isinstance(exc, KeyboardInterrupt):
            raise  # the user asked to stop; that is theirs, not a capture failure
        try:
            return f"<{type(value).__name__} value that could not be captured: {type(exc).__name__}>", TEXT
        except Exception:
            return "<value that could not be captured>", TEXT


class Collector:
    """The items a generator yields, kept as a bounded JSON-ready list while it runs.

    Items are converted as they come (not kept alive until the end); once the
    output's budget is spent, later items are only counted.
    """

    def __init__(self, limit: int = MAX_VALUE_LENGTH) -> None:
        self._budget = _Budget(limit)
        self._limit = limit
        self._items: list[Any] = []
        self._all_text = True
        self._cut = False
        self.count = 0

    def add(self, item: Any) -> None:
        self.count += 1
        if type(item) is not str:
            self._all_text = False
        if self._budget.spent():
            self._cut = True
            return
        try:
            self._budget.deadline = time.monotonic() + REPR_TIME_LIMIT  # each item gets its own time
            self._items.append(_tree(item, self._budget, 1))
        except Exception:
            self._items.append("<item that could not be captured>")

    def output(self) -> tuple[str, str]:
        """Streamed text is shown joined (as a chat reply is); other items as a JSON list."""
        try:
            if self._all_text and self._items:
                text = "".join(self._items)
                if self._cut or len(text) > self._limit:
                    text = text[: self._limit] + f"… [truncated: {self.count} items, {len(self._items)} kept]"
                return text, TEXT
            return _dump(self._items + (["…"] if self._cut else []), self._limit), JSON
        except Exception:
            return f"<{self.count} items that could not be captured>", TEXT


def bind_arguments(signature: inspect.Signature | None, args: tuple, kwargs: dict) -> Any:
    """The call's arguments by parameter name, without a method's ``self`` or ``cls``."""
    if signature is not None:
        try:
            bound = signature.bind_partial(*args, **kwargs)
        except TypeError:
            bound = None  # the call itself will raise it; record what was passed
        if bound is not None:
            arguments = dict(bound.arguments)
            first = next(iter(signature.parameters), None)
            if first in ("self", "cls"):
                arguments.pop(first, None)
            return arguments
    return {"args": list(args), "kwargs": dict(kwargs)}
