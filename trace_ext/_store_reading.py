"""Reading the store: counts by state, a batch's origins, and the last traces for ``%trace show``."""

from __future__ import annotations

from typing import Iterable, NamedTuple

from ._store_schema import FAILED, LOCAL, PENDING, SENT, origins_in, split_ids

__all__ = ["Counts", "Reading", "StoredSpan"]


class Counts(NamedTuple):
    local: int = 0
    pending: int = 0
    sent: int = 0
    failed: int = 0


class StoredSpan(NamedTuple):
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    start_ns: int
    end_ns: int
    status: int
    state: str
    error: str | None
    payload: bytes


class Reading:
    """Mixin for :class:`SpanStore`: queries that change nothing."""

    def origins(self, ids: Iterable[int]) -> dict[int, tuple[bytes, bytes]]:
        wanted = sorted(set(ids))
        found: dict[int, tuple[bytes, bytes]] = {}
        for in_memory, part in split_ids(wanted):
            if in_memory:
                with self._guard:
                    if self._memory is not None:
                        found.update(origins_in(self._memory, part))
            else:
                found.update(origins_in(self._disk(), part))
        return found

    def counts(self) -> Counts:
        with self._use() as conn:
            rows = conn.execute("SELECT state, COUNT(*) FROM spans GROUP BY state").fetchall()
        by_state = dict(rows)
        return Counts(*(by_state.get(s, 0) for s in (LOCAL, PENDING, SENT, FAILED)))

    def pending(self) -> int:
        with self._use() as conn:
            return conn.execute("SELECT COUNT(*) FROM spans WHERE state = ?", (PENDING,)).fetchone()[0]

    def recent_traces(self, limit: int, since: float = 0.0) -> list[list[StoredSpan]]:
        """The spans of the ``limit`` most recently recorded traces, oldest trace first.

        ``since`` (epoch seconds) leaves out traces recorded before it.
        """
        with self._use() as conn:
            trace_ids = [
                row[0]
                for row in conn.execute(
                    "SELECT trace_id FROM spans GROUP BY trace_id HAVING MAX(recorded_at) >= ?"
                    " ORDER BY MAX(id) DESC LIMIT ?",
                    (since, limit),
                )
            ]
            traces = []
            for trace_id in reversed(trace_ids):
                rows = conn.execute(
                    "SELECT trace_id, span_id, parent_id, name, start_ns, end_ns, status, state,"
                    " error, payload FROM spans WHERE trace_id = ? ORDER BY start_ns, id",
                    (trace_id,),
                ).fetchall()
                traces.append([StoredSpan(*row) for row in rows])
        return traces
