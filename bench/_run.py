"""Real kernels, loopback backends and the peers' set-up code that every question shares.

A *peer* is one way a notebook records spans: the code that sets it up in a
fresh kernel, the code users put at the end of a cell (a flush, or nothing),
and the code that waits, untimed, until what it holds was delivered. Every
row of every table runs in a kernel of its own (``tests/kernel.py``, this
interpreter) against its own ``tests/otlp_receiver.py`` receiver on 127.0.0.1:
healthy, hung (reads the request, never answers) or down (connections
refused). Nothing leaves the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests import otlp_receiver  # noqa: E402
from tests.kernel import Kernel, kernelspec_dir  # noqa: E402
from tests.otlp_receiver import Hang, OtlpReceiver, ReceivedSpan  # noqa: E402

__all__ = [
    "BACKENDS", "INSTRUMENT", "PEERS", "START", "STAMP", "Peer", "Session", "arrived", "backend", "memory_mb", "session", "span_loop",
]

LANGFUSE_KEYS = {"LANGFUSE_PUBLIC_KEY": "pk-lf-bench", "LANGFUSE_SECRET_KEY": "sk-lf-bench"}
HANG_S = 60.0  # longer than any exporter's timeout: the hung backend never answers in a row's lifetime
BACKENDS = ("healthy", "down", "hung")
_ROUTING = ("LANGFUSE_", "OTEL_", "TRACE_EXT_", "PHOENIX_")


def _light_spans_of(message) -> list[ReceivedSpan]:
    """The receiver's decoding cut to ids and names, the only fields the bench reads.

    The receiver runs in the bench's process, on the same two cores as the
    kernel it measures; decoding every attribute of a million spans into
    Python objects would take CPU from the row being timed.
    """
    spans = []
    empty: dict = {}
    for resource_spans in message.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(ReceivedSpan(
                    span.trace_id.hex(), span.span_id.hex(), None, span.name, 0, 0, 0, empty, 0, "", [], empty, "",
                ))
    return spans


otlp_receiver._spans_of = _light_spans_of


def span_loop(n: int, name: str) -> str:
    """The cell every question times: ``n`` spans, ``with tracer.start_as_current_span`` and one attribute."""
    return (
        f"for _i in range({n}):\n"
        f"    with tracer.start_as_current_span({name!r}, attributes={{'i': _i}}):\n"
        f"        pass\n"
    )


@dataclass(frozen=True)
class Peer:
    key: str
    label: str
    setup: str  # run once in the fresh kernel; defines `tracer`; {url} is the backend's URL
    end: str = ""  # what the user puts at the end of every cell
    settle: str = ""  # untimed: wait until what the peer holds is delivered
    langfuse: bool = False
    delivers: bool = True
    uses_backend: bool = True

    def env(self, url: str, base_url: str, queue: int | None) -> dict[str, str]:
        env: dict[str, str] = {}
        if self.langfuse:
            env.update(LANGFUSE_KEYS, LANGFUSE_BASE_URL=base_url)
            if queue:
                # Langfuse builds its BatchSpanProcessor without a queue size: the SDK reads this.
                env["OTEL_BSP_MAX_QUEUE_SIZE"] = str(queue)
        if self.key.startswith("trace_ext") and self.uses_backend:
            env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = url
        return env


_BSP = """
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
_provider = TracerProvider(resource=Resource.create({{"service.name": "bench"}}))
_processor = BatchSpanProcessor(OTLPSpanExporter(endpoint={url!r}){queue})
_provider.add_span_processor(_processor)
tracer = _provider.get_tracer("bench")
"""
# Langfuse exports only its own tracer's spans (and GenAI ones) by default: the
# loop uses the OpenTelemetry tracer its client holds (scope "langfuse-sdk",
# with the project's public key), which its own start_as_current_observation uses.
_LANGFUSE = """
from langfuse import get_client
_lf = get_client()
tracer = _lf._otel_tracer
"""
_TRACE_EXT = """
%load_ext trace_ext
import trace_ext
from opentelemetry import trace
tracer = trace.get_tracer("bench")
"""

# Timing inside the kernel, from the cell's first line until after every post-cell
# hook: the bench's post_run_cell callback is registered after the peer's set-up,
# so it runs last (after trace_ext's). CPU times are robust to other processes
# on the machine, wall time is not.
INSTRUMENT = """
import time as _bt
_bench = {"t0": None, "c0": None, "ends": [], "hook": [], "hookcpu": [], "cells": [], "start": None}
def _bench_start():
    _bench["start"] = (_bt.perf_counter(), _bt.process_time(), _bt.thread_time())
def _bench_post(result):
    now = _bt.perf_counter()
    if _bench["t0"] is not None:
        _bench["hook"].append(now - _bench["t0"])
        _bench["hookcpu"].append(_bt.thread_time() - _bench["c0"])
        _bench["t0"] = None
    if _bench["start"] is not None:
        wall, process, thread = _bench["start"]
        _bench["cells"].append([now - wall, _bt.process_time() - process, _bt.thread_time() - thread])
        _bench["start"] = None
get_ipython().events.register("post_run_cell", _bench_post)
"""
# The code a timed cell starts with (see INSTRUMENT).
START = "_bench_start()\n"
# The code that marks the end of a cell's own work, before the peer's end-of-cell call.
STAMP = '_bench["t0"] = _bt.perf_counter(); _bench["c0"] = _bt.thread_time(); _bench["ends"].append(_bench["t0"])\n'

# Spans a peer holds in memory, waiting for the backend (the batch processors' queues).
HELD = """
def _bench_held():
    held = 0
    for p in getattr(getattr(tracer, "span_processor", None), "_span_processors", ()):
        queue = getattr(getattr(p, "_batch_processor", p), "_queue", None)
        held += len(queue) if queue is not None else 0
    return held
"""
# What trace_ext's store holds: (pending, sent, bytes of the SQLite file, its log and the
# journals beside it: spans saved after back-to-back cells wait there for their import).
STORED = """
def _bench_stored():
    import os
    from trace_ext._extension import active
    from trace_ext._store.journal import journal_files
    store = active(get_ipython()).store
    counts = store.counts()
    files = [store.path, store.path + "-wal", *journal_files(store.path)]
    size = sum(os.path.getsize(p) for p in files if os.path.exists(p))
    return [counts.pending, counts.sent, size]
"""

PEERS = {
    p.key: p
    for p in (
        Peer("bare", "OpenTelemetry SDK, no processor (the floor)",
             "from opentelemetry.sdk.trace import TracerProvider\n_provider = TracerProvider()\n"
             "tracer = _provider.get_tracer('bench')\n", delivers=False, uses_backend=False),
        Peer("bsp", "SDK + BatchSpanProcessor + OTLP/HTTP exporter", _BSP, settle="_provider.force_flush()"),
        Peer("bsp_flush", "SDK + BatchSpanProcessor + OTLP/HTTP, `force_flush()` per cell", _BSP,
             end="_provider.force_flush()", settle="_provider.force_flush()"),
        Peer("langfuse", "Langfuse SDK, no flush", _LANGFUSE, settle="_lf.flush()", langfuse=True),
        Peer("langfuse_flush", "Langfuse SDK, `flush()` per cell", _LANGFUSE, end="_lf.flush()",
             settle="_lf.flush()", langfuse=True),
        Peer("trace_ext", "trace_ext", _TRACE_EXT, settle="trace_ext.flush(30)"),
        Peer("trace_ext_local", "trace_ext, no endpoint (embedded default)", _TRACE_EXT,
             delivers=False, uses_backend=False),
    )
}


@contextmanager
def backend(kind: str):
    """A fresh loopback receiver: healthy, hung (``Hang``) or down (started, then stopped: refused)."""
    receiver = OtlpReceiver().start()
    if kind == "hung":
        receiver.default = Hang(HANG_S)
    elif kind == "down":
        receiver.stop()
    elif kind != "healthy":
        raise ValueError(kind)
    try:
        yield receiver
    finally:
        receiver.stop()


def arrived(receiver: OtlpReceiver, name: str) -> tuple[int, float | None]:
    """(distinct accepted spans called ``name``, monotonic time the last of them was received)."""
    seen: set[str] = set()
    last = None
    for request in receiver.requests:
        if not request.accepted:
            continue
        fresh = [s.span_id for s in request.spans if s.name == name]
        if fresh:
            seen.update(fresh)
            last = request.received_at if last is None else max(last, request.received_at)
    return len(seen), last


def wait_arrived(receiver: OtlpReceiver, name: str, n: int, timeout: float, poll: float = 0.1) -> tuple[int, float | None]:
    deadline = time.monotonic() + timeout
    while True:
        count, last = arrived(receiver, name)
        if count >= n or time.monotonic() >= deadline:
            return count, last
        time.sleep(poll)  # the receiver runs on threads of this process; polling costs less than waking per request


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of process ``pid`` in MB: the kernel's memory, read from outside it."""
    values = {}
    with open(f"/proc/{pid}/status", encoding="utf-8") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


class Session:
    """One peer in one fresh kernel against one backend."""

    def __init__(self, peer: Peer, receiver: OtlpReceiver, workdir: str, queue: int | None) -> None:
        self.peer, self.receiver = peer, receiver
        env = {k: v for k, v in os.environ.items() if not k.startswith(_ROUTING)}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
        store = tempfile.mkdtemp(prefix="store-", dir=workdir)
        env["TRACE_EXT_STORE_PATH"] = os.path.join(store, "spans.sqlite3")
        env["IPYTHONDIR"] = os.path.join(workdir, "ipython")
        env.update(peer.env(receiver.url, receiver.base_url, queue))
        # The kernel's own log (a TCP-without-encryption warning per kernel) is not the bench's output.
        self.kernel = Kernel(env=env, cwd=workdir, stderr=subprocess.DEVNULL)
        queue_arg = f", max_queue_size={queue}" if queue else ""
        self.ok(peer.setup.format(url=receiver.url, queue=queue_arg))
        self.ok(INSTRUMENT)

    def ok(self, code: str, timeout: float = 600):
        return self.kernel.ok(code, timeout=timeout)

    def timed(self, code: str, timeout: float = 600) -> float:
        """Client-side seconds from the execute request until the kernel is idle again (hooks included)."""
        start = time.perf_counter()
        self.kernel.ok(code, timeout=timeout)
        return time.perf_counter() - start

    def cell(self, body: str) -> str:
        """The user's cell: ``body`` plus whatever the peer puts at the end of a cell."""
        return body + (self.peer.end + "\n" if self.peer.end else "")

    def settle(self, timeout: float = 120) -> None:
        if self.peer.settle:
            self.ok(self.peer.settle, timeout=timeout)

    def pid(self) -> int:
        return self.kernel.pid()

    def close(self) -> None:
        self.kernel.shutdown(now=True)


@contextmanager
def session(peer: Peer, receiver: OtlpReceiver, workdir: str, queue: int | None = None):
    s = Session(peer, receiver, workdir, queue)
    try:
        yield s
    finally:
        s.close()


@contextmanager
def workspace():
    """A temp dir for stores and IPython profiles, and a kernelspec that runs this interpreter."""
    workdir = tempfile.mkdtemp(prefix="trace_ext-bench-")
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [kernelspec_dir(), old]))
    try:
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
