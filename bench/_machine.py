"""What the benchmarks print about the machine and the versions they ran with."""

from __future__ import annotations

import importlib.metadata
import os
import platform

__all__ = ["machine_line", "version"]


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


def machine_line() -> str:
    """``- machine: <platform> (<arch>), <CPU model>, <n> CPUs``, the first line of every table's notes."""
    return f"- machine: {platform.platform()} ({platform.machine()}), {_cpu_model()}, {os.cpu_count()} CPUs"
