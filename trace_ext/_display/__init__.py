"""Display: what the user sees and types.

- :mod:`.widget`: the status display: the live widget and the saved copy that stays true.
- :mod:`.states`: the status in words (one state, as a text line or themed HTML).
- :mod:`.view`: the trace view (``%trace show``): :mod:`.traces` reads and decodes,
  :mod:`.html_view` and :mod:`.text_view` render, :mod:`.links` points at the backend.
- :mod:`.magics`: ``%%trace``/``%trace`` and ``%config TraceExt.*`` errors.

May import: :mod:`.._delivery.status`, :mod:`.._store`, :mod:`.._otlp`,
:mod:`.._capture.cells` (the ``%%trace`` grammar). Nothing imports this package
but the extension and the command line.
"""
