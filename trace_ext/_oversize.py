"""A single span the server refuses as too large (HTTP 413): cut its attribute values until it fits.

Halving a batch isolates one span; if the server still answers 413 for that
span alone, the span itself is over the server's request limit. Rather than
losing it, the span is re-encoded with its longest string and bytes values
cut (with the same visible marker ``truncate()`` writes), the limit halving on
each try down to a floor, and sent again. Only a span that is too large even
then is failed.
"""

from __future__ import annotations

from typing import Callable, Iterable

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from ._capture import truncate
from ._export import Failed, Outcome, TooLarge
from ._otlp import decode_span
from ._store import Claimed

__all__ = ["FLOOR", "MAX_TRIES", "deliver_shrunk", "longest_value", "shrink_limits", "shrink_span"]

FLOOR = 1024  # characters (bytes for binary values): never cut a value shorter than this
MAX_TRIES = 8  # requests spent on one oversized span, at most

# post(span, note) sends one span and records Sent/Failed itself; it returns
# None when done, a Retry, or a TooLarge when the server refused it again.
Post = Callable[[Claimed, str], "Outcome | None"]


def _values(attributes: Iterable[KeyValue]) -> Iterable[AnyValue]:
    """Every value under these attributes, nested arrays and maps included."""
    stack = [kv.value for kv in attributes]
    while stack:
        value = stack.pop()
        yield value
        kind = value.WhichOneof("value")
        if kind == "array_value":
            stack.extend(value.array_value.values)
        elif kind == "kvlist_value":
            stack.extend(kv.value for kv in value.kvlist_value.values)


def _all_values(span) -> Iterable[AnyValue]:
    yield from _values(span.attributes)
    for event in span.events:
        yield from _values(event.attributes)
    for link in span.links:
        yield from _values(link.attributes)


def _length(value: AnyValue) -> int:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return len(value.string_value)
    if kind == "bytes_value":
        return len(value.bytes_value)
    return 0


def longest_value(payload: bytes) -> int:
    """Length of the span's longest string or bytes attribute value (events and links included)."""
    return max((_length(v) for v in _all_values(decode_span(payload))), default=0)


def shrink_span(payload: bytes, limit: int) -> tuple[bytes, int]:
    """The span re-encoded with every string/bytes value cut to ``limit``, and how many were cut."""
    span = decode_span(payload)
    cut = 0
    for value in _all_values(span):
        kind = value.WhichOneof("value")
        if kind == "string_value" and len(value.string_value) > limit:
            value.string_value = truncate(value.string_value, limit)
            cut += 1
        elif kind == "bytes_value" and len(value.bytes_value) > limit:
            value.bytes_value = value.bytes_value[:limit]  # bytes have no room for a marker
            cut += 1
    return span.SerializeToString(), cut


def shrink_limits(longest: int, floor: int = FLOOR, tries: int = MAX_TRIES) -> list[int]:
    """Limits to try, halving from half the longest value; the last try is always the floor."""
    if longest <= floor:
        return []  # nothing long enough to cut: shrinking can't help
    limits, limit = [], longest // 2
    while limit > floor and len(limits) < tries - 1:
        limits.append(limit)
        limit //= 2
    return limits + [floor]


def deliver_shrunk(post: Post, span: Claimed, refused: TooLarge) -> Outcome | None:
    """Send ``span`` cut smaller and smaller until the server takes it.

    Returns None once the span is recorded (sent, or failed by ``post``), a
    Retry to keep it for later, or Failed when even the smallest cut is too large.
    """
    limits = shrink_limits(longest_value(span.payload))
    for limit in limits:
        payload, cut = shrink_span(span.payload, limit)
        note = (
            f"truncated to fit: {refused.host} refused the span as too large (HTTP 413), "
            f"so {cut} attribute value(s) were cut to {limit} characters"
        )
        outcome = post(span._replace(payload=payload), note)
        if not isinstance(outcome, TooLarge):
            return outcome
    said = f": {refused.message}" if refused.message else ""
    why = f"even with its attribute values cut to {FLOOR} characters" if limits else (
        f"and it has no attribute value longer than {FLOOR} characters to cut"
    )
    return Failed(
        f"{refused.host} refused a span as too large (HTTP 413){said}, {why}; it is kept "
        "in the store, and `%trace retry` sends it again."
    )

