"""Section 4: the store and the sender, over real HTTP to the loopback receiver."""

from __future__ import annotations

import time

import pytest

from trace_ext._delivery.destination import SenderConfig
from trace_ext._store.store import PENDING
from trace_ext._delivery.destination import Destination

from .conftest import recording_tracer
from .otlp_receiver import Delay, PartialSuccess, Respond


@pytest.fixture
def make_spans(store):
    """Record n real SDK spans (one trace) into the store as pending; returns their names."""
    processor, tracer = recording_tracer("sender-tests", 32_768)

    def make(n: int, payload: str = "", prefix: str = "span") -> list[str]:
        names = [f"{prefix}-{i}" for i in range(n)]
        for name in names:
            tracer.start_span(name, attributes={"payload": payload}).end()
        store.save(processor.take(), PENDING)
        return names

    return make


def test_delivers_protobuf_gzip_and_marks_sent(receiver, store, make_spans, sender):
    names = make_spans(5)
    s = sender(receiver.url)
    report = s.flush(10)
    assert (report.sent, report.failed, report.pending) == (5, 0, 0)
    assert sorted(span.name for span in receiver.spans) == sorted(names)
    [request] = receiver.requests
    assert request.content_type == "application/x-protobuf" and request.content_encoding == "gzip"
    assert receiver.spans[0].resource["service.name"] == "sender-tests"
    assert store.counts().sent == 5


def test_json_protocol_without_compression(receiver, make_spans, sender):
    make_spans(3)
    s = sender(receiver.url, protocol="http/json", compression="none")
    assert s.flush(10).sent == 3
    [request] = receiver.requests
    assert request.content_type == "application/json" and request.content_encoding in ("", None)
    assert {len(span.trace_id) for span in receiver.spans} == {32}


def test_batches_are_bounded_by_count_and_by_bytes(receiver, make_spans, sender):
    make_spans(25)
    s = sender(receiver.url, max_batch_spans=10)
    assert s.flush(10).sent == 25
    assert [len(r.spans) for r in receiver.requests] == [10, 10, 5]
    s.shutdown(1)
    receiver.clear()
    make_spans(6, payload="x" * 3000, prefix="big")
    assert sender(receiver.url, max_batch_bytes=7000).flush(10).sent == 6
    assert max(len(r.spans) for r in receiver.requests) == 2


def test_partial_success_fails_the_whole_request_with_the_servers_message(receiver, store, make_spans, sender):
    # OTLP does not say which spans were rejected: all 5 are failed, in the store as in the counters.
    receiver.script(PartialSuccess(2, "attribute too long"))
    make_spans(5)
    s = sender(receiver.url)
    report = s.flush(10)
    assert (report.sent, report.failed) == (0, 5)
    assert store.counts().failed == 5
    assert s._status.last_error == (
        f"127.0.0.1:{receiver.port} accepted 3 of these 5 spans and rejected 2 without saying which, "
        "so all 5 count as failed: attribute too long."
    )


def test_partial_success_rejecting_every_span_says_so(receiver, store, make_spans, sender):
    receiver.script(PartialSuccess(1, ""))
    make_spans(1)
    s = sender(receiver.url)
    assert s.flush(10).failed == 1
    assert s._status.last_error == f"127.0.0.1:{receiver.port} rejected this span."


def test_429_waits_for_retry_after_then_delivers_once(receiver, make_spans, sender):
    receiver.script(Respond(429, headers={"Retry-After": "1"}))
    names = make_spans(3)
    s = sender(receiver.url)
    assert s.flush(15).sent == 3
    first, second = receiver.requests
    assert second.received_at - first.received_at >= 1.0
    assert sorted(receiver.span_ids()) == sorted(set(receiver.span_ids()))
    assert len(receiver.spans) == len(names)


def test_5xx_and_connection_errors_are_retried_with_backoff(receiver, make_spans, sender):
    receiver.script(Respond(503), Respond(502))
    make_spans(2)
    s = sender(receiver.url)
    assert s.flush(15).sent == 2
    statuses = [r.status for r in receiver.requests]
    assert statuses == [503, 502, 200]
    assert s._status.last_error == ""  # recovered: the widget no longer shows the 502
    gaps = [b.received_at - a.received_at for a, b in zip(receiver.requests, receiver.requests[1:])]
    assert gaps[0] >= 0.5 and gaps[1] >= 1.0  # exponential: base 1 s, 2 s, with jitter down to half


def test_unreachable_backend_keeps_spans_pending(store, make_spans, sender):
    make_spans(2)
    s = sender("http://127.0.0.1:9/v1/traces")  # the discard port: nothing listens
    report = s.flush(1.5)
    assert (report.sent, report.pending, report.timed_out) == (0, 2, True)
    assert "Could not reach 127.0.0.1:9" in s._status.last_error
    assert store.counts().pending == 2


def test_other_4xx_marks_failed_with_a_readable_reason(receiver, store, make_spans, sender):
    receiver.default = Respond(404, body="no such route")
    make_spans(2)
    s = sender(receiver.url)
    report = s.flush(10)
    assert (report.sent, report.failed, report.pending) == (0, 2, 0)
    assert "HTTP 404" in s._status.last_error and "no such route" in s._status.last_error
    assert "TraceExt.endpoint" in s._status.last_error
    assert store.counts().failed == 2


def test_400_fails_only_the_malformed_span_and_delivers_the_rest(receiver, store, make_spans, sender):
    # Like Langfuse, this backend refuses a whole request if one span in it is bad.
    receiver.rule = lambda spans: (
        Respond(400, body="invalid span: bad-0") if any(s.name == "bad-0" for s in spans) else None
    )
    good = make_spans(3, prefix="good") + make_spans(4, prefix="fine")
    make_spans(1, prefix="bad")
    s = sender(receiver.url)
    report = s.flush(10)
    assert (report.sent, report.failed, report.pending) == (7, 1, 0)
    assert sorted(span.name for span in receiver.spans) == sorted(good)
    assert "invalid span: bad-0" in s._status.last_error
    [(name, error)] = store._connect().execute("SELECT name, error FROM spans WHERE state = 'failed'").fetchall()
    assert name == "bad-0" and "HTTP 400" in error and "invalid span" in error


def test_401_keeps_spans_and_resumes_with_new_credentials(make_spans, sender, store, status):
    from .otlp_receiver import OtlpReceiver

    states = []
    status.observe(lambda change: states.append(change["new"]), names="state")
    with OtlpReceiver(require_headers={"authorization": "Bearer right"}) as rx:
        make_spans(3)
        s = sender(rx.url, headers={"Authorization": "Bearer wrong"})
        report = s.flush(1.0)
        assert (report.sent, report.failed, report.pending) == (0, 0, 3)
        assert "rejected the credentials" in s._status.last_error
        assert "Bearer" not in s._status.last_error and "wrong" not in s._status.last_error
        assert "paused" in states
        s.configure(SenderConfig(Destination(rx.url, "test", {"Authorization": "Bearer right"})))
        assert s.flush(10).sent == 3
        assert len(rx.spans) == 3


def test_shutdown_is_bounded_when_the_backend_never_answers(receiver, store, make_spans, sender):
    receiver.default = Delay(30)
    make_spans(4)
    s = sender(receiver.url)
    start = time.monotonic()
    report = s.shutdown(1.0)
    assert time.monotonic() - start < 2.5
    assert report.pending == 4 and store.counts().pending == 4
    assert not s.is_alive() or s._stopping
