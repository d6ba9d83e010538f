"""The project's promises about itself: the README's commands, settings and public names."""

from __future__ import annotations

import re

from trace_ext.config import TraceExt

from .conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_ci_runs_exactly_the_readme_test_command():
    blocks = re.findall(r"```\n(.*?)\n```", README, re.S)
    test_command = next(b for b in blocks if "pytest" in b)
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == test_command


def test_readme_documents_every_setting():
    for name in TraceExt.class_traits(config=True):
        assert f"| `{name}` |" in README, name


def test_public_names():
    import trace_ext

    assert set(trace_ext.__all__) == {
        "__version__", "flush", "load_ipython_extension", "observe", "span", "unload_ipython_extension",
    }
    assert all(hasattr(trace_ext, name) for name in trace_ext.__all__)


def test_modules_stay_small():
    for path in (ROOT / "trace_ext").glob("*.py"):
        assert len(path.read_text().splitlines()) <= 300, path.name
