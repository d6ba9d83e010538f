"""Where spans go and how: the destination from the settings and the environment, in the
README's order, and the sender's configuration made from them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import unquote, urlsplit

from .._sdks import langfuse
from ..config import (
    HEADER_NAME_RULE,
    HEADER_VALUE_RULE,
    SettingError,
    TraceExt,
    bad_header_names,
    bad_header_values,
    check_url,
    env,
)

__all__ = [
    "SENDER_SETTINGS", "Destination", "SenderConfig", "destination_intended", "environment_fingerprint",
    "resolve_certificate", "resolve_destination", "sender_config",
]


@dataclass(frozen=True)
class Destination:
    """Where spans go. ``headers`` may hold secrets: they are never shown."""

    url: str
    source: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def host(self) -> str:
        """Host and port only: safe to show (no credentials, path or query)."""
        parts = urlsplit(self.url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.hostname}{port}"


def _otel_headers(
    raw: str | None,
    problems: list[int] | None = None,
    bad_names: list[int] | None = None,
    bad_values: list[int] | None = None,
) -> dict[str, str]:
    """Parse ``OTEL_EXPORTER_OTLP_HEADERS`` (W3C baggage format, values percent-encoded).

    ``problems`` gets the (1-based) positions of items that are not ``key=value``:
    ignored, and reported by position only (an item may be a bare key).
    ``bad_names`` gets those of items whose name is not an HTTP header name,
    ``bad_values`` those whose value (decoded) no request can carry."""
    headers: dict[str, str] = {}
    for n, item in enumerate((raw or "").split(","), 1):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            name = unquote(key.strip())
            headers[name] = unquote(value.strip())
            if bad_header_names([name]) and bad_names is not None:
                bad_names.append(n)
            if bad_header_values([headers[name]]) and bad_values is not None:
                bad_values.append(n)
        elif item.strip() and problems is not None:
            problems.append(n)
    return headers


def resolve_destination(settings: TraceExt) -> tuple[Destination | None, str]:
    """Work out where spans go, in the precedence the README documents.

    Returns the destination (None: keep spans in the local store) and a
    one-sentence warning when the environment is half configured.
    """
    extra = dict(settings.headers)
    if settings.endpoint:
        return Destination(settings.endpoint, "TraceExt.endpoint", extra), ""

    lf = langfuse.from_environment()
    if lf.url:
        return Destination(check_url(lf.source, lf.url), lf.source, {**lf.headers, **extra}), ""
    warning = f"Langfuse is not used because {' and '.join(lf.missing)} is not set." if lf.missing else ""

    traces = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    generic = env("OTEL_EXPORTER_OTLP_ENDPOINT")
    if traces or generic:
        # The specification: the signal-specific URL is used as is; the generic
        # one is a base to which /v1/traces is appended.
        source = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" if traces else "OTEL_EXPORTER_OTLP_ENDPOINT"
        url = traces or generic.rstrip("/") + "/v1/traces"
        headers: dict[str, str] = {}
        for name in ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"):
            problems: list[int] = []
            bad_names: list[int] = []
            bad_values: list[int] = []
            headers.update(_otel_headers(env(name), problems, bad_names, bad_values))
            for bad, what, rule in (
                (bad_names, "a name that is not an HTTP header name", f"a name is {HEADER_NAME_RULE}"),
                (bad_values, "a value no HTTP request can carry", f"a value is {HEADER_VALUE_RULE}"),
            ):
                if bad:
                    # No request can carry it: nothing is sent (spans stay pending) until it is fixed.
                    raise SettingError(
                        f"{name} has {what} (item {', '.join(map(str, bad))}; {rule}), so no request can be sent."
                    )
            if problems:
                items = ", ".join(map(str, problems))
                warning = (f"{name} has items that are not key=value (item {items}), so they are not "
                           "sent; the others are.")
        return Destination(check_url(source, url), source, {**headers, **extra}), warning

    return None, warning


def destination_intended(settings: TraceExt) -> bool:
    """Whether a destination is configured at all, valid or not.

    A URL that can't be used (``127.0.0.1:4318``, no scheme) is a mistake to fix,
    not a choice to keep spans here: spans recorded meanwhile are pending, and
    sent once it is fixed, rather than local for good.
    """
    if settings.endpoint:
        return True
    if env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return True
    return bool(langfuse.from_environment().url)


def resolve_certificate(settings: TraceExt) -> str | None:
    """The CA bundle to trust for the endpoint: the setting, else the OpenTelemetry variables."""
    path = settings.certificate or env("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE")
    return os.path.expanduser(path) if path else None


def environment_fingerprint() -> tuple[str | None, ...]:
    """The environment variables that decide the destination (to notice changes)."""
    return tuple(
        os.environ.get(name)
        for name in (
            *langfuse.BASE_VARIABLES,
            *langfuse.KEY_VARIABLES,
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        )
    )


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
