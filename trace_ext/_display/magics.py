"""The ``%%trace`` / ``%trace`` magics and ``%config TraceExt.*`` errors: what the user types.

The ``%%trace`` line's grammar belongs to the cell's span (:mod:`.._capture.cells`); this
module only turns commands into calls on the loaded extension.
"""

from __future__ import annotations

import ast
import functools
import os
import re
from typing import Callable

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.display import display
from traitlets import TraitError

from .._capture.cells import command_parser, parse_cell_args, split_words
from .traces import parse_since, trace_prefix
from .view import FILTER_USAGE, add_filter_arguments, query_from

__all__ = ["TraceMagics", "wrap_config_magic", "wrap_load_ext_magic"]

_LINE_COMMANDS = "status, flush [--timeout SECONDS], show [N] [filters], send, export FILE or retry"
SHOW_LIMIT = 20  # traces %trace show lists unless told
_SEND_USAGE = "%trace send [--since AGE|DATE] [--trace ID]"
_EXPORT_USAGE = "%trace export FILE [--since AGE|DATE] [--trace ID]"


def _selection_parser(prog: str, usage: str):
    parser = command_parser(prog, usage)
    parser.add_argument("--since", metavar="AGE|DATE")
    parser.add_argument("--trace", metavar="ID")
    return parser


@magics_class
class TraceMagics(Magics):
    """The ``trace`` line and cell magic."""

    def __init__(self, shell, extension) -> None:
        # ``extension`` is the loaded _extension.Extension (not imported: it imports this module).
        super().__init__(shell)
        self._ext = extension

    @line_cell_magic
    def trace(self, line: str, cell: str | None = None):
        """Trace a cell as a span, or inspect trace_ext.

        Cell magic::

            %%trace [NAME] [--session ID] [--user ID] [--tag TAG]... [--metadata KEY=VALUE]...

        Runs the cell exactly as it would run untraced (output, errors,
        ``await``, ``Out[n]``) and records it as the root span of a new trace:
        the cell source as input, the repr of its value as output, an error
        status with the traceback if it raises, its timing and execution
        count. Spans made inside the cell by any OpenTelemetry tracer nest
        under it.

          NAME                 span and trace name (default: "In [n]")
          --session ID         session.id (default: one per kernel session)
          --user ID            user.id
          --tag TAG            a trace tag; repeat for several
          --metadata KEY=VALUE trace metadata; repeat for several

        Line magic::

            %trace status              show delivery status (pending / sent / failed)
            %trace flush [--timeout S] wait up to S seconds (default 10) for delivery, then
                                       say where the store stands (delivered / pending, why)
            %trace show [N] [filters]  the newest traces: a list whose rows open into waterfalls
                  --limit N  --name TEXT  --errors  --session ID  --user ID  --tag TAG
                  --since AGE|DATE (30m, 1h, 2d, 2026-12-01T14:00)  --trace ID
            %trace send [--since AGE|DATE] [--trace ID]
                                       send spans kept locally to the configured endpoint
            %trace export FILE [--since AGE|DATE] [--trace ID]
                                       write stored spans to FILE as OTLP JSON lines
            %trace retry               queue spans that failed for another try

        Settings: ``%config TraceExt`` lists them; ``%config TraceExt.endpoint = "..."``
        changes one at once.
        """
        if cell is not None:
            return self._traced_cell_fallback(line, cell)
        words = split_words(line, "%trace")
        command, rest = (words[0], words[1:]) if words else ("status", [])
        if command == "status" and not rest:
            self._ext.status_display().show()
        elif command == "flush":
            parser = command_parser("%trace flush", "%trace flush [--timeout SECONDS]")
            parser.add_argument("--timeout", type=float, default=10.0)
            ns = parser.parse_args(rest)
            if ns.timeout < 0:
                raise UsageError("%trace flush: --timeout must be a number of seconds ≥ 0.")
            print(self._ext.flush(ns.timeout))
        elif command == "show":
            parser = command_parser("%trace show", f"%trace show {FILTER_USAGE}")
            add_filter_arguments(parser, SHOW_LIMIT)
            display(self._ext.view(query_from(parser.parse_args(rest), SHOW_LIMIT)))
        elif command == "send":
            ns = _selection_parser("%trace send", _SEND_USAGE).parse_args(rest)
            print(self._ext.send_local(parse_since(ns.since), trace_prefix(ns.trace)))
        elif command == "export":
            parser = _selection_parser("%trace export", _EXPORT_USAGE)
            parser.add_argument("file", metavar="FILE")
            ns = parser.parse_args(rest)
            path = os.path.abspath(os.path.expanduser(ns.file))
            try:
                count = self._ext.export(path, parse_since(ns.since), trace_prefix(ns.trace))
            except OSError as exc:
                raise UsageError(f"%trace export: could not write {path} ({exc.strerror or exc}).") from None
            print(f"Wrote {count} spans to {path} (OTLP JSON, one request per line).")
        elif command == "retry" and not rest:
            print(self._ext.retry_failed())
        else:
            raise UsageError(f"%trace {line.strip()!r} is not a command: use {_LINE_COMMANDS}.")

    def _traced_cell_fallback(self, line: str, cell: str):
        """Reached only when the cell magic is called directly (``run_cell_magic``).

        A notebook cell starting with ``%%trace`` never gets here: IPython
        runs its body as a cell of its own and the pre/post-cell hooks trace
        it (``_capture.cells.run_body_as_cell``). Here bad arguments raise ``UsageError``; good ones run the body
        in a span that is a child of the current one.
        """
        args = parse_cell_args(line)
        shell = self.shell
        tree = ast.parse(shell.transform_cell(cell))
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        with self._ext.sdks.providers.tracer().start_as_current_span(args.name or "%%trace"):
            exec(compile(tree, "<trace cell>", "exec"), shell.user_ns)
            if last is not None:
                expression = ast.Expression(last.value)
                return eval(compile(expression, "<trace cell>", "eval"), shell.user_ns)
        return None


def wrap_load_ext_magic(shell, show_status: Callable[[], None]) -> Callable[[], None]:
    """Make ``%load_ext trace_ext``, once loaded, show the status instead of "already loaded".

    Re-running a notebook's setup cell is common; IPython's answer would replace
    the status in that cell with a line about reloading. Returns the undo function.
    """
    magics = shell.magics_manager.magics["line"]
    original = magics.get("load_ext")
    if original is None:
        return lambda: None

    @functools.wraps(original)
    def load_ext(line: str = ""):
        if line.strip() == "trace_ext" and "trace_ext" in shell.extension_manager.loaded:
            show_status()
            return None
        return original(line)

    magics["load_ext"] = load_ext

    def restore() -> None:
        if magics.get("load_ext") is load_ext:
            magics["load_ext"] = original

    return restore


_TRAIT_ERROR = re.compile(r"The '(\w+)' trait of a TraceExt instance")


def wrap_config_magic(shell, settings) -> Callable[[], None]:
    """Make ``%config TraceExt.x = value`` raise ``UsageError`` for a bad value.

    IPython's ``%config`` logs every error as a bare log line and reports the
    cell as successful. For ``TraceExt`` lines we set the trait ourselves so a
    mistake is a ``UsageError`` (the cell fails, the old value stays); every
    other line goes to IPython's own ``%config``. Returns the undo function.
    """
    magics = shell.magics_manager.magics["line"]
    # IPython 9 registers %config lazily: resolve it first, so we wrap (and
    # later put back) the real magic rather than its placeholder.
    shell.find_line_magic("config")
    original = magics.get("config")
    if original is None:
        return lambda: None

    @functools.wraps(original)
    def config(line: str = ""):
        match = re.fullmatch(r"\s*TraceExt\.(\w+)\s*=(.*)", line, re.S)
        if match is None:
            # Expand {var} as IPython would have: in the frame that ran the magic
            # (0 is var_expand, 1 this wrapper, 2 run_line_magic, 3 its caller).
            return original(shell.var_expand(line, depth=2))
        name, expression = match.groups()
        if name not in settings.trait_names(config=True):
            raise UsageError(f"TraceExt has no setting {name!r}; `%config TraceExt` lists them.")
        value = shell.ev(expression.strip())
        try:
            setattr(settings, name, value)
        except TraitError as exc:
            if name == "headers" and not isinstance(exc, UsageError):  # traitlets would quote the value, which may be a key
                raise UsageError(
                    "TraceExt.headers must be a dict of header names to values, such as "
                    "{'Authorization': 'Bearer ...'}; the old headers stay."
                ) from None
            raise UsageError(_TRAIT_ERROR.sub(r"TraceExt.\1", str(exc))) from None

    # A TraceExt value is a Python expression taken as written: IPython's {var}
    # expansion would turn a redact pattern's "{8,}" into "(8,)". Other lines
    # are expanded as IPython always does.
    config._ipython_magic_no_var_expand = True  # type: ignore[attr-defined]
    magics["config"] = config

    def restore() -> None:
        if magics.get("config") is config:
            magics["config"] = original

    return restore
