"""A pytest plugin for IPython's own test suite: the test shell, with trace_ext, every cell traced.

Copied beside IPython's tests and loaded with ``-p`` by :mod:`tests.ipython_suite.run`
(under its own module name, so IPython's ``tests`` package is never confused with ours).

``TRACE_EXT_SUITE``: ``plain`` leaves the shell alone; ``loaded`` runs ``%load_ext trace_ext``;
``traced`` also makes every cell the shell runs start with ``%%trace``.
``TRACE_EXT_SUITE_OUTCOMES``: a file for ``{test id: passed|failed|skipped}`` as JSON.
"""

from __future__ import annotations

import json
import os

import pytest

_outcomes: dict[str, str] = {}


def _shell():
    from IPython.core.interactiveshell import InteractiveShell

    # IPython's conftest made the test shell (a TerminalInteractiveShell) when it was imported.
    return InteractiveShell.instance()


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session) -> None:
    mode = os.environ.get("TRACE_EXT_SUITE", "plain")
    if mode == "plain":
        return
    shell = _shell()
    shell.extension_manager.load_extension("trace_ext")
    if mode != "traced":
        return
    run_cell = shell.run_cell

    def traced_run_cell(*args, **kwargs):
        if args:
            args = ("%%trace\n" + args[0], *args[1:])
        else:
            kwargs["raw_cell"] = "%%trace\n" + kwargs["raw_cell"]
        return run_cell(*args, **kwargs)

    shell.run_cell = traced_run_cell


def pytest_runtest_logreport(report) -> None:
    # A test fails if any of its phases (setup, call, teardown) fails.
    if report.when == "call" or report.outcome != "passed":
        if _outcomes.get(report.nodeid, "passed") == "passed":
            _outcomes[report.nodeid] = report.outcome


def pytest_sessionfinish(session) -> None:
    path = os.environ.get("TRACE_EXT_SUITE_OUTCOMES")
    if path:
        with open(path, "w") as f:
            json.dump(_outcomes, f, indent=0, sort_keys=True)
