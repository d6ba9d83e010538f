"""One export request: build the OTLP body, post it, and say what the answer means.

The sender thread decides what to do with the outcome; this module knows HTTP
and OTLP and nothing about threads, stores or counters.
"""

from __future__ import annotations

import email.utils
import gzip
import os
import ssl
import time
from dataclasses import dataclass
from typing import Iterable, Union

import httpx

from ._destination import Destination, resolve_certificate, resolve_destination
from ._otlp import build_request, parse_response, to_json
from .config import SettingError

__all__ = [
    "Failed", "Retry", "SENDER_SETTINGS", "SPLIT", "Sent", "SenderConfig", "TooLarge", "encode_batch", "encode_body",
    "export", "new_client", "sender_config", "tls_verify",
]

RETRY_AFTER_CAP = 3600.0  # seconds: a larger Retry-After is taken as this


@dataclass(frozen=True)
class SenderConfig:
    destination: Destination
    protocol: str = "http/protobuf"
    compression: str = "gzip"
    export_timeout: float = 10.0
    max_batch_spans: int = 512
    max_batch_bytes: int = 4_000_000
    certificate: str | None = None  # CA bundle (PEM) to trust for the endpoint; None: the default CAs


# The TraceExt settings that make up a SenderConfig: a change to one reconfigures the sender.
SENDER_SETTINGS = frozenset({
    "endpoint", "headers", "protocol", "compression", "export_timeout", "max_batch_spans",
    "max_batch_bytes", "certificate",
})


def sender_config(
    settings, followed: Destination | None = None
) -> tuple[SenderConfig | None, Destination | None, str]:
    """The sender's configuration from the settings and the environment (None: keep spans local),
    the destination, and a one-sentence warning about a half-configured environment.
    ``followed`` (another SDK's exporter) is used when nothing else is configured."""
    try:
        destination, warning = resolve_destination(settings)
        if destination is None and followed is not None:
            extra = dict(settings.headers)
            destination = Destination(followed.url, followed.source, {**followed.headers, **extra})
    except SettingError as exc:
        return None, None, str(exc)
    if destination is None:
        return None, None, warning
    s = settings
    config = SenderConfig(
        destination, s.protocol, s.compression, s.export_timeout, s.max_batch_spans,
        s.max_batch_bytes, certificate=resolve_certificate(s),
    )
    return config, destination, warning


@dataclass(frozen=True)
class Sent:
    rejected: int = 0  # OTLP partial_success: how many the server dropped
    message: str = ""


@dataclass(frozen=True)
class Failed:
    reason: str


@dataclass(frozen=True)
class Retry:
    delay: float | None  # the server's Retry-After, if it gave one
    reason: str
    auth: bool = False


@dataclass(frozen=True)
class TooLarge:
    """HTTP 413 for a single span: the span itself is over the server's limit."""

    host: str
    message: str = ""


SPLIT = "split"  # the batch is too large or holds a span the server refuses: halve it

Outcome = Union[Sent, Failed, Retry, TooLarge, str]

CERTIFICATE_SETTING = "TraceExt.certificate (or OTEL_EXPORTER_OTLP_CERTIFICATE)"


def tls_verify(certificate: str | None) -> ssl.SSLContext | bool:
    """What httpx verifies the server with: the configured CA bundle, else its default CAs.

    Verification is never turned off. Raises ValueError (one readable sentence)
    when the bundle can't be loaded.
    """
    if not certificate:
        return True
    path = os.path.expanduser(certificate)
    try:
        if os.path.isdir(path):
            return ssl.create_default_context(capath=path)
        return ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(
            f"The CA bundle {path!r} from {CERTIFICATE_SETTING} could not be loaded "
            f"({_short(exc)}); point the setting at a PEM file, and spans are kept until then."
        ) from None


def new_client(config: SenderConfig) -> httpx.Client:
    """An HTTP client for ``config``'s endpoint; ValueError if its CA bundle can't be loaded."""
    from . import __version__

    return httpx.Client(headers={"User-Agent": f"trace_ext/{__version__}"}, verify=tls_verify(config.certificate))


def encode_batch(
    config: SenderConfig, origins: dict[int, tuple[bytes, bytes]], batch: Iterable
) -> tuple[bytes, dict[str, str]]:
    """The request for stored spans (``.origin``, ``.payload``), grouped by (resource, scope)."""
    groups: dict[int, list[bytes]] = {}
    for span in batch:
        groups.setdefault(span.origin, []).append(span.payload)
    return encode_body(config, ((*origins[o], p) for o, p in groups.items()))


def encode_body(
    config: SenderConfig, groups: Iterable[tuple[bytes, bytes, list[bytes]]]
) -> tuple[bytes, dict[str, str]]:
    """The request body and headers for (resource, scope, span payloads) groups."""
    body = build_request(groups)
    headers = dict(config.destination.headers)
    if config.protocol == "http/json":
        body, headers["Content-Type"] = to_json(body), "application/json"
    else:
        headers["Content-Type"] = "application/x-protobuf"
    if config.compression == "gzip":
        body, headers["Content-Encoding"] = gzip.compress(body, compresslevel=5), "gzip"
    return body, headers


def export(
    client: httpx.Client, config: SenderConfig, body: bytes, headers: dict[str, str],
    count: int, timeout: float,
) -> Outcome:
    """POST one request of ``count`` spans and classify the answer."""
    host = config.destination.host
    try:
        response = client.post(config.destination.url, content=body, headers=headers, timeout=timeout)
    except httpx.TimeoutException:
        return Retry(None, f"{host} did not answer within {timeout:g} s; retrying.")
    except httpx.ConnectError as exc:
        problem = _certificate_problem(exc)
        if problem is not None:
            return Retry(None, _untrusted(host, problem, config.certificate))
        return Retry(None, f"Could not reach {host} ({_short(exc)}); retrying.")
    except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError) as exc:
        # The server went away mid-request. Without an answer nothing counts as
        # accepted, so the whole batch is sent again (at-least-once delivery).
        reason = f"{host} closed the connection before answering ({_short(exc)}); spans are kept and retried."
        return Retry(None, reason)
    except httpx.HTTPError as exc:
        return Retry(None, f"Could not reach {host} ({_short(exc)}); retrying.")
    return classify(response, host, count)


def classify(response: httpx.Response, host: str, count: int) -> Outcome:
    code = response.status_code
    if 200 <= code < 300:
        rejected, message = parse_response(response.headers.get("content-type", ""), response.content)
        return Sent(min(rejected, count), message)
    message = _server_message(response)
    said = f": {message}" if message else ""
    if code in (400, 413) and count > 1:
        return SPLIT
    if code == 413:
        return TooLarge(host, message)
    if code in (401, 403):
        return Retry(
            None,
            f"{host} rejected the credentials (HTTP {code}){said}. Spans are kept; fix the "
            "keys (LANGFUSE_PUBLIC_KEY/LANGFUSE_SECRET_KEY or %config TraceExt.headers) "
            "and delivery resumes.",
            auth=True,
        )
    if code in (408, 429) or code >= 500:
        return Retry(_retry_after(response), f"{host} answered HTTP {code}{said}; retrying.")
    reason = f"{host} refused the span (HTTP {code}){said}."
    if code == 404:
        reason += " Check TraceExt.endpoint: it should end in /v1/traces."
    return Failed(reason)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), RETRY_AFTER_CAP)


def _server_message(response: httpx.Response) -> str:
    """The server's own words about a refusal, short and printable."""
    text = ""
    try:
        if "json" in response.headers.get("content-type", ""):
            body = response.json()
            if isinstance(body, dict):
                text = str(body.get("message") or body.get("error") or body.get("detail") or body)
        else:
            text = response.content.decode("utf-8", "replace")
    except Exception:
        text = ""
    text = " ".join("".join(ch for ch in text if ch.isprintable() or ch.isspace()).split())
    return text[:300]


def _short(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


def _certificate_problem(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind a connection error, if that is what it was."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    if "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return ssl.SSLCertVerificationError(str(exc))
    return None


def _untrusted(host: str, problem: ssl.SSLCertVerificationError, certificate: str | None) -> str:
    """One sentence: why the server's certificate was refused and which setting fixes it."""
    detail = getattr(problem, "verify_message", "") or ""
    if "mismatch" in detail.lower():
        return (
            f"{host}'s certificate is not valid for that name ({detail}); put the host name the "
            "certificate was issued for in the endpoint URL; spans are kept and retried."
        )
    what = f"CERTIFICATE_VERIFY_FAILED: {detail}" if detail else "CERTIFICATE_VERIFY_FAILED"
    trusted = f"is not signed by the CA bundle {certificate}" if certificate else "is not trusted"
    return (
        f"{host}'s certificate {trusted} ({what}); set {CERTIFICATE_SETTING} to the CA bundle "
        "that signed it; spans are kept and retried."
    )
