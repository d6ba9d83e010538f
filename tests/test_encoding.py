"""Property-based tests of the OTLP encoder: whatever attribute values a span carries,
the span is kept, and opentelemetry-proto parses it back (protobuf and OTLP JSON) to
the same values, or to the documented truncation and replacement:

- str: cut at ``limit`` characters with a ``[truncated …]`` marker; lone surrogates
  (which UTF-8 can't encode) become U+FFFD;
- int beyond int64: its decimal text; bytes: cut at ``limit`` bytes;
- None: OTLP's empty value; nesting deeper than 32 levels (or a cycle): text;
- float nan and ±inf: themselves (protobuf doubles; "NaN"/"Infinity" in JSON).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Status, StatusCode

from trace_ext._capture.values import truncate
from trace_ext._otlp import (
    _MAX_DEPTH,
    _any_value,
    _python_value,
    attributes_to_dict,
    build_request,
    decode_span,
    to_json,
)
from trace_ext._recording.processor import BufferingSpanProcessor

from .otlp_receiver import otlp_json_to_proto_dict

LIMIT = 64  # small, so hypothesis reaches truncation often
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
SURROGATES = st.integers(0xD800, 0xDFFF).map(chr)
ANY_CHAR = st.one_of(st.characters(), SURROGATES)  # st.characters() alone never yields surrogates
TEXT = st.text(ANY_CHAR, max_size=3 * LIMIT)
INTS = st.one_of(st.integers(INT64_MIN, INT64_MAX), st.integers(min_value=-(2**200), max_value=2**200))
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
SCALARS = st.one_of(TEXT, st.booleans(), INTS, FLOATS, st.binary(max_size=2 * LIMIT), st.none())
# The SDK accepts homogeneous sequences of primitives, and (since 1.3x) any nesting.
HOMOGENEOUS = st.one_of(
    st.lists(TEXT, max_size=5), st.lists(st.booleans(), max_size=5),
    st.lists(INTS, max_size=5), st.lists(FLOATS, max_size=5),
)
NESTED = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(ANY_CHAR, min_size=1, max_size=10), children, max_size=4),
    ),
    max_leaves=20,
)
ATTRIBUTES = st.dictionaries(
    st.text(ANY_CHAR, min_size=1, max_size=20), st.one_of(SCALARS, HOMOGENEOUS, NESTED), max_size=8
)


def clean(text: str) -> str:
    return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)


def expected(value, depth: int = 0):
    """What the encoder promises ``value`` becomes, as a plain Python value."""
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, str):
        return clean(truncate(value, LIMIT))
    if isinstance(value, int):
        return value if INT64_MIN <= value <= INT64_MAX else truncate(str(value), LIMIT)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value[:LIMIT])
    if isinstance(value, (Mapping, Sequence)) and depth >= _MAX_DEPTH:
        return f"<{type(value).__name__} nested deeper than {_MAX_DEPTH} levels>"
    if isinstance(value, Mapping):
        return {clean(k): expected(v, depth + 1) for k, v in value.items()}
    if isinstance(value, Sequence):
        return [expected(v, depth + 1) for v in value]
    raise AssertionError(f"no expectation for {type(value)}")


def same(a, b) -> bool:
    """Equality where nan equals nan (and int/float/bool types must match too)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


class Recorder:
    """Real SDK spans through trace_ext's processor; keeps the ReadableSpans too."""

    def __init__(self, limit: int = LIMIT) -> None:
        self.processor = BufferingSpanProcessor()
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": "encoding-tests"}), shutdown_on_exit=False
        )
        self.provider.add_span_processor(self.processor)
        self.processor.activate(limit, lambda: None, lambda: None)
        self.tracer = self.provider.get_tracer("tests")

    def span(self, name="span", attributes=None, events=(), status=None):
        span = self.tracer.start_span(name, attributes=attributes)
        for event_name, event_attributes in events:
            span.add_event(event_name, event_attributes)
        if status is not None:
            span.set_status(status)
        span.end()
        [record] = self.processor.take()
        return span, record


@pytest.fixture(scope="module")
def recorder():
    return Recorder()


def json_round_trip(record):
    """The span as an OTLP/JSON receiver parses it: to_json, hex ids back to base64, ParseDict."""
    body = to_json(build_request([(record.resource, record.scope, [record.payload])]))
    document = json.loads(body)  # strict JSON: no bare NaN/Infinity tokens
    [[[span_json]]] = [[s["spans"] for s in r["scopeSpans"]] for r in document["resourceSpans"]]
    assert span_json["spanId"] == record.span_id  # OTLP JSON ids are hex
    message = ExportTraceServiceRequest()
    json_format.ParseDict(otlp_json_to_proto_dict(document), message)
    return message.resource_spans[0].scope_spans[0].spans[0]


# -- properties ---------------------------------------------------------------


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(ATTRIBUTES)
def test_span_attributes_round_trip_through_protobuf_and_json(recorder, attributes):
    span, record = recorder.span(attributes=attributes)
    reached = dict(span.attributes)  # what the SDK let through to encode_span
    want = {clean(k): expected(v) for k, v in reached.items()}
    from_proto = attributes_to_dict(decode_span(record.payload).attributes)
    assert same(from_proto, want), (reached, from_proto)
    from_json = attributes_to_dict(json_round_trip(record).attributes)
    assert same(from_json, want)


@settings(max_examples=100, deadline=None, database=None)
@given(name=TEXT, event=TEXT, message=TEXT, attributes=ATTRIBUTES)
def test_names_events_and_status_with_any_text_keep_the_span(recorder, name, event, message, attributes):
    span, record = recorder.span(name, {"a": 1}, [(event, attributes)], Status(StatusCode.ERROR, message))
    decoded = decode_span(record.payload)
    assert decoded.name == record.name == clean(name)  # the store's name column is clean too
    [ev] = decoded.events
    assert ev.name == clean(event)
    assert same(attributes_to_dict(ev.attributes), {clean(k): expected(v) for k, v in span.events[0].attributes.items()})
    assert decoded.status.message == clean(truncate(message, LIMIT))
    assert json_round_trip(record).name == clean(name)


@settings(max_examples=300, deadline=None, database=None)
@given(NESTED)
def test_any_value_round_trips_any_nesting(value):
    encoded = AnyValue.FromString(_any_value(value, LIMIT).SerializeToString())
    assert same(_python_value(encoded), expected(value))


# -- the edges, spelled out -----------------------------------------------------


def test_huge_strings_are_cut_with_a_marker(recorder):
    huge = "é" * 5_000_000 + "\udcff"
    _, record = recorder.span(attributes={"huge": huge})
    value = attributes_to_dict(decode_span(record.payload).attributes)["huge"]
    assert value == "é" * LIMIT + f"… [truncated {len(huge) - LIMIT} of {len(huge)} characters]"
    assert len(record.payload) < 1000


def test_lone_surrogates_become_replacement_characters_everywhere(recorder):
    _, record = recorder.span(
        "name \udcff", {"text \ud800": "a\udcffb", "list": ["\udfff", "ok"], "map": {"k\udcff": "v\ud800"}},
        [("event \udcff", {"e": "\udcff"})], Status(StatusCode.ERROR, "bad \udcff"),
    )
    decoded = decode_span(record.payload)
    assert decoded.name == "name \ufffd" and record.name == "name \ufffd"
    assert attributes_to_dict(decoded.attributes) == {
        "text \ufffd": "a\ufffdb", "list": ["\ufffd", "ok"], "map": {"k\ufffd": "v\ufffd"}
    }
    assert decoded.events[0].name == "event \ufffd"
    assert attributes_to_dict(decoded.events[0].attributes) == {"e": "\ufffd"}
    assert decoded.status.message == "bad \ufffd"


def test_valid_non_ascii_text_is_untouched(recorder):
    text = "naïve — 日本語 🎉 \U0010ffff"
    _, record = recorder.span(text, {"t": text})
    decoded = decode_span(record.payload)
    assert decoded.name == text and attributes_to_dict(decoded.attributes) == {"t": text}


def test_nan_and_infinities_survive_protobuf_and_json(recorder):
    attributes = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "list": [math.nan, -math.inf, 1.5]}
    _, record = recorder.span(attributes=attributes)
    for decoded in (decode_span(record.payload), json_round_trip(record)):
        got = attributes_to_dict(decoded.attributes)
        assert math.isnan(got["nan"]) and got["inf"] == math.inf and got["-inf"] == -math.inf
        assert math.isnan(got["list"][0]) and got["list"][1:] == [-math.inf, 1.5]
    body = to_json(build_request([(record.resource, record.scope, [record.payload])]))
    assert b"NaN" in body and b"Infinity" in body
    json.loads(body, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))


def test_ints_beyond_int64_become_text_and_bytes_stay_bytes(recorder):
    _, record = recorder.span(attributes={
        "max": INT64_MAX, "min": INT64_MIN, "big": 2**64, "neg": -(2**63) - 1,
        "bytes": b"\xff\xfe\x00", "long bytes": b"\x80" * (LIMIT * 3),
    })
    for decoded in (decode_span(record.payload), json_round_trip(record)):
        got = attributes_to_dict(decoded.attributes)
        assert got["max"] == INT64_MAX and got["min"] == INT64_MIN
        assert got["big"] == str(2**64) and got["neg"] == str(-(2**63) - 1)
        assert got["bytes"] == b"\xff\xfe\x00" and got["long bytes"] == b"\x80" * LIMIT


def test_cycles_and_deep_nesting_become_text_not_a_lost_span():
    cyclic: list = []
    cyclic.append(cyclic)
    value = _python_value(_any_value(cyclic, LIMIT))
    depth = 0
    while isinstance(value, list):
        value, depth = value[0], depth + 1
    assert depth == _MAX_DEPTH and value == f"<list nested deeper than {_MAX_DEPTH} levels>"
    deep: list = []
    for _ in range(10_000):
        deep = [deep]
    assert _any_value(deep, LIMIT).WhichOneof("value") == "array_value"


def test_values_that_cant_be_turned_into_text_are_described():
    class NoStr:
        def __str__(self):
            raise RuntimeError("no")

    class Weird(Mapping):  # a mapping that breaks while being read
        def __getitem__(self, key):
            raise KeyError(key)

        def __iter__(self):
            raise RuntimeError("broken")

        def __len__(self):
            return 1

    assert _python_value(_any_value(NoStr(), LIMIT)) == "<NoStr object: str() failed with RuntimeError>"
    assert _python_value(_any_value(Weird(), LIMIT)) == "<Weird value that could not be encoded: RuntimeError>"
    assert _python_value(_any_value(memoryview(b"abc"), LIMIT)) == b"abc"


def test_resource_and_scope_text_is_cleaned_too():
    processor = BufferingSpanProcessor()
    provider = TracerProvider(resource=Resource.create({"service.name": "svc \udcff", "big": 2**70}),
                              shutdown_on_exit=False)
    provider.add_span_processor(processor)
    processor.activate(LIMIT, lambda: None, lambda: None)
    provider.get_tracer("scope \udcff", "1.0 \ud800").start_span("s").end()
    [record] = processor.take()
    request = ExportTraceServiceRequest.FromString(build_request([(record.resource, record.scope, [record.payload])]))
    [resource_spans] = request.resource_spans
    resource = attributes_to_dict(resource_spans.resource.attributes)
    assert resource["service.name"] == "svc \ufffd" and resource["big"] == str(2**70)
    scope = resource_spans.scope_spans[0].scope
    assert (scope.name, scope.version) == ("scope \ufffd", "1.0 \ufffd")


def test_every_span_field_matches_the_sdks_own_otlp_encoder():
    """Kind, ids, remote parent, trace state, flags, links, events, status and the
    dropped counts read from the SDK span's own fields are what the OpenTelemetry
    exporter's encoder makes of the same span (attributes within every limit)."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanMessage
    from opentelemetry.sdk.trace import SpanLimits
    from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, TraceFlags, TraceState
    from opentelemetry.trace import set_span_in_context

    processor = BufferingSpanProcessor()
    limits = SpanLimits(max_span_attributes=2, max_events=2, max_links=1, max_event_attributes=1)
    provider = TracerProvider(resource=Resource.create({"service.name": "oracle"}), span_limits=limits,
                              shutdown_on_exit=False)
    provider.add_span_processor(processor)
    processor.activate(4096, lambda: None, lambda: None)
    tracer = provider.get_tracer("oracle", "1.2")
    remote = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED),
                         trace_state=TraceState([("vendor", "v1")]))
    linked = SpanContext(0x123, 0x456, is_remote=False)
    span = tracer.start_span(
        "call", context=set_span_in_context(NonRecordingSpan(remote)), kind=SpanKind.CLIENT,
        attributes={"a": 1, "b": "two", "c": 3.0},  # one over the limit: dropped
        links=[Link(linked, {"why": "retry"}), Link(linked)],  # one link over the limit
    )
    for n in range(3):  # one over the limit
        span.add_event(f"e{n}", {"n": n, "m": n})  # one attribute over the limit
    span.set_status(Status(StatusCode.ERROR, "it broke"))
    span.end()
    [record] = processor.take()
    ours = SpanMessage.FromString(record.payload)
    [theirs] = encode_spans([span]).resource_spans[0].scope_spans[0].spans
    assert (ours.dropped_attributes_count, ours.dropped_events_count, ours.dropped_links_count) == (1, 1, 1)
    assert [e.dropped_attributes_count for e in ours.events] == [1, 1]
    # OTLP's span flags carry the W3C trace flags in their low byte too; the SDK's encoder leaves them out.
    assert ours.flags == theirs.flags | int(span.context.trace_flags) == 0x100 | 0x200 | 0x01
    theirs.flags = ours.flags
    assert ours == theirs, f"ours:\n{ours}\ntheirs:\n{theirs}"
