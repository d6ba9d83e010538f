"""Turning arbitrary cell values into bounded text, without ever raising."""

from __future__ import annotations

__all__ = ["safe_repr", "truncate"]


def truncate(text: str, limit: int) -> str:
    """Cut ``text`` to ``limit`` characters, ending with a marker saying how much went."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [truncated {len(text) - limit} of {len(text)} characters]"


def safe_repr(value: object, limit: int) -> str:
    """``repr(value)`` capped at ``limit`` characters; a failing ``__repr__`` is described."""
    try:
        if isinstance(value, str) and len(value) > limit:
            # Slice before repr: a 100 MB string must not be copied (and escaped) whole.
            return truncate(repr(value[: limit + 1]), limit) + f" (a str of {len(value)} characters)"
        text = repr(value)
    except Exception as exc:  # the user's __repr__ is allowed to be broken
        return f"<{type(value).__name__} object: repr() failed with {type(exc).__name__}: {exc}>"
    if not isinstance(text, str):
        return f"<{type(value).__name__} object: repr() returned {type(text).__name__}>"
    return truncate(text, limit)
