"""Command line: ``python -m trace_ext run|show|send|export|install|uninstall`` (also ``trace-ext``).

``run`` executes a notebook in a real kernel and shows the traces it recorded;
``show`` prints the newest stored traces (with the filters of ``%trace show``);
``send`` delivers spans kept locally to an endpoint; ``export`` writes stored
spans to a file as OTLP JSON; ``install`` adds a kernelspec that loads
trace_ext in every notebook that picks it. User mistakes: one sentence, exit 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Sequence

__all__ = ["DISPLAY_NAME", "KERNEL_NAME", "kernelspec", "main"]

KERNEL_NAME = "python3-trace-ext"
DISPLAY_NAME = "Python 3 (trace_ext)"
# Mirrors jupyter-config/kernels/python3-trace-ext/kernel.json (a test keeps
# them equal): that file is not part of the installed package.
_KERNEL_ARGS = ["-m", "ipykernel_launcher", "-f", "{connection_file}"]
_LOAD_EXTENSION = "--ext=trace_ext"  # IPython's alias for InteractiveShellApp.extra_extensions
# The kernel `run` uses: this interpreter, under a name no other kernelspec has.
_RUN_KERNEL = "trace-ext-run"
SHOW_LIMIT = 20  # traces `show` prints unless told


class CommandError(Exception):
    """A mistake the user can fix: its message is printed alone, then exit 1."""


def kernelspec(display_name: str = DISPLAY_NAME, load_extension: bool = True) -> dict:
    """kernel.json content for a kernel that runs this interpreter (and loads trace_ext)."""
    argv = [sys.executable, *_KERNEL_ARGS] + ([_LOAD_EXTENSION] if load_extension else [])
    return {"argv": argv, "display_name": display_name, "language": "python",
            "metadata": {"debugger": True}}


def _write_spec(root: str, name: str, spec: dict) -> str:
    folder = os.path.join(root, "kernels", name)
    os.makedirs(folder)
    with open(os.path.join(folder, "kernel.json"), "w", encoding="utf-8") as f:
        json.dump(spec, f, indent=2)
    return folder


def _store_path(option: str | None) -> str:
    if option:
        return os.path.abspath(os.path.expanduser(option))
    from .config import TraceExt

    return TraceExt().store_path


def _open_existing(path: str):
    """The store at ``path``, or None (and a sentence saying so) if nothing was recorded there;
    a store that doesn't exist is left uncreated."""
    if not os.path.exists(path):
        print(f"Nothing has been recorded at {path} yet.")
        return None
    from ._store.store import SpanStore

    return SpanStore(path)


def _print_traces(path: str, query) -> None:
    """The trace list as text and one line of counts."""
    from ._display.view import trace_view

    store = _open_existing(path)
    if store is None:
        return
    try:
        print(trace_view(store, query, _backend()).text())
        c = store.counts()
    finally:
        store.close()
    print(f"Store {path}: {c.pending} pending · {c.sent} sent · {c.failed} failed"
          f" · {c.local} stored locally")


def _backend():
    """Where the environment sends spans, as a backend the view can link to (or None)."""
    from ._delivery.destination import sender_config
    from ._display.links import backend_of
    from .config import TraceExt

    config, _destination, _warning = sender_config(TraceExt())
    return backend_of(config.destination.url, config.destination.headers) if config else None


def _query(args: argparse.Namespace, default_limit: int):
    from IPython.core.error import UsageError

    from ._display.view import query_from

    try:
        return query_from(args, default_limit)
    except UsageError as exc:
        raise CommandError(str(exc)) from None


def _show(args: argparse.Namespace) -> int:
    _print_traces(_store_path(args.store), _query(args, SHOW_LIMIT))
    return 0


def _selection(args: argparse.Namespace) -> tuple[float, str | None]:
    from IPython.core.error import UsageError

    from ._display.traces import parse_since, trace_prefix

    try:
        return parse_since(args.since), trace_prefix(args.trace)
    except UsageError as exc:
        raise CommandError(str(exc)) from None


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():  # not echoed: it may be a pasted key
        raise argparse.ArgumentTypeError("expected NAME=VALUE")
    return name.strip(), value.strip()


def _send(args: argparse.Namespace) -> int:
    from ._delivery.destination import sender_config
    from ._delivery.local import send_local_spans
    from .config import SettingError, TraceExt

    since, trace_id = _selection(args)
    settings = TraceExt()
    try:
        if args.endpoint:
            settings.endpoint = args.endpoint
        settings.headers = dict(args.header)
    except Exception as exc:  # a TraitError from the endpoint's or the headers' check
        said = str(exc).replace("'endpoint' trait of a TraceExt instance", "--endpoint")
        raise CommandError(said.replace("TraceExt.headers has", "A --header has")) from None
    config, _destination, warning = sender_config(settings)
    if config is None:
        raise CommandError(warning or "No endpoint to send to: give --endpoint URL (or set "
                           "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or the LANGFUSE_* variables).")
    store = _open_existing(_store_path(args.store))
    if store is None:
        return 0
    try:
        report = send_local_spans(store, config, args.timeout, since, trace_id)
    except SettingError as exc:
        raise CommandError(str(exc)) from None
    finally:
        store.close()
    print(report)
    return 1 if report.failed or report.left else 0


def _export(args: argparse.Namespace) -> int:
    from ._store.export import export_json_lines

    since, trace_id = _selection(args)
    store = _open_existing(_store_path(args.store))
    if store is None:
        return 0
    path = os.path.abspath(args.file)
    try:
        count = export_json_lines(store, path, since, trace_id)
    finally:
        store.close()
    print(f"Wrote {count} spans to {path} (OTLP JSON, one request per line).")
    return 0


def _read_notebook(path: str):
    import nbformat

    try:
        return nbformat.read(path, as_version=4)
    except ValueError as exc:  # not JSON; a missing file is an OSError for main()
        raise CommandError(f"{path} could not be read as a notebook: {exc}") from None


def _encrypted(spec: dict):
    """Config for a CurveZMQ-encrypted kernel connection, where jupyter_client offers one."""
    # Then code and outputs don't cross the loopback in plain text (and
    # ipykernel doesn't print a warning on every run that they do).
    import zmq
    from ipykernel.kernelapp import IPKernelApp
    from jupyter_client.manager import KernelManager
    from traitlets.config import Config

    # Both ends must know CurveZMQ (recent jupyter_client and ipykernel); else plain TCP.
    manager_can = "transport_encryption" in KernelManager.class_trait_names()
    kernel_can = hasattr(IPKernelApp, "_apply_curve_server_options")
    if not (zmq.has("curve") and manager_can and kernel_can):
        return Config()
    spec["metadata"]["supported_encryption"] = ["curve"]
    return Config({"KernelManager": {"transport_encryption": "auto"}})


def _execute(nb, folder: str, args, config) -> tuple[int, str | None]:
    """Run every cell; return (code cells run, None) or (cells run, why it stopped)."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    started: list[int] = []

    def on_cell_start(cell, cell_index: int) -> None:
        if cell.cell_type == "code":
            started.append(cell_index)

    client = NotebookClient(
        nb,
        timeout=args.timeout,
        kernel_name=_RUN_KERNEL,
        resources={"metadata": {"path": folder}},
        on_cell_start=on_cell_start,
        config=config,
    )
    env = dict(os.environ)
    if args.store:
        env["TRACE_EXT_STORE_PATH"] = _store_path(args.store)
    try:
        client.execute(env=env)
    except CellExecutionError as exc:
        return len(started), f"cell {started[-1] + 1} raised {exc.ename}: {exc.evalue}"
    except CellTimeoutError:
        return len(started), f"cell {started[-1] + 1} ran longer than {args.timeout} seconds"
    except RuntimeError as exc:  # DeadKernelError, or a kernel that never started
        return len(started), f"the kernel stopped or never started ({exc})"
    return len(started), None


def _run(args: argparse.Namespace) -> int:
    path = os.path.abspath(args.notebook)
    nb = _read_notebook(path)
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="trace-ext-run-") as kernels:
        spec = kernelspec("trace_ext run", load_extension=False)
        config = _encrypted(spec)
        _write_spec(kernels, _RUN_KERNEL, spec)
        old_path = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [kernels, old_path]))
        try:
            cells, failure = _execute(nb, os.path.dirname(path), args, config)
        finally:
            os.environ.pop("JUPYTER_PATH")
            if old_path is not None:
                os.environ["JUPYTER_PATH"] = old_path
    counted = f"{cells} code cell{'' if cells == 1 else 's'}"
    if failure:
        print(f"{args.notebook} stopped after {counted}: {failure}.")
    else:
        print(f"{args.notebook} ran ({counted}).")
    # Without --store the kernel read TRACE_EXT_STORE_PATH from this process's
    # environment, so the default path here is the one it wrote to.
    from ._display.traces import Query

    _print_traces(_store_path(args.store), Query(limit=50, since=start))
    if args.output:
        import nbformat

        nbformat.write(nb, args.output)  # an OSError is reported by main()
    return 1 if failure else 0


def _install(args: argparse.Namespace) -> int:
    from jupyter_client.kernelspec import KernelSpecManager

    prefix = sys.prefix if args.sys_prefix else args.prefix
    user = prefix is None  # --user is the default
    with tempfile.TemporaryDirectory(prefix="trace-ext-spec-") as root:
        source = _write_spec(root, args.name, kernelspec(args.display_name))
        manager = KernelSpecManager()
        try:
            destination = manager.install_kernel_spec(source, args.name, user=user, prefix=prefix)
        except ValueError:  # jupyter_client's check of the name
            raise CommandError(
                f"{args.name!r} can't name a kernelspec: use letters, digits, '-', '.' and '_'."
            ) from None
    print(f"Installed kernelspec {args.name!r} in {destination}.")
    print(f"Pick {args.display_name!r} in Jupyter's kernel menu to load trace_ext in a notebook.")
    _warn_if_hidden(destination)
    return 0


def _warn_if_hidden(destination: str) -> None:
    """A --prefix outside Jupyter's search path installs a spec nobody will see: say so."""
    from jupyter_core.paths import jupyter_path

    data_dir = os.path.dirname(os.path.dirname(os.path.abspath(destination)))
    if all(os.path.abspath(p) != data_dir for p in jupyter_path()):
        print(f"Jupyter looks there only if {data_dir} is on JUPYTER_PATH.")


def _uninstall(args: argparse.Namespace) -> int:
    from jupyter_client.kernelspec import KernelSpecManager

    try:
        removed = KernelSpecManager().remove_kernel_spec(args.name)
    except KeyError:  # jupyter_client's NoSuchKernel
        print(f"No kernelspec named {args.name!r} is installed; nothing to remove.")
        return 0
    print(f"Removed kernelspec {args.name!r} from {removed}.")
    return 0


def _above_zero(convert, what: str):
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = 0
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected {what} above 0, not {text!r}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trace_ext",
        description="Run notebooks with trace_ext, read its span store, install its kernelspec.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    add = commands.add_parser

    run = add("run", help="execute a notebook in a real kernel and show the traces it recorded")
    run.add_argument("notebook", metavar="NOTEBOOK")
    run.add_argument("--timeout", type=_above_zero(int, "whole seconds"), default=600,
                     metavar="SECONDS", help="how long one cell may run (default: 600)")
    run.add_argument("--store", metavar="PATH", help="span store for the kernel to write to")
    run.add_argument("--output", metavar="PATH", help="also save the executed notebook here")

    from ._display.view import add_filter_arguments

    store_help = "span store (default: $TRACE_EXT_STORE_PATH or Jupyter's data dir)"
    show = add("show", help="print the newest traces in the local span store")
    add_filter_arguments(show, SHOW_LIMIT)
    show.add_argument("--store", metavar="PATH", help=store_help)

    send = add("send", help="send spans kept locally (recorded with no endpoint) to an endpoint")
    send.add_argument("--endpoint", metavar="URL",
                      help="OTLP/HTTP traces URL (default: from the environment, as a kernel finds it)")
    send.add_argument("--header", type=_header, action="append", default=[], metavar="NAME=VALUE",
                      help="an HTTP header to send (repeat for several)")
    send.add_argument("--timeout", type=_above_zero(float, "seconds"), default=60.0, metavar="SECONDS",
                      help="how long to keep trying (default: 60)")
    export = add("export", help="write stored spans to FILE as OTLP JSON (the Collector file exporter's format)")
    export.add_argument("file", metavar="FILE")
    for command in (send, export):
        command.add_argument("--since", metavar="AGE|DATE", help="only spans saved since: 30m, 1h, 2d, or a date")
        command.add_argument("--trace", metavar="ID", help="only this trace (its hex id, or the start of it)")
        command.add_argument("--store", metavar="PATH", help=store_help)

    install = add("install", help="install a kernelspec that loads trace_ext in every notebook")
    where = install.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="for this user (the default)")
    where.add_argument("--sys-prefix", action="store_true", help="into this Python's environment")
    where.add_argument("--prefix", metavar="PREFIX", help="into PREFIX/share/jupyter/kernels")
    install.add_argument("--display-name", default=DISPLAY_NAME, metavar="TEXT",
                         help=f"name in Jupyter's kernel menu (default: {DISPLAY_NAME!r})")
    uninstall = add("uninstall", help="remove that kernelspec")
    for command in (install, uninstall):
        command.add_argument("--name", default=KERNEL_NAME, help=f"default: {KERNEL_NAME}")
    for command, func in ((run, _run), (show, _show), (send, _send), (export, _export), (install, _install),
                          (uninstall, _uninstall)):
        command.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m trace_ext`` and ``trace-ext``; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except CommandError as exc:
        print(exc, file=sys.stderr)
    except OSError as exc:  # a path the user gave can't be read or written
        where = f": {exc.filename}" if exc.filename else ""
        print(f"{exc.strerror or exc}{where}.", file=sys.stderr)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
