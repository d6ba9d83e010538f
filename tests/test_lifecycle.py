"""Section 2: loading, unloading and reloading the extension in a real kernel."""

from __future__ import annotations

from collections import Counter

from .conftest import journals_imported, wait_until

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"

# Records exit handlers as they are registered (atexit can't be listed), so a
# test can count the ones trace_ext left registered.
TRACK_ATEXIT = """
import atexit
_registered = []
_register, _unregister = atexit.register, atexit.unregister
def _tracking_register(fn, *args, **kwargs):
    _registered.append(fn)
    return _register(fn, *args, **kwargs)
def _tracking_unregister(fn):
    while fn in _registered:
        _registered.remove(fn)
    return _unregister(fn)
atexit.register, atexit.unregister = _tracking_register, _tracking_unregister
"""

# Counts everything trace_ext puts into a shell, so a test can compare before and after.
INVENTORY = """
import threading, json
ip = get_ipython()
def _ours(cb):
    return type(getattr(cb, "__self__", None)).__module__.startswith("trace_ext")
def _layers(method):
    return 0 if not hasattr(method, "__wrapped__") else 1 + _layers(method.__wrapped__)
from opentelemetry import trace as _t
_p = _t.get_tracer_provider()
_procs = getattr(getattr(_p, "_active_span_processor", None), "_span_processors", ())
print(json.dumps({
    "pre": sum(map(_ours, ip.events.callbacks["pre_run_cell"])),
    "post": sum(map(_ours, ip.events.callbacks["post_run_cell"])),
    # Shell methods wrapped (run_body_as_cell, watch_error_reports), layers of wrapping counted.
    "wrapped": sum(_layers(getattr(o, n)) for o, n in [
        (ip, "transform_cell"), (ip, "showtraceback"), (ip, "showsyntaxerror"),
        (ip.history_manager, "store_inputs"),
    ]),
    "line_magic": "trace" in ip.magics_manager.magics["line"],
    "cell_magic": "trace" in ip.magics_manager.magics["cell"],
    "config_magic_ours": hasattr(ip.magics_manager.magics["line"]["config"], "__wrapped__"),
    "configurable": sum(type(c).__name__ == "TraceExt" for c in ip.configurables),
    "senders": sum(t.name == "trace_ext-sender" and t.is_alive() for t in threading.enumerate()),
    "processors": sum(type(p).__module__.startswith("trace_ext") for p in _procs),
    "atexit": sum(_ours(fn) for fn in _registered),
}))
"""


def inventory(kernel) -> dict:
    import json

    kernel.ok("try:\n    _registered\nexcept NameError:\n" + "\n".join("    " + l for l in TRACK_ATEXIT.splitlines()))
    return json.loads(kernel.ok(INVENTORY).stdout)


def test_import_alone_starts_no_thread_file_or_socket(store_path):
    import subprocess
    import sys

    probe = (
        "import os, threading, json\n"
        "def link(fd):\n"
        "    try:\n"
        "        return os.readlink(f'/proc/self/fd/{fd}')\n"
        "    except OSError:\n"
        "        return None  # the descriptor listdir itself used\n"
        "def state():\n"
        "    links = [link(fd) for fd in os.listdir('/proc/self/fd')]\n"
        "    return [sorted(filter(None, links)), len(threading.enumerate())]\n"
        "before = state()\n"
        "import trace_ext, trace_ext._extension\n"
        "print(json.dumps([before, state()]))\n"
    )
    env = {"TRACE_EXT_STORE_PATH": str(store_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    before, after = __import__("json").loads(out.stdout)
    assert after == before
    assert not store_path.parent.exists()


def test_load_registers_hooks_magics_exit_handler_and_one_widget(kernel, store_path):
    assert inventory(kernel)["atexit"] == 0
    loaded = kernel.ok("%load_ext trace_ext")
    widgets = [d for d in loaded.displays if WIDGET_MIME in d["data"]]
    assert len(widgets) == 1, loaded.displays
    # Beside the widget, its saved copy: the one text a console prints.
    [saved] = [d for d in loaded.displays if WIDGET_MIME not in d["data"]]
    assert "stored locally" in saved["data"]["text/plain"]
    assert "text/html" in saved["data"] and "text/plain" not in widgets[0]["data"]
    state = inventory(kernel)
    assert state == {
        "pre": 1, "post": 1, "wrapped": 4, "line_magic": True, "cell_magic": True,
        "config_magic_ours": True, "configurable": 1, "senders": 1, "processors": 1,
        "atexit": 1,
    }
    assert store_path.exists()
    # The next cells don't display the widget again.
    assert kernel.ok("1 + 1").displays == []


def test_unload_removes_everything_and_stops_the_sender(kernel):
    inventory(kernel)
    kernel.ok("%load_ext trace_ext")
    kernel.ok("%%trace\n'before unload'")
    kernel.ok("%unload_ext trace_ext")
    state = inventory(kernel)
    assert state == {
        "pre": 0, "post": 0, "wrapped": 0, "line_magic": False, "cell_magic": False,
        "config_magic_ours": False, "configurable": 0, "senders": 0,
        # The SDK can't remove a processor; ours stays attached but inert (see below).
        "processors": 1, "atexit": 0,
    }
    gone = kernel.execute("%trace status")
    assert gone.status == "error" and gone.reply["ename"] == "UsageError"
    # The span recorded before unloading was saved.
    kernel.ok("%load_ext trace_ext")
    assert "'before unload'" in kernel.ok("%trace show 1").text()


def test_three_reloads_leave_one_set_of_hooks_and_one_sender(kernel, store_path):
    loaded = kernel
    inventory(loaded)
    loaded.ok("%load_ext trace_ext")
    for _ in range(3):
        loaded.ok("%reload_ext trace_ext")
    state = inventory(loaded)
    assert state == {
        "pre": 1, "post": 1, "wrapped": 4, "line_magic": True, "cell_magic": True,
        "config_magic_ours": True, "configurable": 1, "senders": 1, "processors": 1,
        "atexit": 1,
    }
    loaded.ok("%%trace once\nfrom opentelemetry import trace\ntrace.get_tracer('t').start_span('inner').end()")
    from trace_ext._store.store import SpanStore

    assert wait_until(lambda: journals_imported(store_path), 20)  # the saver thread imports just after the cell

    store = SpanStore(str(store_path))
    [spans] = store.recent_traces(1)
    assert sorted(s.name for s in spans) == ["inner", "once"]  # each span recorded once
    store.close()


def test_a_failing_hook_shows_in_the_widget_not_in_the_cell(loaded):
    loaded.ok(
        "from trace_ext._extension import active\n"
        "def _broken(result):\n    raise RuntimeError('simulated hook failure')\n"
        "active().cells.post_run_cell = _broken"
    )
    run = loaded.ok("%%trace\n40 + 2")
    assert run.result["data"]["text/plain"] == "42"
    assert run.stderr == "" and run.errors == []
    assert "Traceback" not in run.text()
    status = loaded.ok("%trace status")
    assert "simulated hook failure" in status.displays[-1]["data"]["text/plain"]
    assert any("simulated hook failure" in label for label in loaded.status_labels())


def test_an_existing_tracer_provider_is_reused_not_replaced(kernel, store_path):
    kernel.ok(
        "from opentelemetry import trace\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from opentelemetry.sdk.trace.export import SimpleSpanProcessor\n"
        "from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter\n"
        "mine = TracerProvider()\n"
        "exported = InMemorySpanExporter()\n"
        "mine.add_span_processor(SimpleSpanProcessor(exported))\n"
        "trace.set_tracer_provider(mine)"
    )
    kernel.ok("%load_ext trace_ext")
    kernel.ok("%%trace shared\n1")
    assert kernel.value("trace.get_tracer_provider() is mine") is True
    # The user's own exporter still sees the cell's span, and so does the store.
    assert kernel.value("[s.name for s in exported.get_finished_spans()]") == ["shared"]
    from trace_ext._store.store import SpanStore

    assert wait_until(lambda: journals_imported(store_path), 20)

    store = SpanStore(str(store_path))
    assert [s.name for [s] in store.recent_traces(5)] == ["shared"]
    store.close()


def test_reset_aggressive_then_reload_keeps_one_extension_and_delivers_every_span(start_kernel, receiver, store_path):
    # %reset --aggressive culls every module imported since start-up, trace_ext's too, while it
    # stays loaded: fresh copies of protobuf's classes crashed the kernel, a fresh opentelemetry
    # lost the library spans, and %reload_ext loaded a second trace_ext beside the first.
    from .test_faults import CELL, SETUP, assert_accounted, flushed, traced_kernel

    kernel = traced_kernel(start_kernel, receiver)
    kernel.ok(CELL.format(name="before"))
    produced = kernel.value("_ids")
    flushed(kernel)
    kernel.ok("%reset -f --aggressive")
    # The modules the loaded trace_ext runs on (httpcore: imported by the first send) are still the ones in use.
    kept = kernel.value(
        "[m in __import__('sys').modules for m in ('trace_ext._otlp', 'google.protobuf.message',"
        " 'opentelemetry.proto.trace.v1.trace_pb2', 'opentelemetry.trace', 'httpcore')]"
    )
    assert kept == [True] * 5, kept
    kernel.ok("%reload_ext trace_ext")
    kernel.ok(f"%config TraceExt.endpoint = {receiver.url!r}")
    kernel.ok(SETUP)
    for i in range(3):
        kernel.ok(CELL.format(name=f"after-{i}"))
    produced += kernel.value("_ids")
    flushed(kernel)
    assert kernel.km.is_alive()
    hooks = kernel.value(
        "[sum(type(getattr(cb, '__self__', None)).__module__.startswith('trace_ext')"
        " for cb in get_ipython().events.callbacks['post_run_cell']),"
        " sum(t.name == 'trace_ext-sender' and t.is_alive() for t in __import__('threading').enumerate())]"
    )
    assert hooks == [1, 1], f"post_run_cell hooks, live senders: {hooks}"
    assert len(produced) == 8
    assert assert_accounted(store_path, receiver, produced) == Counter(sent=8)
