"""The command line: `run` a notebook, `show` the store, `install`/`uninstall` the kernelspec."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from trace_ext.__main__ import DISPLAY_NAME, KERNEL_NAME, kernelspec
from trace_ext._store.store import SpanStore

from .conftest import ROOT, clean_env, require, wait_until
from .kernel import Kernel

QUICKSTART = ROOT / "notebooks" / "quickstart.ipynb"
TEMPLATE = ROOT / "jupyter-config" / "kernels" / KERNEL_NAME / "kernel.json"
COUNTS = re.compile(r"(\d+) pending · (\d+) sent · (\d+) failed · (\d+) stored locally")


def cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    """``python -m trace_ext ARGS`` with none of the developer's routing variables."""
    return subprocess.run(
        [sys.executable, "-m", "trace_ext", *args],
        capture_output=True, text=True, env=clean_env(**env), cwd=str(ROOT), timeout=180,
    )


def line_starting(output: str, name: str) -> str:
    """The tree line of the span called ``name`` (not a detail line that mentions it)."""
    matches = [line for line in output.splitlines() if line.strip().startswith(f"{name}  ")]
    assert len(matches) == 1, f"expected one {name!r} span line in:\n{output}"
    return matches[0]


def indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def tree_lines(output: str) -> list[str]:
    """Lines of the trace tree: from the first 'trace <id>' line up to the counts line."""
    lines = output.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("trace "))
    return [line for line in lines[first:] if not line.startswith("Store ")]


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """The quickstart notebook run once through the CLI, with its own store."""
    store = tmp_path_factory.mktemp("quickstart") / "spans.sqlite3"
    return cli("run", str(QUICKSTART), "--store", str(store)), store


def test_run_executes_the_quickstart_and_prints_its_traces(quickstart_run):
    result, store = quickstart_run
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "quickstart.ipynb ran (" in out.splitlines()[0]

    parent, child = line_starting(out, "quickstart-answer"), line_starting(out, "think")
    assert indent(child) > indent(parent)
    assert "ERROR" in line_starting(out, "failing-cell")

    pending, _sent, _failed, local = map(int, COUNTS.search(out).groups())
    assert pending == 0
    assert local > 0
    assert str(store) in out

    [think], [answer] = spans_named(store, "think"), spans_named(store, "quickstart-answer")
    assert think.parent_id == answer.span_id


def test_run_of_a_failing_notebook_reports_the_error_and_exits_1(tmp_path, store_path):
    notebook = tmp_path / "fails.ipynb"
    cells = ["%load_ext trace_ext", "%%trace doomed\n1 / 0", "print('not reached')"]
    nbformat.write(new_notebook(cells=[new_code_cell(c) for c in cells]), str(notebook))
    written = notebook.read_bytes()

    result = cli("run", str(notebook), "--store", str(store_path))

    assert result.returncode == 1
    first = result.stdout.splitlines()[0]
    assert "cell 2 raised ZeroDivisionError: division by zero" in first
    assert "ERROR" in line_starting(result.stdout, "doomed")
    assert "Traceback" not in result.stdout + result.stderr
    assert notebook.read_bytes() == written  # without --output nothing is written back


def test_show_prints_the_same_tree_as_run(quickstart_run):
    run, store = quickstart_run
    shown = cli("show", "2", "--store", str(store))
    assert shown.returncode == 0, shown.stderr
    assert tree_lines(shown.stdout) == tree_lines(run.stdout)
    assert COUNTS.search(shown.stdout)


def test_show_on_a_missing_store_says_so_and_creates_nothing(tmp_path):
    missing = tmp_path / "never" / "spans.sqlite3"
    result = cli("show", "--store", str(missing))
    assert result.returncode == 0
    assert result.stdout.strip() == f"Nothing has been recorded at {missing} yet."
    assert not missing.parent.exists()


def test_kernelspec_template_matches_the_code():
    template = json.loads(TEMPLATE.read_text())
    code = kernelspec()
    assert template["argv"][0] == "python"
    assert template["argv"][1:] == code["argv"][1:]
    assert template["display_name"] == code["display_name"] == DISPLAY_NAME
    assert {k: v for k, v in template.items() if k != "argv"} == {
        k: v for k, v in code.items() if k != "argv"
    }


def spans_named(store: Path, name: str) -> list:
    if not store.exists():
        return []
    db = SpanStore(str(store))
    try:
        return [s for trace in db.recent_traces(20) for s in trace if s.name == name]
    finally:
        db.close()


def test_installed_kernelspec_loads_trace_ext_and_uninstalls(tmp_path, store_path, monkeypatch):
    prefix = tmp_path / "prefix"
    installed = cli("install", "--prefix", str(prefix))
    assert installed.returncode == 0, installed.stderr
    assert DISPLAY_NAME in installed.stdout
    spec_file = prefix / "share" / "jupyter" / "kernels" / KERNEL_NAME / "kernel.json"
    argv = json.loads(spec_file.read_text())["argv"]
    assert argv[0] == sys.executable and "--ext=trace_ext" in argv

    data_dir = str(prefix / "share" / "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join([data_dir, os.environ["JUPYTER_PATH"]]))
    kernel = Kernel(clean_env(TRACE_EXT_STORE_PATH=str(store_path)), str(tmp_path), KERNEL_NAME)
    try:
        # No %load_ext: the kernelspec loaded it.
        assert kernel.value("'trace' in get_ipython().magics_manager.magics['cell']") is True
        kernel.ok("%%trace from-kernelspec\n40 + 2")
        # Durable (in the journal) before the cell replied; in the store file once imported.
        assert wait_until(lambda: spans_named(store_path, "from-kernelspec"), 20)
    finally:
        kernel.shutdown(now=True)

    removed = cli("uninstall", "--name", KERNEL_NAME, JUPYTER_PATH=data_dir)
    assert removed.returncode == 0, removed.stderr
    assert not spec_file.parent.exists()
    absent = cli("uninstall", "--name", "trace-ext-never-installed", JUPYTER_PATH=data_dir)
    assert absent.returncode == 0
    assert "nothing to remove" in absent.stdout


def test_the_readme_test_command_leaves_the_trace_ext_kernelspec_installed():
    """`pip install -e .` drops the kernelspec `pip install .` installed; the set-up puts it back."""
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager().find_kernel_specs()
    require("python3-trace-ext" in specs, "the kernelspec is missing: run `python -m tests.backends install`")
    spec = KernelSpecManager().get_kernel_spec("python3-trace-ext")
    assert spec.display_name == "Python 3 (trace_ext)"


def test_show_takes_the_same_filters_as_the_magic(start_kernel, store_path):
    kernel = start_kernel()
    kernel.ok("%load_ext trace_ext")
    kernel.ok("%%trace alpha --tag keep --user ann\n1")
    kernel.execute("%%trace beta --session s-9\nraise KeyError('b')")
    kernel.ok("%%trace gamma --tag keep\n3")
    kernel.shutdown()

    def names(*args: str) -> list[str]:
        result = cli("show", "--store", str(store_path), *args)
        assert result.returncode == 0, result.stderr
        return re.findall(r"^trace (\S+) ·", result.stdout, re.M)

    assert names() == ["gamma", "beta", "alpha"]  # newest first
    assert names("--tag", "keep") == ["gamma", "alpha"]
    assert names("--errors") == ["beta"]
    assert names("--user", "ann") == ["alpha"]
    assert names("--session", "s-9") == ["beta"]
    assert names("--name", "AMM") == ["gamma"]
    assert names("--limit", "1") == ["gamma"]
    assert names("2") == ["gamma", "beta"]
    assert names("--since", "1h") == ["gamma", "beta", "alpha"]
    assert names("--since", "2999-01-01") == []
    beta = next(s.trace_id for s in spans_named(store_path, "beta"))
    assert names("--trace", beta[:6]) == ["beta"]
    shown = cli("show", "--store", str(store_path), "--errors").stdout
    assert "error: KeyError: 'b'" in shown and "session s-9" in shown
    for bad, says in ((("--since", "soon"), "--since takes an age"), (("--trace", "not-hex"), "--trace takes"),
                      (("0",), "expected a positive number of traces")):
        result = cli("show", "--store", str(store_path), *bad)
        assert result.returncode != 0 and "Traceback" not in result.stderr, bad
        assert says in result.stderr.strip().splitlines()[-1], result.stderr  # one sentence (after argparse's usage)
