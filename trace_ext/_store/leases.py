"""Who holds a lease, and taking over the leases of a kernel that died.

A claimed span carries ``lease_owner`` ("<hostname>:<pid>") next to its
``lease_until``, and the small ``leases`` table keeps one row per owner: its
host, pid, pid namespace, and the end of the latest lease it granted itself.
A kernel killed mid-request (SIGKILL, OOM) leaves its batch leased; without
this, the next kernel could send it only when the lease ran out (up to 30 s).

:func:`take_over_dead` frees the leases of owners on this host, in this pid
namespace, whose process no longer exists. It reads only the ``leases`` table
(a handful of rows) and the partial index of leased spans, so it costs the
same with 100,000 pending spans; the store still runs it at most every
``LEASE_CHECK_INTERVAL`` seconds. A live owner's lease is never taken over,
so two kernels sharing a store never send a span twice at once. When in doubt
(another host, another container, a pid reused since), the lease just runs out.
"""

from __future__ import annotations

import os
import socket
import sqlite3
from typing import NamedTuple

from .schema import SpanState

__all__ = ["LEASE_CHECK_INTERVAL", "Owner", "alive", "ensure_schema", "record_lease", "take_over_dead", "this_owner"]

LEASE_CHECK_INTERVAL = 5.0  # seconds between looks for leases of dead kernels

_LEASES = """
CREATE TABLE IF NOT EXISTS leases (
    owner TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, ns TEXT NOT NULL, until REAL NOT NULL
);
"""


class Owner(NamedTuple):
    host: str
    pid: int
    ns: str  # the pid namespace ("" where unknown): pids of another container mean nothing here

    @property
    def name(self) -> str:
        return f"{self.host}:{self.pid}"


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def this_owner() -> Owner:
    """This process, as a lease owner. Looked up at every claim, not cached: a forked child is another owner."""
    return Owner(socket.gethostname(), os.getpid(), _pid_namespace())


def alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (in our pid namespace)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, but it exists
    return True


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Add what leases need to a store (new, or from a release before lease owners)."""
    conn.executescript(_LEASES)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(spans)")}
    if "lease_owner" not in columns:
        try:
            conn.execute("ALTER TABLE spans ADD COLUMN lease_owner TEXT")
        except sqlite3.OperationalError as exc:
            if "duplicate column" not in str(exc):  # another kernel added it just now
                raise
    # Partial: only spans leased right now are in it (finishing or releasing clears the owner).
    conn.execute("CREATE INDEX IF NOT EXISTS spans_by_lease_owner ON spans(lease_owner) WHERE lease_owner IS NOT NULL")


def record_lease(conn: sqlite3.Connection, owner: Owner, until: float) -> None:
    """Note (inside the claim's transaction) that ``owner`` holds leases up to ``until``."""
    conn.execute(
        "INSERT INTO leases(owner, host, pid, ns, until) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT(owner) DO UPDATE SET ns = excluded.ns, until = max(until, excluded.until)",
        (owner.name, owner.host, owner.pid, owner.ns, until),
    )


def take_over_dead(conn: sqlite3.Connection, me: Owner, now: float) -> int:
    """Inside a write transaction: free the spans leased by dead kernels of this host; how many.

    Only leases the dead owner granted itself are freed (``lease_until`` up to its
    last lease's end): a span that an older release of trace_ext (which writes no
    owner) claimed after the dead kernel's lease ran out still has the dead kernel's
    name in ``lease_owner``, but a later ``lease_until``, and is left alone.
    """
    conn.execute("DELETE FROM leases WHERE until <= ?", (now,))  # run out: nothing left to take over
    freed = 0
    rows = conn.execute("SELECT owner, pid, until FROM leases WHERE host = ? AND ns = ? AND pid != ?",
                        (me.host, me.ns, me.pid)).fetchall()
    for owner, pid, until in rows:
        if alive(pid):
            continue
        cur = conn.execute(
            "UPDATE spans SET lease_until = 0, lease_owner = NULL"
            " WHERE lease_owner = ? AND state = ? AND lease_until > ? AND lease_until <= ?",
            (owner, SpanState.PENDING, now, until),
        )
        freed += cur.rowcount
        conn.execute("DELETE FROM leases WHERE owner = ?", (owner,))
    return freed
