"""A real Jupyter kernel for tests: start it, run code, read what it published.

Plain functions and one small class, in the spirit of ipykernel's own test
utilities. Every iopub message is collected by a reader thread, because the
trace_ext sender publishes widget updates between cells.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any, Callable

from jupyter_client.manager import KernelManager

KERNEL_NAME = "trace-ext-tests"


def kernelspec_dir() -> str:
    """A JUPYTER_PATH entry whose kernelspec runs *this* interpreter (not whatever 'python3' is)."""
    root = Path(tempfile.mkdtemp(prefix="trace-ext-kernels-"))
    spec = root / "kernels" / KERNEL_NAME
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "trace_ext tests",
                "language": "python",
            }
        )
    )
    return str(root)


@dataclass
class Execution:
    reply: dict
    messages: list[dict] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.reply["status"]

    def _of(self, kind: str) -> list[dict]:
        return [m["content"] for m in self.messages if m["msg_type"] == kind]

    @property
    def stdout(self) -> str:
        return "".join(c["text"] for c in self._of("stream") if c["name"] == "stdout")

    @property
    def stderr(self) -> str:
        return "".join(c["text"] for c in self._of("stream") if c["name"] == "stderr")

    @property
    def result(self) -> dict | None:
        results = self._of("execute_result")
        return results[0] if results else None

    @property
    def displays(self) -> list[dict]:
        return self._of("display_data")

    @property
    def errors(self) -> list[dict]:
        return self._of("error")

    def text(self) -> str:
        """Everything a user would read: streams, results, displays (text/plain), errors."""
        parts = []
        for m in self.messages:
            c, kind = m["content"], m["msg_type"]
            if kind == "stream":
                parts.append(c["text"])
            elif kind in ("execute_result", "display_data"):
                parts.append(c["data"].get("text/plain", ""))
            elif kind == "error":
                parts.append("\n".join(c["traceback"]))
        return "\n".join(parts)


class Kernel:
    """One running kernel with a client and an iopub reader thread."""

    def __init__(
        self, env: dict[str, str] | None = None, cwd: str | None = None, kernel_name: str = KERNEL_NAME,
        **launch: Any,
    ) -> None:
        self.km = KernelManager(kernel_name=kernel_name)
        full_env = {**os.environ, **(env or {})}
        # launch: Popen options for the kernel process, e.g. stderr=<file> to read its log.
        self.km.start_kernel(env=full_env, cwd=cwd, **launch)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        self._messages: list[dict] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self.kc.get_iopub_msg(timeout=0.2)
            except Empty:
                continue
            except Exception:
                return
            with self._cond:
                self._messages.append(msg)
                self._cond.notify_all()

    @property
    def messages(self) -> list[dict]:
        with self._cond:
            return list(self._messages)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 20) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.25))
        return True

    def execute(self, code: str, timeout: float = 60, **kwargs: Any) -> Execution:
        msg_id = self.kc.execute(code, **kwargs)
        deadline = time.monotonic() + timeout
        reply = None
        while reply is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no reply within {timeout} s to {code[:80]!r}")
            try:
                msg = self.kc.get_shell_msg(timeout=remaining)
            except Empty:
                continue
            if msg["parent_header"].get("msg_id") == msg_id:
                reply = msg["content"]

        def idle() -> bool:
            return any(
                m["msg_type"] == "status"
                and m["content"]["execution_state"] == "idle"
                and m["parent_header"].get("msg_id") == msg_id
                for m in self._messages
            )

        if not self.wait_for(idle, max(deadline - time.monotonic(), 1)):
            raise TimeoutError(f"kernel never went idle after {code[:80]!r}")
        own = [
            m for m in self.messages
            if m["parent_header"].get("msg_id") == msg_id and m["msg_type"] != "status"
            and m["msg_type"] != "execute_input"
        ]
        return Execution(reply, own)

    def ok(self, code: str, **kwargs: Any) -> Execution:
        """Execute and insist it succeeded; the failure message shows what the user saw."""
        result = self.execute(code, **kwargs)
        assert result.status == "ok", f"{code!r} failed:\n{result.text()}"
        return result

    def value(self, expression: str) -> Any:
        """Evaluate in the kernel and bring the value back (via JSON on stdout)."""
        out = self.ok(f"import json as _j; print(_j.dumps({expression}))").stdout
        return json.loads(out)

    def widget_states(self) -> dict[str, dict]:
        """Every widget's state as the frontend would have it: comm_open plus updates."""
        states: dict[str, dict] = {}
        for m in self.messages:
            c = m["content"]
            if m["msg_type"] == "comm_open" and c.get("target_name") == "jupyter.widget":
                states[c["comm_id"]] = dict(c["data"].get("state", {}))
            elif m["msg_type"] == "comm_msg" and c["comm_id"] in states:
                data = c.get("data", {})
                if data.get("method") == "update":
                    states[c["comm_id"]].update(data.get("state", {}))
        return states

    def label_history(self) -> list[str]:
        """Every value the trace_ext status labels took, in the order the frontend saw them."""
        labels: set[str] = set()
        history = []
        for m in self.messages:
            c = m["content"]
            state = c.get("data", {}).get("state", {})
            if m["msg_type"] == "comm_open" and state.get("_model_name") == "HTMLModel":
                labels.add(c["comm_id"])
            elif not (m["msg_type"] == "comm_msg" and c.get("comm_id") in labels):
                continue
            if "trace_ext" in state.get("value", ""):
                history.append(state["value"])
        return history

    def status_labels(self) -> list[str]:
        """The values of trace_ext status labels (HTML widgets that start with 'trace_ext')."""
        return [
            s["value"] for s in self.widget_states().values()
            if s.get("_model_name") == "HTMLModel" and "trace_ext" in s.get("value", "")
        ]

    def shutdown(self, now: bool = False) -> None:
        self._stop.set()
        try:
            self.kc.stop_channels()
        finally:
            if self.km.has_kernel:
                self.km.shutdown_kernel(now=now)

    def pid(self) -> int:
        return self.km.provisioner.pid  # type: ignore[union-attr]


def counts_in(label: str) -> tuple[int, int, int] | None:
    """(pending, sent, failed) from a status label, or None if it shows no counts."""
    match = re.search(r"(\d+) pending · (\d+) sent · (\d+) failed", label)
    return tuple(int(g) for g in match.groups()) if match else None  # type: ignore[return-value]
