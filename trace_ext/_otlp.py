"""OpenTelemetry spans to OTLP (protobuf, or JSON) and OTLP responses back.

A span is taken as plain data when it is saved (:func:`snapshot`) and encoded
once, off the cell's thread, into the bytes of an OTLP ``Span`` message
(:func:`encode_snapshot`); the store keeps those bytes and the sender concatenates them into a
request. Protobuf allows a message to be built by concatenating its fields'
encodings, so a batch costs no re-encoding.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import ReadableSpan, _Span
from opentelemetry.sdk.util import BoundedList

from ._capture.values import truncate

__all__ = [
    "OriginCache", "Snapshot", "SpanRecord", "attributes_to_dict", "build_request", "clean_text", "decode_span",
    "encode_snapshot", "encode_span", "parse_response", "snapshot", "to_json",
]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class SpanRecord(NamedTuple):
    """An ended span, encoded, with the columns the store indexes."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    start_ns: int
    end_ns: int
    status: int
    origin: bytes  # digest of (resource, scope): spans from one tracer share it
    resource: bytes
    scope: bytes
    payload: bytes


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_MAX_DEPTH = 32  # nesting of arrays and key-value lists kept as such; deeper becomes text


def clean_text(text: str) -> str:
    """``text`` as protobuf (and SQLite) can encode it: lone surrogates become U+FFFD.

    A Python str may hold surrogates (``'\\udcff'``, ``os.fsdecode`` of a bad
    file name) that UTF-8 can't encode; the span keeps everything else.
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _LONE_SURROGATE.sub("\ufffd", text)
    return text


def _described(value: Any, limit: int) -> str:
    try:
        text = str(value)
    except Exception as exc:
        text = f"<{type(value).__name__} object: str() failed with {type(exc).__name__}>"
    if not isinstance(text, str):
        text = f"<{type(value).__name__} object>"
    return clean_text(truncate(text, limit))


def _any_value(value: Any, limit: int) -> AnyValue:
    """An OTLP ``AnyValue``; never raises. Cut as :func:`_plain` cuts (strings at
    ``limit`` characters with a marker, bytes at ``limit`` bytes, integers beyond
    int64 as their decimal text, nesting deeper than ``_MAX_DEPTH`` or a cycle as
    text), and cleaned of lone surrogates."""
    return _encoded(_plain(value, limit))


def _encoded(plain: Any) -> AnyValue:
    """The ``AnyValue`` of plain data (what :func:`_plain` makes: it has cut it already)."""
    kind = type(plain)
    if kind is str:
        return AnyValue(string_value=clean_text(plain))
    if kind is bool:
        return AnyValue(bool_value=plain)
    if kind is int:
        if _INT64_MIN <= plain <= _INT64_MAX:
            return AnyValue(int_value=plain)
        return AnyValue(string_value=str(plain))  # from a journal written before _plain cut these
    if kind is float:
        return AnyValue(double_value=plain)
    if kind is bytes:
        return AnyValue(bytes_value=plain)
    if kind is dict:
        return AnyValue(kvlist_value=KeyValueList(values=_plain_key_values(plain)))
    if kind is list:
        return AnyValue(array_value=ArrayValue(values=[_encoded(v) for v in plain]))
    return AnyValue()  # None: OTLP's empty value (the SDK lets None through, e.g. in sequences)


def _plain_key_values(attributes: dict | None) -> list[KeyValue]:
    """``KeyValue``s of plain attributes (their keys are text already)."""
    if not attributes:
        return []
    return [KeyValue(key=clean_text(k), value=_encoded(v)) for k, v in attributes.items()]


def _key_values(attributes: Mapping[str, Any] | None, limit: int) -> list[KeyValue]:
    return _plain_key_values(_plain_attributes(attributes, limit))


def _id_hex(value: int, width: int) -> str:
    return format(value, f"0{width}x")


class OriginCache:
    """Encoded (resource, scope) pairs, so a span's origin is encoded once per tracer."""

    def __init__(self, limit: int = 256) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[int, int], tuple[object, object, bytes, bytes, bytes]] = {}
        self._limit = limit
        self._last: tuple = (None, None, None, None)

    def get(self, resource, scope, attr_limit: int) -> tuple[bytes, bytes, bytes]:
        last = self._last  # one tracer makes most spans: no key to build, no lookup
        if last[0] is resource and last[1] is scope and last[2] == attr_limit:
            return last[3]
        found = self._get(resource, scope, attr_limit)
        self._last = (resource, scope, attr_limit, found)
        return found

    def _get(self, resource, scope, attr_limit: int) -> tuple[bytes, bytes, bytes]:
        key = (id(resource), id(scope))
        entry = self._entries.get(key)
        # The objects are kept in the entry, so an id is never reused while cached.
        if entry is not None and entry[0] is resource and entry[1] is scope:
            return entry[2], entry[3], entry[4]
        res = Resource(attributes=_key_values(getattr(resource, "attributes", None), attr_limit))
        scope_msg = InstrumentationScope()
        if scope is not None:
            scope_msg.name = clean_text(scope.name or "")
            scope_msg.version = clean_text(scope.version or "")
            scope_msg.attributes.extend(_key_values(getattr(scope, "attributes", None), attr_limit))
        res_bytes, scope_bytes = res.SerializeToString(), scope_msg.SerializeToString()
        digest = hashlib.sha1(res_bytes + b"\0" + scope_bytes).digest()
        with self._lock:
            if len(self._entries) >= self._limit:
                self._entries.clear()
            self._entries[key] = (resource, scope, digest, res_bytes, scope_bytes)
        return digest, res_bytes, scope_bytes


# A span as plain data (what ``marshal`` writes), taken when it is saved; encoded
# into OTLP later, off the cell's thread (see ``_store.journal``). Its fields:
# trace id, span id, parent span id (ints; None), parent is remote, trace flags,
# trace state (header text), name, kind (the SDK's number), start and end (ns),
# attributes, dropped attributes, events and links counts, events
# ``(name, ns, attributes, dropped attributes)``, links ``(trace id, span id,
# attributes, flags, dropped attributes)``, status
# code, status message, origin digest. Strings are already cut at the limit.
Snapshot = tuple


def _plain(value: Any, limit: int, depth: int = 0) -> Any:
    """``value`` as data ``marshal`` can write: str, int (within int64), float, bool,
    bytes, None, and lists and str-keyed dicts of them, with what is too long cut
    and what is none of these described as text. The one place these rules live."""
    kind = type(value)
    if kind is str:
        return value if len(value) <= limit else truncate(value, limit)
    if kind is int:
        return value if _INT64_MIN <= value <= _INT64_MAX else _described(value, limit)  # OTLP has no big ints
    if kind is bool or kind is float or value is None:
        return value
    if (kind is tuple or kind is list) and depth < _MAX_DEPTH:  # the SDK keeps sequences as tuples
        return [_plain(v, limit, depth + 1) for v in value]
    try:
        if isinstance(value, str):
            return truncate(str.__str__(value), limit)
        if isinstance(value, int):  # subclasses (an IntEnum) as the number they are
            return _plain(int(value), limit)
        if isinstance(value, float):
            return float(value)
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value[:limit])
        if isinstance(value, (Mapping, Sequence)) and depth >= _MAX_DEPTH:
            return f"<{kind.__name__} nested deeper than {_MAX_DEPTH} levels>"
        if isinstance(value, Mapping):
            return {(k if type(k) is str else _described(k, limit)): _plain(v, limit, depth + 1)
                    for k, v in value.items()}
        if isinstance(value, Sequence):
            return [_plain(v, limit, depth + 1) for v in value]
        return _described(value, limit)
    except Exception as exc:  # a value we can't read must not cost the span
        return f"<{kind.__name__} value that could not be encoded: {type(exc).__name__}>"


def _plain_attributes(attributes: Mapping[str, Any] | None, limit: int) -> dict | None:
    if not attributes:
        return None
    out = {}
    for key, value in attributes.items():
        kind = type(value)
        # Inline for the common case (a short string, a number: one type test); the rest by _plain.
        if not ((kind is str and len(value) <= limit) or kind is float or kind is bool
                or (kind is int and _INT64_MIN <= value <= _INT64_MAX)):
            value = _plain(value, limit)
        out[key if type(key) is str else _described(key, limit)] = value
    return out


def snapshot(span, limit: int, origins: OriginCache) -> tuple[Snapshot, bytes, bytes]:
    """An ended SDK ``ReadableSpan`` as plain data, and its resource and scope, encoded.

    This runs for every span before it is durable (in the post-cell hook, for
    the last ones of a cell), so it only copies: :func:`encode_snapshot` does the rest."""
    if type(span) in _SDK_SPANS:
        # The SDK's own fields, read from its __dict__: its properties copy (a tuple
        # of the events, a read-only view of the attributes) and each costs a call,
        # and this runs for every span (about half of the post-cell hook's time).
        fields = span.__dict__
        ctx, parent, status = fields["_context"], fields["_parent"], fields["_status"]
        name, kind = fields["_name"], fields["_kind"]
        start, end = fields["_start_time"], fields["_end_time"]
        attributes, events, links = fields["_attributes"], fields["_events"], fields["_links"]
        resource, scope = fields["_resource"], fields["_instrumentation_scope"]
        # And their plain containers inside: a dict's and a deque's len and items cost no call.
        dropped_attributes = dropped_events = dropped_links = 0
        if isinstance(attributes, BoundedAttributes):
            dropped_attributes, attributes = attributes.dropped, attributes._dict
        if isinstance(events, BoundedList):
            dropped_events, events = events.dropped, events._dq
        if isinstance(links, BoundedList):
            dropped_links, links = links.dropped, links._dq
    else:  # a redacted view, or another SDK's span: its public properties
        ctx, parent, status = span.context, span.parent, span.status
        name, kind, start, end = span.name, span.kind, span.start_time, span.end_time
        attributes, events, links = span.attributes, span.events, span.links
        resource, scope = span.resource, span.instrumentation_scope
        dropped_attributes, dropped_events, dropped_links = (
            span.dropped_attributes, span.dropped_events, span.dropped_links)
    digest, res_bytes, scope_bytes = origins.get(resource, scope, limit)
    if type(name) is not str or len(name) > limit:
        name = _plain(str(name or ""), limit)
    description = status.description
    trace_state = ctx.trace_state
    snap = (
        ctx.trace_id,
        ctx.span_id,
        None if parent is None else parent.span_id,
        parent is not None and parent.is_remote,
        int(ctx.trace_flags),
        trace_state.to_header() if trace_state else "",
        name,
        kind._value_,  # an enum member's own field: its ``.value`` goes through a descriptor
        start or 0,
        end or 0,
        _plain_attributes(attributes, limit),
        dropped_attributes,
        dropped_events,
        dropped_links,
        [(_plain(str(e.name or ""), limit), e.timestamp, _plain_attributes(e.attributes, limit),
          e.dropped_attributes) for e in events] if events else None,
        [(link.context.trace_id, link.context.span_id, _plain_attributes(link.attributes, limit),
          _flags(link.context), link.dropped_attributes) for link in links] if links else None,
        status.status_code._value_,
        _plain(str(description), limit) if description else "",
        digest,
    )
    return snap, res_bytes, scope_bytes
def _flags(context) -> int:
    """OTLP's flags of a span or link context: W3C trace flags, and whether it is remote (and known to be)."""
    return 0x100 | (0x200 if context.is_remote else 0) | int(context.trace_flags)


_SDK_SPANS = (ReadableSpan, _Span)  # what the SDK hands processors (a copy at end), what it makes


def encode_snapshot(snap: Snapshot, resource: bytes, scope: bytes) -> SpanRecord:
    """The OTLP ``Span`` of a :func:`snapshot`, with the columns the store indexes."""
    (trace_id, span_id, parent_id, parent_remote, flags, trace_state, name, kind, start, end,
     attributes, dropped_attributes, dropped_events, dropped_links, events, links,
     status_code, status_message, digest) = snap
    msg = Span(
        trace_id=trace_id.to_bytes(16, "big"),
        span_id=span_id.to_bytes(8, "big"),
        name=clean_text(name),
        kind=kind + 1,  # the SDK counts from INTERNAL=0, OTLP from UNSPECIFIED=0
        start_time_unix_nano=start,
        end_time_unix_nano=end,
        attributes=_plain_key_values(attributes),
        dropped_attributes_count=dropped_attributes,
        dropped_events_count=dropped_events,
        dropped_links_count=dropped_links,
        flags=0x100 | (0x200 if parent_remote else 0) | flags,
    )
    if trace_state:
        msg.trace_state = clean_text(trace_state)
    if parent_id is not None:
        msg.parent_span_id = parent_id.to_bytes(8, "big")
    # Events and links of journals from before their flags and dropped counts were kept have three fields.
    for event_name, at, event_attributes, *dropped in events or ():
        msg.events.add(name=clean_text(event_name), time_unix_nano=at,
                       attributes=_plain_key_values(event_attributes),
                       dropped_attributes_count=dropped[0] if dropped else 0)
    for link_trace, link_span, link_attributes, *more in links or ():
        msg.links.add(trace_id=link_trace.to_bytes(16, "big"), span_id=link_span.to_bytes(8, "big"),
                      attributes=_plain_key_values(link_attributes),
                      flags=more[0] if more else 0, dropped_attributes_count=more[1] if more else 0)
    msg.status.code = status_code
    if status_message:
        msg.status.message = clean_text(status_message)
    return SpanRecord(
        trace_id=_id_hex(trace_id, 32),
        span_id=_id_hex(span_id, 16),
        parent_id=_id_hex(parent_id, 16) if parent_id is not None else None,
        name=msg.name,  # cleaned: SQLite can't store lone surrogates either
        start_ns=start,
        end_ns=end,
        status=status_code,
        origin=digest,
        resource=resource,
        scope=scope,
        payload=msg.SerializeToString(),
    )


def encode_span(span, limit: int, origins: OriginCache) -> SpanRecord:
    """Encode an ended SDK ``ReadableSpan``; string attributes are capped at ``limit``."""
    return encode_snapshot(*snapshot(span, limit, origins))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def build_request(groups: Iterable[tuple[bytes, bytes, Iterable[bytes]]]) -> bytes:
    """Protobuf ``ExportTraceServiceRequest`` from (resource, scope, span payloads) groups."""
    out = bytearray()
    for resource, scope, spans in groups:
        scope_spans = _field(1, scope) + b"".join(_field(2, s) for s in spans)
        out += _field(1, _field(1, resource) + _field(2, scope_spans))
    return bytes(out)


_ID_KEYS = ("traceId", "spanId", "parentSpanId")


def _ids_to_hex(node: Any) -> None:
    # Protobuf's JSON mapping writes bytes as base64; OTLP JSON wants lowercase hex ids.
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str):
                node[key] = base64.b64decode(value).hex()
            else:
                _ids_to_hex(value)
    elif isinstance(node, list):
        for item in node:
            _ids_to_hex(item)


def to_json(request: bytes) -> bytes:
    """OTLP/JSON body for a protobuf request built by :func:`build_request`."""
    message = ExportTraceServiceRequest.FromString(request)
    body = json_format.MessageToDict(message, use_integers_for_enums=True)
    _ids_to_hex(body)
    return json.dumps(body, separators=(",", ":")).encode()


def parse_response(content_type: str, body: bytes) -> tuple[int, str]:
    """(rejected span count, server message) from an OTLP success response."""
    if not body:
        return 0, ""
    try:
        if "json" in content_type:
            partial = json.loads(body).get("partialSuccess") or {}
            return int(partial.get("rejectedSpans") or 0), str(partial.get("errorMessage") or "")
        response = ExportTraceServiceResponse.FromString(body)
        return response.partial_success.rejected_spans, response.partial_success.error_message
    except Exception:
        return 0, ""  # a 2xx with a body we can't read still means accepted


def decode_span(payload: bytes) -> Span:
    return Span.FromString(payload)


def _python_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_python_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _python_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


def attributes_to_dict(attributes: Iterable[KeyValue]) -> dict[str, Any]:
    return {kv.key: _python_value(kv.value) for kv in attributes}

