"""The attribute names three backends read, and writing a span's input, output, error and usage in them.

The names are copied, not imported: Langfuse and OpenInference are optional
for users. Where each was checked:

- Langfuse: ``langfuse/_client/attributes.py``, ``LangfuseOtelSpanAttributes``
  (langfuse 5.0.4). Langfuse serialises ``usage_details`` with ``json.dumps``.
- OpenInference (Arize Phoenix): ``openinference.semconv.trace.SpanAttributes``,
  ``OpenInferenceSpanKindValues`` and ``OpenInferenceMimeTypeValues``.
- OpenTelemetry GenAI semantic conventions:
  ``opentelemetry.semconv._incubating.attributes.gen_ai_attributes``.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Mapping

from opentelemetry.trace import Status, StatusCode

from .values import MAX_VALUE_LENGTH, capture, describe_exception, truncate

__all__ = ["attribute", "record_error", "record_usage", "set_value", "type_attributes", "usage_of"]

log = logging.getLogger(__name__)
_ERROR_LENGTH = 2_000  # characters of an exception's message kept in the status

# Langfuse
LF_TYPE = "langfuse.observation.type"
LF_INPUT = "langfuse.observation.input"
LF_OUTPUT = "langfuse.observation.output"
LF_LEVEL = "langfuse.observation.level"
LF_STATUS_MESSAGE = "langfuse.observation.status_message"
LF_MODEL = "langfuse.observation.model.name"
LF_USAGE = "langfuse.observation.usage_details"

# OpenInference
OI_KIND = "openinference.span.kind"
OI_INPUT, OI_INPUT_MIME = "input.value", "input.mime_type"
OI_OUTPUT, OI_OUTPUT_MIME = "output.value", "output.mime_type"
OI_MODEL = "llm.model_name"
OI_PROMPT_TOKENS = "llm.token_count.prompt"
OI_COMPLETION_TOKENS = "llm.token_count.completion"
OI_TOTAL_TOKENS = "llm.token_count.total"

# OpenTelemetry GenAI
GEN_AI_OPERATION = "gen_ai.operation.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"

#: trace_ext's observation types, and the OpenInference span kind of each.
KINDS = {"span": "CHAIN", "generation": "LLM"}


def type_attributes(as_type: str, model: str | None) -> dict[str, Any]:
    """The attributes a span gets when it starts, for its type (and model, for a generation)."""
    attributes: dict[str, Any] = {LF_TYPE: as_type, OI_KIND: KINDS[as_type]}
    if as_type == "generation":
        attributes[GEN_AI_OPERATION] = "chat"
    if model:
        attributes.update({LF_MODEL: model, GEN_AI_REQUEST_MODEL: model, OI_MODEL: model})
    return attributes


def _count(value: Any) -> int | None:
    return value if type(value) is int and value >= 0 else None


def record_usage(
    span,
    model: str | None = None,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    total_tokens: int | None = None,
) -> None:
    """Write a generation's model (as answered) and token counts in all three conventions.

    Counts that aren't non-negative integers are ignored; the total is the sum
    of input and output when it isn't given. Never raises.
    """
    try:
        _record_usage(span, model, input_tokens, output_tokens, total_tokens)
    except Exception:
        log.debug("trace_ext could not record a generation's usage", exc_info=True)


def _record_usage(span, model: Any, input_tokens: Any, output_tokens: Any, total_tokens: Any) -> None:
    attributes: dict[str, Any] = {}
    if isinstance(model, str) and model:
        # The model that answered is more exact than the one asked for (a dated
        # version), and is what Langfuse prices the tokens by.
        attributes.update({GEN_AI_RESPONSE_MODEL: model, LF_MODEL: model, OI_MODEL: model})
    given, produced, total = _count(input_tokens), _count(output_tokens), _count(total_tokens)
    if total is None and given is not None and produced is not None:
        total = given + produced
    usage = {key: n for key, n in (("input", given), ("output", produced), ("total", total)) if n is not None}
    if usage:
        attributes[LF_USAGE] = json.dumps(usage)
    for names, n in (
        ((GEN_AI_INPUT_TOKENS, OI_PROMPT_TOKENS), given),
        ((GEN_AI_OUTPUT_TOKENS, OI_COMPLETION_TOKENS), produced),
        ((OI_TOTAL_TOKENS,), total),
    ):
        if n is not None:
            attributes.update(dict.fromkeys(names, n))
    if attributes:
        span.set_attributes(attributes)


def _field(container: Any, name: str) -> Any:
    if isinstance(container, Mapping):
        return container.get(name)
    return getattr(container, name, None)


def usage_of(result: Any) -> dict[str, Any] | None:
    """``record_usage`` keywords from an OpenAI-style response (``.usage``, ``.model``), if it is one.

    Reads ``prompt_tokens``/``completion_tokens``/``total_tokens`` (Chat
    Completions) or ``input_tokens``/``output_tokens`` (Responses, Anthropic),
    from a dict or an object. Never raises.
    """
    try:
        usage = _field(result, "usage")
        model = _field(result, "model")
        found: dict[str, Any] = {"model": model if isinstance(model, str) else None}
        if usage is not None:
            given = _field(usage, "prompt_tokens")
            produced = _field(usage, "completion_tokens")
            found.update(
                input_tokens=given if given is not None else _field(usage, "input_tokens"),
                output_tokens=produced if produced is not None else _field(usage, "output_tokens"),
                total_tokens=_field(usage, "total_tokens"),
            )
        return found if any(v is not None for v in found.values()) else None
    except Exception:  # someone else's response object: reading it must not break the call
        return None


def record_error(span, exc: BaseException) -> None:
    """Status ERROR, an ``exception`` event, and Langfuse's level; never raises."""
    try:
        description = truncate(describe_exception(exc), _ERROR_LENGTH)
        span.set_status(Status(StatusCode.ERROR, description))
        span.set_attributes({LF_LEVEL: "ERROR", LF_STATUS_MESSAGE: description})
        try:
            span.record_exception(exc, escaped=True)
        except Exception:  # e.g. its __str__ raises: record what we can
            span.add_event("exception", {"exception.type": type(exc).__name__, "exception.message": description})
    except Exception:
        log.debug("trace_ext could not record an exception on its span", exc_info=True)


def set_value(span, which: str, value: Any, text_given: tuple[str, str] | None = None) -> None:
    """Write an input or output in Langfuse's and OpenInference's attributes."""
    try:
        text, mime = text_given or capture(value, MAX_VALUE_LENGTH)
        if which == "input":
            span.set_attributes({LF_INPUT: text, OI_INPUT: text, OI_INPUT_MIME: mime})
        else:
            span.set_attributes({LF_OUTPUT: text, OI_OUTPUT: text, OI_OUTPUT_MIME: mime})
    except Exception:
        log.debug("trace_ext could not record a span's %s", which, exc_info=True)


def attribute(value: Any) -> Any:
    """``value`` if OpenTelemetry can keep it as an attribute, else its captured text."""
    scalars = (str, bool, int, float)
    if type(value) in scalars:
        return value
    if type(value) in (list, tuple) and value and len({type(v) for v in value}) == 1 and type(value[0]) in scalars:
        return list(value)
    return capture(value, MAX_VALUE_LENGTH)[0]
