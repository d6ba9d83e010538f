"""The store: every span from the moment its cell ends until it is sent (and for a while after).

- :mod:`.store`: :class:`~.store.SpanStore`, the one class that owns the SQLite
  file (and its in-memory fallback), and :func:`~.store.open_store`.
- :mod:`.schema`: the tables, :class:`~.schema.SpanState`, and small SQL helpers.
- :mod:`.leases`: which kernel holds a claimed batch, and taking over a dead one's.
- :mod:`.files`: creating the file privately, telling a broken file from a busy one.
- :mod:`.export`: stored spans written to a file as OTLP JSON lines.
- :mod:`.journal`: a kernel's append-only journal file, where a save is durable at once.
- :mod:`.saver`: the saver thread: the processor's buffer to the journal, the journal into SQLite.

May import: :mod:`.._otlp` (the record it saves). Knows nothing of HTTP or the
display; its one thread is the saver's (the buffer it reads is handed over).
"""
