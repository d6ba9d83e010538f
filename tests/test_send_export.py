"""Local spans sent later (`%trace send`, `python -m trace_ext send`) and written out (`export`), end to end.

Spans are recorded with nothing configured (the embedded default), so they stay
local; then they are sent to the loopback receiver or a real Phoenix, and must
arrive exactly once with nothing lost; or exported, and the file must parse with
opentelemetry-proto's JSON mapping and hold every span.
"""

from __future__ import annotations

import json
from pathlib import Path

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from trace_ext._store.store import SpanStore

from .conftest import journals_imported, wait_until
from .otlp_receiver import Respond, otlp_json_to_proto_dict
from .test_cli import cli

CELLS = [
    "%%trace first --tag later\n"
    "from opentelemetry import trace\n"
    "for i in range(3):\n"
    "    with trace.get_tracer('t').start_as_current_span(f'step-{i}'):\n"
    "        pass\n"
    "'one'",
    "%%trace second\n'two'",
    "%%trace third\nraise RuntimeError('third failed')",
]


def record_locally(kernel) -> None:
    for cell in CELLS:
        kernel.execute(cell)


def stored(store_path: Path) -> dict[str, tuple[str, str]]:
    """span id -> (trace id, state), for every span in the store (once the kernel has imported its journal)."""
    wait_until(lambda: journals_imported(store_path), 20)
    db = SpanStore(str(store_path))
    try:
        return {s.span_id: (s.trace_id, s.state) for t in db.recent_traces(1000) for s in t}
    finally:
        db.close()


def trace_id_of(store_path: Path, name: str) -> str:
    db = SpanStore(str(store_path))
    try:
        return next(s.trace_id for t in db.recent_traces(1000) for s in t if s.name == name)
    finally:
        db.close()


def test_trace_send_delivers_local_spans_once_through_the_kernels_sender(loaded, store_path, receiver):
    record_locally(loaded)
    before = stored(store_path)
    assert len(before) == 6 and {state for _t, state in before.values()} == {"local"}
    # Without an endpoint there is nowhere to send: one sentence, nothing changes.
    nowhere = loaded.execute("%trace send")
    assert nowhere.status == "error" and nowhere.reply["ename"] == "UsageError"
    assert "no endpoint is configured" in nowhere.reply["evalue"]

    loaded.ok(f"%config TraceExt.endpoint = {receiver.url!r}")
    loaded.ok("%%trace live\n'sent as it ends'")  # recorded with the endpoint: pending, sent on its own
    receiver.wait_for_spans(1, timeout=30)
    assert {s.name for s in receiver.spans} == {"live"}  # the local ones are not sent on their own

    # One trace first, by the start of its id.
    second = trace_id_of(store_path, "second")
    said = loaded.ok(f"%trace send --trace {second[:8]}").stdout
    assert said.startswith("1 local spans queued for 127.0.0.1:"), said
    report = loaded.ok("%trace flush --timeout 30").stdout
    assert "0 still pending" in report, report
    assert sorted(s.name for s in receiver.spans) == ["live", "second"]

    # Then everything else; a 503 on the way is retried as for live spans.
    receiver.script(Respond(503))
    assert loaded.ok("%trace send").stdout.startswith("5 local spans queued")
    report = loaded.ok("%trace flush --timeout 30").stdout
    assert "0 still pending" in report, report
    ids = receiver.span_ids()
    assert len(ids) == len(set(ids)) == 7  # each exactly once
    assert set(ids) == set(before) | {s.span_id for s in receiver.spans if s.name == "live"}
    assert any(r.status == 503 for r in receiver.requests)
    assert {state for _t, state in stored(store_path).values()} == {"sent"}
    # The list says so; the status counts no local spans any more.
    text = loaded.ok("%trace show").displays[0]["data"]["text/plain"]
    assert "· OK · sent" in text and "local" not in text
    assert loaded.ok("%trace send").stdout.strip() == "No local spans match: nothing to send."


def test_cli_send_delivers_local_spans_once_and_leaves_other_spans_alone(start_kernel, store_path, receiver):
    kernel = start_kernel()
    kernel.ok("%load_ext trace_ext")
    record_locally(kernel)
    kernel.shutdown()
    spans = stored(store_path)
    first = trace_id_of(store_path, "first")

    receiver.script(Respond(503), Respond(429, headers={"Retry-After": "1"}))
    one = cli("send", "--endpoint", receiver.url, "--store", str(store_path), "--trace", first, "--timeout", "60")
    assert one.returncode == 0, one.stdout + one.stderr
    assert one.stdout.strip() == f"Sent 4 of 4 local spans to 127.0.0.1:{receiver.port}; 0 failed.", one.stdout
    assert sorted(s.name for s in receiver.spans) == ["first", "step-0", "step-1", "step-2"]

    rest = cli("send", "--endpoint", receiver.url, "--store", str(store_path), "--header", "x-extra=yes")
    assert rest.returncode == 0, rest.stdout + rest.stderr
    assert "Sent 2 of 2 local spans" in rest.stdout
    assert receiver.requests[-1].headers["x-extra"] == "yes"
    ids = receiver.span_ids()
    assert len(ids) == len(set(ids)) == len(spans) and set(ids) == set(spans)
    assert {state for _t, state in stored(store_path).values()} == {"sent"}
    again = cli("send", "--endpoint", receiver.url, "--store", str(store_path))
    assert again.returncode == 0 and again.stdout.strip() == "No local spans match: nothing to send."
    assert len(receiver.span_ids()) == len(spans)


def test_cli_send_that_cannot_deliver_says_so_and_keeps_the_spans_local(start_kernel, store_path, receiver):
    kernel = start_kernel()
    kernel.ok("%load_ext trace_ext")
    kernel.ok("%%trace kept\n1")
    kernel.shutdown()
    receiver.default = Respond(503)
    result = cli("send", "--endpoint", receiver.url, "--store", str(store_path), "--timeout", "2")
    assert result.returncode == 1
    assert "Sent 0 of 1 local spans" in result.stdout and "1 not delivered within the time limit" in result.stdout
    assert "503" in result.stdout
    assert {state for _t, state in stored(store_path).values()} == {"local"}
    bad = cli("send", "--endpoint", "ftp://nowhere", "--store", str(store_path))
    assert bad.returncode == 1 and "must be an http:// or https:// URL" in bad.stderr
    # A header no request can carry, or a bare key, is said before anything is tried, and never shown.
    key = "sk-pasted-key-5521"
    for header, said in [(f"x-token=é{key}", "A --header has a value no HTTP request can carry (header 1 of 1;"),
                         (f"bad name={key}", "A --header has a name that is not an HTTP header name (header 1 of 1;"),
                         (key, "expected NAME=VALUE")]:
        bad = cli("send", "--endpoint", receiver.url, "--store", str(store_path), "--header", header)
        assert bad.returncode != 0 and said in bad.stderr and key not in bad.stderr, bad.stderr
    assert {state for _t, state in stored(store_path).values()} == {"local"}


def parse_export(path: Path) -> list:
    """Every span of an exported file, each line parsed with opentelemetry-proto's JSON mapping."""
    spans = []
    lines = path.read_text().splitlines()
    assert lines, "the file is empty"
    for line in lines:
        request = json_format.ParseDict(otlp_json_to_proto_dict(json.loads(line)), ExportTraceServiceRequest())
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                spans += list(scope_spans.spans)
    return spans


def test_export_writes_every_span_as_otlp_json_lines(loaded, store_path, tmp_path):
    record_locally(loaded)
    out = tmp_path / "spans.jsonl"
    said = loaded.ok(f"%trace export {out}").stdout
    assert said.strip() == f"Wrote 6 spans to {out} (OTLP JSON, one request per line)."
    spans = parse_export(out)
    assert {s.span_id.hex(): s.trace_id.hex() for s in spans} == {k: t for k, (t, _s) in stored(store_path).items()}
    by_name = {s.name: s for s in spans}
    assert by_name["step-0"].parent_span_id == by_name["first"].span_id
    assert by_name["third"].status.code == 2 and "third failed" in by_name["third"].status.message
    # Ids are hex in the file, as OTLP JSON (and the Collector's file exporter) writes them.
    line = json.loads(out.read_text().splitlines()[0])
    span = line["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert len(span["traceId"]) == 32 and int(span["traceId"], 16) >= 0

    third = trace_id_of(store_path, "third")
    one = tmp_path / "third.jsonl"
    loaded.ok(f"%trace export {one} --trace {third}")
    assert [s.name for s in parse_export(one)] == ["third"]
    # The command line writes the same spans.
    cli_out = tmp_path / "cli.jsonl"
    result = cli("export", str(cli_out), "--store", str(store_path))
    assert result.returncode == 0, result.stderr
    assert sorted(s.span_id for s in parse_export(cli_out)) == sorted(s.span_id for s in spans)
    # Nothing changed in the store.
    assert {state for _t, state in stored(store_path).values()} == {"local"}
    bad = loaded.execute(f"%trace export {tmp_path / 'no' / 'such' / 'dir.jsonl'}")
    assert bad.status == "error" and bad.reply["ename"] == "UsageError"


def test_local_spans_sent_later_arrive_in_phoenix_once(phoenix, start_kernel, store_path):
    kernel = start_kernel()
    kernel.ok("%load_ext trace_ext")
    record_locally(kernel)
    kernel.shutdown()
    spans = stored(store_path)
    result = cli("send", "--endpoint", phoenix.otlp_url, "--store", str(store_path), "--timeout", "60")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Sent {len(spans)} of {len(spans)} local spans" in result.stdout
    seen = set()
    for trace_id in {t for t, _s in spans.values()}:
        wanted = sum(1 for t, _s in spans.values() if t == trace_id)
        records = phoenix.wait_for_spans(trace_id, wanted, timeout=60)
        assert len(records) == wanted
        seen |= {r["context"]["span_id"] for r in records}
    assert seen == set(spans)


def test_sending_local_spans_takes_no_pending_span_of_a_kernel(store, receiver):
    """A terminal's send shares the store with kernels: it claims only local spans, and a
    kernel's claim (pending spans) never sees the ones it is sending."""
    from trace_ext._delivery.destination import Destination, SenderConfig
    from trace_ext._delivery.local import send_local_spans
    from trace_ext._store.schema import SpanState

    from .conftest import recording_tracer

    processor, tracer = recording_tracer("shared")
    for name in ("local-1", "local-2"):
        with tracer.start_as_current_span(name):
            pass
    store.save(processor.take(), SpanState.LOCAL)
    with tracer.start_as_current_span("a-kernels-pending"):
        pass
    store.save(processor.take(), SpanState.PENDING)
    # While the terminal holds local spans, a kernel's claim takes only its pending one.
    held = store.claim_local(10, 10**6, 30.0)
    assert len(held) == 2
    claimed = store.claim(10, 10**6, 30.0)
    assert len(claimed) == 1 and claimed[0].id not in {c.id for c in held}
    store.release([c.id for c in held + claimed])

    config = SenderConfig(Destination(receiver.url, "test"), export_timeout=5.0)
    report = send_local_spans(store, config, timeout=30)
    assert (report.chosen, report.sent, report.failed, report.left) == (2, 2, 0, 0)
    assert sorted(s.name for s in receiver.spans) == ["local-1", "local-2"]
    assert store.counts().pending == 1 and store.counts().sent == 2  # the kernel's span is still its own
