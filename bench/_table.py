"""Summaries of samples and the one table shape every question prints."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["Cell", "median", "p95", "summary", "table"]


def median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return (ordered[(n - 1) // 2] + ordered[n // 2]) / 2


def p95(values: list[float]) -> float:
    """Nearest-rank 95th percentile."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(0.95 * len(ordered))) - 1]


def _num(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _ratio(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if value >= 0.1 else f"{value:.3f}"


def summary(values: list[float], spread: str = "range") -> str:
    """``median (min–max)`` for a few rounds, ``median / p95`` for many samples."""
    if not values:
        return "–"
    if len(values) == 1:
        return _num(values[0])
    if spread == "p95":
        return f"{_num(median(values))} / {_num(p95(values))}"
    return f"{_num(median(values))} ({_num(min(values))}–{_num(max(values))})"


@dataclass
class Cell:
    """One measured cell of a table: samples (or a text saying why there are none)."""

    samples: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def value(self) -> float | None:
        return median(self.samples) if self.samples else None


def table(
    title: str,
    unit: str,
    columns: list[str],
    rows: list[tuple[str, list[Cell]]],
    spread: str = "range",
    reference: set[str] | None = None,
    extra: dict[str, list[str]] | None = None,
    extra_columns: list[str] | None = None,
) -> str:
    """A Markdown table: per column, the summary and the ratio to the best peer.

    The best peer of a column is the row with the lowest median among the rows
    named in ``reference`` (default: every row whose name does not start with
    "trace_ext"); a ratio of 1.00 is that peer itself.
    """
    names = [name for name, _ in rows]
    ref = reference if reference is not None else {n for n in names if not n.startswith("trace_ext")}
    best: list[float | None] = []
    for index in range(len(columns)):
        values = [cells[index].value for name, cells in rows if name in ref and cells[index].value is not None]
        best.append(min(values) if values else None)
    label = "median / p95" if spread == "p95" else "median (min–max)"
    head = ["set-up"]
    for column in columns:
        head += [f"{column}: {label} {unit}", "× best peer"]
    head += extra_columns or []
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, cells in rows:
        out = [name]
        for index, cell in enumerate(cells):
            if cell.value is None:
                out += [cell.note or "–", ""]
                continue
            text = summary(cell.samples, spread) + (f" {cell.note}" if cell.note else "")
            ratio = _ratio(cell.value / best[index]) if best[index] else "–"
            out += [text, ratio]
        out += [""] * (1 + 2 * len(columns) - len(out))
        out += (extra or {}).get(name, [""] * len(extra_columns or []))
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines)
