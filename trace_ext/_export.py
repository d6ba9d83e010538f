"""One export request: build the OTLP body, post it, and say what the answer means.

The sender thread decides what to do with the outcome; this module knows HTTP
and OTLP and nothing about threads, stores or counters.
"""

from __future__ import annotations

import email.utils
import gzip
import time
from dataclasses import dataclass
from typing import Iterable, Union

import httpx

from ._otlp import build_request, parse_response, to_json
from ._destination import Destination

__all__ = ["Failed", "Retry", "SPLIT", "Sent", "SenderConfig", "encode_body", "export"]

RETRY_AFTER_CAP = 3600.0  # seconds: a larger Retry-After is taken as this


@dataclass(frozen=True)
class SenderConfig:
    destination: Destination
    protocol: str = "http/protobuf"
    compression: str = "gzip"
    export_timeout: float = 10.0
    max_batch_spans: int = 512
    max_batch_bytes: int = 4_000_000


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


SPLIT = "split"  # the batch is too large or holds a span the server refuses: halve it

Outcome = Union[Sent, Failed, Retry, str]


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
