"""trace_ext's log: the kernel's own stderr (the server log), never the user's cell, never a secret.

Every logger under ``trace_ext`` (a module's ``logging.getLogger(__name__)``
included) propagates to the one handler here. Redaction is that handler's
filter, not the logger's: a logger's filters only see records logged on that
very logger, never those its children pass up.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

from ._redact import RedactingFilter

__all__ = ["LOG_FILTER", "log", "log_to_process_stderr"]

log = logging.getLogger("trace_ext")
LOG_FILTER = RedactingFilter()  # the extension gives it the current secrets


def log_to_process_stderr() -> None:
    """Send trace_ext's warnings to the process's stderr, even when the user configured the root logger."""
    if not any(getattr(h, "_trace_ext", False) for h in log.handlers):
        handler = logging.StreamHandler(_kernel_stderr())
        handler.setFormatter(logging.Formatter("[trace_ext] %(levelname)s %(message)s"))
        handler._trace_ext = True  # type: ignore[attr-defined]
        handler.addFilter(LOG_FILTER)
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def _kernel_stderr() -> TextIO:
    """The process's own stderr as it was before a kernel captured it.

    ipykernel (7 and 6 with fd capture) points fd 2 at a pipe whose every byte
    lands in the running cell, so ``sys.__stderr__`` (fd 2) is the user's cell,
    not the terminal. Its stream keeps a copy of the original fd 2, which goes to
    the server log: write there, through a duplicate, because ipykernel closes
    its copy when the stream closes at shutdown.
    """
    original = getattr(sys.stderr, "_original_stdstream_copy", None)
    if isinstance(original, int):
        try:
            return os.fdopen(os.dup(original), "w", buffering=1, encoding="utf-8", errors="replace")
        except OSError:
            pass
    return sys.__stderr__
