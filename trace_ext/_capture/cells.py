"""The traced-cell span lifecycle: opened in ``pre_run_cell``, closed in ``post_run_cell``.

A ``%%trace`` cell is not run by the magic. IPython transforms its body as a
cell of its own (:func:`run_body_as_cell`) and runs it as an ordinary cell
(``Out[n]``, ``await``, tracebacks, ``;``, automagic and hooks all behave as
untraced), while the pre-cell hook opens the span and makes it current, and
the post-cell hook records the outcome and ends it.

A cell that raises ends when its code does, not at the post-cell hook:
IPython renders the traceback in between (100-300 ms for a one-line
``raise``). :func:`watch_error_reports` notes the moment IPython starts to
show an error, and the span of a cell that failed ends then.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

import IPython
from IPython.core.error import UsageError
from IPython.core.magic_arguments import MagicArgumentParser
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from .values import capture, describe_exception, shown_text, truncate

__all__ = [
    "USAGE", "CellArgs", "CellTracer", "command_parser", "parse_cell_args", "split_traced_cell",
    "run_body_as_cell", "split_words", "watch_error_reports",
]

USAGE = "%%trace [NAME] [--session ID] [--user ID] [--tag TAG]... [--metadata KEY=VALUE]..."


@dataclass(frozen=True)
class CellArgs:
    name: str | None = None
    session: str | None = None
    user: str | None = None
    tags: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)


def split_words(line: str, what: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"{what}: {exc} in {line.strip()!r}; see {what}? for usage.") from None


def command_parser(prog: str, usage: str) -> MagicArgumentParser:
    # MagicArgumentParser turns argparse's errors into UsageError instead of exiting.
    return MagicArgumentParser(prog=prog, add_help=False, usage=usage)


def _cell_parser() -> MagicArgumentParser:
    parser = command_parser("%%trace", USAGE)
    parser.add_argument("name", nargs="?")
    parser.add_argument("--session")
    parser.add_argument("--user")
    parser.add_argument("--tag", action="append", default=[])
    parser.add_argument("--metadata", action="append", default=[])
    return parser


def parse_cell_args(line: str) -> CellArgs:
    """Parse the ``%%trace`` line's arguments; a mistake raises one-sentence ``UsageError``."""
    try:
        ns = _cell_parser().parse_args(split_words(line, "%%trace"))
    except UsageError as exc:
        raise UsageError(f"%%trace: {str(exc).rstrip('.')}; usage: {USAGE}") from None
    metadata = {}
    for item in ns.metadata:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"%%trace: --metadata takes KEY=VALUE, not {item!r}.")
        metadata[key] = value
    return CellArgs(ns.name, ns.session, ns.user, tuple(ns.tag), metadata)


_TRACE_LINE = re.compile(r"%%trace(?:[ \t]+(.*))?")
_IPYTHON_DIR = os.path.dirname(os.path.abspath(IPython.__file__))


def split_traced_cell(raw_cell: str) -> tuple[str, str] | None:
    """``(argument line, body)`` if the cell starts with ``%%trace``, else None."""
    lines = raw_cell.splitlines(keepends=True)
    while lines and not lines[0].strip():
        lines.pop(0)  # IPython ignores leading blank lines too
    if not lines:
        return None
    match = _TRACE_LINE.fullmatch(lines[0].strip())
    if match is None:
        return None
    return match.group(1) or "", "".join(lines[1:])


def _traced(raw_cell: str) -> tuple[str, str] | None:
    """``(argument line, body)`` of a ``%%trace`` cell with valid arguments, else None.

    With invalid arguments the cell is left to IPython, which runs the
    ``%%trace`` magic itself, and that raises the UsageError.
    """
    parsed = split_traced_cell(raw_cell)
    if parsed is None:
        return None
    try:
        parse_cell_args(parsed[0])
    except UsageError:
        return None
    return parsed


def _wrap(owner, name: str, make: Callable[[Callable], Callable]) -> Callable[[], None]:
    """Replace ``owner.name`` by ``make(original)``; returns the undo function.

    If someone wrapped the same method on top of ours meanwhile, the undo leaves
    ours in place, calling straight through, so their wrapper keeps working.
    """
    own = name in vars(owner)
    if own:
        original = vars(owner)[name]
    else:
        # The class's method, looked up at each call: code that replaces it on the
        # class (IPython's own tests do) gets the behaviour it asked for.
        def original(*args, **kwargs):
            method = getattr(type(owner), name)
            bound = method.__get__(owner, type(owner)) if hasattr(method, "__get__") else method
            return bound(*args, **kwargs)

    active = [True]
    replacement = make(original)

    @functools.wraps(getattr(owner, name))
    def wrapper(*args, **kwargs):
        if active[0]:
            return replacement(*args, **kwargs)
        return original(*args, **kwargs)

    def undo() -> None:
        active[0] = False
        if vars(owner).get(name) is wrapper:
            if own:
                setattr(owner, name, original)
            else:
                delattr(owner, name)  # the class's method again

    setattr(owner, name, wrapper)
    return undo


def run_body_as_cell(shell) -> Callable[[], None]:
    """Make IPython run a ``%%trace`` cell's body exactly as a cell of its own.

    ``transform_cell`` is where IPython turns a cell into Python: cleanup of
    leading blank lines and indentation, input transformers, then, for a
    one-line cell, the prefilter (automagic, aliases, autocall, macros). For
    a ``%%trace`` cell it gets the body alone, so a one-line body is a one-line
    cell, and the ``%%trace`` line comes back as a blank first line, so
    line numbers in tracebacks match the cell as written. Nothing is removed
    in input cleanup, so the completeness check (``is_complete_request``, the
    terminal's continuation prompt) answers as for any other cell magic.

    The cell's history entry is the cell as typed, ``%%trace`` line included,
    both raw (``_i``, ``%history``) and parsed (``In``): the body's translation
    is how it ran, not what the user wrote. (IPython reads ``;`` output
    suppression from the parsed entry, and the cell as typed ends as the body
    does.) Returns the undo function.
    """

    def transform(original):
        def transform_cell(raw_cell):
            parsed = _traced(raw_cell)
            if parsed is None:
                return original(raw_cell)
            return "\n" + original(parsed[1])
        return transform_cell

    undos = [_wrap(shell, "transform_cell", transform)]
    history = getattr(shell, "history_manager", None)
    if history is not None:

        def store(original):
            def store_inputs(line_num, source, source_raw=None):
                if source_raw is not None and _traced(source_raw) is not None:
                    source = source_raw
                return original(line_num, source, source_raw)
            return store_inputs

        undos.append(_wrap(history, "store_inputs", store))

    def undo() -> None:
        for each in reversed(undos):
            each()

    return undo


# What IPython calls, as soon as the code has raised, to render and show the error:
# run_code for an exception (SystemExit included), run_cell for a SyntaxError.
_ERROR_REPORTS = ("showtraceback", "showsyntaxerror")


def watch_error_reports(shell, reported: Callable[[], None]) -> Callable[[], None]:
    """Call ``reported`` whenever ``shell`` starts to show an error; returns the undo function."""

    def watch(original):
        def report(*args, **kwargs):
            try:
                reported()
            except Exception:  # noting the time must never cost the user their traceback
                pass
            return original(*args, **kwargs)
        return report

    undos = [_wrap(shell, name, watch) for name in _ERROR_REPORTS if hasattr(shell, name)]

    def undo() -> None:
        for each in reversed(undos):
            each()

    return undo


def _user_traceback(exc: BaseException) -> str:
    """The traceback the user sees: without IPython's own frames at the top."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_IPYTHON_DIR):
        tb = tb.tb_next
    try:
        return "".join(traceback.format_exception(type(exc), exc, tb))
    except Exception:  # e.g. the exception's __str__ raises
        return "".join(traceback.format_tb(tb)) + f"{type(exc).__name__}: <str() failed>"


class CellTracer:
    """Opens and closes the span of ``%%trace`` cells."""

    def __init__(
        self,
        tracer_factory: Callable[[], trace.Tracer],
        settings,
        session_id: str,
    ) -> None:
        self._tracer = tracer_factory
        self._settings = settings
        self._session_id = session_id
        self._span: trace.Span | None = None
        self._named = False
        self._context = None
        self._token = None
        self._error_shown_ns: int | None = None  # when IPython began to show an error in the cell

    def error_reported(self) -> None:
        """IPython starts to show an error: if the cell failed, its code ended now."""
        if self._span is not None:
            self._error_shown_ns = time.time_ns()

    def _attributes(self, args: CellArgs, body: str, count: int, cell_id: str | None) -> dict:
        limit = self._settings.max_attribute_length
        source = truncate(body, limit)
        attributes = {
            "langfuse.trace.name": args.name or f"In [{count}]",
            "langfuse.observation.input": source,
            "input.value": source,  # OpenInference: how Phoenix shows a span's input
            "openinference.span.kind": "CHAIN",
            "session.id": args.session or self._settings.session_id or self._session_id,
            "jupyter.execution_count": count,
        }
        user = args.user or self._settings.user_id
        if user:
            attributes["user.id"] = user
        if args.tags:
            attributes["langfuse.trace.tags"] = list(args.tags)
        for key, value in args.metadata.items():
            attributes[f"langfuse.trace.metadata.{key}"] = value
        if cell_id:
            attributes["jupyter.cell_id"] = cell_id
        return attributes

    def pre_run_cell(self, info, count: int) -> None:
        self.end_open_span("The cell ended without its post-run hook.")
        parsed = split_traced_cell(info.raw_cell or "")
        if parsed is None:
            return
        line, body = parsed
        try:
            args = parse_cell_args(line)
        except UsageError:
            return  # the %%trace magic runs instead and reports it
        name = args.name or f"In [{count}]"
        # A fresh, empty context: the cell is the root of a new trace, whatever
        # an earlier cell left attached (ipykernel shares one context across cells).
        span = self._tracer().start_span(
            name,
            context=otel_context.Context(),
            attributes=self._attributes(args, body, count, getattr(info, "cell_id", None)),
        )
        self._span, self._named = span, args.name is not None
        self._error_shown_ns = None
        self._context = trace.set_span_in_context(span, otel_context.Context())
        self._token = otel_context.attach(self._context)

    def post_run_cell(self, result) -> None:
        span = self._span
        if span is None:
            return
        # A failed cell's code ended when IPython began to show the error (the last
        # time it did: the cell's own code may have shown one and gone on).
        failed = result.error_before_exec is not None or result.error_in_exec is not None
        end = self._error_shown_ns if failed else None
        try:
            self._record_outcome(span, result)
        finally:
            self._close(end)

    def _record_outcome(self, span, result) -> None:
        limit = self._settings.max_attribute_length
        count = result.execution_count
        if count is not None:
            span.set_attribute("jupyter.execution_count", count)
            if not self._named:
                span.update_name(f"In [{count}]")
                span.set_attribute("langfuse.trace.name", f"In [{count}]")
        error = result.error_before_exec or result.error_in_exec
        if error is not None:
            description = truncate(describe_exception(error), limit)
            span.set_status(Status(StatusCode.ERROR, description))
            stack = truncate(_user_traceback(error), limit)
            try:
                span.record_exception(error, attributes={"exception.stacktrace": stack}, escaped=True)
            except Exception:  # an exception whose __str__ fails can't be recorded the SDK's way
                span.add_event("exception", {
                    "exception.type": type(error).__name__, "exception.message": description,
                    "exception.stacktrace": stack, "exception.escaped": "True",
                })
            span.set_attribute("langfuse.observation.level", "ERROR")
            span.set_attribute("langfuse.observation.status_message", description)
        elif result.result is not None:
            # The text IPython showed the user (no user code runs again), else a
            # time-limited repr; arrays and data frames get a shape/dtype header.
            shown = shown_text(IPython.get_ipython(), result)
            output, _mime = capture(result.result, limit, displayed=True, shown=shown)
            span.set_attribute("langfuse.observation.output", output)
            span.set_attribute("output.value", output)

    def hand_over(self, other: "CellTracer") -> None:
        """Give the open cell span to ``other`` (``%reload_ext`` inside a ``%%trace`` cell):
        the cell goes on and ends, under the new extension, as if nothing had happened."""
        other._span, other._named, other._context, other._token = self._span, self._named, self._context, self._token
        other._error_shown_ns = self._error_shown_ns
        self._span = self._context = self._token = None

    def end_open_span(self, reason: str) -> None:
        """End a span whose cell never reported back (so it isn't left open forever)."""
        span = self._span
        if span is not None:
            span.set_status(Status(StatusCode.ERROR, reason))
            self._close()

    def _close(self, end_ns: int | None = None) -> None:
        span, context, token = self._span, self._context, self._token
        self._span = self._context = self._token = None
        self._error_shown_ns = None
        if span is not None:
            span.end(end_time=end_ns or time.time_ns())
        # Cells with top-level await run in their own asyncio task, whose context
        # died with it; only detach where our context is still the current one.
        if token is not None and otel_context.get_current() is context:
            otel_context.detach(token)
