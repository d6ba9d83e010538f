"""Find the installed IPython's own shell tests and run them in a subprocess, in one mode.

IPython 8 ships its tests inside the package (``IPython/*/tests``); from IPython 9
they are only in the sdist's ``tests/`` folder, fetched once from the package
registry into a cache. The shell tests are the files that run cells
(``run_cell``): those are the ones ``%%trace`` could change.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import IPython

PLUGIN = Path(__file__).with_name("trace_every_cell.py")
CACHE = Path(os.environ.get("TRACE_EXT_CACHE", Path.home() / ".cache" / "trace_ext")) / "ipython-tests"
ROOT = Path(__file__).resolve().parents[2]


def shell_tests() -> tuple[Path, list[Path]]:
    """(root directory to run pytest from, the shell test files) of the installed IPython."""
    package = Path(IPython.__file__).parent
    if (package / "core" / "tests").is_dir():
        root, files = package, sorted(package.glob("*/tests/test_*.py"))
    else:
        root = _sdist_tests(IPython.__version__)
        files = sorted((root / "tests").glob("test_*.py"))
    return root, [f for f in files if "run_cell" in f.read_text(errors="replace")]


def _sdist_tests(version: str) -> Path:
    target = CACHE / f"ipython-{version}"
    if (target / "tests").is_dir():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
             f"ipython=={version}", "--dest", tmp],
            check=True, timeout=300,
        )
        [archive] = Path(tmp).glob("ipython-*.tar.gz")
        with tarfile.open(archive) as tar:
            prefix = f"ipython-{version}/tests/"
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            tar.extractall(tmp, members=members, filter="data")
        try:
            os.rename(Path(tmp) / f"ipython-{version}", target)
        except OSError:
            if not (target / "tests").is_dir():  # not another run that got there first
                raise
    return target


def run(mode: str, work: Path, only: list[str] | None = None, timeout: float = 900) -> dict[str, str]:
    """Run the shell tests (or ``only`` these test ids) with the plugin in ``mode``: ``{test id: outcome}``."""
    root, files = shell_tests()
    targets = [str(root / test_id) for test_id in only] if only else [str(f) for f in files]
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy(PLUGIN, work / "trace_ext_every_cell.py")
    (work / "pytest.ini").write_text("[pytest]\n")  # not IPython's options, not ours
    outcomes = work / f"{mode}.json"
    env = {
        **os.environ,
        "TRACE_EXT_SUITE": mode,
        "TRACE_EXT_SUITE_OUTCOMES": str(outcomes),
        "TRACE_EXT_STORE_PATH": str(work / f"{mode}.sqlite3"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(work), str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "trace_ext_every_cell", "-p", "no:cacheprovider",
        "-c", str(work / "pytest.ini"), "--rootdir", str(root), "-o", "addopts=",
        *targets,
    ]
    log = work / f"{mode}.log"
    with open(log, "w") as out:
        subprocess.run(command, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    if not outcomes.exists():
        raise RuntimeError(f"IPython's tests did not run in mode {mode!r}; see {log}")
    return json.loads(outcomes.read_text())


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "traced"
    result = run(mode, Path(tempfile.mkdtemp(prefix="ipython-suite-")))
    counts = {k: sum(v == k for v in result.values()) for k in ("passed", "failed", "skipped")}
    print(mode, counts)
