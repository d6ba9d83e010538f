"""Secrets and files: keys never show up anywhere trace_ext writes, and the store is private."""

from __future__ import annotations

import json
import os
import stat
from collections import Counter

from trace_ext._redact import MARK, Redactor, secrets_of

from .conftest import clean_env
from .kernel import Kernel
from .otlp_receiver import Respond
from .test_faults import CELL, SETUP, assert_accounted, flushed, status_text

PUBLIC = "pk-lf-public-1234567"
SECRET = "sk-lf-secret-7654321"
HEADER = "hdr-token-9876543210"


def _store_bytes(store_path) -> bytes:
    folder = store_path.parent
    return b"".join((folder / name).read_bytes() for name in os.listdir(folder) if name.startswith(store_path.name))


def test_configured_secrets_never_appear(tmp_path, store_path, receiver):
    # The backend echoes the key in its refusal, as some do: that text reaches the status.
    receiver.script(Respond(401, body=f"invalid credentials for secret key {SECRET}"))
    log_path = tmp_path / "kernel-stderr.log"
    with open(log_path, "w") as log_file:
        kernel = Kernel(
            env=clean_env(
                TRACE_EXT_STORE_PATH=str(store_path), LANGFUSE_BASE_URL=receiver.base_url,
                LANGFUSE_PUBLIC_KEY=PUBLIC, LANGFUSE_SECRET_KEY=SECRET,
            ),
            cwd=str(tmp_path), stderr=log_file,
        )
    try:
        kernel.ok("%load_ext trace_ext")
        kernel.ok(f"%config TraceExt.headers = {{'X-Extra-Token': '{HEADER}'}}")
        # Cells that put every secret into a span: output, an error message, an attribute.
        kernel.ok("%%trace leaky\nimport os\nos.environ['LANGFUSE_SECRET_KEY'] + ' ' + os.environ['LANGFUSE_PUBLIC_KEY']")
        kernel.execute(f"%%trace failing\nraise ValueError('bad token {HEADER}')")
        kernel.ok(
            "from opentelemetry import trace\n"
            f"with trace.get_tracer('lib').start_as_current_span('lib-span', attributes={{'key': '{SECRET}'}}):\n"
            "    pass"
        )
        assert kernel.wait_for(lambda: "credentials" in "".join(kernel.label_history()), timeout=20)
        kernel.ok("%trace flush --timeout 20")  # after the 401's backoff, delivery goes through

        seen = [
            json.dumps([m["content"] for m in kernel.messages if m["msg_type"].startswith("comm")]),
            "".join(kernel.label_history()),
            kernel.ok("%trace status").text(),
            kernel.ok("%trace show 5").text(),
            kernel.ok("%config TraceExt").text(),
            kernel.ok(
                "from trace_ext._extension import active\n"
                "e = active()\n"
                "print(repr(e.settings), e.settings.headers, e.sender.config, e.status.last_error, e.status.trait_values())"
            ).stdout,
            kernel.execute("%config TraceExt.headers = 'X-Extra-Token: " + HEADER + "'").text(),
            json.dumps([s.attributes for s in receiver.spans] + [[e for e in s.events] for s in receiver.spans]),
        ]
        kernel.shutdown()
        seen.append(log_path.read_text())
        stored = _store_bytes(store_path)
        for secret in (PUBLIC, SECRET, HEADER):
            for place, text in enumerate(seen):
                assert secret not in text, f"{secret} appeared in place #{place}: {text[:2000]}"
            assert secret.encode() not in stored
        # The spans still arrived, with the secrets cut out (and the keys did go in the headers).
        outputs = {s.name: s.attributes for s in receiver.spans}
        assert outputs["leaky"]["output.value"] == f"'{MARK} {MARK}'"
        assert outputs["lib-span"]["key"] == MARK
        assert receiver.requests[-1].headers["x-extra-token"] == HEADER
    finally:
        if kernel.km.has_kernel:
            kernel.shutdown(now=True)


def test_redact_patterns_apply_to_inputs_and_outputs(loaded, store_path):
    loaded.ok("%config TraceExt.redact = [r'sk-[a-z0-9]{8,}', r'(?i)password=\\S+']")
    shown = loaded.ok("%%trace\ncreds = 'sk-abcdef123456 password=hunter2'\ncreds")
    # The user still sees their own value: only what trace_ext records is redacted.
    assert "sk-abcdef123456" in shown.result["data"]["text/plain"]
    tree = loaded.ok("%trace show 1").text()
    # password=\S+ takes the closing quote too: the pattern decides what goes.
    assert f"in: creds = '{MARK} {MARK}" in tree and f"out: '{MARK} {MARK}" in tree
    assert b"sk-abcdef123456" not in _store_bytes(store_path) and b"hunter2" not in _store_bytes(store_path)


def test_an_invalid_pattern_is_a_usage_error_and_keeps_the_old_value(loaded):
    loaded.ok("%config TraceExt.redact = ['secret-[0-9]+']")
    bad = loaded.execute("%config TraceExt.redact = ['(unclosed']")
    assert bad.status == "error" and bad.reply["ename"] == "UsageError"
    assert "'(unclosed', which is not a valid regular expression" in bad.reply["evalue"]
    settings = "__import__('trace_ext._extension', fromlist=['active']).active().settings"
    assert loaded.value(f"{settings}.redact") == ["secret-[0-9]+"]


def test_store_file_and_folder_are_private(loaded, store_path):
    loaded.ok("%%trace\n1")
    assert stat.S_IMODE(store_path.parent.stat().st_mode) == 0o700
    for name in os.listdir(store_path.parent):  # the database, its WAL and shared-memory files
        assert stat.S_IMODE((store_path.parent / name).stat().st_mode) == 0o600, name


def test_secrets_inside_credentials_are_found():
    import base64

    basic = "Basic " + base64.b64encode(f"{PUBLIC}:{SECRET}".encode()).decode()
    secrets = secrets_of({"Authorization": basic, "x-team": "ml", "x-langfuse-ingestion-version": "4"})
    assert {PUBLIC, SECRET} <= secrets and "ml" not in secrets and "4" not in secrets
    redact = Redactor(["pw=\\w+"], secrets)
    assert redact(f"{basic} and pw=x1 and {SECRET}") == f"{MARK} and {MARK} and {MARK}"


def test_log_records_of_every_trace_ext_logger_are_redacted(tmp_path, store_path):
    """Not only the package's logger: a module's own getLogger(__name__) too."""
    log_path = tmp_path / "kernel-stderr.log"
    with open(log_path, "w") as log_file:
        kernel = Kernel(env=clean_env(TRACE_EXT_STORE_PATH=str(store_path)), cwd=str(tmp_path), stderr=log_file)
    try:
        kernel.ok("%load_ext trace_ext")
        kernel.ok(f"%config TraceExt.headers = {{'X-Extra-Token': '{HEADER}'}}")
        kernel.ok(
            "import logging\n"
            "from trace_ext._capture import observe\n"
            "try:\n"
            f"    raise RuntimeError('the tracer said {HEADER}')\n"
            "except RuntimeError:\n"
            "    observe.log.warning('observed call with %s', 'token " + HEADER + "', exc_info=True)\n"
            f"logging.getLogger('trace_ext._capture.attributes').warning('attribute {HEADER}')"
        )
        kernel.shutdown()
        text = log_path.read_text()
        assert "observed call with token" in text and "the tracer said" in text, text  # the lines were logged
        assert HEADER not in text, text
        assert f"token {MARK}" in text and f"attribute {MARK}" in text
    finally:
        if kernel.km.has_kernel:
            kernel.shutdown(now=True)


# -- issue 11, cases 12, 16, 17 -------------------------------------------------

PASSWORD = "pw-in-the-url-4711"


BAD_VALUES = [HEADER + "\n", "sécret-" + HEADER, HEADER + " "]  # a line break; not ASCII; a space at the end


def test_a_header_value_no_request_can_carry_is_a_usage_error_never_shown(start_kernel, receiver, store_path):
    receiver.require_headers = {"x-token": HEADER}
    kernel = start_kernel()
    kernel.ok(f"%load_ext trace_ext\n%config TraceExt.endpoint = {receiver.url!r}")
    kernel.ok(f"%config TraceExt.headers = {{'X-Token': {HEADER!r}}}")
    kernel.ok(SETUP)
    kernel.ok(CELL.format(name="good-value"))
    for bad in BAD_VALUES:
        refused = kernel.execute(f"%config TraceExt.headers = {{'X-Team': 'ml', 'X-Token': {bad!r}}}")
        assert refused.status == "error", refused.text()
        said = refused.text()
        assert "UsageError" in said and "TraceExt.headers has a value no HTTP request can carry (header 2 of 2" in said
        assert HEADER not in said and "sécret" not in said, said
    kernel.ok(CELL.format(name="still-good"))  # the headers set before are still the ones used
    flushed(kernel)
    produced = kernel.value("_ids")
    assert assert_accounted(store_path, receiver, produced) == Counter(sent=4)
    assert all(r.headers.get("x-token") == HEADER and "x-team" not in r.headers for r in receiver.requests)


def test_a_header_value_in_the_environment_no_request_can_carry_holds_spans_until_fixed(
    start_kernel, receiver, store_path
):
    from urllib.parse import quote

    produced: list[str] = []
    for n, bad in enumerate(BAD_VALUES):
        kernel = start_kernel(
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.base_url,
            OTEL_EXPORTER_OTLP_HEADERS=f"x-team=ml,x-token={quote(bad)}",  # percent-encoded, as the variable wants
        )
        kernel.ok("%load_ext trace_ext")
        kernel.ok(SETUP)
        kernel.ok(CELL.format(name=f"bad-value-{n}"))
        said = "OTEL_EXPORTER_OTLP_HEADERS has a value no HTTP request can carry (item 2;"
        assert kernel.wait_for(lambda: said in status_text(kernel), 20), status_text(kernel)
        seen = status_text(kernel) + "".join(kernel.label_history())
        assert "Setting to fix" in seen and "internal error" not in seen and "Illegal header" not in seen, seen
        assert HEADER not in seen and "sécret" not in seen, seen
        produced += kernel.value("_ids")
        assert receiver.requests == []  # no request could carry it: none was made
        assert assert_accounted(store_path, receiver, produced) == Counter(pending=2 * (n + 1))  # kept, not failed
        kernel.shutdown(now=True)

    fixed = start_kernel(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.base_url, OTEL_EXPORTER_OTLP_HEADERS=f"x-token={HEADER}")
    fixed.ok("%load_ext trace_ext")
    flushed(fixed)  # the spans the others kept go with the next kernel on the store
    assert assert_accounted(store_path, receiver, produced) == Counter(sent=2 * len(BAD_VALUES))
    assert receiver.requests and all(r.headers.get("x-token") == HEADER for r in receiver.requests)


def test_a_password_in_the_endpoint_url_is_a_secret(start_kernel, receiver, store_path, tmp_path):
    url = receiver.url.replace("http://", f"http://user:{PASSWORD}@")
    kernel = start_kernel()
    kernel.ok(f"%load_ext trace_ext\n%config TraceExt.endpoint = {url!r}")
    kernel.ok(SETUP)
    kernel.ok(f"%%trace leaky-url\nprint({url!r})\n{url!r}")
    bad = kernel.execute(f"%config TraceExt.endpoint = 'http://user:{PASSWORD}@127.0.0.1:notaport/v1/traces'")
    flushed(kernel)
    seen = [
        kernel.ok("%config TraceExt").text(),
        kernel.ok("%config TraceExt.endpoint").text(),
        bad.text(),
        status_text(kernel),
        json.dumps([s.attributes for s in receiver.spans]),
    ]
    kernel.shutdown()
    for place, text in enumerate(seen):
        assert PASSWORD not in text, f"the password appeared in place #{place}: {text[:2000]}"
    assert PASSWORD.encode() not in _store_bytes(store_path)
    assert "must be an http:// or https:// URL" in seen[2]
    assert {s.name for s in receiver.spans} >= {"leaky-url"}
