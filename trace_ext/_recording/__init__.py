"""Recording: how ended spans reach trace_ext, whoever made them.

- :mod:`.processor`: the span processor on the tracer provider; it encodes an
  ended span into an in-memory buffer, which the extension saves to the store.
- :mod:`.providers`: which tracer providers carry that processor, trace_ext's
  own placeholder provider, and the tracer of ``trace_ext.observe``/``span``.

May import: :mod:`.._otlp`, :mod:`.._redact`, :mod:`.._version`.
"""
