"""Other SDKs: trace_ext beside the tracing SDKs a notebook already uses.

- :mod:`.sdks`: :class:`~.sdks.Sdks`, what the extension calls after each cell.
- :mod:`.peers`: other span processors and their exporters; handing over those
  that send where trace_ext sends, and following one when nothing is configured.
- :mod:`.flushes`: other SDKs' own flushes, each on a thread of its own.
- :mod:`.langfuse`: everything trace_ext knows about Langfuse (its variables,
  endpoint, keys, client). Imports nothing of trace_ext, so any package may use it.

May import: :mod:`.._recording`, :mod:`.._delivery.destination`,
:mod:`.._delivery.status`, :mod:`.._capture.threads`, :mod:`.._log`.
"""
