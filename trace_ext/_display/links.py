"""Links from the trace view to the trace in the backend spans were sent to.

Each backend's public URL scheme for one trace, found from the destination's
URL and headers (never shown: only the link is):

- Langfuse: ``{base}/trace/{trace id}`` redirects to the trace in its project
  (the endpoint is ``{base}/api/public/otel/v1/traces``).
- Arize Phoenix: ``{base}/redirects/traces/{trace id}`` redirects to the trace
  in its project, found by the OpenTelemetry id alone.
- MLflow: ``{base}/#/experiments/{experiment}/traces?selectedEvaluationId=tr-{id}&traceId=tr-{id}``
  (the link MLflow's own UI makes), the experiment from the ``x-mlflow-experiment-id``
  header it needs.

Phoenix is told from a plain OTLP collector by its default port (6006), a
host name with "phoenix" in it, or ``PHOENIX_COLLECTOR_ENDPOINT`` naming the
same host.
"""

from __future__ import annotations

import os
from typing import Mapping
from urllib.parse import quote, urlsplit

__all__ = ["Backend", "backend_of"]

_OTLP_PATH = "/v1/traces"
_LANGFUSE_PATH = "/api/public/otel"


class Backend:
    """A backend that shows traces, and how to link to one."""

    def __init__(self, name: str, template: str) -> None:
        self.name = name
        self._template = template  # with {trace_id}

    def link(self, trace_id: str) -> str:
        return self._template.format(trace_id=quote(trace_id))

    def __repr__(self) -> str:
        return f"Backend({self.name!r}, {self._template!r})"


def _base(url: str, suffix: str) -> str:
    parts = urlsplit(url)
    path = parts.path
    cut = path.find(suffix)
    path = path[:cut] if cut >= 0 else path
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{path.rstrip('/')}"


def _looks_like_phoenix(url: str) -> bool:
    parts = urlsplit(url)
    if parts.port == 6006 or "phoenix" in (parts.hostname or ""):
        return True
    named = os.environ.get("PHOENIX_COLLECTOR_ENDPOINT", "")
    return bool(named) and urlsplit(named if "//" in named else f"http://{named}").netloc == parts.netloc


def backend_of(url: str | None, headers: Mapping[str, str] | None = None) -> Backend | None:
    """The backend behind an OTLP/HTTP traces endpoint, if it is one trace_ext can link to."""
    if not url:
        return None
    headers = {k.lower(): v for k, v in (headers or {}).items()}
    path = urlsplit(url).path
    if _LANGFUSE_PATH in path:
        return Backend("Langfuse", _base(url, _LANGFUSE_PATH) + "/trace/{trace_id}")
    experiment = headers.get("x-mlflow-experiment-id")
    if experiment:
        return Backend(
            "MLflow",
            _base(url, _OTLP_PATH) + f"/#/experiments/{quote(experiment)}/traces"
            "?selectedEvaluationId=tr-{trace_id}&traceId=tr-{trace_id}",
        )
    if path.endswith(_OTLP_PATH) and _looks_like_phoenix(url):
        return Backend("Phoenix", _base(url, _OTLP_PATH) + "/redirects/traces/{trace_id}")
    return None
