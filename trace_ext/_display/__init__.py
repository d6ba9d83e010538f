"""Display: what the user sees and types.

- :mod:`.widget`: the live status display, with text and HTML fallbacks.
- :mod:`.view`: stored traces as a readable tree (``%trace show``).
- :mod:`.magics`: ``%%trace``/``%trace`` and ``%config TraceExt.*`` errors.

May import: :mod:`.._delivery.status`, :mod:`.._store`, :mod:`.._otlp`,
:mod:`.._capture.cells` (the ``%%trace`` grammar). Nothing imports this package
but the extension and the command line.
"""
