"""One export request: build the OTLP body, post it, and turn the answer into an outcome.

What an outcome means and what to do next is :mod:`.policy`'s; the sender
thread acts on it. This module knows HTTP and OTLP and nothing about threads,
stores or counters.
"""

from __future__ import annotations

import gzip
import os
import ssl
import time
from typing import Iterable

import httpx

from .._otlp import build_request, to_json
from .._version import __version__
from .destination import SenderConfig
from .policy import (
    CERTIFICATE_SETTING,
    Outcome,
    Retry,
    certificate_problem,
    classify,
    short,
    untrusted,
)

__all__ = ["encode_batch", "encode_body", "export", "new_client", "tls_verify"]

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
            f"({short(exc)}); point the setting at a PEM file, and spans are kept until then."
        ) from None


MAX_ANSWER_BYTES = 2**20  # of an answer's body: OTLP's is a few bytes; an error page is cut for its reason anyway
_DROPPED_HEADERS = {"content-encoding", "content-length", "transfer-encoding"}


class _TooSlow(Exception):
    """The answer's body did not finish within the request's time limit."""


def _post(client: httpx.Client, url: str, body: bytes, headers: dict[str, str], timeout: float) -> httpx.Response:
    """POST, reading at most ``MAX_ANSWER_BYTES`` of the answer, all within about ``timeout``.

    httpx's timeouts bound each read, so a server that trickles its answer (a byte
    a second) or sends one without end would hold the sender, and fill its memory,
    for ever: the body is read in chunks against one deadline and a cap. The
    answer comes back with its body decoded and cut at the cap (a 2xx cut short
    is taken as accepted, with no partial-success details).
    """
    deadline = time.monotonic() + timeout
    with client.stream("POST", url, content=body, headers=headers, timeout=timeout) as response:
        content = bytearray()
        cut = False
        for chunk in response.iter_bytes():
            content += chunk
            if len(content) > MAX_ANSWER_BYTES:
                cut = True
                break
            if time.monotonic() > deadline:
                raise _TooSlow()
        if cut and response.is_success:
            content = bytearray()
        kept = [(k, v) for k, v in response.headers.items() if k.lower() not in _DROPPED_HEADERS]
        return httpx.Response(response.status_code, headers=kept, content=bytes(content[:MAX_ANSWER_BYTES]))


def bad_header(exc: BaseException) -> str:
    kind = "characters that aren't ASCII" if isinstance(exc, UnicodeEncodeError) else "a character HTTP forbids"
    return (
        f"An export header (TraceExt.headers, or the endpoint's environment variables) has {kind} "
        "in its name or value, so no request can be sent; spans are kept until it is fixed."
    )


def new_client(config: SenderConfig) -> httpx.Client:
    """An HTTP client for ``config``'s endpoint; ValueError if its CA bundle can't be loaded."""
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
        response = _post(client, config.destination.url, body, headers, timeout)
    except _TooSlow:
        return Retry(None, f"{host} did not finish answering within {timeout:g} s; retrying.", timed_out=True)
    except (httpx.LocalProtocolError, UnicodeEncodeError) as exc:
        # A header the HTTP client refuses to send (a line break, characters that aren't
        # ASCII). Its text quotes the value, which may be a key: it is never shown.
        return Retry(None, bad_header(exc))
    except httpx.TimeoutException as exc:
        # Only a read time-out means the server had the whole request (and may keep it):
        # then the next try waits longer. Not connecting in time sent it nothing.
        reason = f"{host} did not answer within {timeout:g} s; retrying."
        return Retry(None, reason, timed_out=isinstance(exc, httpx.ReadTimeout))
    except httpx.ConnectError as exc:
        problem = certificate_problem(exc)
        if problem is not None:
            return Retry(None, untrusted(host, problem, config.certificate))
        return Retry(None, f"Could not reach {host} ({short(exc)}); retrying.")
    except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError) as exc:
        # The server went away mid-request. Without an answer nothing counts as
        # accepted, so the whole batch is sent again (at-least-once delivery).
        reason = f"{host} closed the connection before answering ({short(exc)}); spans are kept and retried."
        return Retry(None, reason)
    except httpx.HTTPError as exc:
        return Retry(None, f"Could not reach {host} ({short(exc)}); retrying.")
    return classify(response, host, count)


