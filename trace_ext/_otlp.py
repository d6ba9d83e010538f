"""OpenTelemetry spans to OTLP (protobuf, or JSON) and OTLP responses back.

A span is encoded once, when it ends, into the bytes of an OTLP ``Span``
message; the store keeps those bytes and the sender concatenates them into a
request. Protobuf allows a message to be built by concatenating its fields'
encodings, so a batch costs no re-encoding.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

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

from ._capture.values import truncate

__all__ = [
    "OriginCache", "SpanRecord", "attributes_to_dict", "build_request", "clean_text", "decode_span",
    "encode_span", "parse_response", "to_json",
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


def _any_value(value: Any, limit: int, depth: int = 0) -> AnyValue:
    """An OTLP ``AnyValue``; never raises. Strings are cut at ``limit`` characters
    (with a marker) and cleaned of lone surrogates, bytes cut at ``limit`` bytes,
    integers beyond int64 become their decimal text, and nesting deeper than
    ``_MAX_DEPTH`` (or a cycle) becomes text."""
    try:
        if value is None:
            return AnyValue()  # OTLP's empty value (the SDK lets None through, e.g. in sequences)
        if isinstance(value, bool):
            return AnyValue(bool_value=value)
        if isinstance(value, str):
            return AnyValue(string_value=clean_text(truncate(value, limit)))
        if isinstance(value, int):
            if _INT64_MIN <= value <= _INT64_MAX:
                return AnyValue(int_value=value)
            return AnyValue(string_value=truncate(str(value), limit))  # OTLP has no big integers
        if isinstance(value, float):
            return AnyValue(double_value=value)
        if isinstance(value, (bytes, bytearray, memoryview)):
            return AnyValue(bytes_value=bytes(value[:limit]))
        if isinstance(value, (Mapping, Sequence)) and depth >= _MAX_DEPTH:
            return AnyValue(string_value=f"<{type(value).__name__} nested deeper than {_MAX_DEPTH} levels>")
        if isinstance(value, Mapping):
            return AnyValue(kvlist_value=KeyValueList(values=_key_values(value, limit, depth + 1)))
        if isinstance(value, Sequence):
            return AnyValue(array_value=ArrayValue(values=[_any_value(v, limit, depth + 1) for v in value]))
        return AnyValue(string_value=_described(value, limit))
    except Exception as exc:  # a value we can't encode must not cost the span
        return AnyValue(string_value=f"<{type(value).__name__} value that could not be encoded: {type(exc).__name__}>")


def _key_values(attributes: Mapping[str, Any] | None, limit: int, depth: int = 0) -> list[KeyValue]:
    if not attributes:
        return []
    return [
        KeyValue(key=clean_text(k) if isinstance(k, str) else _described(k, limit),
                 value=_any_value(v, limit, depth))
        for k, v in attributes.items()
    ]


def _id_hex(value: int, width: int) -> str:
    return format(value, f"0{width}x")


class OriginCache:
    """Encoded (resource, scope) pairs, so a span's origin is encoded once per tracer."""

    def __init__(self, limit: int = 256) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[int, int], tuple[object, object, bytes, bytes, bytes]] = {}
        self._limit = limit

    def get(self, resource, scope, attr_limit: int) -> tuple[bytes, bytes, bytes]:
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


def encode_span(span, limit: int, origins: OriginCache) -> SpanRecord:
    """Encode an ended SDK ``ReadableSpan``; string attributes are capped at ``limit``."""
    ctx = span.context
    parent = span.parent
    msg = Span(
        trace_id=ctx.trace_id.to_bytes(16, "big"),
        span_id=ctx.span_id.to_bytes(8, "big"),
        name=clean_text(str(span.name or "")),
        kind=span.kind.value + 1,  # the SDK counts from INTERNAL=0, OTLP from UNSPECIFIED=0
        start_time_unix_nano=span.start_time or 0,
        end_time_unix_nano=span.end_time or 0,
        attributes=_key_values(span.attributes, limit),
        dropped_attributes_count=getattr(span, "dropped_attributes", 0),
        dropped_events_count=getattr(span, "dropped_events", 0),
        dropped_links_count=getattr(span, "dropped_links", 0),
        flags=0x100 | (0x200 if parent is not None and parent.is_remote else 0) | int(ctx.trace_flags),
    )
    if ctx.trace_state:
        msg.trace_state = clean_text(ctx.trace_state.to_header())
    if parent is not None:
        msg.parent_span_id = parent.span_id.to_bytes(8, "big")
    for event in span.events:
        msg.events.add(
            name=clean_text(str(event.name or "")),
            time_unix_nano=event.timestamp,
            attributes=_key_values(event.attributes, limit),
        )
    for link in span.links:
        msg.links.add(
            trace_id=link.context.trace_id.to_bytes(16, "big"),
            span_id=link.context.span_id.to_bytes(8, "big"),
            attributes=_key_values(link.attributes, limit),
        )
    status = span.status
    msg.status.code = status.status_code.value
    if status.description:
        msg.status.message = clean_text(truncate(str(status.description), limit))
    digest, res_bytes, scope_bytes = origins.get(span.resource, span.instrumentation_scope, limit)
    return SpanRecord(
        trace_id=_id_hex(ctx.trace_id, 32),
        span_id=_id_hex(ctx.span_id, 16),
        parent_id=_id_hex(parent.span_id, 16) if parent is not None else None,
        name=msg.name,  # cleaned: SQLite can't store lone surrogates either
        start_ns=msg.start_time_unix_nano,
        end_ns=msg.end_time_unix_nano,
        status=msg.status.code,
        origin=digest,
        resource=res_bytes,
        scope=scope_bytes,
        payload=msg.SerializeToString(),
    )


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

