"""Stored spans written to a file as OTLP JSON, the OpenTelemetry Collector file exporter's format.

One ``ExportTraceServiceRequest`` per line, in OTLP's JSON mapping (lowercase
hex ids, enums as numbers), so a trace can be attached to a bug report, read
by the Collector's ``otlpjsonfile`` receiver, or loaded anywhere OTLP is.
Every state is written (local, pending, sent, failed); nothing in the store
changes.
"""

from __future__ import annotations

import os

from .._otlp import build_request, to_json
from .store import SpanStore

__all__ = ["export_json_lines"]

LINE_SPANS = 512  # spans per line (per request), as a Collector batch would hold


def export_json_lines(store: SpanStore, path: str, since: float = 0.0, trace_id: str | None = None) -> int:
    """Write the spans saved since ``since`` (of traces whose id starts with ``trace_id``) to
    ``path``; returns how many. The file is written beside its place and then moved there, so a
    failed export never leaves half a file."""
    written = 0
    partial = f"{path}.part"
    try:
        with open(partial, "wb") as out:
            for batch in store.spans_for_export(since, trace_id, LINE_SPANS):
                origins = store.origins(span.origin for span in batch)
                groups: dict[int, list[bytes]] = {}
                for span in batch:
                    groups.setdefault(span.origin, []).append(span.payload)
                request = build_request((*origins[o], payloads) for o, payloads in groups.items())
                out.write(to_json(request) + b"\n")
                written += len(batch)
        os.replace(partial, path)
    except BaseException:
        try:
            os.unlink(partial)
        except OSError:
            pass
        raise
    return written
