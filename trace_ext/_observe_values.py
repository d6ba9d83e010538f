"""Arguments, return values and yielded items as bounded text, without ever raising or hanging.

A value that is plain JSON (dicts with scalar keys, lists, tuples, strings,
numbers, booleans, None) is written as compact JSON, so Langfuse and Phoenix
can show it as a tree; anything else inside it becomes its time-limited
``repr`` (see ``_capture.safe_repr``). Only the exact built-in types are
walked: a subclass could run user code (``__iter__``, ``items``), and user
code is allowed to be broken or slow.

Work is bounded as well as the text: strings are sliced before they are
encoded, a walk stops after ``limit`` values (each costs at least one
character, so the text is cut there anyway), and all the ``repr`` calls of one
value share one time budget.
"""

from __future__ import annotations

import inspect
import json
import math
import time
from typing import Any

from ._capture import REPR_TIME_LIMIT, safe_repr, truncate

__all__ = ["JSON", "MAX_VALUE_LENGTH", "TEXT", "Collector", "bind_arguments", "capture"]

MAX_VALUE_LENGTH = 10_000  # characters kept of one input or output
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


def capture(value: Any, limit: int = MAX_VALUE_LENGTH) -> tuple[str, str]:
    """``(text, mime type)`` for ``value``: compact JSON if it is JSON data, else a safe repr.

    A str is kept as it is (``text/plain``). Never raises; the text is at most
    ``limit`` characters plus a marker saying it was cut.
    """
    try:
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
