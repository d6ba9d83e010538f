"""The benchmark command runs: `python -m bench --quick` prints its tables with every peer's row.

Timings are not asserted (performance is shown by the benchmark, not by timed
tests); what is checked is that the one command still runs its questions end
to end in real kernels and that no peer's row goes missing from a table.
"""

from __future__ import annotations

import os
import subprocess
import sys

from .conftest import ROOT, clean_env

PEER_ROWS = (
    "OpenTelemetry SDK, no processor (the floor)",
    "SDK + BatchSpanProcessor + OTLP/HTTP exporter",
    "Langfuse SDK, no flush",
    "Langfuse SDK, `flush()` per cell",
    "trace_ext",
)


def _table(output: str, title: str) -> dict[str, str]:
    """Row name -> whole row, of the Markdown table under the heading that starts with ``title``."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"### {title}"))
    rows = {}
    for line in lines[start + 4:]:
        if not line.startswith("|"):
            break
        rows[line.split("|")[1].strip()] = line
    return rows


def test_quick_cost_question_prints_every_peer(tmp_path):
    output_file = tmp_path / "out.txt"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "cost", "--backends", "healthy",
         "--spans", "500", "--output", str(output_file)],
        cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "- machine: " in out and "opentelemetry-sdk " in out and "langfuse " in out
    assert "- load average at the start:" in out
    cost = _table(out, "Cost per span in the cell")
    assert set(PEER_ROWS) <= set(cost), list(cost)
    e2e = _table(out, "End to end")
    assert set(PEER_ROWS) <= set(e2e), list(e2e)
    for row in PEER_ROWS[1:]:  # every peer that delivers got every span to the loopback receiver
        assert "500 of 500" in e2e[row], e2e[row]
    assert output_file.read_text(encoding="utf-8") == out
    assert not [line for line in out.splitlines() if "WARNING" in line]
    assert os.path.exists(ROOT / "bench" / "README.md")
