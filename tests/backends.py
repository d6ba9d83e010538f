"""Real tracing backends for end-to-end tests: Arize Phoenix and an MLflow tracking server.

Each lives in its own virtualenv because its dependency pins (SQLAlchemy,
FastAPI, protobuf, OpenTelemetry…) must not leak into the environment the
project is tested in. Prepare both once with::

    python -m tests.backends install

then, in a test::

    with PhoenixServer() as phoenix:
        ...  # export to phoenix.otlp_url (OTLP/HTTP protobuf only; JSON gets 415)
        records = phoenix.wait_for_spans(trace_id_hex, count=2)

Span records are Phoenix REST ``Span`` objects: ``name``,
``context.trace_id`` / ``context.span_id`` (hex), ``parent_id`` (hex or None),
``span_kind`` (OpenInference kind such as "UNKNOWN", not the OTel kind),
``status_code`` ("OK" / "ERROR" / "UNSET"), ``attributes`` (nested dict).

MLflow (3.6 and later ingest OTLP/HTTP at ``/v1/traces``)::

    with MlflowServer() as mlflow:
        ...  # export to mlflow.otlp_url with the headers mlflow.otlp_headers
        trace = mlflow.wait_for_trace(trace_id_hex, count=2)

``trace`` is an ``MlflowTrace``: ``info`` is MLflow's ``TraceInfo`` as its
REST API returns it (``trace_id`` "tr-<hex>", ``state`` "OK" / "ERROR" /
"IN_PROGRESS", ``request_preview``…), ``spans`` are ``MlflowSpan`` records
with hex ids and MLflow's own reading of each span (``span_type``,
``inputs``, ``outputs``).
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

__all__ = [
    "MLFLOW_VENV",
    "MLFLOW_VERSION",
    "PHOENIX_VENV",
    "MlflowServer",
    "MlflowSpan",
    "MlflowTrace",
    "PhoenixServer",
    "install_browser",
    "install_mlflow",
    "install_phoenix",
    "main",
    "mlflow_installed",
    "mlflow_version",
    "phoenix_installed",
    "phoenix_version",
]

PHOENIX_VENV = Path(
    os.environ.get("TRACE_EXT_PHOENIX_VENV", "~/.cache/trace_ext/phoenix-venv")
).expanduser()

# Environment for the Phoenix process: loopback only, and nothing that makes it
# reach the internet on its own (telemetry pixels, web fonts, WASM sandbox
# download, the hosted docs MCP server and the assistant's web/GitHub tools).
_PHOENIX_OFFLINE_ENV = {
    "PHOENIX_HOST": "127.0.0.1",
    "PHOENIX_TELEMETRY_ENABLED": "false",
    "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false",
    "PHOENIX_DISABLE_AGENT_ASSISTANT": "true",
    "PHOENIX_AGENTS_DISABLE_WEB_ACCESS": "true",
    "PHOENIX_AGENTS_DISABLE_GITHUB": "true",
    # The in-process MCP server is not needed to ingest and read spans.
    "PHOENIX_ENABLE_MCP_SERVER": "false",
    # Migration SQL would bury the lines that explain a failed start-up.
    "PHOENIX_LOG_MIGRATIONS": "false",
}
# Inherited variables that would change what the server does (another
# database, auth, an OTLP exporter for Phoenix's own traces, a foreign
# PYTHONPATH shadowing the venv's packages) are dropped.
_SCRUBBED_ENV_PREFIXES = ("PHOENIX_", "OTEL_")
_SCRUBBED_ENV_NAMES = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")

MLFLOW_VENV = Path(
    os.environ.get("TRACE_EXT_MLFLOW_VENV", "~/.cache/trace_ext/mlflow-venv")
).expanduser()
# Pinned: the newest release whose own dependencies the registry serves and that
# installs (3.18.0 is listed, but its mlflow-skinny==3.18.0 is not). OTLP
# ingestion needs 3.6 or later.
MLFLOW_VERSION = "3.17.2"
# The experiment OTLP-ingested traces go to: "0" is the "Default" experiment
# every new tracking store has.
MLFLOW_EXPERIMENT_ID = "0"
# Environment for the MLflow server: no usage telemetry, and no background job
# runner (scorers, trace archival, periodic tasks: eight extra processes that
# compete for two cores and aren't needed to ingest and read traces).
_MLFLOW_OFFLINE_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS": "false",
}
# A tracking URI, Databricks credentials or an OTLP exporter for MLflow's own
# traces in the parent's environment would change what the server does.
_MLFLOW_SCRUBBED_ENV_PREFIXES = ("MLFLOW_", "DATABRICKS_", "OTEL_")

_POLL_INTERVAL = 0.25  # seconds between health / span polls
_STOP_GRACE = 15.0  # seconds between SIGTERM and SIGKILL
_PIP_TAIL_LINES = 40
_LOG_TAIL_LINES = 40


# --------------------------------------------------------------------------- install


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def phoenix_installed(venv: Path = PHOENIX_VENV) -> bool:
    """Whether ``venv`` has a working Phoenix (the CLI exists and imports)."""
    if not (venv / "bin" / "phoenix").exists() or not _venv_python(venv).exists():
        return False
    result = subprocess.run(
        [str(_venv_python(venv)), "-c", "import phoenix"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    return result.returncode == 0


def phoenix_version(venv: Path = PHOENIX_VENV) -> str:
    """The installed arize-phoenix distribution version."""
    result = subprocess.run(
        [
            str(_venv_python(venv)),
            "-c",
            "from importlib.metadata import version; print(version('arize-phoenix'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def _run_streaming(command: list[str], show: tuple[str, ...]) -> None:
    """Run a command, echo the lines starting with ``show``, raise with the tail on failure."""
    tail: deque[str] = deque(maxlen=_PIP_TAIL_LINES)
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    assert process.stdout is not None
    for line in process.stdout:
        tail.append(line.rstrip())
        if line.startswith(show):
            print(f"  {line.rstrip()}", flush=True)
    if process.wait() != 0:
        output = "\n".join(tail)
        raise RuntimeError(f"{' '.join(command)} failed (exit {process.returncode}):\n{output}")


def install_phoenix(venv: Path = PHOENIX_VENV) -> Path:
    """Make sure ``venv`` holds a working arize-phoenix; returns the venv path.

    Idempotent: an existing working install returns at once. Phoenix gets its
    own venv so its pins never mix with the project's dependencies.
    """
    venv = Path(venv).expanduser()
    if phoenix_installed(venv):
        return venv
    if not _venv_python(venv).exists():
        print(f"Creating virtualenv {venv} ...", flush=True)
        venv.parent.mkdir(parents=True, exist_ok=True)
        _run_streaming([sys.executable, "-m", "venv", str(venv)], show=())
    print("Installing arize-phoenix (this can take a few minutes) ...", flush=True)
    _run_streaming(
        [str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", "arize-phoenix"],
        show=("Collecting arize-phoenix", "Installing collected", "Successfully installed"),
    )
    if not phoenix_installed(venv):
        raise RuntimeError(f"arize-phoenix installed into {venv} but `import phoenix` fails")
    print(f"Phoenix {phoenix_version(venv)} ready in {venv}", flush=True)
    return venv


def mlflow_version(venv: Path = MLFLOW_VENV) -> str | None:
    """The mlflow distribution version installed in ``venv``, or None if it has none."""
    python = _venv_python(Path(venv).expanduser())
    if not python.exists():
        return None
    result = subprocess.run(
        [str(python), "-c", "from importlib.metadata import version; print(version('mlflow'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else None


def mlflow_installed(venv: Path = MLFLOW_VENV, version: str = MLFLOW_VERSION) -> bool:
    """Whether ``venv`` has the pinned MLflow: its CLI exists and the version matches."""
    venv = Path(venv).expanduser()
    return (venv / "bin" / "mlflow").exists() and mlflow_version(venv) == version


def install_mlflow(venv: Path = MLFLOW_VENV, version: str = MLFLOW_VERSION) -> Path:
    """Make sure ``venv`` holds MLflow ``version``; returns the venv path.

    Idempotent: with the right version there it returns at once (one quick
    question to the venv's Python); another version is replaced in place.
    """
    venv = Path(venv).expanduser()
    if mlflow_installed(venv, version):
        return venv
    if not _venv_python(venv).exists():
        print(f"Creating virtualenv {venv} ...", flush=True)
        venv.parent.mkdir(parents=True, exist_ok=True)
        _run_streaming([sys.executable, "-m", "venv", str(venv)], show=())
    print(f"Installing mlflow=={version} (this can take a few minutes) ...", flush=True)
    _run_streaming(
        [str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", f"mlflow=={version}"],
        show=("Collecting mlflow", "Installing collected", "Successfully installed"),
    )
    if not mlflow_installed(venv, version):
        raise RuntimeError(
            f"mlflow=={version} installed into {venv} but it reports {mlflow_version(venv)!r}"
        )
    print(f"MLflow {version} ready in {venv}", flush=True)
    return venv


# --------------------------------------------------------------------------- server


def _free_port(family: socket.AddressFamily, host: str) -> int:
    """A port that is free right now for ``host`` (the OS picks it)."""
    with closing(socket.socket(family, socket.SOCK_STREAM)) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _free_ports() -> tuple[int, int]:
    """Two distinct free ports: HTTP on loopback, gRPC on all interfaces.

    Phoenix's gRPC server binds ``[::]`` whatever PHOENIX_HOST says, so its
    port must be free on every interface, not just loopback.
    """
    http_port = _free_port(socket.AF_INET, "127.0.0.1")
    while True:
        try:
            grpc_port = _free_port(socket.AF_INET6, "::")
        except OSError:  # no IPv6 on this host
            grpc_port = _free_port(socket.AF_INET, "0.0.0.0")
        if grpc_port != http_port:
            return http_port, grpc_port


def _child_env(
    overrides: Mapping[str, str], scrubbed: tuple[str, ...] = _SCRUBBED_ENV_PREFIXES
) -> dict[str, str]:
    """The parent's environment minus the ``scrubbed`` prefixes (Phoenix/OTel by
    default) and Python-path settings, plus overrides."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(scrubbed) and name not in _SCRUBBED_ENV_NAMES
    }
    env.update(overrides)
    return env


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    """Send ``signum`` to the process group led by ``process``."""
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass  # already gone


class PhoenixServer:
    """A throw-away Phoenix server on loopback with its own temporary database."""

    def __init__(
        self, venv: Path = PHOENIX_VENV, extra_env: Mapping[str, str] | None = None
    ) -> None:
        self.venv = Path(venv).expanduser()
        self.extra_env = dict(extra_env or {})
        self.http_port = 0
        self.grpc_port = 0
        self.startup_seconds: float | None = None
        self._workdir: Path | None = None
        self._log_file: Any = None
        self._process: subprocess.Popen[bytes] | None = None
        # trust_env=False: a proxy configured for the outside world must not
        # intercept loopback requests.
        self._http = httpx.Client(timeout=10, trust_env=False)

    # ----------------------------------------------------------------- addresses

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<http port>``."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def otlp_url(self) -> str:
        """OTLP/HTTP traces endpoint (protobuf only)."""
        return f"{self.base_url}/v1/traces"

    @property
    def running(self) -> bool:
        """Whether the Phoenix process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def log_path(self) -> Path | None:
        """Where Phoenix's stdout and stderr go while it runs."""
        return self._workdir / "phoenix.log" if self._workdir else None

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the server log (empty if there is none)."""
        path = self.log_path
        if path is None or not path.exists():
            return ""
        with path.open("r", errors="replace") as log:
            return "".join(deque(log, maxlen=lines))

    # ----------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 120) -> PhoenixServer:
        """Launch ``phoenix serve`` and wait until ``/healthz`` answers OK."""
        if self._process is not None:
            return self
        phoenix = self.venv / "bin" / "phoenix"
        if not phoenix.exists():
            raise RuntimeError(
                f"Phoenix is not installed in {self.venv}; run `python -m tests.backends install`"
            )
        self.http_port, self.grpc_port = _free_ports()
        self._workdir = Path(tempfile.mkdtemp(prefix="trace_ext-phoenix-"))
        env = _child_env(
            {
                **_PHOENIX_OFFLINE_ENV,
                "PHOENIX_WORKING_DIR": str(self._workdir),
                "PHOENIX_PORT": str(self.http_port),
                "PHOENIX_GRPC_PORT": str(self.grpc_port),
                "VIRTUAL_ENV": str(self.venv),
                **self.extra_env,
            }
        )
        assert self.log_path is not None
        self._log_file = self.log_path.open("wb")
        began = time.monotonic()
        self._process = subprocess.Popen(
            [str(phoenix), "serve"],
            cwd=self._workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            # Own process group: a Ctrl-C meant for pytest doesn't race our
            # shutdown, and SIGKILL can take any helper processes with it.
            start_new_session=True,
        )
        try:
            self._wait_healthy(began + timeout, timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def _wait_healthy(self, deadline: float, timeout: float) -> None:
        """Poll ``/healthz`` until 200 OK; RuntimeError if it dies or times out."""
        assert self._process is not None
        while True:
            try:
                response = self._http.get(f"{self.base_url}/healthz", timeout=2)
                if response.status_code == 200 and response.text.strip() == "OK":
                    return
            except httpx.TransportError:
                pass  # not listening yet
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"Phoenix not healthy after {timeout:g}s on {self.base_url}; log tail:\n"
                    f"{self.log_tail()}"
                )
            try:
                # Waiting on the process doubles as the poll interval and
                # notices a crash immediately.
                code = self._process.wait(timeout=_POLL_INTERVAL)
            except subprocess.TimeoutExpired:
                continue
            raise RuntimeError(
                f"Phoenix exited with code {code} during start-up; log tail:\n{self.log_tail()}"
            )

    def stop(self) -> None:
        """SIGTERM, wait up to 15 s, then SIGKILL; remove the working directory."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            # The process group is ours alone (start_new_session), so signalling
            # it reaches any helper process Phoenix started and nothing else.
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=_STOP_GRACE)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def close(self) -> None:
        """Stop the server and release the HTTP client."""
        self.stop()
        self._http.close()

    def __enter__(self) -> PhoenixServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----------------------------------------------------------------- reading spans

    def _span_pages(
        self, trace_id_hex: str, project: str, max_pages: int
    ) -> Iterator[dict[str, Any]]:
        """Yield span records from ``GET /v1/projects/{project}/spans``, following cursors."""
        params: dict[str, Any] = {"trace_id": trace_id_hex, "limit": 100}
        url = f"{self.base_url}/v1/projects/{project}/spans"
        for _ in range(max_pages):
            response = self._http.get(url, params=params)
            if response.status_code == 404:
                return  # the project appears with its first span
            response.raise_for_status()
            body = response.json()
            yield from body.get("data", [])
            cursor = body.get("next_cursor")
            if not cursor:
                return
            params["cursor"] = cursor

    def spans(self, trace_id_hex: str, project: str = "default") -> list[dict[str, Any]]:
        """Span records of one trace, oldest first.

        Filtering is also done client-side, so a Phoenix that ignores the
        ``trace_id`` parameter still gives the right answer (just slower).
        """
        trace_id_hex = trace_id_hex.lower()
        records = [
            record
            for record in self._span_pages(trace_id_hex, project, max_pages=50)
            if record.get("context", {}).get("trace_id", "").lower() == trace_id_hex
        ]
        # Phoenix returns newest first; tests read more naturally in start order.
        return sorted(records, key=lambda record: record.get("start_time", ""))

    def wait_for_spans(
        self, trace_id_hex: str, count: int, timeout: float = 60, project: str = "default"
    ) -> list[dict[str, Any]]:
        """Poll until at least ``count`` spans of the trace are readable.

        Phoenix ingests asynchronously (an accepted export is queued, then
        written in batches), so a 200 from the collector is not yet readable.
        """
        deadline = time.monotonic() + timeout
        records: list[dict[str, Any]] = []
        while True:
            records = self.spans(trace_id_hex, project)
            if len(records) >= count:
                return records
            if time.monotonic() >= deadline:
                break
            if not self.running:
                break  # the server died (or never started); waiting cannot help
            # Sleep in short steps bounded by the deadline.
            self._pause(min(_POLL_INTERVAL, max(0.0, deadline - time.monotonic())))
        seen = [(r.get("name"), r.get("context", {}).get("span_id")) for r in records]
        raise AssertionError(
            f"expected >= {count} spans of trace {trace_id_hex} in project {project!r} within "
            f"{timeout:g}s, saw {len(records)}: {seen}\nPhoenix log tail:\n{self.log_tail(15)}"
        )

    def _pause(self, seconds: float) -> None:
        """Wait between polls; returns early if the server process exits."""
        if self._process is None:
            return
        try:
            self._process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            pass


# --------------------------------------------------------------------------- MLflow


def mlflow_trace_id(trace_id_hex: str) -> str:
    """MLflow's id of an OTLP-ingested trace: ``tr-`` and the 32-digit hex trace id."""
    return f"tr-{trace_id_hex.lower()}"


def _hex_id(encoded: str | None) -> str | None:
    """An id from MLflow's JSON (protobuf ``bytes``, so base64) as lowercase hex."""
    return base64.b64decode(encoded).hex() if encoded else None


def _any_value(value: Mapping[str, Any]) -> Any:
    """A Python value from an OTLP ``AnyValue`` in protobuf JSON form."""
    if "string_value" in value:
        return value["string_value"]
    if "bool_value" in value:
        return value["bool_value"]
    if "int_value" in value:
        return int(value["int_value"])  # int64: a string in canonical protobuf JSON
    if "double_value" in value:
        return float(value["double_value"])
    if "array_value" in value:
        return [_any_value(item) for item in value["array_value"].get("values", [])]
    if "kvlist_value" in value:
        return {
            pair["key"]: _any_value(pair.get("value", {}))
            for pair in value["kvlist_value"].get("values", [])
        }
    if "bytes_value" in value:
        return base64.b64decode(value["bytes_value"])
    return None


def _attributes(pairs: list[Mapping[str, Any]]) -> dict[str, Any]:
    return {pair["key"]: _any_value(pair.get("value", {})) for pair in pairs}


@dataclass(frozen=True)
class MlflowSpan:
    """One span as MLflow stores it; ids are lowercase hex, as OpenTelemetry prints them."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    status: str  # "OK" / "ERROR" / "UNSET"
    status_message: str
    start_time_ns: int = 0
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)  # {"name", "attributes"}

    @property
    def span_type(self) -> str | None:
        """MLflow's span type (from ``openinference.span.kind`` for OTLP spans): "CHAIN", "LLM"…"""
        return self.attributes.get("mlflow.spanType")

    @property
    def inputs(self) -> Any:
        """What MLflow shows as the span's inputs (from ``input.value``)."""
        return self.attributes.get("mlflow.spanInputs")

    @property
    def outputs(self) -> Any:
        """What MLflow shows as the span's outputs (from ``output.value``)."""
        return self.attributes.get("mlflow.spanOutputs")

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> MlflowSpan:
        """From one element of ``trace.spans`` in MLflow's GetTrace response (OTLP span JSON)."""
        status = record.get("status") or {}
        code = status.get("code", "STATUS_CODE_UNSET")
        return cls(
            name=record.get("name", ""),
            trace_id=_hex_id(record.get("trace_id")) or "",
            span_id=_hex_id(record.get("span_id")) or "",
            parent_id=_hex_id(record.get("parent_span_id")),
            status=code.removeprefix("STATUS_CODE_"),
            status_message=status.get("message", ""),
            start_time_ns=int(record.get("start_time_unix_nano", 0)),
            attributes=_attributes(record.get("attributes", [])),
            events=[
                {"name": event.get("name", ""), "attributes": _attributes(event.get("attributes", []))}
                for event in record.get("events", [])
            ],
        )


@dataclass(frozen=True)
class MlflowTrace:
    """A trace read back from MLflow: its ``TraceInfo`` (REST JSON) and its spans, oldest first."""

    info: dict[str, Any]
    spans: list[MlflowSpan]

    @property
    def trace_id(self) -> str:
        """MLflow's id, ``tr-<hex>``."""
        return str(self.info.get("trace_id", ""))

    @property
    def state(self) -> str:
        """"OK" or "ERROR" (from the root span's status), "IN_PROGRESS" until the root arrives."""
        return str(self.info.get("state", ""))


class MlflowServer:
    """A throw-away MLflow tracking server on loopback with its own temporary SQLite store."""

    experiment_id = MLFLOW_EXPERIMENT_ID

    def __init__(
        self, venv: Path = MLFLOW_VENV, extra_env: Mapping[str, str] | None = None
    ) -> None:
        self.venv = Path(venv).expanduser()
        self.extra_env = dict(extra_env or {})
        self.port = 0
        self.startup_seconds: float | None = None
        self._workdir: Path | None = None
        self._log_file: Any = None
        self._process: subprocess.Popen[bytes] | None = None
        # trust_env=False: a proxy configured for the outside world must not
        # intercept loopback requests.
        self._http = httpx.Client(timeout=30, trust_env=False)

    # ----------------------------------------------------------------- addresses

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``: the UI and the REST API."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def otlp_url(self) -> str:
        """OTLP/HTTP traces endpoint (protobuf or JSON); needs ``otlp_headers``."""
        return f"{self.base_url}/v1/traces"

    @property
    def otlp_headers(self) -> dict[str, str]:
        """The header MLflow requires on every export: which experiment the traces go to."""
        return {"x-mlflow-experiment-id": self.experiment_id}

    @property
    def running(self) -> bool:
        """Whether the ``mlflow server`` process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def log_path(self) -> Path | None:
        """Where the server's stdout and stderr go while it runs."""
        return self._workdir / "mlflow.log" if self._workdir else None

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the server log (empty if there is none)."""
        path = self.log_path
        if path is None or not path.exists():
            return ""
        with path.open("r", errors="replace") as log:
            return "".join(deque(log, maxlen=lines))

    # ----------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 120) -> MlflowServer:
        """Launch ``mlflow server`` and wait until ``/health`` answers 200.

        Start-up (database migrations, then uvicorn) takes 15–40 s on two busy
        cores, hence the generous default.
        """
        if self._process is not None:
            return self
        mlflow = self.venv / "bin" / "mlflow"
        if not mlflow.exists():
            raise RuntimeError(
                f"MLflow is not installed in {self.venv}; run `python -m tests.backends install`"
            )
        self.port = _free_port(socket.AF_INET, "127.0.0.1")
        self._workdir = Path(tempfile.mkdtemp(prefix="trace_ext-mlflow-"))
        command = [
            str(mlflow), "server",
            "--backend-store-uri", f"sqlite:///{self._workdir / 'mlflow.db'}",
            "--artifacts-destination", str(self._workdir / "artifacts"),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--workers", "1",
        ]  # fmt: skip
        env = _child_env(
            {**_MLFLOW_OFFLINE_ENV, "VIRTUAL_ENV": str(self.venv), **self.extra_env},
            scrubbed=_MLFLOW_SCRUBBED_ENV_PREFIXES,
        )
        assert self.log_path is not None
        self._log_file = self.log_path.open("wb")
        began = time.monotonic()
        self._process = subprocess.Popen(
            command,
            cwd=self._workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            # Own session and process group: `mlflow server` runs uvicorn as a
            # child, and stopping must reach it (and nothing else).
            start_new_session=True,
        )
        try:
            self._wait_healthy(began + timeout, timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def _wait_healthy(self, deadline: float, timeout: float) -> None:
        """Poll ``/health`` until 200; RuntimeError if the server dies or times out."""
        assert self._process is not None
        while True:
            try:
                if self._http.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"MLflow not healthy after {timeout:g}s on {self.base_url}; log tail:\n"
                    f"{self.log_tail()}"
                )
            try:
                # Waiting on the process doubles as the poll interval and
                # notices a crash immediately.
                code = self._process.wait(timeout=_POLL_INTERVAL)
            except subprocess.TimeoutExpired:
                continue
            raise RuntimeError(
                f"MLflow exited with code {code} during start-up; log tail:\n{self.log_tail()}"
            )

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL what is left after 15 s; remove the working directory."""
        process, self._process = self._process, None
        if process is not None:
            _signal_group(process, signal.SIGTERM)
            deadline = time.monotonic() + _STOP_GRACE
            try:
                process.wait(timeout=_STOP_GRACE)
            except subprocess.TimeoutExpired:
                pass
            # The CLI may exit before its uvicorn child does: wait for the group.
            if not _group_gone(process.pid, deadline):
                _signal_group(process, signal.SIGKILL)
                _group_gone(process.pid, time.monotonic() + _STOP_GRACE)
            process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def close(self) -> None:
        """Stop the server and release the HTTP client."""
        self.stop()
        self._http.close()

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----------------------------------------------------------------- reading traces

    def trace(self, trace_id_hex: str) -> MlflowTrace | None:
        """The trace with this OpenTelemetry trace id as MLflow has it now, or None.

        ``GET /api/3.0/mlflow/traces/get`` (MLflow's GetTrace) returns the
        trace info and every span stored so far (``allow_partial``: also
        before the root span has arrived).
        """
        response = self._http.get(
            f"{self.base_url}/api/3.0/mlflow/traces/get",
            params={"trace_id": mlflow_trace_id(trace_id_hex), "allow_partial": "true"},
        )
        if response.status_code == 404:
            return None  # the trace appears with its first span
        response.raise_for_status()
        body = response.json().get("trace", {})
        # Oldest first, as tests read most naturally (the root of a cell first).
        spans = sorted(
            (MlflowSpan.from_json(record) for record in body.get("spans", [])),
            key=lambda span: span.start_time_ns,
        )
        return MlflowTrace(info=body.get("trace_info", {}), spans=spans)

    def wait_for_trace(self, trace_id_hex: str, count: int, timeout: float = 60) -> MlflowTrace:
        """Poll until MLflow has at least ``count`` spans of the trace.

        The first reads after start-up can take seconds while the server warms
        up; a read that fails on the server side (5xx, a timeout) is retried
        until the deadline.
        """
        deadline = time.monotonic() + timeout
        found: MlflowTrace | None = None
        problem = ""
        while True:
            try:
                found = self.trace(trace_id_hex)
                problem = ""
            except httpx.TransportError as error:
                problem = f"{type(error).__name__}: {error}"
            except httpx.HTTPStatusError as error:
                if error.response.status_code < 500:
                    raise
                problem = f"HTTP {error.response.status_code}: {error.response.text[:300]}"
            if found is not None and len(found.spans) >= count:
                return found
            if time.monotonic() >= deadline or not self.running:
                break
            self._pause(min(_POLL_INTERVAL, max(0.0, deadline - time.monotonic())))
        seen = [(span.name, span.span_id) for span in found.spans] if found else []
        raise AssertionError(
            f"expected >= {count} spans of trace {mlflow_trace_id(trace_id_hex)} in MLflow within "
            f"{timeout:g}s, saw {len(seen)}: {seen}{'; last error ' + problem if problem else ''}\n"
            f"MLflow log tail:\n{self.log_tail(15)}"
        )

    def _pause(self, seconds: float) -> None:
        """Wait between polls; returns early if the server process exits."""
        if self._process is None:
            return
        try:
            self._process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            pass


def _group_gone(pgid: int, deadline: float) -> bool:
    """Wait until no process of group ``pgid`` is left; False if some still are at ``deadline``."""
    while True:
        try:
            os.killpg(pgid, 0)  # signal 0: only asks whether the group has members
        except ProcessLookupError:
            return True
        if time.monotonic() >= deadline:
            return False
        # A process group has nothing to wait on from outside: poll it.
        time.sleep(_POLL_INTERVAL)


# --------------------------------------------------------------------------- CLI


def install_browser() -> str:
    """Debian's chromium for the browser tests (Playwright's own download can't work here).

    Installed with apt-get when missing, which needs root; returns its path.
    """
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit("chromium is missing: run `apt-get install -y chromium` as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"], check=True, env=env)
    found = shutil.which("chromium")
    if not found:
        raise SystemExit("apt-get installed chromium, but it is not on PATH")
    return found


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.backends install|serve``."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.backends",
        description="Prepare or run the test backends (Phoenix, MLflow) and the kernelspec.",
    )
    parser.add_argument("--venv", type=Path, default=PHOENIX_VENV, help=f"default: {PHOENIX_VENV}")
    parser.add_argument(
        "--mlflow-venv", type=Path, default=MLFLOW_VENV, help=f"default: {MLFLOW_VENV}"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "install",
        help="install the trace_ext kernelspec and chromium (as root); create the Phoenix and MLflow "
        "virtualenvs (idempotent)",
    )
    serve = commands.add_parser(
        "serve", help="run a throw-away Phoenix (or MLflow) until Ctrl-C (to look at the UI)"
    )
    serve.add_argument("--backend", choices=("phoenix", "mlflow"), default="phoenix")
    args = parser.parse_args(argv)

    if args.command == "install":
        # An editable install (`pip install -e .`, the README's test command) leaves out
        # the data files that `pip install .` installed, the kernelspec among them.
        subprocess.run([sys.executable, "-m", "trace_ext", "install", "--sys-prefix"], check=True)
        print(install_browser())
        venv = install_phoenix(args.venv)
        print(venv)
        print(f"arize-phoenix {phoenix_version(venv)}")
        mlflow_venv = install_mlflow(args.mlflow_venv)
        print(mlflow_venv)
        print(f"mlflow {mlflow_version(mlflow_venv)}")
        return 0

    if args.backend == "mlflow":
        with MlflowServer(args.mlflow_venv) as mlflow:
            print(f"MLflow up in {mlflow.startup_seconds:.1f}s at {mlflow.base_url} "
                  f"(OTLP/HTTP {mlflow.otlp_url} with header x-mlflow-experiment-id: "
                  f"{mlflow.experiment_id}); log {mlflow.log_path}; Ctrl-C to stop", flush=True)
            try:
                while mlflow.running:
                    mlflow._pause(3600)
            except KeyboardInterrupt:
                pass
        return 0

    with PhoenixServer(args.venv) as server:
        print(f"Phoenix up in {server.startup_seconds:.1f}s at {server.base_url} "
              f"(OTLP/HTTP {server.otlp_url}); log {server.log_path}; Ctrl-C to stop", flush=True)
        try:
            while server.running:
                server._pause(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
