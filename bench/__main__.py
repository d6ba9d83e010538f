"""``python -m bench``: every comparison of issue 13 in one run, one table per question.

Run from the repository root::

    python -m bench                      # the full run (about 15 minutes)
    python -m bench --quick              # a smoke run: few spans, one round (about 2 minutes)
    python -m bench --only cost --quick  # one question
    python -m bench --output bench/results/latest.txt

Questions (``--only`` takes these names, repeatable): ``cost`` (µs per span
in the cell, and end to end for the same cell), ``hook`` (post-cell hook and
next-cell latency, healthy / hung / down backend), ``outage`` (memory through
an outage), ``big`` (1,000,000 spans in one cell), ``profile`` (where
trace_ext's in-cell cost goes); not in the default run: ``storm`` (a backend
answering 503) and ``arrival`` (what arrives when the kernel ends right after a cell). Every row runs in a real kernel of its own against a loopback
receiver on 127.0.0.1; see bench/README.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from . import arrival, big, cost, hook, outage, profile, storm
from ._machine import header_lines, load_line
from ._run import BACKENDS, workspace

QUESTIONS = {"cost": cost, "hook": hook, "outage": outage, "big": big, "profile": profile, "storm": storm,
             "arrival": arrival}
DEFAULT = ("cost", "hook", "outage", "big", "profile")


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run: small sizes, one round")
    parser.add_argument("--only", action="append", choices=sorted(QUESTIONS), help="run only this question (repeatable)")
    parser.add_argument("--backends", action="append", choices=BACKENDS, help="backends for cost/hook (default all)")
    parser.add_argument("--spans", type=int, help="spans in the cost question's timed cell (default 20,000)")
    parser.add_argument("--rounds", type=int, help="rounds of the cost question, healthy backend (default 3)")
    parser.add_argument("--cells", type=int, help="timed cells per row of the hook question (default 15)")
    parser.add_argument("--outage-spans", type=int, help="spans made during the outage (default 100,000)")
    parser.add_argument("--big-spans", type=int, help="spans in the big cell (default 1,000,000)")
    parser.add_argument("--storm-duration", type=float, help="seconds of 503s in the storm question (default 60)")
    parser.add_argument("--output", help="also write the output to this file")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "spans": 2_000 if quick else 20_000,
        "rounds": 1 if quick else 3,
        "cells": 4 if quick else 15,
        "outage_spans": 5_000 if quick else 100_000,
        "big_spans": 20_000 if quick else 1_000_000,
        "storm_duration": 10.0 if quick else 60.0,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.backends = args.backends or list(BACKENDS)
    args.e2e_timeout = 20.0 if quick else 60.0
    args.questions = args.only or list(DEFAULT)
    return args


class _Tee:
    def __init__(self, path: str | None) -> None:
        self.file = open(path, "w", encoding="utf-8") if path else None

    def print(self, text: str = "") -> None:
        print(text, flush=True)
        if self.file:
            self.file.write(text + "\n")
            self.file.flush()


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    # Only loopback receivers: no destination may leak in from the shell's environment.
    for name in list(os.environ):
        if name.startswith(("OTEL_", "LANGFUSE_", "TRACE_EXT_")):
            del os.environ[name]
    logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)
    out = _Tee(args.output)
    out.print(f"# trace_ext benchmark: {', '.join(args.questions)}{' (--quick)' if args.quick else ''}")
    out.print()
    out.print(f"- run at {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    for line in header_lines():
        out.print(line)
    out.print(load_line("at the start"))
    out.print("- every row: a real Jupyter kernel of its own (this interpreter), loopback OTLP receivers on 127.0.0.1")
    started = time.monotonic()
    with workspace() as workdir:
        for name in args.questions:
            began = time.monotonic()
            out.print()
            out.print(f"## {name}")
            out.print()
            out.print(load_line("before this question"))
            out.print()
            for line in QUESTIONS[name].run(args, workdir):
                out.print(line)
            out.print()
            out.print(f"- question took {time.monotonic() - began:.0f} s; {load_line('after it')[2:]}")
    out.print()
    out.print(f"Whole run: {time.monotonic() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
