"""Capture: what a span records, from a ``%%trace`` cell or trace_ext's own API.

- :mod:`.values`: any value as bounded text (the one capture path, one limit).
- :mod:`.attributes`: the attribute names Langfuse, OpenInference and ``gen_ai`` read.
- :mod:`.cells`: the ``%%trace`` line's grammar and the cell span's lifecycle.
- :mod:`.observe`: ``trace_ext.observe`` and ``trace_ext.span``.
- :mod:`.threads`: the cell's context carried into threads it starts, and the
  untraced context of trace_ext's own network threads.

May import: :mod:`.._recording` (the tracer trace_ext's own spans use). Nothing
here touches the store, the network or the display.
"""
