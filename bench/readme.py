"""Regenerate the README's "Performance" section and bench/README.md's "Results" from a run's output.

    python -m bench --output bench/results/latest.txt   # the run
    python -m bench.readme bench/results/latest.txt     # rewrite both sections from it

Each section is replaced from its heading up to the next heading of the same
level; the output goes in as it was printed (its headings moved down a
level), so the tables in the READMEs are exactly the run's. A tail that
starts with the heading "### Not in the default run" is kept as it is.
"""

from __future__ import annotations

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

INTRO = {
    "README.md": (
        "## Performance",
        "`python -m bench` runs every comparison in one go, each row in a real kernel of its own, trace_ext "
        "beside the OpenTelemetry SDK without a processor (the floor), the SDK's `BatchSpanProcessor` with its "
        "OTLP/HTTP exporter, and Langfuse's SDK with and without `flush()` per cell, against loopback receivers. "
        "`bench/README.md` says what each question measures and holds the profile of trace_ext's in-cell cost. "
        "The run below is `bench/results/latest.txt`, pasted by `python -m bench.readme`; the machine is shared "
        "with other work, whose load each question reports, so compare rows of one table (ratios), not runs.",
    ),
    os.path.join("bench", "README.md"): (
        "## Results",
        "The reference run (`bench/results/latest.txt`), pasted by `python -m bench.readme`.",
    ),
}


def _demote(output: str, levels: int) -> str:
    return re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + levels) + " ", output, flags=re.M)


# A section's tail from this heading on is kept: results of questions outside the default run.
KEEP = "### Not in the default run"


def replace_section(text: str, heading: str, body: str) -> str:
    level = len(heading) - len(heading.lstrip("#"))
    start = text.index(heading + "\n")
    rest = text[start + len(heading) + 1:]
    nxt = re.search(rf"^#{{1,{level}}} ", rest, flags=re.M)
    end = start + len(heading) + 1 + (nxt.start() if nxt else len(rest))
    old = text[start:end]
    kept = old[old.index(KEEP):].rstrip() + "\n\n" if KEEP in old else ""
    return text[:start] + heading + "\n\n" + body.rstrip() + "\n\n" + kept + text[end:]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = argv[0] if argv else os.path.join(ROOT, "bench", "results", "latest.txt")
    with open(path, encoding="utf-8") as fh:
        output = fh.read()
    # The run's own title becomes a paragraph; its "## question" headings sit under the section's.
    output = re.sub(r"^# (.*)$", r"**\1**", output, count=1, flags=re.M)
    for name, (heading, intro) in INTRO.items():
        target = os.path.join(ROOT, name)
        with open(target, encoding="utf-8") as fh:
            text = fh.read()
        text = replace_section(text, heading, intro + "\n\n" + _demote(output, 1))
        with open(target, "w", encoding="utf-8") as fh:
            fh.write(text)
        print(f"rewrote {heading!r} in {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
