"""Where spans go: the destination from the settings and the environment, in the README's order."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import unquote, urlsplit

from .config import TraceExt, check_url, env

__all__ = ["Destination", "environment_fingerprint", "resolve_certificate", "resolve_destination"]


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


def _otel_headers(raw: str | None) -> dict[str, str]:
    """Parse ``OTEL_EXPORTER_OTLP_HEADERS`` (W3C baggage format, values percent-encoded)."""
    headers: dict[str, str] = {}
    for item in (raw or "").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            headers[unquote(key.strip())] = unquote(value.strip())
    return headers


def resolve_destination(settings: TraceExt) -> tuple[Destination | None, str]:
    """Work out where spans go, in the precedence the README documents.

    Returns the destination (None: keep spans in the local store) and a
    one-sentence warning when the environment is half configured.
    """
    extra = dict(settings.headers)
    if settings.endpoint:
        return Destination(settings.endpoint, "TraceExt.endpoint", extra), ""

    base = env("LANGFUSE_BASE_URL", "LANGFUSE_HOST")
    public, secret = env("LANGFUSE_PUBLIC_KEY"), env("LANGFUSE_SECRET_KEY")
    if base and public and secret:
        source = "LANGFUSE_BASE_URL" if env("LANGFUSE_BASE_URL") else "LANGFUSE_HOST"
        url = check_url(source, base.rstrip("/") + "/api/public/otel/v1/traces")
        token = base64.b64encode(f"{public}:{secret}".encode()).decode()
        headers = {"Authorization": f"Basic {token}", "x-langfuse-ingestion-version": "4"}
        return Destination(url, source, {**headers, **extra}), ""
    warning = ""
    if base or public or secret:
        missing = [
            name
            for name, value in (
                ("LANGFUSE_BASE_URL", base),
                ("LANGFUSE_PUBLIC_KEY", public),
                ("LANGFUSE_SECRET_KEY", secret),
            )
            if not value
        ]
        warning = f"Langfuse is not used because {' and '.join(missing)} is not set."

    traces = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    generic = env("OTEL_EXPORTER_OTLP_ENDPOINT")
    if traces or generic:
        # The specification: the signal-specific URL is used as is; the generic
        # one is a base to which /v1/traces is appended.
        source = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" if traces else "OTEL_EXPORTER_OTLP_ENDPOINT"
        url = traces or generic.rstrip("/") + "/v1/traces"
        headers = _otel_headers(env("OTEL_EXPORTER_OTLP_HEADERS"))
        headers.update(_otel_headers(env("OTEL_EXPORTER_OTLP_TRACES_HEADERS")))
        return Destination(check_url(source, url), source, {**headers, **extra}), warning

    return None, warning


def resolve_certificate(settings: TraceExt) -> str | None:
    """The CA bundle to trust for the endpoint: the setting, else the OpenTelemetry variables."""
    path = settings.certificate or env("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE")
    return os.path.expanduser(path) if path else None


def environment_fingerprint() -> tuple[str | None, ...]:
    """The environment variables that decide the destination (to notice changes)."""
    return tuple(
        os.environ.get(name)
        for name in (
            "LANGFUSE_BASE_URL",
            "LANGFUSE_HOST",
            "LANGFUSE_PUBLIC_KEY",
            "LANGFUSE_SECRET_KEY",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        )
    )
