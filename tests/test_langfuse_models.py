"""A payload check: Langfuse's own published OpenTelemetry models (in the ``langfuse``
package) accept what trace_ext sends in JSON mode.

langfuse publishes its OTLP ingestion types in ``langfuse.api.opentelemetry``
(``OtelResourceSpan`` > ``OtelScopeSpan`` > ``OtelSpan`` > ``OtelAttribute`` >
``OtelAttributeValue``). It has no model for the whole request: its own client
sends ``{"resourceSpans": [OtelResourceSpan, ...]}``
(``langfuse/api/opentelemetry/raw_client.py``), so that list is what is
validated, the way langfuse's client reads its API's JSON (``parse_obj_as``).
The models allow extra fields, so each check below also looks at the parsed
values, not only at "no error".
"""

from __future__ import annotations

import json

import pytest
from opentelemetry import trace as otel_trace

import trace_ext
from trace_ext._capture import observe as _observe
from trace_ext._delivery.destination import Destination
from trace_ext._delivery.destination import SenderConfig
from trace_ext._delivery.request import encode_batch
from trace_ext._store.store import PENDING

from .conftest import recording_tracer, require


@pytest.fixture
def langfuse_models():
    try:
        from langfuse.api.core.pydantic_utilities import parse_obj_as
        from langfuse.api.opentelemetry.types import OtelResourceSpan
    except ImportError:
        require(False, "langfuse is not installed; run `pip install langfuse`")
    return parse_obj_as, OtelResourceSpan


def sent_body(store, tracer_records) -> dict:
    """The JSON body trace_ext's sender POSTs for these records, through the real store."""
    store.save(tracer_records, PENDING)
    batch = store.claim(100, 10_000_000, 60)
    config = SenderConfig(Destination("http://127.0.0.1:1/v1/traces", "test"), protocol="http/json", compression="none")
    body, headers = encode_batch(config, store.origins(span.origin for span in batch), batch)
    assert headers["Content-Type"] == "application/json"
    return json.loads(body)


def test_langfuse_otel_models_accept_trace_exts_json(monkeypatch, store, langfuse_models):
    parse_obj_as, OtelResourceSpan = langfuse_models
    processor, tracer = recording_tracer("notebook")
    monkeypatch.setattr(_observe, "api_tracer", lambda: tracer)

    @trace_ext.observe(as_type="generation", model="gpt-4o-mini")
    def ask(prompt):
        return {"model": "gpt-4o-mini-2024-07-18", "usage": {"prompt_tokens": 9, "completion_tokens": 4}}

    with trace_ext.span("pipeline", **{"session.id": "s-1"}) as pipeline:
        ask("What is 6 * 7?")
        with tracer.start_as_current_span(
            "kinds",
            links=[otel_trace.Link(pipeline.get_span_context(), {"why": "follows"})],
            attributes={
                "s": "text ✓", "i": 42, "big": 2**62, "f": 1.5, "b": True, "strings": ["a", "b"],
                "ints": [1, 2], "floats": [0.5], "bools": [True, False], "nested": {"a": [1, {"b": "c"}]},
            },
        ) as kinds:
            kinds.add_event("checkpoint", {"step": 3})
        with pytest.raises(ZeroDivisionError), trace_ext.span("doomed"):
            _ = 1 / 0

    body = sent_body(store, processor.take())
    assert set(body) == {"resourceSpans"}
    resource_spans = parse_obj_as(list[OtelResourceSpan], body["resourceSpans"])

    [resource_span] = resource_spans
    resource = {a.key: a.value.string_value for a in resource_span.resource.attributes}
    assert resource["service.name"] == "notebook"
    [scope_span] = resource_span.scope_spans
    assert scope_span.scope.name == "tests"
    spans = {s.name: s for s in scope_span.spans}
    assert set(spans) == {"pipeline", "ask", "kinds", "doomed"}

    # Ids arrive as the lowercase hex Langfuse's docs ask for, and parents link up.
    root = spans["pipeline"]
    context = pipeline.get_span_context()
    assert root.trace_id == format(context.trace_id, "032x") and root.span_id == format(context.span_id, "016x")
    assert root.parent_span_id is None
    for name in ("ask", "kinds", "doomed"):
        assert spans[name].trace_id == root.trace_id and spans[name].parent_span_id == root.span_id
    assert int(spans["ask"].end_time_unix_nano) >= int(spans["ask"].start_time_unix_nano) > 0

    def values(span):
        return {a.key: a.value for a in span.attributes}

    # The generation: Langfuse reads these attributes to show model, usage, input and output.
    ask_values = values(spans["ask"])
    assert ask_values["langfuse.observation.type"].string_value == "generation"
    assert ask_values["langfuse.observation.model.name"].string_value == "gpt-4o-mini-2024-07-18"
    usage = json.loads(ask_values["langfuse.observation.usage_details"].string_value)
    assert usage == {"input": 9, "output": 4, "total": 13}
    assert ask_values["gen_ai.usage.input_tokens"].int_value == 9  # OTLP JSON's string int, parsed
    assert json.loads(ask_values["langfuse.observation.input"].string_value) == {"prompt": "What is 6 * 7?"}
    assert values(root)["session.id"].string_value == "s-1"

    # Every attribute type: the scalar fields are typed in Langfuse's model...
    kinds_values = values(spans["kinds"])
    assert kinds_values["s"].string_value == "text ✓"
    assert kinds_values["i"].int_value == 42 and kinds_values["big"].int_value == 2**62
    assert kinds_values["f"].double_value == 1.5 and kinds_values["b"].bool_value is True
    # ...arrays and nested values are not (the model has no arrayValue/kvlistValue
    # field), but they are kept as extra fields rather than refused.
    strings = kinds_values["strings"].model_extra["arrayValue"]["values"]
    assert [v["stringValue"] for v in strings] == ["a", "b"]
    assert [v["intValue"] for v in kinds_values["ints"].model_extra["arrayValue"]["values"]] == ["1", "2"]
    nested = kinds_values["nested"].model_extra["kvlistValue"]["values"]
    assert nested[0]["key"] == "a" and nested[0]["value"]["arrayValue"]["values"][1]["kvlistValue"]
    # Events and links are not in Langfuse's model either; they ride along as extras.
    [event] = spans["kinds"].model_extra["events"]
    assert event["name"] == "checkpoint" and event["attributes"][0]["value"]["intValue"] == "3"
    [link] = spans["kinds"].model_extra["links"]
    assert link["spanId"] == root.span_id and link["traceId"] == root.trace_id

    # The exception: status (an untyped object in the model) and Langfuse's level.
    doomed = spans["doomed"]
    assert doomed.status == {"code": 2, "message": "ZeroDivisionError: division by zero"}
    assert values(doomed)["langfuse.observation.level"].string_value == "ERROR"
    [exception] = doomed.model_extra["events"]
    assert exception["name"] == "exception"
