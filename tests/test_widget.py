"""Section 6: the live status widget (through a real kernel's comm messages) and its fallbacks."""

from __future__ import annotations

import subprocess
import sys

from trace_ext._delivery.status import DeliveryStatus
from trace_ext._display.widget import StatusDisplay

from .conftest import clean_env
from .kernel import counts_in
from .otlp_receiver import Delay

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
THREE_SPANS = (
    "%%trace widget-test\n"
    "from opentelemetry import trace\n"
    "tracer = trace.get_tracer('lib')\n"
    "with tracer.start_as_current_span('a'):\n"
    "    with tracer.start_as_current_span('b'):\n"
    "        pass\n"
    "'ok'"
)


def test_widget_goes_from_pending_to_sent(start_kernel, receiver):
    receiver.script(Delay(1.5))  # the first delivery is slow, so "pending" is on screen a while
    kernel = start_kernel(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.base_url)
    kernel.ok("%load_ext trace_ext")
    kernel.ok(THREE_SPANS)

    def delivered() -> bool:
        history = [counts_in(label) for label in kernel.label_history()]
        return (0, 3, 0) in history

    assert kernel.wait_for(delivered, timeout=15), kernel.label_history()
    history = [counts_in(label) for label in kernel.label_history()]
    first_pending = next(i for i, c in enumerate(history) if c and c[0] > 0)
    assert history[first_pending][0] == 3
    assert history.index((0, 3, 0)) > first_pending
    final = kernel.status_labels()[-1]
    assert f"127.0.0.1:{receiver.port}" in final and "last delivery" in final
    assert "last delivery never" not in final
    # A backlog bar while the 3 spans wait (of this backlog: 0 of 3 answered), none once all
    # are delivered: a full bar would say nothing a glance needs.
    assert 'title="0 of 3 spans of this backlog answered"' in kernel.label_history()[first_pending]
    assert "trace-ext-backlog" not in final and 'data-state="delivered"' in final


def test_flush_reports_what_was_sent_and_what_remains(start_kernel, receiver):
    kernel = start_kernel(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.base_url)
    kernel.ok("%load_ext trace_ext\n%config TraceExt.flush_after_cell = False")
    kernel.ok(THREE_SPANS)
    out = kernel.ok("%trace flush --timeout 10").stdout
    assert out.strip() == f"All 3 spans delivered to 127.0.0.1:{receiver.port} (3 by this flush); 0 failed; 0 still pending."
    # A second flush with nothing new still says where the store stands, not "Sent 0".
    out = kernel.ok("%trace flush --timeout 10").stdout
    assert out.strip() == f"All 3 spans delivered to 127.0.0.1:{receiver.port} (0 by this flush); 0 failed; 0 still pending."
    receiver.default = Delay(30)
    kernel.ok(THREE_SPANS)
    out = kernel.ok("%trace flush --timeout 0.5").stdout
    assert "3 spans delivered" in out and "3 of 6 still pending: no answer in time" in out, out
    assert "they are on disk and keep being retried." in out, out


def test_status_without_widgets_is_text_and_html(loaded):
    loaded.ok("%config TraceExt.widget = False")
    [display] = loaded.ok("%trace status").displays
    assert WIDGET_MIME not in display["data"]
    assert display["data"]["text/plain"].startswith("trace_ext: ")
    assert "<b>trace_ext</b>" in display["data"]["text/html"]


def test_terminal_ipython_gets_a_text_status(tmp_path):
    env = clean_env(TRACE_EXT_STORE_PATH=str(tmp_path / "s.sqlite3"), IPYTHONDIR=str(tmp_path / "ipy"))
    out = subprocess.run(
        [sys.executable, "-m", "IPython", "--no-banner", "--colors=nocolor", "-c",
         "%load_ext trace_ext\n%trace status"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("trace_ext: Recording locally — 0 spans stored locally") == 2
    assert "Traceback" not in out.stdout + out.stderr


def test_every_rendering_carries_the_same_status():
    status = DeliveryStatus(destination="cloud.example:443", state="retrying", pending=2, sent=5, failed=1,
                            last_error="cloud.example:443 answered HTTP 503; retrying.")
    bundle = StatusDisplay(status, use_widget=False)._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html"}
    for text in bundle.values():
        assert "2 pending · 5 sent · 1 failed" in text and "cloud.example:443" in text
        assert "HTTP 503" in text and "retrying" in text


def test_each_state_reads_at_a_glance():
    from trace_ext._display import states

    now = 1_000_000.0

    def line(sending_since=None, **traits) -> str:
        status = DeliveryStatus(destination="h:1", **traits)
        status.sending_since = sending_since  # after the state: it starts the clock itself
        return states.text(states.read(status, now=now))

    assert "Ready — Nothing recorded yet" in line(state="idle")  # not a green "delivered" at 0 sent
    assert "All 12 spans delivered to h:1, the last one 2 s ago" in line(state="idle", sent=12, last_delivery=now - 2)
    retrying = line(state="retrying", pending=3, attempts=2, next_try=now + 4, last_error="h:1 answered HTTP 503; retrying.")
    assert "HTTP 503" in retrying and "3 spans safe on disk; next try in 4 s (attempt 3)" in retrying
    # Between tries the sender is "sending": still read as retrying, not as all well.
    assert "Retrying" in line(state="sending", pending=3, attempts=2, last_error="x")
    waiting = line(state="sending", pending=3, sending_since=now - 3)
    assert "Waiting for an answer from h:1 for 3 s; 3 spans safe on disk" in waiting
    assert "Sending 3 spans" in line(state="sending", pending=3, sending_since=now - 1)
    paused = line(state="paused", pending=2, last_error="h:1 rejected the credentials (HTTP 401). Set %config TraceExt.headers.")
    assert "Paused for credentials" in paused and "2 spans safe on disk" in paused and "[paused]" in paused
    failed = line(state="idle", sent=3, failed=2, last_error="h:1 refused the span (HTTP 400).")
    assert "2 spans failed: h:1 refused the span (HTTP 400). `%trace retry` sends them again" in failed
    assert "are sent the next time trace_ext loads" in line(state="stopped", pending=4)
    # The saved flavour is read later: clock times and the moment of the last update, never "ago".
    saved = states.text(states.read(DeliveryStatus(destination="h:1", state="idle", sent=1, last_delivery=now - 2),
                                    now=now, live=False), live=False)
    assert "ago" not in saved and "the last one at " in saved and "status as of" in saved


def test_backlog_bar_counts_the_current_backlog_only():
    from trace_ext._display import states

    status = DeliveryStatus(destination="h:1", state="sending", sent=1000)
    status.pending = 10  # a new backlog begins: the 1000 sent earlier are not part of it
    status.sent += 4
    status.pending = 6
    assert states.read(status).backlog == (4, 10)
    status.pending = 0
    status.state = "idle"
    assert states.read(status).backlog is None  # no bar without a backlog


def test_load_ext_again_shows_the_status_and_the_saved_copy_follows(start_kernel, receiver):
    kernel = start_kernel(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.base_url)
    first = kernel.ok("%load_ext trace_ext")
    [widget, saved] = first.displays
    assert WIDGET_MIME in widget["data"] and WIDGET_MIME not in saved["data"]
    display_id = saved["transient"]["display_id"]
    kernel.ok(THREE_SPANS)

    def saved_updated() -> bool:
        return any(
            m["msg_type"] == "update_display_data" and m["content"]["transient"]["display_id"] == display_id
            and "0 pending · 3 sent · 0 failed" in m["content"]["data"]["text/plain"]
            for m in kernel.messages
        )

    assert kernel.wait_for(saved_updated, timeout=20)  # the notebook file keeps the delivered counts
    again = kernel.ok("%load_ext trace_ext")
    assert "already loaded" not in again.stdout
    assert [WIDGET_MIME in d["data"] for d in again.displays] == [True, False]
    assert "0 pending · 3 sent · 0 failed" in again.displays[1]["data"]["text/plain"]
