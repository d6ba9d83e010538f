"""Shared fixtures: real kernels, a loopback OTLP receiver, a real Phoenix server."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from .kernel import Kernel, kernelspec_dir

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Variables that would send a test's spans somewhere it didn't choose.
_ROUTING_PREFIXES = ("LANGFUSE_", "OTEL_", "TRACE_EXT_")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ROUTING_PREFIXES)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


@pytest.fixture(scope="session", autouse=True)
def _test_kernelspec():
    """Kernels in tests run this interpreter, whatever 'python3' means on the machine."""
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [kernelspec_dir(), old]))
    yield
    if old is None:
        os.environ.pop("JUPYTER_PATH", None)
    else:
        os.environ["JUPYTER_PATH"] = old


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch, tmp_path):
    """In-process tests never read the developer's LANGFUSE_*/OTEL_* settings."""
    for key in list(os.environ):
        if key.startswith(_ROUTING_PREFIXES):
            monkeypatch.delenv(key)
    monkeypatch.setenv("TRACE_EXT_STORE_PATH", str(tmp_path / "store" / "spans.sqlite3"))


@pytest.fixture
def store_path(tmp_path) -> Path:
    return tmp_path / "store" / "spans.sqlite3"


@pytest.fixture
def store(store_path):
    """The test's store, opened in this process."""
    from trace_ext._store.store import SpanStore

    store = SpanStore(str(store_path))
    yield store
    store.close()


@pytest.fixture
def status():
    from trace_ext._delivery.status import DeliveryStatus

    return DeliveryStatus()


@pytest.fixture
def sender(store, status):
    """start(url, **SenderConfig options) -> a running Sender over the test's store; all are shut down."""
    from trace_ext._delivery.destination import Destination
    from trace_ext._delivery.destination import SenderConfig
    from trace_ext._delivery.sender import Sender

    senders = []

    def start(url: str, **options) -> Sender:
        headers = options.pop("headers", {})
        s = Sender(store, status, lambda: None)
        s.configure(SenderConfig(Destination(url, "test", headers), **options))
        s.start()
        senders.append(s)
        return s

    yield start
    for s in senders:
        s.shutdown(1.0)


def recording_tracer(service: str, attribute_limit: int = 1_000_000):
    """``(processor, tracer)``: a real SDK tracer whose ended spans trace_ext's processor
    encodes into its buffer (``processor.take()`` returns them as store records)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    from trace_ext._recording.processor import BufferingSpanProcessor

    processor = BufferingSpanProcessor()
    provider = TracerProvider(resource=Resource.create({"service.name": service}), shutdown_on_exit=False)
    provider.add_span_processor(processor)
    processor.activate(attribute_limit, lambda: None, lambda: None)
    return processor, provider.get_tracer("tests")


@pytest.fixture
def start_kernel(store_path, tmp_path):
    """Start real kernels; each gets the test's store unless told otherwise. All are shut down."""
    kernels: list[Kernel] = []

    def start(store: Path | None = None, **env: str) -> Kernel:
        kernel = Kernel(
            env=clean_env(TRACE_EXT_STORE_PATH=str(store or store_path), **env),
            cwd=str(tmp_path),
        )
        kernels.append(kernel)
        return kernel

    yield start
    for kernel in kernels:
        try:
            kernel.shutdown(now=True)
        except Exception:
            pass


@pytest.fixture
def kernel(start_kernel) -> Kernel:
    return start_kernel()


@pytest.fixture
def loaded(kernel) -> Kernel:
    """A kernel with trace_ext loaded and nothing configured (the embedded default)."""
    kernel.ok("%load_ext trace_ext")
    return kernel


@pytest.fixture
def receiver():
    from .otlp_receiver import OtlpReceiver

    with OtlpReceiver() as rx:
        yield rx


def journals_imported(store_path) -> bool:
    """Whether every journal file beside the store is imported into it to its end: what a
    kernel saved (its journal) is then in the store file, which the saver thread fills just after a cell."""
    import os
    import sqlite3

    from trace_ext._store.journal import journal_files

    if not os.path.exists(store_path):
        return True
    conn = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)
    try:
        offsets = dict(conn.execute("SELECT name, offset FROM journals").fetchall())
    except sqlite3.OperationalError:
        offsets = {}
    finally:
        conn.close()
    for path in journal_files(str(store_path)):
        try:
            if os.path.getsize(path) > offsets.get(os.path.basename(path), 0):
                return False
        except FileNotFoundError:
            pass
    return True


def wait_until(predicate, timeout: float = 10.0) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` seconds pass (False), for
    state with no event to wait on: another thread's status, a file another process writes."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        pause.wait(0.05)
    return True


def memory_mb(kernel, field: str = "VmRSS") -> float:
    """The kernel process's memory from /proc: ``VmRSS`` now, ``VmHWM`` its peak so far."""
    with open(f"/proc/{kernel.pid()}/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc")


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (``find_spec`` of ``a.b`` raises when ``a`` is missing)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def require(condition: bool, reason: str) -> None:
    """Skip on a developer's machine that lacks a real dependency; under CI, fail instead."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: this test must run)")
    pytest.skip(reason)  # only off CI: with CI=true we failed just above


@pytest.fixture(scope="session")
def phoenix():
    from .backends import PHOENIX_VENV, PhoenixServer

    require(
        (PHOENIX_VENV / "bin" / "phoenix").exists(),
        f"Arize Phoenix is not installed at {PHOENIX_VENV}; run `python -m tests.backends install`",
    )
    server = PhoenixServer()
    server.start()
    yield server
    server.stop()

