"""``trace_ext.observe`` and ``trace_ext.span``: spans for a notebook's own code, no other SDK needed.

With the extension loaded, spans nest under the ``%%trace`` cell's span and
are stored; without it they go to whatever global provider exists. Recording
never changes what the user's code does: exceptions pass through as the same
object, capture never raises, and if a span can't be started the code runs untraced.
"""

from __future__ import annotations

import functools
import inspect
import logging
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from opentelemetry import context as otel_context
from opentelemetry import trace

from .._recording.providers import api_tracer
from . import attributes as g
from .values import Collector, bind_arguments

__all__ = ["observe", "span"]

log = logging.getLogger(__name__)


class _Observed:
    """One decorated function's options, and how to start and finish its spans."""

    def __init__(self, fn: Callable, name: str | None, capture_input: bool, capture_output: bool,
                 as_type: str, model: str | None) -> None:
        self.fn = fn
        # A method reads "Model.predict"; a function made inside another loses the "f.<locals>." noise.
        qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
        self.name = name or qualname.rsplit("<locals>.", 1)[-1]
        self.capture_input, self.capture_output = capture_input, capture_output
        self.as_type, self.model = as_type, model
        try:
            self.signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):
            self.signature = None  # some builtins have none: arguments are recorded unnamed

    def start(self, args: tuple, kwargs: dict):
        """``(span, context with it current)``; ``(None, current context)`` if trace_ext can't trace."""
        try:
            span = api_tracer().start_span(self.name, attributes=g.type_attributes(self.as_type, self.model))
            if self.capture_input:
                g.set_value(span, "input", bind_arguments(self.signature, args, kwargs))
            return span, trace.set_span_in_context(span)
        except Exception:
            log.warning("trace_ext could not start a span for %s; it runs untraced", self.name, exc_info=True)
            return None, otel_context.get_current()

    def finish(self, span, result: Any = None, output: tuple[str, str] | None = None) -> None:
        """Record the result (or a generator's ``output``) and end the span; never raises."""
        if span is None:
            return  # an untraced call
        try:
            if self.capture_output:
                g.set_value(span, "output", result, output)
            if self.as_type == "generation" and output is None:
                usage = g.usage_of(result)
                if usage:
                    g.record_usage(span, **usage)
        except Exception:
            log.debug("trace_ext could not record the result of %s", self.name, exc_info=True)
        finally:
            span.end()

    def fail(self, span, exc: BaseException) -> None:
        if span is not None:
            g.record_error(span, exc)
            span.end()


def _generator_wrapper(o: _Observed) -> Callable:
    # The span is current only while the generator's own code runs: between
    # items the caller's code runs, and must not nest under it. send(), throw()
    # and close() reach the generator as they would without the wrapper.
    def wrapper(*args, **kwargs):
        span, ctx = o.start(args, kwargs)
        items = Collector()
        try:
            gen = o.fn(*args, **kwargs)  # runs none of its code yet
            step, value = gen.send, None
            while True:
                token = otel_context.attach(ctx)
                try:
                    item = step(value)
                except StopIteration as stop:
                    result = stop.value
                    break
                finally:
                    otel_context.detach(token)
                items.add(item)
                try:
                    value, step = (yield item), gen.send
                except GeneratorExit:
                    token = otel_context.attach(ctx)
                    try:
                        gen.close()
                    finally:
                        otel_context.detach(token)
                    raise
                except BaseException as exc:  # thrown in by the caller: the generator may handle it
                    value, step = exc, gen.throw
        except GeneratorExit:  # closed early (break, garbage collection): not an error
            o.finish(span, output=items.output())
            raise
        except BaseException as exc:
            o.fail(span, exc)
            raise
        o.finish(span, output=items.output())
        return result

    return wrapper


def _async_generator_wrapper(o: _Observed) -> Callable:
    # As _generator_wrapper, for async generators (asend, athrow, aclose).
    async def wrapper(*args, **kwargs):
        span, ctx = o.start(args, kwargs)
        items = Collector()
        try:
            gen = o.fn(*args, **kwargs)
            step, value = gen.asend, None
            while True:
                token = otel_context.attach(ctx)
                try:
                    item = await step(value)
                except StopAsyncIteration:
                    break
                finally:
                    otel_context.detach(token)
                items.add(item)
                try:
                    value, step = (yield item), gen.asend
                except GeneratorExit:
                    token = otel_context.attach(ctx)
                    try:
                        await gen.aclose()
                    finally:
                        otel_context.detach(token)
                    raise
                except BaseException as exc:
                    value, step = exc, gen.athrow
        except GeneratorExit:
            o.finish(span, output=items.output())
            raise
        except BaseException as exc:
            o.fail(span, exc)
            raise
        o.finish(span, output=items.output())

    return wrapper


def _wrap(o: _Observed) -> Callable:
    fn = o.fn
    if inspect.isasyncgenfunction(fn):
        return functools.wraps(fn)(_async_generator_wrapper(o))
    if inspect.isgeneratorfunction(fn):
        return functools.wraps(fn)(_generator_wrapper(o))
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args, **kwargs):
            span, ctx = o.start(args, kwargs)
            token = otel_context.attach(ctx)
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                o.fail(span, exc)
                raise
            finally:
                otel_context.detach(token)
            o.finish(span, result)
            return result

        return async_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        span, ctx = o.start(args, kwargs)
        token = otel_context.attach(ctx)
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # KeyboardInterrupt too: the span says how the call ended
            o.fail(span, exc)
            raise
        finally:
            otel_context.detach(token)
        o.finish(span, result)
        return result

    return wrapper


def observe(
    fn: Callable | None = None,
    /,
    *,
    name: str | None = None,
    capture_input: bool = True,
    capture_output: bool = True,
    as_type: str = "span",
    model: str | None = None,
) -> Any:
    """Record each call of a function as a span: its arguments, its result, any exception.

    Use it bare or with options::

        @trace_ext.observe
        def retrieve(query, k=3): ...

        @trace_ext.observe(as_type="generation", model="gpt-4o-mini")
        def ask(prompt): ...

    Works on functions, ``async def`` functions, generators and async
    generators (the span covers the whole iteration; the output is what was
    yielded), and methods (``self``/``cls`` are not recorded; put ``observe``
    above or below ``@classmethod``/``@staticmethod``).

    Options:
        name: the span's name (default: the function's qualified name).
        capture_input: record the arguments, by parameter name (default True).
        capture_output: record the return value or yielded items (default True).
        as_type: ``"span"`` or ``"generation"`` (a model call: Langfuse shows it
            as a generation, Phoenix as an LLM span).
        model: the model a generation asks for. A generation that returns an
            OpenAI-style response (``.usage`` with token counts, ``.model``)
            has its usage recorded from it.

    Values are written as compact JSON when they are JSON data, otherwise as a
    ``repr`` limited in time; each is cut at 10,000 characters. An exception
    is recorded (status ERROR, an ``exception`` event) and re-raised as it was.
    """
    if as_type not in g.KINDS:
        raise ValueError(f"observe(as_type=...) must be 'span' or 'generation', not {as_type!r}.")

    def decorate(target: Any) -> Any:
        if isinstance(target, (classmethod, staticmethod)):
            return type(target)(decorate(target.__func__))
        if not callable(target):
            raise TypeError(f"trace_ext.observe decorates functions and methods, not {type(target).__name__}.")
        return _wrap(_Observed(target, name, capture_input, capture_output, as_type, model))

    return decorate if fn is None else decorate(fn)


@contextmanager
def span(
    name: str,
    *,
    as_type: str = "span",
    model: str | None = None,
    input: Any = None,  # shadows the builtin: it is the word Langfuse and Phoenix use
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    total_tokens: int | None = None,
    **attributes: Any,
) -> Iterator[trace.Span]:
    """Record a block of code as a span; yields the OpenTelemetry span::

        with trace_ext.span("rerank", candidates=len(docs)) as s:
            ranked = rerank(docs)
            s.set_attribute("kept", len(ranked))

    Keyword arguments become the span's attributes (values that aren't
    strings, numbers, booleans or lists of one of them are written as text).
    ``input=`` records the block's input as ``observe`` records arguments.
    ``as_type="generation"`` with ``model=``, ``input_tokens=``,
    ``output_tokens=`` (and ``total_tokens=``) records a model call.
    An exception is recorded (status ERROR, an ``exception`` event) and re-raised.
    """
    if as_type not in g.KINDS:
        raise ValueError(f"span(as_type=...) must be 'span' or 'generation', not {as_type!r}.")
    try:
        given = {key: g.attribute(value) for key, value in attributes.items() if value is not None}
        current = api_tracer().start_span(name, attributes={**g.type_attributes(as_type, model), **given})
    except Exception:
        log.warning("trace_ext could not start span %r; the block runs untraced", name, exc_info=True)
        current = trace.INVALID_SPAN  # still takes set_attribute(), and records nothing
    if input is not None:
        g.set_value(current, "input", input)
    g.record_usage(current, None, input_tokens, output_tokens, total_tokens)  # writes only what is given
    token = otel_context.attach(trace.set_span_in_context(current))
    try:
        yield current
    except GeneratorExit:
        raise  # the enclosing generator was closed early: not an error
    except BaseException as exc:
        g.record_error(current, exc)
        raise
    finally:
        otel_context.detach(token)
        current.end()

