"""The store's file: creating it privately, telling a file that can't be used
from a bug or a busy lock, and moving a damaged file aside. Imports nothing of trace_ext.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from contextlib import suppress

__all__ = ["damaged", "move_aside", "private_file", "storage_failure"]

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
