"""A full disk for tests: atomic writes of the local store failing at one step.

`full_disk(monkeypatch, step)` makes the temp files of local atomic writes fail with
``ENOSPC`` at ``step``: creating the temp file (``open``), a ``write``, the ``flush``,
``fsync``, ``close``, or the ``replace`` into place. ``match`` limits it to temp files
whose path contains that text.
"""

from __future__ import annotations

import errno
import os
from typing import Any

import pytest

DISK_FULL_STEPS = ("open", "write", "flush", "fsync", "close", "replace")


class FullDisk:
    """The temp file of an atomic write, failing at one step the way a full disk does.

    ``flush`` and ``close`` fail as CPython's buffered files do: ``close`` flushes first
    (failing again when the flush failed) and closes the descriptor anyway.
    """

    def __init__(self, f: Any, step: str) -> None:
        self._f, self._step = f, step

    @staticmethod
    def error() -> OSError:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def write(self, data: Any) -> int:
        if self._step == "write":
            raise self.error()
        return self._f.write(data)

    def flush(self) -> None:
        if self._step == "flush":
            raise self.error()
        self._f.flush()

    def close(self) -> None:
        self._f.close()
        if self._step in ("flush", "close"):
            raise self.error()

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def full_disk(
    monkeypatch: pytest.MonkeyPatch, step: str, match: str | None = None
) -> list[FullDisk]:
    """Make the next atomic writes fail at ``step``; returns the files handed out."""
    files: list[FullDisk] = []
    temps: dict[int, str] = {}  # descriptor -> temp path
    real_open, real_fdopen, real_fsync, real_replace = os.open, os.fdopen, os.fsync, os.replace

    def chosen(path: Any) -> bool:
        text = os.fspath(path)
        return ".tmp-" in text and (match is None or match in text)

    def open_(path: Any, *args: Any, **kw: Any) -> int:
        if step == "open" and chosen(path):
            raise FullDisk.error()
        fd = real_open(path, *args, **kw)
        if chosen(path):
            temps[fd] = os.fspath(path)
        return fd

    def fdopen(fd: int, *args: Any, **kw: Any) -> Any:
        f = real_fdopen(fd, *args, **kw)
        if temps.pop(fd, None) is None:
            return f
        files.append(FullDisk(f, step))
        return files[-1]

    def fsync(fd: int) -> None:
        if any(f.fileno() == fd and not f._f.closed for f in files):
            raise FullDisk.error()
        real_fsync(fd)

    def replace(src: Any, dst: Any, **kw: Any) -> None:
        if chosen(src):
            raise FullDisk.error()
        real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "fdopen", fdopen)
    if step == "fsync":
        monkeypatch.setattr(os, "fsync", fsync)
    if step == "replace":
        monkeypatch.setattr(os, "replace", replace)
    return files
