"""What an export's answer means and what to do next: the retry policy in one place.

- An answer (or no answer) becomes an outcome: ``Sent`` (2xx, with OTLP's
  partial_success count), ``Retry`` (408, 429, 5xx, network, TLS, credentials:
  keep the spans and try later, never sooner than the server's Retry-After),
  ``Failed`` (another 4xx, with the server's reason), ``SPLIT`` (400/413 on a
  batch: halve it until only the refused span fails) or ``TooLarge`` (413 on a
  single span).
- Retries back off exponentially with jitter, 1 s doubling to 30 s.
- A request that timed out is tried again with twice the time limit (up to
  ``longer_timeout``'s cap): a backend slower than ``export_timeout`` did get
  the batch, and giving up on it at the same limit again would send it again
  for ever. An answer within ``export_timeout`` puts the limit back.
- A single span refused as too large is not lost: it is re-encoded with its
  longest string and bytes values cut (with the marker ``truncate()`` writes),
  the limit halving on each try down to a floor, and sent again. Only a span
  too large even then fails.

Knows nothing about threads, stores or counters; :mod:`.sender` acts on it.
"""

from __future__ import annotations

import email.utils
import random
import ssl
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Union
from urllib.parse import urlsplit

import httpx
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from .._capture.values import truncate
from .._otlp import decode_span, parse_response
from .._sdks import langfuse
from .._store.store import Claimed

__all__ = [
    "BACKOFF_CAP", "CERTIFICATE_SETTING", "FLOOR", "MAX_TRIES", "SPLIT", "Failed", "Outcome", "Retry",
    "Sent", "TIMEOUT_CAP", "TIMEOUT_GROWTH", "TooLarge", "backoff_delay", "certificate_problem", "classify",
    "deliver_shrunk", "longer_timeout", "longest_value", "short", "shrink_limits", "shrink_span", "untrusted",
]

RETRY_AFTER_CAP = 3600.0  # seconds: a larger Retry-After is taken as this
BACKOFF_BASE = 1.0  # seconds before the first retry
BACKOFF_CAP = 30.0  # seconds: retries never space out further than this
# A timed-out request's time limit doubles up to TIMEOUT_GROWTH times export_timeout, and
# never past TIMEOUT_CAP (unless export_timeout itself is longer): enough for a backend
# 8 times slower than the setting to answer (a first time-out at 10 s is followed by
# waits of 20, 40 and 60 s), while a backend that hangs holds the sender for at most a
# minute per try (its lease, twice the limit, still outlasts the request).
TIMEOUT_GROWTH = 8.0
TIMEOUT_CAP = 60.0  # seconds


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
    # No (whole) answer within the request's time limit: the server may have the spans
    # already, so the next try waits longer for its answer (longer_timeout).
    timed_out: bool = False


@dataclass(frozen=True)
class TooLarge:
    """HTTP 413 for a single span: the span itself is over the server's limit."""

    host: str
    message: str = ""


SPLIT = "split"  # the batch is too large or holds a span the server refuses: halve it

Outcome = Union[Sent, Failed, Retry, TooLarge, str]

CERTIFICATE_SETTING = "TraceExt.certificate (or OTEL_EXPORTER_OTLP_CERTIFICATE)"

def backoff_delay(attempt: int) -> float:
    """Seconds before retry ``attempt`` (from 0): doubling to the cap; jitter keeps kernels out of step."""
    return min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(attempt, 32)) * random.uniform(0.5, 1.0)


def longer_timeout(timeout: float, export_timeout: float) -> float:
    """The time limit for the request after one that timed out with ``timeout`` seconds."""
    cap = max(export_timeout, min(TIMEOUT_GROWTH * export_timeout, TIMEOUT_CAP))
    return min(2 * timeout, cap)


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
            f"keys ({langfuse.credentials_hint()}) and delivery resumes.",
            auth=True,
        )
    if 300 <= code < 400:
        # Not the server refusing the spans: it points elsewhere, and following a redirect
        # would send the headers (keys) to wherever it points. Kept until the URL is fixed.
        where = response.headers.get("location", "")
        try:
            where = f" to {urlsplit(where).hostname}" if urlsplit(where).hostname else ""
        except ValueError:
            where = ""
        return Retry(
            None,
            f"{host} answered with a redirect (HTTP {code}){where}, which trace_ext does not follow; "
            "spans are kept: set TraceExt.endpoint to the URL it points to.",
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
    content_type = response.headers.get("content-type", "").lower()
    try:
        if "json" in content_type:
            body = response.json()
            if isinstance(body, dict):
                text = str(body.get("message") or body.get("error") or body.get("detail") or body)
        elif "html" in content_type or response.content.lstrip()[:1] == b"<":
            # An error page (a proxy's, a framework's): its markup is no reason; the
            # status code and its phrase say what happened.
            text = response.reason_phrase or ""
        else:
            text = response.content.decode("utf-8", "replace")
    except Exception:
        text = ""
    text = " ".join("".join(ch for ch in text if ch.isprintable() or ch.isspace()).split())
    return text[:300]


def short(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


def certificate_problem(exc: BaseException) -> ssl.SSLCertVerificationError | None:
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


def untrusted(host: str, problem: ssl.SSLCertVerificationError, certificate: str | None) -> str:
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


# -- a single span too large for the server -----------------------------------

FLOOR = 1024  # characters (bytes for binary values): never cut a value shorter than this
MAX_TRIES = 8  # requests spent on one oversized span, at most

# post(span, note) sends one span and records Sent/Failed itself; it returns
# None when done, a Retry, or a TooLarge when the server refused it again.
Post = Callable[[Claimed, str], "Outcome | None"]


def _values(attributes: Iterable[KeyValue]) -> Iterable[AnyValue]:
    """Every value under these attributes, nested arrays and maps included."""
    stack = [kv.value for kv in attributes]
    while stack:
        value = stack.pop()
        yield value
        kind = value.WhichOneof("value")
        if kind == "array_value":
            stack.extend(value.array_value.values)
        elif kind == "kvlist_value":
            stack.extend(kv.value for kv in value.kvlist_value.values)


def _all_values(span) -> Iterable[AnyValue]:
    yield from _values(span.attributes)
    for event in span.events:
        yield from _values(event.attributes)
    for link in span.links:
        yield from _values(link.attributes)


def _length(value: AnyValue) -> int:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return len(value.string_value)
    if kind == "bytes_value":
        return len(value.bytes_value)
    return 0


def longest_value(payload: bytes) -> int:
    """Length of the span's longest string or bytes attribute value (events and links included)."""
    return max((_length(v) for v in _all_values(decode_span(payload))), default=0)


def shrink_span(payload: bytes, limit: int) -> tuple[bytes, int]:
    """The span re-encoded with every string/bytes value cut to ``limit``, and how many were cut."""
    span = decode_span(payload)
    cut = 0
    for value in _all_values(span):
        kind = value.WhichOneof("value")
        if kind == "string_value" and len(value.string_value) > limit:
            value.string_value = truncate(value.string_value, limit)
            cut += 1
        elif kind == "bytes_value" and len(value.bytes_value) > limit:
            value.bytes_value = value.bytes_value[:limit]  # bytes have no room for a marker
            cut += 1
    return span.SerializeToString(), cut


def shrink_limits(longest: int, floor: int = FLOOR, tries: int = MAX_TRIES) -> list[int]:
    """Limits to try, halving from half the longest value; the last try is always the floor."""
    if longest <= floor:
        return []  # nothing long enough to cut: shrinking can't help
    limits, limit = [], longest // 2
    while limit > floor and len(limits) < tries - 1:
        limits.append(limit)
        limit //= 2
    return limits + [floor]


def deliver_shrunk(post: Post, span: Claimed, refused: TooLarge) -> Outcome | None:
    """Send ``span`` cut smaller and smaller until the server takes it.

    Returns None once the span is recorded (sent, or failed by ``post``), a
    Retry to keep it for later, or Failed when even the smallest cut is too large.
    """
    limits = shrink_limits(longest_value(span.payload))
    for limit in limits:
        payload, cut = shrink_span(span.payload, limit)
        note = (
            f"truncated to fit: {refused.host} refused the span as too large (HTTP 413), "
            f"so {cut} attribute value(s) were cut to {limit} characters"
        )
        outcome = post(span._replace(payload=payload), note)
        if not isinstance(outcome, TooLarge):
            return outcome
    said = f": {refused.message}" if refused.message else ""
    why = f"even with its attribute values cut to {FLOOR} characters" if limits else (
        f"and it has no attribute value longer than {FLOOR} characters to cut"
    )
    return Failed(
        f"{refused.host} refused a span as too large (HTTP 413){said}, {why}; it is kept "
        "in the store, and `%trace retry` sends it again."
    )

