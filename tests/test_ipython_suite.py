"""IPython's own shell tests, of the installed IPython, with every cell the test shell runs traced.

A test that passes with the plain shell must pass when each cell starts with
``%%trace`` (trace_ext loaded), except the few below, which read the cell as
typed, and the cell as typed now has one more line. Each says why; an entry
may not apply to every IPython version (IPython 8.12 runs an empty cell's
``%%trace`` without counting it).
"""

from __future__ import annotations

import pytest

from tests.ipython_suite import run

# "file::test": IPython 8 keeps its tests in IPython/<part>/tests (some in classes),
# IPython 9 in tests/; an entry matches the file's name and the test's own name.
READ_THE_CELL_AS_TYPED = {
    # In[n], _i and %history hold the cell as typed, %%trace line included.
    "test_interactiveshell.py::test_In_variable": "In[-1] is '%%trace\\n1;', not '1;'",
    "test_magic.py::test_reset_in": "_i is '%%trace\\nparrot', so 'parrot' is not among _i, _ii, _iii",
    "test_magic.py::test_macro_run": "a macro made from history holds the cells' %%trace lines",
    "test_magic.py::test_notebook_export_json_with_output": "%notebook exports the cells as typed, %%trace lines included",
    # An empty cell with %%trace in front is no longer empty: it runs, and counts.
    "test_interactiveshell.py::test_run_empty_cell": "'%%trace' alone is a cell that runs and takes an execution count",
    # Traceback line numbers count the %%trace line, so they match the cell as written.
    "test_ultratb.py::test_recursion_one_frame": "the recursing frame is at line 6, not 5",
    "test_ultratb.py::test_recursion_three_frames": "the recursing frames are one line lower",
}


def _key(test_id: str) -> str:
    path, *names = test_id.split("::")
    return f"{path.rsplit('/', 1)[-1]}::{names[-1].split('[')[0]}"


def _listed(test_id: str) -> bool:
    return _key(test_id) in READ_THE_CELL_AS_TYPED


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Both runs at once (two subprocesses), then each test that changed run again alone."""
    import concurrent.futures

    work = tmp_path_factory.mktemp("ipython-suite")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        plain = pool.submit(run.run, "plain", work / "plain")
        traced = pool.submit(run.run, "traced", work / "traced")
        return plain.result(), traced.result(), work


def test_ipython_runs_its_own_shell_tests_here(outcomes):
    plain, traced, _work = outcomes
    passed = sum(outcome == "passed" for outcome in plain.values())
    # IPython 8.12 has 523 tests in the files that run cells, IPython 9.18.1 has 943.
    assert passed >= 400, f"only {passed} of IPython's tests passed with the plain shell"
    assert set(plain) == set(traced)


def test_every_ipython_shell_test_passes_with_every_cell_traced(outcomes):
    plain, traced, work = outcomes
    assert len(READ_THE_CELL_AS_TYPED) <= 10  # a short list, or %%trace changes too much
    changed = sorted(t for t, outcome in plain.items() if outcome == "passed" and traced.get(t) != "passed")
    unexpected = [t for t in changed if not _listed(t)]
    if unexpected:
        # Under load an IPython test can fail on its own: what failed once is run again, alone.
        again = run.run("traced", work / "traced-again", only=unexpected)
        unexpected = [t for t in unexpected if again.get(t) != "passed"]
    assert not unexpected, "fail only when every cell starts with %%trace:\n" + "\n".join(unexpected)
