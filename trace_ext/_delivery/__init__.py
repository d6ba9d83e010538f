"""Delivery: from the store to an OTLP/HTTP endpoint, and what the user is told about it.

- :mod:`.destination`: where spans go (settings, then the environment) and the
  sender's configuration.
- :mod:`.request`: one export request: the OTLP body, the POST, the outcome.
- :mod:`.policy`: what an outcome means and what to do next (retry, back off,
  split, shrink, fail).
- :mod:`.sender`: the sender thread that acts on it.
- :mod:`.status`: :class:`~.status.DeliveryState`, the live counters
  (:class:`~.status.DeliveryStatus`) and :class:`~.status.DeliveryReport`.
- :mod:`.local`: spans kept locally sent from a terminal (``python -m trace_ext send``).

May import: :mod:`.._store`, :mod:`.._otlp`, :mod:`.._capture.values`, :mod:`.._capture.threads`,
:mod:`.._sdks.langfuse`, :mod:`..config`, :mod:`.._version`.
"""
