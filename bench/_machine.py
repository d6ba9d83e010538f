"""What the benchmark prints about the machine, its load and the versions it ran with."""

from __future__ import annotations

import importlib.metadata
import os
import platform

__all__ = ["header_lines", "load_line", "machine_line", "version"]

# The distributions whose versions decide the numbers.
DISTRIBUTIONS = (
    "trace_ext", "opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http", "langfuse",
    "ipython", "ipykernel", "jupyter_client", "httpx", "protobuf",
)


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> str:
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 2**20:.0f} GB RAM"
    except OSError:
        pass
    return "RAM unknown"


def machine_line() -> str:
    """``- machine: <platform> (<arch>), <CPU model>, <n> CPUs, <RAM>``."""
    return (
        f"- machine: {platform.platform()} ({platform.machine()}), {_cpu_model()}, "
        f"{os.cpu_count()} CPUs, {_memory_gb()}"
    )


def load_line(when: str) -> str:
    """The load average now: other helpers' tests share the machine, so every table says it."""
    one, five, fifteen = os.getloadavg()
    return f"- load average {when}: {one:.2f} (1 min), {five:.2f} (5 min), {fifteen:.2f} (15 min)"


def header_lines() -> list[str]:
    versions = ", ".join(f"{d} {version(d)}" for d in DISTRIBUTIONS)
    return [
        machine_line(),
        f"- Python {platform.python_version()} ({platform.python_implementation()})",
        f"- versions: {versions}",
    ]
