"""Issue 4: trace_ext.observe and trace_ext.span, in process (a real SDK) and in a real kernel."""

from __future__ import annotations

import asyncio
import inspect
import json

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import trace_ext
from trace_ext._capture import observe as _observe
from trace_ext._capture.values import MAX_VALUE_LENGTH

from .conftest import journals_imported, wait_until


@pytest.fixture
def spans(monkeypatch):
    """``spans()`` -> the spans ended so far, by a real SDK tracer the API is given."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests")
    monkeypatch.setattr(_observe, "api_tracer", lambda: tracer)
    return exporter.get_finished_spans


def only(spans):
    [span] = spans()
    return span


def inputs(span):
    return json.loads(span.attributes["langfuse.observation.input"])


# -- functions of every kind --------------------------------------------------


def test_a_function_records_named_arguments_and_its_result(spans):
    @trace_ext.observe
    def add(a, b=2, *rest, **options):
        """Adds."""
        return {"sum": a + b, "rest": list(rest)}

    assert add(1, 5, 7, key="v") == {"sum": 6, "rest": [7]}
    span = only(spans)
    assert span.name == "add" and span.status.status_code == StatusCode.UNSET
    assert inputs(span) == {"a": 1, "b": 5, "rest": [7], "options": {"key": "v"}}
    a = span.attributes
    assert a["input.value"] == a["langfuse.observation.input"] and a["input.mime_type"] == "application/json"
    assert a["langfuse.observation.output"] == a["output.value"] == '{"sum":6,"rest":[7]}'
    assert a["langfuse.observation.type"] == "span" and a["openinference.span.kind"] == "CHAIN"
    assert add.__name__ == "add" and add.__doc__ == "Adds."
    assert str(inspect.signature(add)) == "(a, b=2, *rest, **options)"


def test_options_name_and_no_capture(spans):
    @trace_ext.observe(name="quiet", capture_input=False, capture_output=False)
    def secret(password):
        return password

    assert secret("hunter2") == "hunter2"
    span = only(spans)
    assert span.name == "quiet"
    assert not any("hunter2" in str(v) for v in span.attributes.values())
    assert "input.value" not in span.attributes and "output.value" not in span.attributes


def test_text_is_recorded_as_plain_text(spans):
    trace_ext.observe(lambda: "hello\nworld")()
    span = only(spans)
    assert span.attributes["output.value"] == "hello\nworld"
    assert span.attributes["output.mime_type"] == "text/plain"


def test_an_async_function(spans):
    @trace_ext.observe
    async def fetch(url):
        await asyncio.sleep(0)
        return len(url)

    assert inspect.iscoroutinefunction(fetch)
    assert asyncio.run(fetch("abc")) == 3
    span = only(spans)
    assert span.name == "fetch" and inputs(span) == {"url": "abc"}
    assert span.attributes["output.value"] == "3"


def test_a_generator_span_covers_the_whole_iteration_and_records_the_items(spans):
    @trace_ext.observe
    def count(n):
        for i in range(n):
            with trace_ext.span("inside"):
                pass
            yield i
        return "done"

    assert inspect.isgeneratorfunction(count)
    gen = count(3)
    assert spans() == ()  # nothing runs before the first item is asked for
    assert next(gen) == 0
    assert spans()[0].name == "inside"  # the child ended, the generator's span did not
    assert list(gen) == [1, 2]
    outer = spans()[-1]
    assert outer.name == "count" and outer.attributes["output.value"] == "[0,1,2]"
    assert outer.status.status_code == StatusCode.UNSET
    children = [s for s in spans() if s.name == "inside"]
    assert len(children) == 3 and all(c.parent.span_id == outer.context.span_id for c in children)


def test_the_caller_does_not_nest_under_a_suspended_generator(spans):
    @trace_ext.observe
    def numbers():
        yield 1
        yield 2

    for _ in numbers():
        with trace_ext.span("caller"):
            pass
    callers = [s for s in spans() if s.name == "caller"]
    assert len(callers) == 2 and all(c.parent is None for c in callers)


def test_a_generator_closed_early_ends_its_span_without_error(spans):
    closed = []

    @trace_ext.observe
    def forever():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.append(True)

    for i in forever():
        if i == 2:
            break
    span = only(spans)
    assert closed == [True]
    assert span.status.status_code == StatusCode.UNSET and span.end_time is not None
    assert span.attributes["output.value"] == "[0,1,2]"
    assert not [e for e in span.events if e.name == "exception"]


def test_send_and_throw_reach_the_generator(spans):
    @trace_ext.observe
    def echo():
        received = None
        while True:
            try:
                received = yield received
            except ValueError:
                received = "handled"

    gen = echo()
    next(gen)
    assert gen.send("x") == "x"
    assert gen.throw(ValueError("y")) == "handled"
    gen.close()
    assert only(spans).status.status_code == StatusCode.UNSET


def test_streamed_text_is_recorded_joined(spans):
    @trace_ext.observe(as_type="generation", model="m")
    def stream():
        yield from ["Hel", "lo"]

    assert "".join(stream()) == "Hello"
    assert only(spans).attributes["output.value"] == "Hello"


def test_an_async_generator(spans):
    @trace_ext.observe
    async def ticks(n):
        for i in range(n):
            await asyncio.sleep(0)
            yield {"tick": i}

    async def main():
        return [t async for t in ticks(2)]

    assert inspect.isasyncgenfunction(ticks)
    assert asyncio.run(main()) == [{"tick": 0}, {"tick": 1}]
    span = only(spans)
    assert inputs(span) == {"n": 2}
    assert json.loads(span.attributes["output.value"]) == [{"tick": 0}, {"tick": 1}]


def test_an_async_generator_closed_early(spans):
    @trace_ext.observe
    async def ticks():
        while True:
            yield 1

    async def main():
        gen = ticks()
        await gen.__anext__()
        await gen.aclose()

    asyncio.run(main())
    span = only(spans)
    assert span.status.status_code == StatusCode.UNSET and span.attributes["output.value"] == "[1]"


def test_methods_record_no_self_or_cls(spans):
    class Model:
        factor = 10

        @trace_ext.observe
        def predict(self, x):
            return x * self.factor

        @trace_ext.observe
        @classmethod
        def build(cls, size):
            return size

        @classmethod
        @trace_ext.observe
        def build_too(cls, size):
            return size

        @trace_ext.observe
        @staticmethod
        def helper(y):
            return -y

    m = Model()
    assert (m.predict(2), Model.build(3), Model.build_too(4), m.helper(5), Model.helper(6)) == (20, 3, 4, -5, -6)
    got = [(s.name, inputs(s)) for s in spans()]
    assert got == [
        ("Model.predict", {"x": 2}),
        ("Model.build", {"size": 3}), ("Model.build_too", {"size": 4}),
        ("Model.helper", {"y": 5}), ("Model.helper", {"y": 6}),
    ]


# -- exceptions ---------------------------------------------------------------


def test_an_exception_is_recorded_and_reraised_as_the_same_object(spans):
    error = ValueError("no good")

    @trace_ext.observe
    def fail():
        raise error

    with pytest.raises(ValueError) as caught:
        fail()
    assert caught.value is error
    assert caught.traceback[-1].name == "fail"  # the traceback still ends where it was raised
    span = only(spans)
    assert span.status.status_code == StatusCode.ERROR and span.status.description == "ValueError: no good"
    [event] = [e for e in span.events if e.name == "exception"]
    assert event.attributes["exception.type"] == "ValueError" and event.attributes["exception.message"] == "no good"
    assert span.attributes["langfuse.observation.level"] == "ERROR"


@pytest.mark.parametrize("kind", ["async", "generator", "async generator"])
def test_exceptions_from_every_kind_of_function(spans, kind):
    error = KeyError("k")

    async def coroutine():
        raise error

    def generator():
        yield 1
        raise error

    async def agen():
        yield 1
        raise error

    async def drain(gen):
        return [i async for i in gen]

    fn = trace_ext.observe({"async": coroutine, "generator": generator, "async generator": agen}[kind])
    with pytest.raises(KeyError) as caught:
        if kind == "async":
            asyncio.run(fn())
        elif kind == "generator":
            list(fn())
        else:
            asyncio.run(drain(fn()))
    assert caught.value is error
    assert only(spans).status.status_code == StatusCode.ERROR


def test_keyboard_interrupt_is_recorded_and_reraised(spans):
    @trace_ext.observe
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    span = only(spans)
    assert span.status.status_code == StatusCode.ERROR and "KeyboardInterrupt" in span.status.description


def test_nested_calls_are_parent_and_child(spans):
    @trace_ext.observe
    def inner():
        return 1

    @trace_ext.observe
    def outer():
        return inner() + 1

    assert outer() == 2
    child, parent = spans()
    assert (child.name, parent.name) == ("inner", "outer")
    assert child.parent.span_id == parent.context.span_id and child.context.trace_id == parent.context.trace_id
    assert parent.parent is None


# -- values that are hard to record -------------------------------------------


def test_a_huge_argument_is_capped_with_a_marker(spans):
    huge = "x" * 10_000_000

    @trace_ext.observe
    def take(text, items):
        return text

    take(huge, {"text": huge})
    a = only(spans).attributes
    assert len(a["langfuse.observation.output"]) <= MAX_VALUE_LENGTH + 60
    assert "truncated" in a["langfuse.observation.output"]
    assert len(a["input.value"]) <= MAX_VALUE_LENGTH + 60 and a["input.value"].endswith("characters]")


def test_a_huge_list_and_deep_nesting_are_bounded(spans):
    deep: list = []
    for _ in range(200):
        deep = [deep]
    trace_ext.observe(lambda a, b: None)(list(range(5_000_000)), deep)
    text = only(spans).attributes["input.value"]
    assert len(text) <= MAX_VALUE_LENGTH + 60 and "truncated" in text


def test_a_broken_repr_gives_a_readable_placeholder(spans):
    class Broken:
        def __repr__(self):
            raise RuntimeError("repr exploded")

    @trace_ext.observe
    def use(thing, things):
        return thing

    result = use(Broken(), [Broken()])
    assert isinstance(result, Broken)
    a = only(spans).attributes
    assert a["output.value"] == "<Broken object: repr() failed with RuntimeError: repr exploded>"
    assert a["output.mime_type"] == "text/plain"
    assert inputs(only(spans))["things"] == ["<Broken object: repr() failed with RuntimeError: repr exploded>"]


def test_a_repr_that_never_returns_does_not_hang_the_call(spans):
    class Hangs:
        def __repr__(self):
            while True:
                pass

    trace_ext.observe(lambda h: 1)(Hangs())
    assert inputs(only(spans)) == {"h": "<Hangs object: repr() took longer than 1 s>"}


def test_the_untraced_call_still_runs_when_no_span_can_be_started(monkeypatch):
    def broken():
        raise RuntimeError("no tracer")

    monkeypatch.setattr(_observe, "api_tracer", broken)
    assert trace_ext.observe(lambda x: x + 1)(1) == 2
    with trace_ext.span("block") as s:
        s.set_attribute("still", "fine")


def test_with_no_extension_and_no_provider_nothing_fails():
    # The real api_tracer: no extension loaded, so the global (no-op) provider.
    @trace_ext.observe
    def f(x):
        return x

    assert f(3) == 3
    with trace_ext.span("nothing", n=1) as s:
        s.set_attribute("k", "v")


# -- generations ----------------------------------------------------------------


def test_a_generation_records_model_and_usage_in_three_conventions(spans):
    @trace_ext.observe(as_type="generation", model="gpt-4o-mini")
    def ask(prompt):
        return {
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"message": {"content": "hi"}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
        }

    ask("hello?")
    a = only(spans).attributes
    assert a["langfuse.observation.type"] == "generation" and a["openinference.span.kind"] == "LLM"
    assert a["langfuse.observation.model.name"] == a["llm.model_name"] == "gpt-4o-mini-2024-07-18"
    assert a["gen_ai.request.model"] == "gpt-4o-mini" and a["gen_ai.response.model"] == "gpt-4o-mini-2024-07-18"
    assert a["gen_ai.operation.name"] == "chat"
    assert json.loads(a["langfuse.observation.usage_details"]) == {"input": 12, "output": 5, "total": 17}
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (12, 5)
    assert (a["llm.token_count.prompt"], a["llm.token_count.completion"], a["llm.token_count.total"]) == (12, 5, 17)


def test_usage_is_read_from_response_objects_with_input_and_output_tokens(spans):
    class Usage:
        input_tokens, output_tokens = 7, 3

    class Response:
        model = "claude"
        usage = Usage()

    trace_ext.observe(as_type="generation")(lambda: Response())()
    a = only(spans).attributes
    assert json.loads(a["langfuse.observation.usage_details"]) == {"input": 7, "output": 3, "total": 10}
    assert a["llm.model_name"] == "claude" and a["llm.token_count.total"] == 10


def test_a_plain_span_does_not_read_usage_and_bad_types_are_refused(spans):
    trace_ext.observe(lambda: {"usage": {"prompt_tokens": 1}})()
    assert "langfuse.observation.usage_details" not in only(spans).attributes
    with pytest.raises(ValueError, match="'span' or 'generation'"):
        trace_ext.observe(as_type="tool")


# -- trace_ext.span ---------------------------------------------------------------


def test_span_block_with_attributes_input_and_usage(spans):
    with trace_ext.span(
        "llm-call", as_type="generation", model="m-1", input={"q": "?"}, input_tokens=4, output_tokens=6,
        **{"session.id": "s"}, tags=["a", "b"], extra={"nested": True},
    ) as s:
        s.set_attribute("langfuse.observation.output", "answer")
    a = only(spans).attributes
    assert a["session.id"] == "s" and a["tags"] == ("a", "b") and a["extra"] == '{"nested":true}'
    assert a["input.value"] == '{"q":"?"}' and a["langfuse.observation.output"] == "answer"
    assert a["langfuse.observation.model.name"] == "m-1" and a["llm.token_count.total"] == 10
    assert json.loads(a["langfuse.observation.usage_details"]) == {"input": 4, "output": 6, "total": 10}


def test_span_block_records_an_exception_and_reraises_it(spans):
    error = RuntimeError("inside")
    with pytest.raises(RuntimeError) as caught, trace_ext.span("doomed"):
        raise error
    assert caught.value is error
    span = only(spans)
    assert span.status.status_code == StatusCode.ERROR and span.status.description == "RuntimeError: inside"
    assert [e.name for e in span.events] == ["exception"]


def test_span_block_is_the_parent_of_observed_calls(spans):
    @trace_ext.observe
    def step():
        return 1

    with trace_ext.span("block") as block:
        step()
    child, parent = spans()
    assert parent is not None and parent.name == "block"
    assert child.parent.span_id == block.get_span_context().span_id


def test_decorating_keeps_the_wrapped_function_and_its_signature():
    def f(a, *, b=1):
        return a

    wrapped = trace_ext.observe(f)
    assert wrapped.__wrapped__ is f
    assert inspect.signature(wrapped) == inspect.signature(f)


# -- in a real kernel -----------------------------------------------------------------


def test_observed_calls_and_span_blocks_nest_under_the_traced_cell(loaded, store_path):
    from trace_ext._otlp import attributes_to_dict, decode_span
    from trace_ext._store.store import SpanStore

    loaded.ok(
        "import trace_ext\n"
        "@trace_ext.observe\n"
        "def double(x):\n"
        "    return 2 * x\n"
    )
    loaded.ok("%%trace cell\nwith trace_ext.span('block', step=1):\n    y = double(21)\ny")
    assert wait_until(lambda: journals_imported(store_path), 20)  # the saver thread imports just after the cell
    store = SpanStore(str(store_path))
    try:
        [spans] = store.recent_traces(1)
    finally:
        store.close()
    by_name = {s.name: s for s in spans}
    cell, block, double = by_name["cell"], by_name["block"], by_name["double"]
    assert cell.parent_id is None
    assert block.parent_id == cell.span_id and double.parent_id == block.span_id
    assert cell.trace_id == block.trace_id == double.trace_id
    attributes = attributes_to_dict(decode_span(double.payload).attributes)
    assert attributes["langfuse.observation.input"] == '{"x":21}'
    assert attributes["langfuse.observation.output"] == "42"
    assert attributes_to_dict(decode_span(block.payload).attributes)["step"] == 1
