"""trace_ext's log: the kernel's own stderr (the server log), never the user's cell, never a secret."""

from __future__ import annotations

import logging
import sys

from ._redact import RedactingFilter

__all__ = ["LOG_FILTER", "log", "log_to_process_stderr"]

log = logging.getLogger("trace_ext")
LOG_FILTER = RedactingFilter()  # the extension gives it the current secrets


def log_to_process_stderr() -> None:
    """Send trace_ext's warnings to the process's stderr, even when the user configured the root logger."""
    if not any(getattr(h, "_trace_ext", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.__stderr__)
        handler.setFormatter(logging.Formatter("[trace_ext] %(levelname)s %(message)s"))
        handler._trace_ext = True  # type: ignore[attr-defined]
        log.addHandler(handler)
        log.addFilter(LOG_FILTER)
        log.setLevel(logging.INFO)
        log.propagate = False
