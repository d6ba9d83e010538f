"""Redaction: secrets and user-chosen patterns are cut from span text before it is stored.

A notebook's cells often hold keys (``os.environ["OPENAI_API_KEY"]``, a
printed config), and a traced cell records its source and output. What is
redacted never reaches the store, the backend, the widget or the log:

- the configured secrets, always: every export header value (the Langfuse
  keys among them, also inside ``Authorization: Basic``/``Bearer``), and
  ``LANGFUSE_SECRET_KEY``/``LANGFUSE_PUBLIC_KEY`` whether or not they are used;
- every match of the ``TraceExt.redact`` regular expressions.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import unquote

from ._sdks import langfuse

__all__ = ["MARK", "Redactor", "RedactingFilter", "SecretHeaders", "redacted_span", "secrets_of"]

MARK = "[REDACTED]"
# Shorter header values ("ml", "4") are labels, not secrets: redacting them
# everywhere would mangle ordinary text.
MIN_SECRET_LENGTH = 6


class SecretHeaders(dict):
    """A headers dict whose repr hides the values (``%config TraceExt`` prints settings)."""

    def __repr__(self) -> str:
        return repr({key: "***" for key in self})


def _credential_parts(value: str) -> list[str]:
    """The secret pieces inside an Authorization-style value."""
    scheme, _, token = value.strip().partition(" ")
    parts = [token.strip()] if token.strip() else []
    if scheme.lower() == "basic" and token:
        try:
            user, _, password = base64.b64decode(token.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return parts
        parts += [user, password]
    return parts


def secrets_of(headers: Mapping[str, str], urls: Iterable[str] = ()) -> set[str]:
    """Header values (and the keys inside credentials), and passwords in ``urls``
    (``http://user:password@host/``), that must never be shown."""
    found: set[str] = set()
    for value in headers.values():
        found.add(value)
        found.add(value.strip())
        found.update(_credential_parts(value))
    for url in urls:
        userinfo = url.rpartition("@")[0].rpartition("//")[2] if "@" in url else ""
        user, colon, password = userinfo.partition(":")
        if colon and password:
            found.update({password, unquote(password), f"{user}:{password}"})
    found.update(langfuse.secret_keys())
    return {s for s in found if len(s) >= MIN_SECRET_LENGTH}


class Redactor:
    """Replaces secrets and pattern matches with ``[REDACTED]``; false when there is nothing to do."""

    def __init__(self, patterns: Sequence[str] = (), secrets: Iterable[str] = ()) -> None:
        # Secrets longest first, so one that contains another is cut whole. Each
        # user pattern is its own regex: it may carry global flags like (?i).
        literal = "|".join(re.escape(s) for s in sorted(set(secrets), key=len, reverse=True))
        self._regexes = ([re.compile(literal)] if literal else []) + [re.compile(p) for p in patterns]

    def __bool__(self) -> bool:
        return bool(self._regexes)

    def __call__(self, text: str) -> str:
        if not text:
            return text
        for regex in self._regexes:
            text = regex.sub(MARK, text)
        return text

    def finds(self, value: Any) -> bool:
        """Whether ``value`` (text, or a sequence of values) holds something to redact."""
        if isinstance(value, str):
            return any(regex.search(value) for regex in self._regexes)
        if isinstance(value, (tuple, list)):
            return any(self.finds(v) for v in value)
        return False

    def value(self, value: Any) -> Any:
        """An attribute value with its strings redacted (sequences item by item)."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, (tuple, list)):
            return type(value)(self.value(v) for v in value)
        return value


class _RedactedSpan:
    """A read-only view of an ended span with redacted text, for the encoder."""

    def __init__(self, span, redactor: Redactor) -> None:
        from opentelemetry.sdk.trace import Event
        from opentelemetry.trace import Status

        self._span = span
        self.name = redactor(span.name)
        self.attributes = _redact_mapping(span.attributes, redactor)
        self.events = [
            Event(redactor(e.name), _redact_mapping(e.attributes, redactor), e.timestamp) for e in span.events
        ]
        status = span.status
        self.status = Status(status.status_code, redactor(status.description) if status.description else None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._span, name)


def _redact_mapping(attributes: Mapping[str, Any] | None, redactor: Redactor) -> dict[str, Any]:
    return {key: redactor.value(value) for key, value in (attributes or {}).items()}


def redacted_span(span, redactor: Redactor):
    """``span`` itself when there is nothing to redact, else a redacted view of it."""
    if not redactor:
        return span
    # Most spans hold no secret: look first, and copy only those that do.
    texts = [span.name, span.status.description, *(span.attributes or {}).values()]
    for event in span.events:
        texts += [event.name, *(event.attributes or {}).values()]
    return _RedactedSpan(span, redactor) if any(redactor.finds(t) for t in texts) else span


class RedactingFilter(logging.Filter):
    """Redacts trace_ext's log records (messages and tracebacks) before any handler writes them."""

    def __init__(self) -> None:
        super().__init__()
        self.redactor = Redactor()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.redactor:
            record.msg, record.args = self.redactor(record.getMessage()), None
            if record.exc_info:
                import traceback

                text = "".join(traceback.format_exception(*record.exc_info))
                record.exc_info, record.exc_text = None, None
                record.msg += "\n" + self.redactor(text.rstrip())
        return True
