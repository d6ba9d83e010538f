"""trace_ext: trustworthy tracing in Jupyter notebooks.

``%load_ext trace_ext`` saves every cell's spans to a local store when the cell
ends, delivers them over OTLP/HTTP in the background, shows delivery live, and
adds ``%%trace`` to record a cell as a span. ``trace_ext.observe`` (a
decorator) and ``trace_ext.span`` (a ``with`` block) record your own functions
and blocks as spans, with no other SDK. Importing this package does nothing
else: no thread, file or socket exists until the extension is loaded.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._capture.observe import observe, span
    from ._delivery.status import DeliveryReport

from ._version import __version__

__all__ = ["__version__", "flush", "load_ipython_extension", "observe", "span", "unload_ipython_extension"]
_LAZY = ("observe", "span")  # imported on first use: they need OpenTelemetry, the package doesn't

# A library's loggers stay quiet unless the application configures logging.
logging.getLogger("trace_ext").addHandler(logging.NullHandler())


def load_ipython_extension(ipython) -> None:
    """``%load_ext trace_ext``: hooks, magics, sender thread and status widget."""
    from ._extension import load

    load(ipython)


def unload_ipython_extension(ipython) -> None:
    """``%unload_ext trace_ext``: flush (bounded), stop the sender, remove hooks and magics."""
    from ._extension import unload

    unload(ipython)


def flush(timeout: float = 10.0) -> DeliveryReport:
    """Wait up to ``timeout`` seconds for stored spans to be delivered; say what happened."""
    from ._extension import active

    extension = active()
    if extension is None:
        raise RuntimeError("trace_ext is not loaded: run %load_ext trace_ext first.")
    return extension.flush(timeout)


def __getattr__(name: str):
    if name in _LAZY:
        from ._capture import observe as observe_module

        return getattr(observe_module, name)
    raise AttributeError(f"module 'trace_ext' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
