"""Everything trace_ext knows about Langfuse, in one place.

- Its environment: ``LANGFUSE_BASE_URL`` (or else ``LANGFUSE_HOST``) with
  ``LANGFUSE_PUBLIC_KEY`` and ``LANGFUSE_SECRET_KEY`` make a destination at
  ``{base}/api/public/otel/v1/traces`` with HTTP Basic auth and the ingestion
  version header Langfuse's own exporter sends.
- Its keys are secrets whether or not they are used.
- Its SDK: the client's resource managers (each with a ``flush()`` that also
  sends scores and media) and the transforming exporter that wraps its OTLP one.

The attribute names Langfuse reads on a span are in :mod:`.._capture.attributes`,
beside OpenInference's and ``gen_ai``'s. This module imports nothing of trace_ext,
so every package may use it.
"""

from __future__ import annotations

import base64
import os
import sys
from typing import Callable, Mapping, NamedTuple

__all__ = [
    "BASE_VARIABLES", "KEY_VARIABLES", "NAME", "OTEL_PATH", "Settings", "clients", "credentials_hint",
    "from_environment", "inner_exporter", "is_langfuse",
]

NAME = "Langfuse"
BASE_VARIABLES = ("LANGFUSE_BASE_URL", "LANGFUSE_HOST")  # the first one set wins
KEY_VARIABLES = ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY")
OTEL_PATH = "/api/public/otel/v1/traces"
# Langfuse's exporter sends this; it selects how the server reads the spans.
INGESTION_VERSION = {"x-langfuse-ingestion-version": "4"}


class Settings(NamedTuple):
    """What the environment says about Langfuse: a destination, or what is missing."""

    url: str | None  # None: Langfuse is not (fully) configured
    source: str  # the variable the base URL came from
    headers: Mapping[str, str]
    missing: tuple[str, ...]  # variables not set, when only some of them are


def _get(name: str, environ: Mapping[str, str]) -> str | None:
    value = environ.get(name, "").strip()
    return value or None


def from_environment(environ: Mapping[str, str] | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    source = next((n for n in BASE_VARIABLES if _get(n, environ)), BASE_VARIABLES[0])
    base = _get(source, environ)
    public, secret = (_get(n, environ) for n in KEY_VARIABLES)
    if base and public and secret:
        token = base64.b64encode(f"{public}:{secret}".encode()).decode()
        headers = {"Authorization": f"Basic {token}", **INGESTION_VERSION}
        return Settings(base.rstrip("/") + OTEL_PATH, source, headers, ())
    if not (base or public or secret):
        return Settings(None, source, {}, ())
    given = ((BASE_VARIABLES[0], base), (KEY_VARIABLES[0], public), (KEY_VARIABLES[1], secret))
    return Settings(None, source, {}, tuple(name for name, value in given if not value))


def secret_keys(environ: Mapping[str, str] | None = None) -> list[str]:
    """The Langfuse keys in the environment: never shown, whether or not they are used."""
    environ = os.environ if environ is None else environ
    return [v for v in (_get(n, environ) for n in KEY_VARIABLES) if v]


def credentials_hint() -> str:
    return f"{'/'.join(KEY_VARIABLES)} or %config TraceExt.headers"


def is_langfuse(obj: object) -> bool:
    return type(obj).__module__.startswith("langfuse")


def inner_exporter(exporter: object) -> object | None:
    """Langfuse wraps its OTLP exporter in a transforming one that keeps it in ``_exporter``."""
    return getattr(exporter, "_exporter", None)


def clients() -> list:
    """The Langfuse clients' resource managers in this process (none if Langfuse isn't imported)."""
    module = sys.modules.get("langfuse._client.resource_manager")
    managers = getattr(getattr(module, "LangfuseResourceManager", None), "_instances", None)
    try:
        return [m for m in dict(managers or {}).values() if hasattr(m, "flush")]
    except Exception:  # a Langfuse version we don't know: nothing to flush
        return []


def flushes() -> list[tuple[str, Callable[[], object]]]:
    """``(name, flush)`` per client. Its flush() also flushes the provider, scores and
    media uploads; it takes no timeout."""
    return [(NAME, manager.flush) for manager in clients()]
