"""The store's file: creating it privately, opening it (:func:`open_store`), telling
a file that can't be used from a bug or a busy lock, and moving a damaged file aside.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from contextlib import suppress
from typing import TYPE_CHECKING

from IPython.core.error import UsageError

if TYPE_CHECKING:
    from ._store import SpanStore

__all__ = ["damaged", "move_aside", "open_store", "private_file", "storage_failure"]

log = logging.getLogger("trace_ext")

# SQLite result codes (primary) that mean "the file can't take writes": fall back to memory.
_STORAGE_CODES = {8: "SQLITE_READONLY", 10: "SQLITE_IOERR", 11: "SQLITE_CORRUPT", 13: "SQLITE_FULL",
                  14: "SQLITE_CANTOPEN", 26: "SQLITE_NOTADB"}
_DAMAGED_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB


def storage_failure(exc: BaseException) -> bool:
    """Whether ``exc`` means the store's file can't be used (rather than a bug or a busy lock)."""
    if isinstance(exc, OSError):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.Error) and code is not None and (code & 0xFF) in _STORAGE_CODES


def damaged(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.DatabaseError) and code is not None and (code & 0xFF) in _DAMAGED_CODES


def private_file(path: str) -> None:
    """Create the store's folder (0700) and file (0600): spans hold cell inputs and outputs."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)


def move_aside(path: str) -> str:
    """Rename a damaged store (and its write-ahead log) out of the way; returns the new name."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = f"{path}.corrupt-{stamp}"
    n = 1
    while os.path.exists(target):
        n += 1
        target = f"{path}.corrupt-{stamp}-{n}"
    os.replace(path, target)
    if os.path.exists(path + "-wal"):
        os.replace(path + "-wal", target + "-wal")
    with suppress(FileNotFoundError):
        os.remove(path + "-shm")  # only an index of the log: rebuilt from it
    return target


def open_store(path: str, fallback: bool = False) -> SpanStore:
    """Open (or create) the store.

    A damaged file ("file is not a database", "malformed") is moved aside and a
    new store started; ``store.notice`` then says so. When the file can't be
    used at all, ``fallback`` opens the store in memory (``store.warning``
    says why); without it, a ``UsageError`` says in one sentence what to do.
    """
    from ._store import SpanStore  # here, not at the top: _store imports this module

    notice = ""
    try:
        try:
            store = SpanStore(path)
            try:
                store.counts()  # reads the state index: most damage shows up here
            except BaseException:
                store.close()
                raise
        except sqlite3.DatabaseError as exc:
            if not damaged(exc):
                raise
            moved = move_aside(path)
            notice = (
                f"trace_ext's span store {path} was damaged ({exc}), so it was moved to {moved} "
                "and a new, empty store was started in its place."
            )
            log.warning("%s", notice)
            store = SpanStore(path)
    except (OSError, sqlite3.Error) as exc:
        if not fallback:
            raise UsageError(
                f"trace_ext can't use {path} as its span store ({exc}); set TraceExt.store_path "
                "or TRACE_EXT_STORE_PATH to a file in a writable folder."
            ) from None
        store = SpanStore(path, in_memory=exc)
    store.notice = notice
    return store
