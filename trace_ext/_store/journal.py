"""The journal: a kernel's own append-only file of ended spans, beside the store.

Saving a batch is one ``os.write`` of one frame to this kernel's journal file:
no lock another process can hold, no transaction, microseconds per span. Once
``write`` returns the bytes are the operating system's, so the spans survive
the kernel being killed (``kill -9``, the OOM killer), as a SQLite commit with
``synchronous=NORMAL`` does; only a power cut may lose the last ones.

The store then *imports* the journal: one SQLite transaction inserts the
frames past the file's imported offset and moves that offset on (the
``journals`` table), so an import is all or nothing and never happens twice,
whoever runs it -- this kernel's saver thread, its post-cell hook, or the next
kernel on the store importing what a dead one left. A frame cut short (the
kernel killed inside ``write``) or damaged fails its length or checksum and is
never imported.

Files sit beside the store (0600), one name per kernel and file:
``<store>.j-<host>~<pid>~<random>~<n>.journal``. A fully imported file is removed by its
own kernel (which then starts file ``n + 1``), or by any kernel of the same
host once its owner's process is gone.

Frame: ``magic, body length, crc32(body)`` then the body, ``marshal`` of
``(state, origins, rows)``: each distinct (resource, scope) pair once per frame.
A row is a span as plain data (``_otlp.snapshot``): saving is only that, and
encoding into OTLP waits for the import, which runs on the saver thread (or
in the next kernel), never in the cell. Frames of the first format
(``TXJ1``, rows already encoded) are still read.
"""

from __future__ import annotations

import marshal
import os
import socket
import struct
import uuid
import zlib
from typing import Iterator, Sequence

from .._otlp import Snapshot, SpanRecord, encode_snapshot

__all__ = ["Journal", "journal_files", "journal_prefix", "owner_gone", "owner_of", "read_at", "read_frames", "stem_of"]

_MAGIC = b"TXJ2"  # rows are snapshots
_ENCODED = b"TXJ1"  # rows are encoded SpanRecords (journals of trace_ext before snapshots)
_HEADER = struct.Struct("<4sII")
# Bytes of journal one import transaction reads at most (a frame may exceed it): about
# 3,000 small spans, tens of ms of the write lock, which the sender's marks need too.
MAX_READ = 2**20


def journal_prefix(store_path: str) -> str:
    """What every journal file of this store starts with (a path).

    Not ``<store>-journal``: that name is SQLite's own rollback journal.
    """
    return os.path.abspath(store_path) + ".j-"


def journal_files(store_path: str) -> list[str]:
    """The journal files of this store, oldest name first."""
    prefix = journal_prefix(store_path)
    folder, start = os.path.split(prefix)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(os.path.join(folder, n) for n in names if n.startswith(start) and n.endswith(".journal"))


def encode_frame(snapshots: Sequence[tuple[Snapshot, bytes, bytes]], state: str) -> bytes:
    """One frame of ``(snapshot, resource, scope)`` triples (see :func:`.._otlp.snapshot`)."""
    origins: dict[bytes, tuple[bytes, bytes]] = {}
    rows = []
    for snap, resource, scope in snapshots:
        digest = snap[-1]
        if digest not in origins:
            origins[digest] = (resource, scope)
        rows.append(snap)
    body = marshal.dumps((str(state), origins, rows), 4)
    return _HEADER.pack(_MAGIC, len(body), zlib.crc32(body)) + body


def read_at(path: str, offset: int) -> bytes:
    """Up to ``MAX_READ`` bytes of the file from ``offset`` (more if its first frame is longer)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return b""
    try:
        data = os.pread(fd, MAX_READ, offset)
        if len(data) >= _HEADER.size:
            magic, length, _crc = _HEADER.unpack_from(data, 0)
            if magic in (_MAGIC, _ENCODED) and _HEADER.size + length > len(data):
                data = os.pread(fd, _HEADER.size + length, offset)
        return data
    finally:
        os.close(fd)


def read_frames(data: bytes) -> Iterator[tuple[int, str, list[SpanRecord]]]:
    """``(end offset in data, state, records)`` for each whole, intact frame at the
    start of ``data``, its spans encoded (the work saving left for the import)."""
    at = 0
    while at + _HEADER.size <= len(data):
        magic, length, crc = _HEADER.unpack_from(data, at)
        end = at + _HEADER.size + length
        if magic not in (_MAGIC, _ENCODED) or end > len(data):
            return  # cut short (or not a frame): nothing after it can be trusted
        body = data[at + _HEADER.size : end]
        if zlib.crc32(body) != crc:
            return
        state, origins, rows = marshal.loads(body)
        if magic == _MAGIC:
            records = [encode_snapshot(snap, *origins[snap[-1]]) for snap in rows]
        else:
            records = [
                SpanRecord(t, s, p, n, b, e, st, o, origins[o][0], origins[o][1], payload)
                for t, s, p, n, b, e, st, o, payload in rows
            ]
        at = end
        yield at, state, records


def owner_of(path: str) -> tuple[str, str]:
    """(host, pid) from a journal file's name."""
    parts = os.path.basename(path).rpartition(".j-")[2].split("~")
    return (parts[0], parts[1]) if len(parts) == 4 else ("", "")


def stem_of(path: str) -> str:
    return path.rsplit("~", 1)[0]


def owner_gone(path: str) -> bool:
    """Whether the kernel that wrote journal file ``path`` is gone (False when unsure)."""
    host, pid_text = owner_of(path)
    if host != socket.gethostname():
        return False  # another machine's (a shared folder): left to it
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


class Journal:
    """This kernel's journal file: append frames; the store imports them (see the module doc).

    Not thread-safe by itself: the saver holds its lock around :meth:`append` and :meth:`rotate`.
    """

    def __init__(self, store_path: str) -> None:
        self.stem = f"{journal_prefix(store_path)}{socket.gethostname()}~{os.getpid()}~{uuid.uuid4().hex[:8]}"
        self._n = 0
        self._fd: int | None = None
        self.abandoned: list[str] = []  # earlier files of this journal, given up after a failed write
        self.path = ""
        self.size = 0
        self._open()

    def _open(self) -> None:
        self._n += 1
        self.path = f"{self.stem}~{self._n}.journal"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.size = 0

    def append(self, snapshots: Sequence[tuple[Snapshot, bytes, bytes]], state: str) -> None:
        """Durable (against a killed process) once this returns; raises OSError (disk full...)."""
        frame = encode_frame(snapshots, state)
        if self._fd is None:
            self._open()
        view = memoryview(frame)
        written = 0
        try:
            while written < len(frame):
                written += os.write(self._fd, view[written:])
        except OSError:
            if written:
                # A frame cut short would hide every later frame of this file: start a new
                # one; this one's whole frames are still imported (see ``abandoned``).
                self.abandoned.append(self.path)
                self.close()
            raise
        self.size += len(frame)

    def rotate(self) -> str | None:
        """Start a new file; the old one's path is returned (for removal once imported)."""
        if self.size == 0:
            return None
        old = self.path
        self.close()
        self._open()
        return old

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def forget_after_fork(self) -> None:
        self._fd = None  # the parent's file: a child never writes it (nor closes the parent's fd)
