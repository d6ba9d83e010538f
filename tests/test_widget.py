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
