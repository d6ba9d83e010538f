"""Settings: the ``TraceExt`` configurable, its environment fallbacks and validation.

Every setting is a traitlets trait, so it works the way Jupyter users already
configure things: ``%config TraceExt.endpoint = "..."`` in a notebook (takes
effect at once) and ``c.TraceExt.endpoint = "..."`` in an IPython config file.
"""

from __future__ import annotations

import os
import re
from typing import Mapping
from urllib.parse import urlsplit

from IPython.core.error import UsageError
from traitlets import (
    Bool,
    Dict,
    Float,
    Int,
    List,
    TraitError,
    Unicode,
    default,
    validate,
)
from traitlets.config import Configurable

__all__ = ["SettingError", "TraceExt", "settings_from"]

PROTOCOLS = ("http/protobuf", "http/json")
COMPRESSIONS = ("gzip", "none")


class SettingError(UsageError, TraitError):
    """An invalid setting: a ``UsageError`` for IPython, a ``TraitError`` for traitlets."""


def env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


class SecretURL(str):
    """A URL whose repr hides the password in it (``%config TraceExt`` prints settings)."""

    def __repr__(self) -> str:
        return repr(without_password(self))


def without_password(url: str) -> str:
    """``url`` with the password of its user part (``user:password@``) replaced by ``***``."""
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, sep, userinfo = head.rpartition("//")
    user, colon, _password = userinfo.partition(":")
    return f"{scheme}{sep}{user}{colon}{'***' if colon else ''}@{tail}"


def check_url(setting: str, url: str) -> str:
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
        parts.port  # noqa: B018 -- a port that isn't a number raises here
    except ValueError:
        parts, hostname = None, None
    if parts is None or parts.scheme not in ("http", "https") or not hostname:
        raise SettingError(
            f"{setting} must be an http:// or https:// URL such as "
            f"http://127.0.0.1:6006/v1/traces, not {without_password(url)!r}."
        )
    return SecretURL(url) if "@" in url else url


# An HTTP header name is a token (RFC 9110): the HTTP client refuses anything else at
# send time, so it is checked where the setting is read, and the spans wait for the fix.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
HEADER_NAME_RULE = "letters, digits and !#$%&'*+-.^_`|~ only: no space, ':' or control character"


def bad_header_names(names) -> list[int]:
    """The (1-based) positions of ``names`` that are not HTTP header names. Positions
    only: a malformed name may be a pasted key, so it is never shown."""
    return [n for n, name in enumerate(names, 1) if not _HEADER_NAME.fullmatch(name)]


# A value the HTTP client can put on the wire (httpx encodes it as ASCII; h11 refuses
# line breaks, NUL and whitespace at either end). Like a name, it is refused where the
# setting is read: found only when a request is made, it held the spans back unexplained.
_HEADER_VALUE = re.compile(r"(?:[\x21-\x7e]+(?:[ \t]+[\x21-\x7e]+)*)?")
HEADER_VALUE_RULE = "printable ASCII only, no line break, and no space at either end"


def bad_header_values(values) -> list[int]:
    """The (1-based) positions of ``values`` no request can carry. Positions only: a value is a secret."""
    return [n for n, value in enumerate(values, 1) if not _HEADER_VALUE.fullmatch(value)]


# The smallest value each numeric setting takes, and its unit (for the error message).
_MINIMUMS = {
    "shutdown_timeout": (0, "seconds"), "export_timeout": (0.1, "seconds"),
    "sdk_flush_timeout": (0.1, "seconds"), "max_batch_spans": (1, "spans"),
    "max_batch_bytes": (1024, "bytes"), "max_attribute_length": (64, "characters"),
    "retention_days": (0, "days"), "retention_mb": (0, "megabytes"),
}


class TraceExt(Configurable):
    """Settings of the trace_ext IPython extension."""

    endpoint = Unicode(
        None,
        allow_none=True,
        help="""OTLP/HTTP traces URL that spans are delivered to, for example
        http://127.0.0.1:6006/v1/traces (Phoenix) or
        https://cloud.langfuse.com/api/public/otel/v1/traces (Langfuse).
        None (the default) falls back to LANGFUSE_BASE_URL/LANGFUSE_HOST with
        LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY, then to
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT; when
        none is set, spans are kept in the local store only.""",
    ).tag(config=True)

    headers = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        help="""Extra HTTP headers sent with every export request (for example an
        Authorization header). Added on top of the headers that come with the
        endpoint's environment variables. Values are never displayed or logged.""",
    ).tag(config=True)

    certificate = Unicode(
        None,
        allow_none=True,
        help="""Path of a CA bundle (PEM) to trust for an https:// endpoint whose
        certificate is not signed by a public CA (a self-signed or company CA).
        None (the default) falls back to OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE,
        then OTEL_EXPORTER_OTLP_CERTIFICATE, else the usual public CAs are
        trusted. When set, only the CAs in that bundle are trusted.
        Certificates are always verified.""",
    ).tag(config=True)

    protocol = Unicode(
        help="""OTLP encoding: 'http/protobuf' (default; accepted by every OTLP
        backend) or 'http/json'. Falls back to OTEL_EXPORTER_OTLP_TRACES_PROTOCOL
        or OTEL_EXPORTER_OTLP_PROTOCOL when those name one of the two.""",
    ).tag(config=True)

    compression = Unicode(
        help="""Request body compression: 'gzip' (default) or 'none'. Falls back
        to OTEL_EXPORTER_OTLP_TRACES_COMPRESSION or OTEL_EXPORTER_OTLP_COMPRESSION.""",
    ).tag(config=True)

    store_path = Unicode(
        help="""Path of the local SQLite store that keeps every span from the
        moment its cell ends until it is delivered (and afterwards, for
        `%trace show`). Defaults to $TRACE_EXT_STORE_PATH, else
        <jupyter data dir>/trace_ext/spans.sqlite3. Kernels that share a store
        share its undelivered spans.""",
    ).tag(config=True)

    flush_after_cell = Bool(
        True,
        help="""Wake the sender after every cell so spans leave within
        milliseconds. When False, spans are still saved after every cell and are
        sent every 5 seconds instead. Either way the cell never waits for the
        network.""",
    ).tag(config=True)

    shutdown_timeout = Float(
        3.0,
        help="""Seconds trace_ext may spend when the kernel exits or the
        extension is unloaded: saving, delivering (all but the last 0.5 s) and
        closing the store. Whatever is not delivered by then stays in the store
        and is sent the next time the extension is loaded.""",
    ).tag(config=True)

    sdk_flush_timeout = Float(
        5.0,
        help="""Seconds after which a flush of another SDK (the Langfuse
        client's flush(), other span processors' force_flush()), started in the
        background after every cell, is shown as not finished. Cells never wait
        for these flushes.""",
    ).tag(config=True)

    export_timeout = Float(
        10.0,
        help=(
            "Seconds one export request may take before it is retried; after a time-out the next "
            "try waits twice as long, up to 8 times this (and at most 60 s unless this is longer)."
        ),
    ).tag(config=True)

    max_batch_spans = Int(
        512,
        help="Most spans sent in one export request (count).",
    ).tag(config=True)

    max_batch_bytes = Int(
        4_000_000,
        help="Most bytes of encoded spans sent in one export request, before compression.",
    ).tag(config=True)

    max_attribute_length = Int(
        32_768,
        help="""Longest attribute value kept, in characters (bytes for binary
        values). Longer values, such as a huge cell output, are cut and end with
        a '[truncated ...]' marker saying how much was removed.""",
    ).tag(config=True)

    session_id = Unicode(
        None,
        allow_none=True,
        help="""session.id put on every traced cell. None (the default) uses one
        id per kernel session, so a notebook run reads as one session in Langfuse.""",
    ).tag(config=True)

    user_id = Unicode(
        None,
        allow_none=True,
        help="user.id put on every traced cell; None leaves it out.",
    ).tag(config=True)

    redact = List(
        Unicode(),
        help="""Regular expressions (Python syntax) whose matches are replaced by
        [REDACTED] in every span's text (cell input and output, attributes,
        events, errors) before it is stored or sent, for example
        [r"sk-[A-Za-z0-9]{20,}", r"(?i)password=\\S+"]. The configured
        secrets (header values, the Langfuse keys) are always redacted.""",
    ).tag(config=True)

    widget = Bool(
        True,
        help="""Show the live status widget when the extension loads. When False
        (or where widgets can't render) `%trace status` prints a text status.""",
    ).tag(config=True)

    retention_days = Float(
        7.0,
        allow_none=True,
        help="""Days a span is kept in the local store after it was delivered
        (fractions allowed: 0.5 is 12 hours). 0 or None keeps delivered spans
        forever. Spans not yet delivered (pending, stored locally, failed) are
        never deleted.""",
    ).tag(config=True)

    retention_mb = Float(
        None,
        allow_none=True,
        help="""Size cap of the local store, in megabytes (2**20 bytes). Past it,
        the oldest delivered spans are deleted first. Spans not yet delivered are
        never deleted: if they alone take more, the status says the store is over
        its cap. 0 or None (the default): no cap.""",
    ).tag(config=True)

    @default("store_path")
    def _default_store_path(self) -> str:
        configured = env("TRACE_EXT_STORE_PATH")
        if configured:
            return os.path.expanduser(configured)
        from jupyter_core.paths import jupyter_data_dir

        return os.path.join(jupyter_data_dir(), "trace_ext", "spans.sqlite3")

    @default("protocol")
    def _default_protocol(self) -> str:
        value = env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
        return value if value in PROTOCOLS else "http/protobuf"

    @default("compression")
    def _default_compression(self) -> str:
        value = env("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION")
        return value if value in COMPRESSIONS else "gzip"

    @validate("endpoint")
    def _valid_endpoint(self, proposal):
        value = proposal["value"]
        if value is None or value == "":
            return None
        return check_url("TraceExt.endpoint", value.strip())

    @validate("certificate")
    def _valid_certificate(self, proposal):
        value = (proposal["value"] or "").strip()
        if not value:
            return None
        path = os.path.expanduser(value)
        if not os.path.exists(path):
            raise SettingError(
                f"TraceExt.certificate must be the path of a PEM CA bundle; there is no file at {path!r}."
            )
        return path

    @validate("headers")
    def _valid_headers(self, proposal):
        from ._redact import SecretHeaders

        headers = proposal["value"]
        for bad, what, rule in (
            (bad_header_names(headers), "a name that is not an HTTP header name",
             f"a name is {HEADER_NAME_RULE}"),
            (bad_header_values(headers.values()), "a value no HTTP request can carry",
             f"a value is {HEADER_VALUE_RULE}"),
        ):
            if bad:
                raise SettingError(
                    f"TraceExt.headers has {what} (header {', '.join(map(str, bad))} of {len(headers)}; {rule})."
                )
        return SecretHeaders(proposal["value"])  # its repr hides the values

    @validate("redact")
    def _valid_redact(self, proposal):
        for pattern in proposal["value"]:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise SettingError(
                    f"TraceExt.redact holds {pattern!r}, which is not a valid regular expression ({exc})."
                ) from None
        return list(proposal["value"])

    @validate("protocol")
    def _valid_protocol(self, proposal):
        return _one_of("TraceExt.protocol", proposal["value"], PROTOCOLS)

    @validate("compression")
    def _valid_compression(self, proposal):
        return _one_of("TraceExt.compression", proposal["value"], COMPRESSIONS)

    @validate("store_path")
    def _valid_store_path(self, proposal):
        value = proposal["value"].strip()
        if not value:
            raise SettingError("TraceExt.store_path must be a file path, not an empty string.")
        return os.path.expanduser(value)

    @validate(*_MINIMUMS)
    def _valid_minimum(self, proposal):
        name, value = proposal["trait"].name, proposal["value"]
        if value is None:  # only traits that allow None get here with it
            return None
        minimum, unit = _MINIMUMS[name]
        return _at_least(f"TraceExt.{name}", value, minimum, unit)


def settings_from(section: Mapping) -> tuple[TraceExt, list[str]]:
    """TraceExt from a config section (``c.TraceExt``); invalid values are skipped and reported."""
    settings, problems = TraceExt(), []
    for name, value in section.items():
        try:
            setattr(settings, name, value)
        except TraitError as exc:
            problems.append(f"c.TraceExt.{name} in your IPython config is ignored: {exc}")
    return settings, problems


def _one_of(setting: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        choices = " or ".join(repr(a) for a in allowed)
        raise SettingError(f"{setting} must be {choices}, not {value!r}.")
    return value


def _at_least(setting: str, value, minimum, unit: str):
    if value < minimum:
        raise SettingError(f"{setting} must be at least {minimum} {unit}, not {value}.")
    return value
