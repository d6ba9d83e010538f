#!/usr/bin/env python
"""What an outage of the backend costs in memory, and how many spans survive it.

Run from the repository root::

    python bench/outage_memory.py                 # 10,000 and 100,000 spans per row
    python bench/outage_memory.py --spans 20000   # any sizes (repeat --spans)

Every row runs in a fresh child process, so its memory numbers are its own.
The child starts a loopback ``OtlpReceiver`` (``tests/otlp_receiver.py``) and
stops it at once: the backend is down, and connections to its URL are refused.
It makes 2,000 warm-up spans, reads its RSS (``VmRSS`` in ``/proc/self/status``),
makes N small spans (one attribute each) in cells of 10,000, reads RSS again
(and the peak, ``VmHWM``), then brings the receiver back on the same port and
waits (at most ``--recover-timeout`` s) for delivery. "kept" counts the
distinct ids of the N outage spans that the receiver accepted.

Rows:

- trace_ext: an in-process IPython shell, ``%load_ext trace_ext`` with the
  receiver's URL as endpoint; each cell of spans ends with the real post-cell
  hook (``Extension._post_run_cell``). The processor spills its buffer to the
  store every 2,000 spans on the sender thread, so the outage lives on disk.
  "store" is the SQLite file plus its write-ahead log after the outage.
- OTel SDK ``BatchSpanProcessor(OTLPSpanExporter)`` with its defaults
  (``max_queue_size`` 2048): what most notebooks run today. When the queue is
  full it drops spans.
- The same peer with ``max_queue_size`` = N + 2,000: it keeps the whole outage
  in the process's memory, which shows what holding the spans in RAM costs.

Nothing leaves the machine; every wait is bounded, so the script ends by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from _machine import machine_line, version  # noqa: E402 - bench/ is on sys.path when a script runs

WARMUP_SPANS = 2000
CELL_SPANS = 10_000
SYSTEMS = ("trace_ext", "otel-bsp", "otel-bsp-unbounded")
LABELS = {
    "trace_ext": "trace_ext (store on disk)",
    "otel-bsp": "OTel SDK BatchSpanProcessor, default max_queue_size=2048",
    "otel-bsp-unbounded": "OTel SDK BatchSpanProcessor, max_queue_size=N+2000 (all in RAM)",
}


def _memory_mb() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process, in MB."""
    values = {}
    with open("/proc/self/status", encoding="utf-8") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def _make_spans(tracer, n: int, name: str) -> None:
    for i in range(n):
        tracer.start_span(name, attributes={"i": i}).end()


def _kept(receiver, name: str) -> tuple[int, int]:
    """(distinct accepted ids of spans called ``name``, accepted copies of them)."""
    ids = [s.span_id for s in receiver.spans if s.name == name]
    return len(set(ids)), len(ids)


# --------------------------------------------------------------------------- children


def child_trace_ext(n: int, recover_timeout: float) -> dict:
    from IPython.core.interactiveshell import ExecutionInfo, ExecutionResult, InteractiveShell
    from opentelemetry import trace
    from traitlets.config import Config

    import trace_ext._extension as extension_module
    from tests.otlp_receiver import OtlpReceiver

    receiver = OtlpReceiver().start()
    receiver.stop()  # down from the start; start() later binds the same port
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    config.TraceExt.widget = False
    config.TraceExt.endpoint = receiver.url
    shell = InteractiveShell.instance(config=config)
    shell.run_line_magic("load_ext", "trace_ext")
    ext = extension_module.active(shell)
    tracer = trace.get_tracer("bench")

    def cell(count: int, name: str) -> None:
        _make_spans(tracer, count, name)
        info = ExecutionInfo(raw_cell="work()", store_history=True, silent=False, shell_futures=True, cell_id=None)
        ext._post_run_cell(ExecutionResult(info))

    cell(WARMUP_SPANS, "warmup")
    rss0, _ = _settle(ext, WARMUP_SPANS)
    started = time.monotonic()
    for done in range(0, n, CELL_SPANS):
        cell(min(CELL_SPANS, n - done), "outage")
    rss1, peak = _settle(ext, WARMUP_SPANS + n)
    produced_s = time.monotonic() - started
    path = ext.store.path
    store_bytes = sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))
    pending = ext.store.counts().pending

    receiver.start()
    recovered = time.monotonic()
    receiver.wait_for(lambda rx: _kept(rx, "outage")[0] >= n, recover_timeout)
    deliver_s = time.monotonic() - recovered
    kept, copies = _kept(receiver, "outage")
    shell.run_line_magic("config", "TraceExt.shutdown_timeout = 0.5")
    shell.run_line_magic("unload_ext", "trace_ext")
    receiver.stop()
    return {
        "rss_before": rss0, "rss_after": rss1, "peak": peak, "store_bytes": store_bytes,
        "held": pending, "kept": kept, "copies": copies, "produce_s": produced_s, "deliver_s": deliver_s,
    }


def _settle(ext, expected: int, timeout: float = 60) -> tuple[float, float]:
    """Wait until every span made so far is in the store (spills run on the sender thread)."""
    deadline = time.monotonic() + timeout
    while ext.store.counts().pending + ext.store.counts().sent < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return _memory_mb()


def child_otel(n: int, recover_timeout: float, unbounded: bool) -> dict:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from tests.otlp_receiver import OtlpReceiver

    receiver = OtlpReceiver().start()
    receiver.stop()
    provider = TracerProvider(resource=Resource.create({"service.name": "bench-peer"}), shutdown_on_exit=False)
    options = {"max_queue_size": n + WARMUP_SPANS} if unbounded else {}
    processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=receiver.url), **options)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("bench")

    _make_spans(tracer, WARMUP_SPANS, "warmup")
    rss0, _ = _memory_mb()
    started = time.monotonic()
    for done in range(0, n, CELL_SPANS):
        _make_spans(tracer, min(CELL_SPANS, n - done), "outage")
    produced_s = time.monotonic() - started
    rss1, peak = _memory_mb()
    queue = getattr(getattr(processor, "_batch_processor", processor), "_queue", None)
    held = len(queue) if queue is not None else -1

    receiver.start()
    recovered = time.monotonic()
    # Exports what the queue still holds, on this thread (the SDK's force_flush does).
    provider.force_flush(int(recover_timeout * 1000))
    receiver.wait_for(lambda rx: _kept(rx, "outage")[0] >= n, 5)  # a batch the worker had in hand
    deliver_s = time.monotonic() - recovered
    kept, copies = _kept(receiver, "outage")
    provider.shutdown()
    receiver.stop()
    return {
        "rss_before": rss0, "rss_after": rss1, "peak": peak, "store_bytes": 0,
        "held": held, "kept": kept, "copies": copies, "produce_s": produced_s, "deliver_s": deliver_s,
    }


def child(system: str, n: int, recover_timeout: float) -> None:
    if system == "trace_ext":
        result = child_trace_ext(n, recover_timeout)
    else:
        result = child_otel(n, recover_timeout, unbounded=system == "otel-bsp-unbounded")
    print("RESULT " + json.dumps(result), flush=True)
    os._exit(0)  # daemon threads (a peer exporter mid-retry) must not hold the row up


# --------------------------------------------------------------------------- parent


def run_row(system: str, n: int, recover_timeout: float, workdir: str) -> dict | str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LANGFUSE_", "TRACE_EXT_"))}
    env["TRACE_EXT_STORE_PATH"] = os.path.join(workdir, f"{system}-{n}", "spans.sqlite3")
    env["IPYTHONDIR"] = os.path.join(workdir, "ipython")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    argv = [sys.executable, os.path.abspath(__file__), "--child", system, str(n), str(recover_timeout)]
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=recover_timeout + 300)
    except subprocess.TimeoutExpired:
        return "timed out"
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return f"failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:] or ''}"


def _table(results: list[tuple[str, int, dict | str]]) -> str:
    lines = [
        "| row | spans made during the outage | RSS growth MB | peak RSS growth MB | store on disk MB "
        "| held while down | kept (delivered after recovery) | lost | duplicates | delivered in s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for system, n, r in results:
        if isinstance(r, str):
            lines.append(f"| {LABELS[system]} | {n:,} | {r} | | | | | | | |")
            continue
        lines.append(
            f"| {LABELS[system]} | {n:,} | {r['rss_after'] - r['rss_before']:.1f} | {r['peak'] - r['rss_before']:.1f} "
            f"| {r['store_bytes'] / 2**20:.1f} | {r['held']:,} | {r['kept']:,} | {n - r['kept']:,} "
            f"| {r['copies'] - r['kept']:,} | {r['deliver_s']:.1f} |"
        )
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, action="append", help="spans per row (repeatable; default 10000 and 100000)")
    parser.add_argument("--recover-timeout", type=float, default=120.0,
                        help="seconds to wait for delivery after the backend is back (default 120)")
    args = parser.parse_args()
    sizes = args.spans or [10_000, 100_000]
    if any(n < 1 for n in sizes):
        parser.error("--spans must be at least 1")
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: F401
        systems = SYSTEMS
    except ImportError as exc:
        print(f"Peer rows skipped: opentelemetry-exporter-otlp-proto-http is not importable ({exc}).")
        systems = ("trace_ext",)

    import trace_ext

    print("# Memory and spans kept during a backend outage\n")
    print(machine_line())
    print(f"- Python {platform.python_version()}; trace_ext {trace_ext.__version__}, "
          f"opentelemetry-sdk {version('opentelemetry-sdk')}, "
          f"opentelemetry-exporter-otlp-proto-http {version('opentelemetry-exporter-otlp-proto-http')}")
    print(f"- each row: a fresh process, backend down (connection refused), {WARMUP_SPANS:,} warm-up spans, "
          f"then N spans with one attribute in cells of {CELL_SPANS:,}; RSS from /proc/self/status; "
          "then the backend comes back on the same port")
    print()
    sys.stdout.flush()

    workdir = tempfile.mkdtemp(prefix="trace_ext-outage-")
    started = time.monotonic()
    results = []
    try:
        for n in sizes:
            for system in systems:
                results.append((system, n, run_row(system, n, args.recover_timeout, workdir)))
                print(f"  done: {LABELS[system]}, {n:,} spans", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(_table(results))
    print()
    print("- RSS growth: VmRSS after the outage's spans were made (and, for trace_ext, stored) minus "
          "VmRSS after the warm-up; peak: VmHWM minus the same baseline.")
    print("- held while down: spans waiting in the store (trace_ext: pending rows) or in the peer's queue, "
          "warm-up spans included; kept, lost and duplicates count the N outage spans only.")
    print("- trace_ext's sender backs off up to 30 s between attempts, so delivery starts at its next retry.")
    print(f"\nTotal run time: {time.monotonic() - started:.1f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
