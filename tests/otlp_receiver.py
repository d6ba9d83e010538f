"""A loopback OTLP/HTTP trace receiver with injectable faults, for tests.

The receiver plays the backend that ``trace_ext`` exports to. It decodes what
it is sent (protobuf or OTLP JSON, optionally gzipped), records every request,
and answers according to a script of faults so tests can exercise retries,
back-off, timeouts and connection failures without any outside host::

    with OtlpReceiver() as rx:
        rx.script(Respond(429, headers={"Retry-After": "1"}), Respond(503))
        ...  # point the exporter at rx.url and export something
        spans = rx.wait_for_spans(3)

Every request consumes one scripted fault (first in, first out); once the
script is empty, ``rx.default`` answers (``None`` means success). Requests that
fail the ``require_headers`` check, or whose body cannot be decoded, are
answered 401 / 400 / 415 without consuming a fault: faults describe how the
backend treats a well-formed, authorised export.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import json
import socket
import ssl
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

__all__ = [
    "DecodeFailure",
    "Delay",
    "Fault",
    "Hang",
    "OtlpReceiver",
    "PartialSuccess",
    "ReceivedSpan",
    "Request",
    "Reset",
    "Respond",
    "Trickle",
    "decode_export_request",
    "otlp_json_to_proto_dict",
]

PROTOBUF = "application/x-protobuf"
JSON = "application/json"

# How long an idle keep-alive connection may sit before its handler thread
# gives up; stop() closes connections explicitly, this only bounds leaks.
_IDLE_CONNECTION_TIMEOUT = 30.0
# Bound on how long stop() waits for the serving thread to exit.
_STOP_JOIN_TIMEOUT = 5.0


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the receiver decoded it, with ids as lowercase hex."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status_code: int
    status_message: str
    events: list[tuple[str, dict[str, Any]]]
    resource: dict[str, Any]
    scope: str


@dataclass(frozen=True)
class Request:
    """One POST the receiver saw and how it answered it.

    ``status`` is ``None`` while the answer is pending and stays ``None`` for
    requests that were never answered (``Hang``, ``Reset``). ``error`` holds
    the reason a body could not be decoded.
    """

    path: str
    headers: dict[str, str]
    content_type: str
    content_encoding: str
    received_at: float
    status: int | None
    spans: list[ReceivedSpan]
    raw_size: int
    error: str | None = None

    @property
    def accepted(self) -> bool:
        """Whether the receiver answered this request with a 2xx status."""
        return self.status is not None and 200 <= self.status < 300


# --------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class Respond:
    """Answer with ``status`` (e.g. 429 with Retry-After, 503, 413, 400, 401)."""

    status: int
    body: bytes | str = b""
    headers: dict[str, str] | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class PartialSuccess:
    """Answer 200 with an OTLP ``partial_success`` rejecting ``rejected`` spans."""

    rejected: int
    message: str


@dataclass(frozen=True)
class Hang:
    """Read the request, stay silent ``seconds`` (or until stop), then close."""

    seconds: float


@dataclass(frozen=True)
class Reset:
    """Read the request, then reset the connection (RST, no response)."""


@dataclass(frozen=True)
class Delay:
    """Wait ``seconds``, then answer success (if stopped meanwhile: no answer)."""

    seconds: float


@dataclass(frozen=True)
class Trickle:
    """Answer ``status`` with a body of ``size`` bytes (None: without end), written
    ``chunk`` bytes at a time every ``interval`` seconds, until done or stop().
    For a 2xx the spans count as accepted as soon as the status line is sent."""

    status: int = 200
    size: int | None = None
    chunk: int = 65536
    interval: float = 0.0


Fault = Respond | PartialSuccess | Hang | Reset | Delay | Trickle


# --------------------------------------------------------------------------- decoding


class DecodeFailure(ValueError):
    """The request body cannot be decoded; carries the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _any_value_to_python(value: AnyValue) -> Any:
    """Convert an OTLP ``AnyValue`` into the matching plain Python value."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_any_value_to_python(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _key_values_to_dict(value.kvlist_value.values)
    # string_value, bool_value, int_value, double_value, bytes_value
    return getattr(value, kind)


def _key_values_to_dict(key_values: Iterable[KeyValue]) -> dict[str, Any]:
    """Convert repeated ``KeyValue`` into a dict (later keys win, as in OTel)."""
    return {kv.key: _any_value_to_python(kv.value) for kv in key_values}


def _spans_of(message: ExportTraceServiceRequest) -> list[ReceivedSpan]:
    """Flatten resource → scope → span nesting into ``ReceivedSpan`` records."""
    spans: list[ReceivedSpan] = []
    for resource_spans in message.resource_spans:
        resource = _key_values_to_dict(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex() or None,
                        name=span.name,
                        kind=int(span.kind),
                        start_ns=int(span.start_time_unix_nano),
                        end_ns=int(span.end_time_unix_nano),
                        attributes=_key_values_to_dict(span.attributes),
                        status_code=int(span.status.code),
                        status_message=span.status.message,
                        events=[
                            (event.name, _key_values_to_dict(event.attributes))
                            for event in span.events
                        ],
                        resource=dict(resource),
                        scope=scope_spans.scope.name,
                    )
                )
    return spans


def _hex_to_base64(value: Any) -> Any:
    """Turn an OTLP-JSON hex id into the base64 protobuf's json_format expects."""
    if not isinstance(value, str):
        return value
    try:
        return base64.b64encode(bytes.fromhex(value)).decode("ascii")
    except ValueError as exc:
        raise DecodeFailure(400, f"id is not hex: {value!r}") from exc


def _convert_ids(obj: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Rewrite the id fields named in ``keys`` of ``obj`` in place."""
    for key in keys:
        if key in obj:
            obj[key] = _hex_to_base64(obj[key])


_SPAN_ID_KEYS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")
_LINK_ID_KEYS = ("traceId", "spanId", "trace_id", "span_id")


def _items(obj: dict[str, Any], *keys: str) -> list[Any]:
    """Return the list under the first present key (camelCase or snake_case)."""
    for key in keys:
        value = obj.get(key)
        if isinstance(value, list):
            return value
    return []


def otlp_json_to_proto_dict(document: dict[str, Any]) -> dict[str, Any]:
    """Rewrite OTLP JSON ids (hex) to base64, in place, so ParseDict accepts them.

    OTLP/JSON deviates from protobuf's canonical JSON mapping only in encoding
    trace and span ids as hex; everything else ParseDict handles itself.
    """
    for resource_spans in _items(document, "resourceSpans", "resource_spans"):
        for scope_spans in _items(resource_spans, "scopeSpans", "scope_spans"):
            for span in _items(scope_spans, "spans"):
                _convert_ids(span, _SPAN_ID_KEYS)
                for link in _items(span, "links"):
                    _convert_ids(link, _LINK_ID_KEYS)
    return document


def _media_type(header: str) -> str:
    """The bare media type of a Content-Type header, lower-cased."""
    return header.split(";", 1)[0].strip().lower()


def decode_export_request(
    body: bytes, content_type: str, content_encoding: str = ""
) -> ExportTraceServiceRequest:
    """Decode an OTLP/HTTP trace export body; raises ``DecodeFailure`` if impossible."""
    encoding = content_encoding.strip().lower()
    if encoding == "gzip":
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError) as exc:
            raise DecodeFailure(400, f"invalid gzip body: {exc}") from exc
    elif encoding not in ("", "identity"):
        raise DecodeFailure(415, f"unsupported Content-Encoding: {content_encoding!r}")

    media_type = _media_type(content_type)
    message = ExportTraceServiceRequest()
    if media_type == PROTOBUF:
        try:
            message.ParseFromString(body)
        except DecodeError as exc:
            raise DecodeFailure(400, f"invalid protobuf body: {exc}") from exc
    elif media_type == JSON:
        try:
            document = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DecodeFailure(400, f"invalid JSON body: {exc}") from exc
        if not isinstance(document, dict):
            raise DecodeFailure(400, "OTLP JSON body must be an object")
        try:
            # OTLP receivers must ignore fields they do not know (spec, "JSON Protobuf Encoding").
            json_format.ParseDict(
                otlp_json_to_proto_dict(document), message, ignore_unknown_fields=True
            )
        except json_format.ParseError as exc:
            raise DecodeFailure(400, f"invalid OTLP JSON: {exc}") from exc
    else:
        raise DecodeFailure(415, f"unsupported Content-Type: {content_type!r}")
    return message


# --------------------------------------------------------------------------- answers


@dataclass(frozen=True)
class _Answer:
    """A fully formed HTTP response the handler should write."""

    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _success_answer(is_json: bool) -> _Answer:
    """HTTP 200 with an empty ExportTraceServiceResponse in the request's encoding."""
    if is_json:
        return _Answer(200, b"{}", JSON)
    return _Answer(200, ExportTraceServiceResponse().SerializeToString(), PROTOBUF)


def _partial_success_answer(fault: PartialSuccess, is_json: bool) -> _Answer:
    """HTTP 200 whose body reports rejected spans, as OTLP specifies."""
    if is_json:
        # int64 fields are strings in OTLP JSON (proto3 JSON mapping).
        document = {
            "partialSuccess": {
                "rejectedSpans": str(fault.rejected),
                "errorMessage": fault.message,
            }
        }
        return _Answer(200, json.dumps(document).encode(), JSON)
    response = ExportTraceServiceResponse()
    response.partial_success.rejected_spans = fault.rejected
    response.partial_success.error_message = fault.message
    return _Answer(200, response.SerializeToString(), PROTOBUF)


def _respond_answer(fault: Respond) -> _Answer:
    """The literal answer a ``Respond`` fault describes."""
    body = fault.body.encode() if isinstance(fault.body, str) else fault.body
    content_type = fault.content_type
    if content_type is None and body:
        content_type = "text/plain; charset=utf-8"
    return _Answer(fault.status, body, content_type, dict(fault.headers or {}))


def _text_answer(status: int, message: str, headers: dict[str, str] | None = None) -> _Answer:
    """A plain-text error answer."""
    return _Answer(status, message.encode(), "text/plain; charset=utf-8", dict(headers or {}))


# --------------------------------------------------------------------------- HTTP plumbing


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its receiver and tracks open connections."""

    daemon_threads = True
    # Never join handler threads on close: a hung handler must not block stop().
    block_on_close = False

    def __init__(self, address: tuple[str, int], receiver: OtlpReceiver) -> None:
        self.receiver = receiver
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, connection: socket.socket) -> None:
        """Remember an open client connection so stop() can close it."""
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        """Forget a client connection that its handler has finished with."""
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        """Shut down every open client connection, waking blocked handlers."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed or reset by the peer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet about clients that went away; report real bugs."""
        if isinstance(sys.exc_info()[1], OSError):
            return  # a client timing out or disconnecting is an expected test scenario
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """Handles one connection; every POST is an OTLP export attempt."""

    server: _Server
    # HTTP/1.1 keeps connections alive like a real collector, so a client's
    # connection pool is exercised; every answer carries Content-Length.
    protocol_version = "HTTP/1.1"
    timeout = _IDLE_CONNECTION_TIMEOUT

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Silence per-request logging; tests inspect ``rx.requests`` instead."""

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        """Read the body and let the receiver decide what happens next."""
        body = self._read_body()
        if body is None:
            return
        self.server.receiver._handle(self, body)

    def _read_body(self) -> bytes | None:
        """Read the request body (Content-Length or chunked); None if impossible."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            self.write_answer(_text_answer(411, "Content-Length required"))
            return None
        try:
            length = int(length_header)
        except ValueError:
            self.write_answer(_text_answer(400, f"bad Content-Length: {length_header!r}"))
            return None
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        """Read a chunked request body (some clients stream large exports)."""
        chunks: list[bytes] = []
        while True:
            size_line = self.rfile.readline()
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                # Skip optional trailers up to the blank line that ends the body.
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()  # CRLF after each chunk

    def write_answer(self, answer: _Answer) -> None:
        """Write a complete HTTP response."""
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        if answer.content_type is not None:
            self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        if answer.body:
            self.wfile.write(answer.body)
        self.wfile.flush()

    def drop_connection(self) -> None:
        """Close gracefully (FIN) without having sent any response."""
        self.close_connection = True

    def reset_connection(self) -> None:
        """Close with SO_LINGER 0 so the peer sees ECONNRESET instead of EOF."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # The rfile holds a reference to the socket; the descriptor is only
        # really closed (sending the RST) once both are closed.
        self.rfile.close()
        self.connection.close()


# --------------------------------------------------------------------------- receiver


class OtlpReceiver:
    """A loopback OTLP/HTTP receiver that records exports and injects faults.

    ``port`` 0 picks a free port on first start; a restart after ``stop()``
    binds the same port again, so a test can take the "backend" down and bring
    it back at the URL the exporter already uses. Records survive restarts.
    """

    def __init__(
        self,
        require_headers: dict[str, str] | None = None,
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.require_headers = {k.lower(): v for k, v in (require_headers or {}).items()}
        self._port = port
        # Serve HTTPS with this server-side context (None: plain HTTP).
        self.ssl_context = ssl_context
        # Re-entrant so wait_for() can evaluate predicates that call the
        # public accessors while holding the condition's lock.
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._requests: list[Request] = []
        self._faults: deque[Fault] = deque()
        self._default: Fault | None = None
        # A backend that judges content: called with each request's spans; a
        # fault it returns wins over the script (e.g. 400 for one malformed span).
        self.rule: Callable[[list[ReceivedSpan]], Fault | None] | None = None
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> OtlpReceiver:
        """Bind 127.0.0.1 and serve in a daemon thread; returns self."""
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server(("127.0.0.1", self._port), self)
        if self.ssl_context is not None:
            # The handshake is deferred to the handler thread's first read, so a
            # client that refuses our certificate fails only its own connection.
            server.socket = self.ssl_context.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            # A short poll interval keeps shutdown() prompt.
            kwargs={"poll_interval": 0.05},
            name=f"otlp-receiver-{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the listening socket and all client connections.

        Returns promptly even while a ``Hang`` or ``Delay`` is in progress: the
        stopping event wakes those handlers.
        """
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        server.close_connections()
        if thread is not None:
            thread.join(_STOP_JOIN_TIMEOUT)
        self._server = None
        self._thread = None
        with self._changed:
            self._changed.notify_all()

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the receiver is currently serving."""
        return self._server is not None

    # ----------------------------------------------------------------- addresses

    @property
    def port(self) -> int:
        """The bound port (0 before the first start when none was requested)."""
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` (``https://`` when serving TLS)."""
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self._port}"

    @property
    def url(self) -> str:
        """The standard OTLP/HTTP traces endpoint, ``<base_url>/v1/traces``."""
        return f"{self.base_url}/v1/traces"

    # ----------------------------------------------------------------- faults

    def script(self, *faults: Fault) -> None:
        """Queue faults; each incoming export consumes the oldest one."""
        with self._lock:
            self._faults.extend(faults)

    @property
    def pending_faults(self) -> list[Fault]:
        """Scripted faults not consumed yet."""
        with self._lock:
            return list(self._faults)

    @property
    def default(self) -> Fault | None:
        """The answer used once the script is empty (``None`` = success)."""
        with self._lock:
            return self._default

    @default.setter
    def default(self, fault: Fault | None) -> None:
        with self._lock:
            self._default = fault

    def _next_fault(self) -> Fault | None:
        with self._lock:
            if self._faults:
                return self._faults.popleft()
            return self._default

    # ----------------------------------------------------------------- records

    @property
    def requests(self) -> list[Request]:
        """Every request received, in arrival order (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def spans(self) -> list[ReceivedSpan]:
        """Spans from requests answered 2xx, in arrival order (a copy).

        ``PartialSuccess`` answers are 200, so their spans count as accepted.
        """
        with self._lock:
            return self._accepted_spans()

    def span_ids(self) -> list[str]:
        """Accepted span ids, duplicates kept so tests can detect re-delivery."""
        return [span.span_id for span in self.spans]

    def clear(self) -> None:
        """Forget recorded requests (faults and default are left alone)."""
        with self._lock:
            self._requests.clear()

    def _accepted_spans(self) -> list[ReceivedSpan]:
        # Caller holds the lock.
        return [span for request in self._requests if request.accepted for span in request.spans]

    def _record(self, request: Request) -> int:
        """Append a request and wake waiters; returns its index for later updates."""
        with self._changed:
            self._requests.append(request)
            self._changed.notify_all()
            return len(self._requests) - 1

    def _set_status(self, index: int, request: Request, status: int) -> None:
        """Record the answer for a request (a replaced copy: records stay immutable)."""
        with self._changed:
            # clear() may have emptied the list meanwhile; then there is nothing to update.
            if index < len(self._requests) and self._requests[index] is request:
                self._requests[index] = dataclasses.replace(request, status=status)
            self._changed.notify_all()

    # ----------------------------------------------------------------- waiting

    def wait_for(self, predicate: Callable[[OtlpReceiver], bool], timeout: float = 10) -> bool:
        """Wait until ``predicate(self)`` holds; False on timeout, never raises.

        The predicate is re-evaluated whenever a request arrives or is
        answered. It runs with the (re-entrant) lock held, so no update can
        slip in between the check and the wait; it may use the public accessors.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True

    def wait_for_spans(self, n: int, timeout: float = 10) -> list[ReceivedSpan]:
        """Wait for at least ``n`` accepted spans; AssertionError if they don't come."""
        if self.wait_for(lambda rx: len(rx.spans) >= n, timeout):
            return self.spans
        requests = self.requests
        statuses = [request.status for request in requests[-10:]]
        errors = [request.error for request in requests if request.error]
        raise AssertionError(
            f"expected >= {n} accepted spans within {timeout:g}s, got {len(self.spans)}; "
            f"{len(requests)} request(s), last statuses {statuses}"
            + (f", decode errors {errors[-3:]}" if errors else "")
        )

    # ----------------------------------------------------------------- handling

    def _check_headers(self, headers: dict[str, str]) -> str | None:
        """Name the first required header that is missing or wrong, if any."""
        for name, expected in self.require_headers.items():
            if headers.get(name) != expected:
                return name
        return None

    def _handle(self, handler: _Handler, body: bytes) -> None:
        """Decode, record and answer one export request."""
        headers: dict[str, str] = {}
        for name, value in handler.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        content_type = headers.get("content-type", "")
        content_encoding = headers.get("content-encoding", "")

        spans: list[ReceivedSpan] = []
        problem: DecodeFailure | None = None
        try:
            spans = _spans_of(decode_export_request(body, content_type, content_encoding))
        except DecodeFailure as exc:
            problem = exc

        request = Request(
            path=handler.path,
            headers=headers,
            content_type=content_type,
            content_encoding=content_encoding,
            received_at=time.monotonic(),
            status=None,
            spans=spans,
            raw_size=len(body),
            error=problem.message if problem else None,
        )
        # Recorded before answering, so once a client sees a response the
        # request is already visible to the test.
        index = self._record(request)

        # Credentials are checked first, as a real backend would.
        missing = self._check_headers(headers)
        if missing is not None:
            answer = _text_answer(401, f"missing or invalid header: {missing}")
        elif problem is not None:
            answer = _text_answer(problem.status, problem.message)
        else:
            is_json = _media_type(content_type) == JSON
            judged = self.rule(spans) if self.rule is not None else None
            fault = judged if judged is not None else self._next_fault()
            if isinstance(fault, Trickle):
                self._set_status(index, request, fault.status)
                self._trickle(handler, fault)
                return
            resolved = self._apply_fault(handler, fault, is_json)
            if resolved is None:
                return  # Hang, Reset or a Delay cut short by stop(): no answer is sent
            answer = resolved
        self._set_status(index, request, answer.status)
        handler.write_answer(answer)

    def _trickle(self, handler: _Handler, fault: Trickle) -> None:
        handler.close_connection = True
        try:
            handler.send_response(fault.status)
            handler.send_header("Content-Type", "text/plain")
            if fault.size is not None:
                handler.send_header("Content-Length", str(fault.size))
            handler.end_headers()
            handler.wfile.flush()
            sent = 0
            while fault.size is None or sent < fault.size:
                if self._stopping.wait(fault.interval) if fault.interval else self._stopping.is_set():
                    return
                part = fault.chunk if fault.size is None else min(fault.chunk, fault.size - sent)
                handler.wfile.write(b"x" * part)
                handler.wfile.flush()
                sent += part
        except OSError:  # the client gave up on it
            return

    def _apply_fault(
        self, handler: _Handler, fault: Fault | None, is_json: bool
    ) -> _Answer | None:
        """Carry out a fault; returns the answer to send, or None for no answer."""
        if fault is None:
            return _success_answer(is_json)
        if isinstance(fault, Respond):
            return _respond_answer(fault)
        if isinstance(fault, PartialSuccess):
            return _partial_success_answer(fault, is_json)
        if isinstance(fault, Delay):
            if self._stopping.wait(fault.seconds):
                # Stopped mid-delay: the backend went away without answering,
                # so these spans must not count as accepted.
                handler.drop_connection()
                return None
            return _success_answer(is_json)
        if isinstance(fault, Hang):
            self._stopping.wait(fault.seconds)
            handler.drop_connection()
            return None
        if isinstance(fault, Reset):
            handler.reset_connection()
            return None
        raise TypeError(f"unknown fault: {fault!r}")
