"""The sender against a misbehaving backend: oversized spans, TLS, resets, rate limits, 503 storms.

Every test runs a real in-process Sender against the loopback receiver over
real HTTP(S) on 127.0.0.1, and ends by accounting for every span by id: each
one produced is sent, failed or still pending, and none was accepted twice.
"""

from __future__ import annotations

import random
import ssl
import time
from collections import Counter, defaultdict

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList

from trace_ext._delivery import policy as _policy
from trace_ext._capture.values import truncate
from trace_ext._delivery.destination import Destination, resolve_certificate
from trace_ext._delivery.destination import SenderConfig
from trace_ext._delivery.policy import Retry
from trace_ext._otlp import decode_span
from trace_ext._delivery.policy import FLOOR, MAX_TRIES, shrink_limits, shrink_span
from trace_ext._delivery.policy import BACKOFF_CAP, backoff_delay
from trace_ext._delivery.sender import Sender
from trace_ext._store.store import FAILED, PENDING, SENT
from trace_ext.config import SettingError, TraceExt

from .conftest import memory_mb, recording_tracer, require, wait_until
from .otlp_receiver import OtlpReceiver, Reset, Respond

BIG = 100_000  # characters in an oversized attribute value


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def produced(store):
    """Record real SDK spans into the store as pending; ``produced.ids`` holds every span id made."""
    processor, tracer = recording_tracer("fault-tests")  # room for oversized values

    class Produced:
        def __init__(self) -> None:
            self.ids: set[str] = set()

        def __call__(self, n: int, prefix: str = "span", payload: str = "", event: str = "") -> list[str]:
            for i in range(n):
                span = tracer.start_span(f"{prefix}-{i}" if n > 1 else prefix, attributes={"payload": payload})
                if event:
                    span.add_event("log", {"message": event})
                span.end()
            records = processor.take()
            store.save(records, PENDING)
            self.ids |= {r.span_id for r in records}
            return [r.span_id for r in records]

    return Produced()


@pytest.fixture
def errors(status):
    """Every last_error the sender showed, in order (the status is reset once delivery recovers)."""
    seen: list[str] = []
    status.observe(lambda change: change["new"] and seen.append(change["new"]), names="last_error")
    return seen


def states(store) -> dict[str, set[str]]:
    rows = store._connect().execute("SELECT span_id, state FROM spans").fetchall()
    by_state: dict[str, set[str]] = defaultdict(set)
    for span_id, state in rows:
        by_state[state].add(span_id)
    return by_state


def account(store, receiver, produced) -> dict[str, set[str]]:
    """sent + failed + pending == produced, by span id; nothing accepted twice; accepted == sent."""
    by_state = states(store)
    rows = store._connect().execute("SELECT COUNT(*) FROM spans").fetchone()[0]
    assert rows == len(produced.ids), "every span is stored exactly once"
    assert by_state[SENT] | by_state[FAILED] | by_state[PENDING] == produced.ids
    accepted = receiver.span_ids()
    assert len(accepted) == len(set(accepted)), "a span id was accepted twice"
    assert set(accepted) == by_state[SENT]
    return by_state


def error_of(store, span_id: str) -> str:
    return store._connect().execute("SELECT error FROM spans WHERE span_id = ?", (span_id,)).fetchone()[0]


def one_sentence(text: str) -> bool:
    return bool(text) and "\n" not in text and text.endswith(".") and ". " not in text


# --------------------------------------------------------------------------- 413: one oversized span


def test_shrink_span_cuts_long_values_everywhere_with_the_usual_marker(produced, store):
    [span_id] = produced(1, prefix="huge", payload="p" * BIG, event="e" * BIG)
    [payload] = [p for (p,) in store._connect().execute("SELECT payload FROM spans")]
    span = decode_span(payload)
    nested = KeyValueList(values=[KeyValue(key="deep", value=AnyValue(string_value="d" * 5000))])
    span.attributes.add(key="list", value=AnyValue(array_value=ArrayValue(values=[AnyValue(bytes_value=b"b" * 5000)])))
    span.attributes.add(key="map", value=AnyValue(kvlist_value=nested))
    span.attributes.add(key="short", value=AnyValue(string_value="kept"))

    shrunk, cut = shrink_span(span.SerializeToString(), 2048)

    out = decode_span(shrunk)
    attrs = {kv.key: kv.value for kv in out.attributes}
    assert cut == 4
    assert attrs["payload"].string_value == truncate("p" * BIG, 2048)
    assert attrs["payload"].string_value.endswith(f"… [truncated {BIG - 2048} of {BIG} characters]")
    assert out.events[0].attributes[0].value.string_value == truncate("e" * BIG, 2048)
    assert attrs["list"].array_value.values[0].bytes_value == b"b" * 2048
    assert attrs["map"].kvlist_value.values[0].value.string_value == truncate("d" * 5000, 2048)
    assert attrs["short"].string_value == "kept"
    assert (out.span_id.hex(), out.name) == (span_id, "huge")


def test_shrink_limits_halve_to_the_floor_in_a_few_tries():
    assert shrink_limits(100_000) == [50_000, 25_000, 12_500, 6_250, 3_125, 1_562, FLOOR]
    huge = shrink_limits(50_000_000)
    assert len(huge) == MAX_TRIES and huge[-1] == FLOOR
    assert all(a > b for a, b in zip(huge, huge[1:]))
    assert shrink_limits(FLOOR) == []  # nothing to cut


def _refuse_large(limit: int):
    """A backend with a request size limit: 413 when any span's attribute text exceeds ``limit``."""

    def size(span) -> int:
        texts = [*span.attributes.values(), *(v for _, attrs in span.events for v in attrs.values())]
        return sum(len(t) for t in texts if isinstance(t, (str, bytes)))

    return lambda spans: Respond(413, body="payload too large") if any(size(s) > limit for s in spans) else None


def test_413_on_one_span_truncates_it_and_delivers_it(receiver, store, produced, sender, errors):
    receiver.rule = _refuse_large(5_000)
    small = produced(3, prefix="small")
    [huge] = produced(1, prefix="huge", payload="p" * BIG, event="e" * BIG)
    s = sender(receiver.url)

    report = s.flush(20)

    assert (report.sent, report.failed, report.pending) == (4, 0, 0)
    [got] = [span for span in receiver.spans if span.span_id == huge]
    assert got.attributes["payload"].endswith(f" of {BIG} characters]")
    assert "… [truncated " in got.attributes["payload"]
    assert got.events[0][1]["message"].endswith(f" of {BIG} characters]")
    assert len(got.attributes["payload"]) < 5_000
    note = error_of(store, huge)
    assert note.startswith("truncated to fit:") and "HTTP 413" in note
    assert {span.span_id for span in receiver.spans} == set(small) | {huge}
    assert [r.status for r in receiver.requests].count(413) >= 2  # the batch, then the span at full size
    assert s._status.last_error == "" and errors == []  # delivered: nothing to complain about
    by_state = account(store, receiver, produced)
    assert by_state[SENT] == produced.ids


def test_413_that_never_fits_fails_only_that_span_with_a_readable_reason(receiver, store, produced, sender):
    receiver.rule = lambda spans: Respond(413, body="span too large") if any(s.name == "huge" for s in spans) else None
    good = produced(2, prefix="good")
    [huge] = produced(1, prefix="huge", payload="p" * BIG)
    s = sender(receiver.url)

    report = s.flush(20)

    assert (report.sent, report.failed, report.pending) == (2, 1, 0)
    reason = error_of(store, huge)
    assert "refused a span as too large (HTTP 413): span too large" in reason
    assert f"cut to {FLOOR} characters" in reason and "%trace retry" in reason
    assert one_sentence(s._status.last_error) and s._status.last_error == reason
    huge_requests = [r for r in receiver.requests if any(x.name == "huge" for x in r.spans)]
    assert len(huge_requests) <= 2 + MAX_TRIES  # the batch, its half, then the bounded shrinking
    by_state = account(store, receiver, produced)
    assert by_state[SENT] == set(good) and by_state[FAILED] == {huge}


def test_413_on_a_span_with_nothing_to_cut_fails_at_once(receiver, store, produced, sender):
    receiver.default = Respond(413)
    [span] = produced(1, prefix="dense", payload="x" * 100)
    s = sender(receiver.url)
    assert s.flush(10).failed == 1
    assert len(receiver.requests) == 1
    assert "no attribute value longer than" in error_of(store, span)
    account(store, receiver, produced)


def test_400_fails_only_the_malformed_span_with_the_servers_message(receiver, store, produced, sender):
    receiver.rule = lambda spans: (
        Respond(400, body="invalid span: 'bad' has no parent") if any(s.name == "bad" for s in spans) else None
    )
    good = produced(5, prefix="good")
    [bad] = produced(1, prefix="bad")
    good += produced(4, prefix="fine")
    s = sender(receiver.url)

    report = s.flush(10)

    assert (report.sent, report.failed, report.pending) == (9, 1, 0)
    reason = error_of(store, bad)
    assert "HTTP 400" in reason and "invalid span: 'bad' has no parent" in reason
    assert s._status.last_error == reason
    by_state = account(store, receiver, produced)
    assert by_state[SENT] == set(good) and by_state[FAILED] == {bad}


# --------------------------------------------------------------------------- TLS


def _trustme():
    try:
        import trustme
    except ImportError:
        require(False, "trustme is not installed; run pip install -e '.[test]'")
    return trustme


@pytest.fixture
def tls(tmp_path):
    """A private CA, a certificate it signed for 127.0.0.1, and the CA bundle as a PEM file."""
    trustme = _trustme()
    ca = trustme.CA()
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    stranger = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    return server, str(bundle), str(stranger)


def test_untrusted_certificate_keeps_spans_and_names_the_setting_then_the_ca_bundle_delivers(
    store, produced, sender, tls
):
    server_context, bundle, _ = tls
    with OtlpReceiver(ssl_context=server_context) as rx:
        produced(4)
        s = sender(rx.url)
        assert wait_until(lambda: "certificate" in s._status.last_error)

        message = s._status.last_error
        assert message.startswith(f"127.0.0.1:{rx.port}'s certificate is not trusted (CERTIFICATE_VERIFY_FAILED")
        assert "set TraceExt.certificate (or OTEL_EXPORTER_OTLP_CERTIFICATE) to the CA bundle" in message
        assert message.endswith("spans are kept and retried.") and one_sentence(message)
        assert s._status.state == "retrying"
        assert rx.requests == []  # the handshake failed: nothing was sent unverified
        assert store.counts().pending == 4
        account(store, rx, produced)

        s.configure(SenderConfig(Destination(rx.url, "test", {}), certificate=bundle))
        report = s.flush(10)

        assert (report.sent, report.failed, report.pending) == (4, 0, 0)
        assert s._status.last_error == ""
        by_state = account(store, rx, produced)
        assert by_state[SENT] == produced.ids


def test_a_ca_bundle_that_did_not_sign_the_certificate_is_named(store, produced, sender, tls):
    server_context, _, stranger = tls
    with OtlpReceiver(ssl_context=server_context) as rx:
        produced(2)
        s = sender(rx.url, certificate=stranger)
        assert wait_until(lambda: "certificate" in s._status.last_error)
        message = s._status.last_error
        assert f"is not signed by the CA bundle {stranger}" in message and one_sentence(message)
        assert rx.requests == [] and store.counts().pending == 2
        account(store, rx, produced)


def test_a_certificate_for_another_name_is_named_as_such(tmp_path, store, produced, sender):
    ca = _trustme().CA()
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("collector.example").configure_cert(server_context)  # not 127.0.0.1
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    with OtlpReceiver(ssl_context=server_context) as rx:
        produced(2)
        s = sender(rx.url, certificate=str(tmp_path / "ca.pem"))
        assert wait_until(lambda: "certificate" in s._status.last_error)
        message = s._status.last_error
        assert "certificate is not valid for that name" in message and "mismatch" in message
        assert one_sentence(message) and rx.requests == [] and store.counts().pending == 2
        account(store, rx, produced)


def test_an_unreadable_ca_bundle_keeps_spans_and_says_so(tmp_path, receiver, store, produced, sender):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    produced(2)
    s = sender(receiver.url, certificate=str(junk))
    assert wait_until(lambda: "could not be loaded" in s._status.last_error)
    assert "TraceExt.certificate" in s._status.last_error and one_sentence(s._status.last_error)
    assert receiver.requests == [] and store.counts().pending == 2
    account(store, receiver, produced)


def test_certificate_setting_falls_back_to_the_opentelemetry_variables(monkeypatch, tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("")
    settings = TraceExt()
    assert resolve_certificate(settings) is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", "/generic.pem")
    assert resolve_certificate(settings) == "/generic.pem"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "/traces.pem")
    assert resolve_certificate(settings) == "/traces.pem"
    settings.certificate = str(bundle)
    assert resolve_certificate(settings) == str(bundle)
    with pytest.raises(SettingError, match="TraceExt.certificate must be the path of a PEM CA bundle"):
        settings.certificate = str(tmp_path / "missing.pem")
    assert settings.certificate == str(bundle)


# --------------------------------------------------------------------------- resets, 429, 503


def test_connection_reset_mid_request_keeps_spans_and_delivers_them_once(receiver, store, produced, sender, errors):
    receiver.script(Reset())
    produced(3)
    s = sender(receiver.url)

    report = s.flush(15)

    assert (report.sent, report.failed, report.pending) == (3, 0, 0)
    first, second = receiver.requests
    assert first.status is None and len(first.spans) == 3  # received, never answered
    assert second.accepted
    [problem] = errors
    assert problem.startswith(f"127.0.0.1:{receiver.port} closed the connection before answering")
    assert problem.endswith("spans are kept and retried.") and one_sentence(problem)
    by_state = account(store, receiver, produced)
    assert by_state[SENT] == produced.ids


def test_429_retry_after_is_honoured_then_delivered(receiver, store, produced, sender):
    receiver.script(Respond(429, headers={"Retry-After": "2"}, body="slow down"))
    produced(3)
    s = sender(receiver.url)
    assert wait_until(lambda: "HTTP 429: slow down" in s._status.last_error)
    assert store.counts().pending == 3  # kept while the server's 2 s run
    account(store, receiver, produced)

    report = s.flush(15)

    assert report.sent == 3
    first, second = receiver.requests
    assert second.received_at - first.received_at >= 2.0
    account(store, receiver, produced)


def test_retry_after_zero_does_not_become_a_busy_loop(monkeypatch, receiver, store, produced, sender):
    monkeypatch.setattr(_policy, "BACKOFF_BASE", 0.2)
    receiver.script(*[Respond(429, headers={"Retry-After": "0"})] * 3)
    produced(2)
    s = sender(receiver.url)
    assert s.flush(15).sent == 2
    times = [r.received_at for r in receiver.requests]
    assert len(times) == 4
    gaps = [b - a for a, b in zip(times, times[1:])]
    # The backoff still applies (jitter takes it down to half, never lower).
    assert all(gap >= 0.5 * 0.2 * 2**i for i, gap in enumerate(gaps)), gaps
    account(store, receiver, produced)


def test_backoff_schedule_doubles_to_the_cap_with_jitter(monkeypatch, store, status):
    s = Sender(store, status, lambda: None)  # not started: drive the schedule by hand

    def delays(jitter) -> list[float]:
        monkeypatch.setattr(random, "uniform", lambda low, high: jitter(low, high))
        s._attempt, out = 0, []
        for _ in range(12):
            before = time.time()
            s._schedule_retry(Retry(None, "503"))
            out.append(s._retry_at - before)
        return out

    longest = delays(lambda low, high: high)
    assert [round(d) for d in longest] == [1, 2, 4, 8, 16, 30, 30, 30, 30, 30, 30, 30]
    shortest = delays(lambda low, high: low)
    assert [round(d, 1) for d in shortest] == [0.5, 1, 2, 4, 8, 15, 15, 15, 15, 15, 15, 15]
    assert all(d <= BACKOFF_CAP + 0.1 for d in longest)
    assert status.state == "retrying" and status.last_error == "503"
    monkeypatch.undo()
    jittered = [backoff_delay(attempt) for attempt in range(40) for _ in range(25)]
    assert all(0.5 <= d <= BACKOFF_CAP for d in jittered)
    assert len({round(d, 6) for d in jittered[-25:]}) > 1  # jittered, not in lock step
    assert backoff_delay(10_000) <= BACKOFF_CAP  # no overflow however long the outage


def test_a_503_storm_keeps_retrying_at_the_cap_and_delivers_once_it_ends(
    monkeypatch, receiver, store, produced, sender
):
    # A scaled-down schedule (10 ms doubling to an 80 ms cap) so the storm fits in a test.
    monkeypatch.setattr(_policy, "BACKOFF_BASE", 0.01)
    monkeypatch.setattr(_policy, "BACKOFF_CAP", 0.08)
    receiver.default = Respond(503, body="overloaded")
    produced(5)
    s = sender(receiver.url)

    assert receiver.wait_for(lambda rx: len(rx.requests) >= 12, timeout=20)
    assert wait_until(lambda: s._status.state == "retrying") and store.counts().pending == 5
    assert s._status.last_error == f"127.0.0.1:{receiver.port} answered HTTP 503: overloaded; retrying."
    times = [r.received_at for r in receiver.requests]
    assert all(b - a >= 0.04 for a, b in zip(times[6:], times[7:]))  # at the cap: never below half of it
    account(store, receiver, produced)

    receiver.default = None
    report = s.flush(10)

    assert report.sent == 5
    by_state = account(store, receiver, produced)
    assert by_state[SENT] == produced.ids


def test_the_certificate_setting_in_a_kernel(start_kernel, tls):
    server_context, bundle, _ = tls
    with OtlpReceiver(ssl_context=server_context) as rx:
        kernel = start_kernel(OTEL_EXPORTER_OTLP_ENDPOINT=rx.base_url)
        kernel.ok("%load_ext trace_ext")
        kernel.ok("%%trace over-tls\n1")
        assert kernel.wait_for(lambda: "TraceExt.certificate" in kernel.ok("%trace status").text(), timeout=20)
        assert rx.requests == []  # never sent unverified
        kernel.ok(f"%config TraceExt.certificate = {bundle!r}")  # a new configuration: tried at once
        assert "0 still pending" in kernel.ok("%trace flush --timeout 15").stdout
        [span] = rx.spans
        assert span.name == "over-tls"


# -- issue 11, case 8: answers without end, answers at a trickle ----------------------


def test_a_2xx_answer_without_end_is_cut_and_its_spans_are_sent(start_kernel, receiver, store_path):
    from .otlp_receiver import Trickle
    from .test_faults import CELL, assert_accounted, flushed, traced_kernel

    kernel = traced_kernel(start_kernel, receiver, "export_timeout = 5")
    kernel.ok(CELL.format(name="warm-up"))
    flushed(kernel)
    before = memory_mb(kernel, "VmHWM")
    receiver.script(Trickle(200, size=256 * 2**20))  # 256 MB of "accepted", as fast as loopback goes
    kernel.ok(CELL.format(name="endless"))
    flushed(kernel, 60)
    grew = memory_mb(kernel, "VmHWM") - before
    assert grew < 64, f"the kernel's peak memory grew by {grew:.0f} MB reading one answer"
    produced = kernel.value("_ids")
    assert assert_accounted(store_path, receiver, produced) == Counter(sent=4)


def test_an_answer_at_a_trickle_is_given_up_after_the_export_timeout_and_shown(start_kernel, receiver, store_path):
    from .otlp_receiver import Trickle
    from .test_faults import CELL, assert_accounted, flushed, status_text, traced_kernel

    kernel = traced_kernel(start_kernel, receiver, "export_timeout = 1")
    receiver.script(Trickle(503, size=None, chunk=8, interval=0.2))  # each read well within its 1 s timeout
    kernel.ok(CELL.format(name="trickled"))
    assert kernel.wait_for(lambda: "did not finish answering within 1 s" in status_text(kernel), 30), status_text(kernel)
    flushed(kernel, 30)  # the next request gets an answer: sent
    produced = kernel.value("_ids")
    assert assert_accounted(store_path, receiver, produced) == Counter(sent=2)


def test_a_redirect_keeps_the_spans_pending_and_says_so(start_kernel, receiver, store_path):
    from .test_faults import CELL, assert_accounted, flushed, status_text, traced_kernel

    receiver.script(Respond(302, headers={"Location": "http://elsewhere.example/v1/traces"}))
    kernel = traced_kernel(start_kernel, receiver)
    kernel.ok(CELL.format(name="redirected"))
    assert kernel.wait_for(lambda: "redirect (HTTP 302) to elsewhere.example" in status_text(kernel), 20), status_text(kernel)
    produced = kernel.value("_ids")
    states = assert_accounted(store_path, receiver, produced)
    assert states["failed"] == 0, states  # a redirect is not the server refusing the spans
    flushed(kernel, 30)  # the script is over: the next answer is 200
    assert assert_accounted(store_path, receiver, produced) == Counter(sent=2)


def test_an_otel_headers_item_without_equals_is_reported_by_position_not_ignored(monkeypatch):
    from trace_ext._delivery.destination import resolve_destination

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-team=ml,Bearer-sk-secret-123456")
    destination, warning = resolve_destination(TraceExt())
    assert destination.headers == {"x-team": "ml"}
    assert "OTEL_EXPORTER_OTLP_HEADERS has items that are not key=value (item 2)" in warning
    assert "sk-secret" not in warning


def test_html_error_page_is_summarised_as_the_status_phrase():
    # Issue 11 case 13: a 500's raw HTML was shown as the reason.
    import httpx
    from trace_ext._delivery.policy import classify

    page = b"<!DOCTYPE html><html><body><h1>Internal Server Error</h1><p>trace</p></body></html>"
    response = httpx.Response(500, content=page, headers={"content-type": "text/html; charset=utf-8"})
    reason = classify(response, "collector", 3).reason
    assert "<" not in reason and "html" not in reason.lower()
    assert "HTTP 500" in reason and "Internal Server Error" in reason


# -- issue 11, cases 10 and 11: a backend slower than export_timeout; partial_success ---------

EXT = "__import__('trace_ext._extension', fromlist=['x']).active()"

# A traced cell with {n} children; every span id goes into the kernel's _ids.
SPANS_CELL = (
    "%%trace {name}\n"
    "_ids.append(format(_t.get_current_span().get_span_context().span_id, '016x'))\n"
    "for _i in range({n}):\n"
    "    with _t.get_tracer('lib').start_as_current_span('{name}-child') as _s:\n"
    "        _ids.append(format(_s.get_span_context().span_id, '016x'))\n"
)


def _counters(kernel) -> Counter:
    """The status display's pending, sent and failed counters, as the kernel holds them."""
    pending, sent, failed = kernel.value(f"[{EXT}.status.pending, {EXT}.status.sent, {EXT}.status.failed]")
    return +Counter(pending=pending, sent=sent, failed=failed)


def _received(receiver) -> Counter:
    """How many times the receiver got each span id, answered or not."""
    return Counter(span.span_id for request in receiver.requests for span in request.spans)


def test_a_backend_slower_than_export_timeout_gets_each_span_at_most_twice(start_kernel, receiver, store_path):
    from .otlp_receiver import Delay
    from .test_faults import store_rows, traced_kernel

    timeout = 1.0
    receiver.default = Delay(1.5 * timeout)  # every answer comes after the client's first time limit
    kernel = traced_kernel(start_kernel, receiver, f"export_timeout = {timeout}", "max_batch_spans = 10")
    kernel.ok(SPANS_CELL.format(name="slow", n=29))  # 30 spans: three requests
    out = kernel.ok("%trace flush --timeout 30", timeout=60).stdout
    produced = kernel.value("_ids")
    received = _received(receiver)
    deliveries = f"{sum(received.values())} deliveries of {len(produced)} spans, {len(received)} ids received: {out}"
    assert max(received.values()) <= 2, deliveries
    assert len(produced) == 30 and set(received) == set(produced), deliveries
    rows = store_rows(store_path)
    states = Counter(rows[span_id][0] for span_id in produced)
    assert states == Counter(sent=30), states
    assert "0 still pending" in out, out
    assert _counters(kernel) == states


def test_the_time_limit_doubles_after_a_time_out_to_its_cap():
    from trace_ext._delivery.policy import longer_timeout

    def limits(export_timeout: float) -> list[float]:
        out, limit = [], export_timeout
        for _ in range(6):
            limit = longer_timeout(limit, export_timeout)
            out.append(limit)
        return out

    assert limits(10) == [20, 40, 60, 60, 60, 60]  # the default: a minute at most
    assert limits(1) == [2, 4, 8, 8, 8, 8]  # 8 x the setting
    assert limits(100) == [100] * 6  # never below what the user set


@pytest.mark.parametrize("protocol", ["http/protobuf", "http/json"])
def test_partial_success_fails_its_whole_batch_in_store_and_counters_and_retry_sends_it(
    start_kernel, receiver, store_path, protocol
):
    from .otlp_receiver import PartialSuccess
    from .test_faults import status_text, store_rows, traced_kernel

    receiver.script(PartialSuccess(2, "2 spans had an empty name"))  # the first request; then all is accepted
    kernel = traced_kernel(start_kernel, receiver, f"protocol = {protocol!r}", "max_batch_spans = 6")
    kernel.ok(SPANS_CELL.format(name="partial", n=11))  # 12 spans: two requests of 6
    out = kernel.ok("%trace flush --timeout 20", timeout=50).stdout
    produced = kernel.value("_ids")
    assert len(produced) == 12 and "0 still pending" in out, out
    first = receiver.requests[0]
    batch = {span.span_id for span in first.spans}
    assert len(batch) == 6 and first.content_type.startswith(f"application/{protocol.removeprefix('http/').replace('protobuf', 'x-protobuf')}")

    rows = store_rows(store_path)
    failed = {span_id for span_id, (state, _) in rows.items() if state == "failed"}
    assert failed == batch, (len(failed), len(batch))
    host = f"127.0.0.1:{receiver.port}"
    reason = rows[min(batch)][1]
    assert reason == (
        f"{host} accepted 4 of these 6 spans and rejected 2 without saying which, so all 6 count as failed: "
        "2 spans had an empty name."
    ), reason
    shown = status_text(kernel)
    assert f"6 spans failed: {reason} `%trace retry` sends them again." in shown, shown
    states = Counter(rows[span_id][0] for span_id in produced)
    assert states == Counter(sent=6, failed=6), states
    assert _counters(kernel) == states  # the display counts what the store holds

    assert kernel.ok("%trace retry").stdout.strip().startswith("6 failed spans queued again."), "retry"
    out = kernel.ok("%trace flush --timeout 20", timeout=50).stdout
    assert "0 still pending" in out, out
    rows = store_rows(store_path)
    states = Counter(rows[span_id][0] for span_id in produced)
    assert states == Counter(sent=12), states
    assert _counters(kernel) == states
    received = _received(receiver)
    assert set(received) == set(produced)
    assert {span_id for span_id, n in received.items() if n == 2} == batch  # retry sent the batch again, all of it
