"""Files a run writes: whole or not at all, never beside another process writing the same run."""
from __future__ import annotations

import errno
import fcntl
import io
import os
import shutil
from pathlib import Path
from typing import Any, TextIO

import torch


class DiskError(OSError):
    """A write that failed for want of space or permission; one line saying where and what to do."""

    def __str__(self) -> str:
        return str(self.strerror)  # the message alone, without OSError's "[Errno N]"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Temporary file, fsync, rename: a stop at any moment leaves the old file whole, and a failed or
    interrupted write (a full disk, Ctrl-C) leaves no temporary file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(path.parent).free
            raise DiskError(err.errno, f"no space left on the device writing {path} ({len(data) / 2**20:.1f} MB, "
                                       f"{free / 2**20:.1f} MB free); free some space, then continue with --resume"
                            ) from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save through atomic_write_bytes (serialised in memory first, so a full disk is an OSError
    that says so rather than a failure deep inside the zip writer)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


class LockError(RuntimeError):
    """Another process holds the lock."""


class FolderLock:
    """An exclusive lock on a name inside `folder` (flock: released by the kernel whatever ends the process)."""

    def __init__(self, folder: Path, name: str):
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f".{name}.lock"
        self._file: TextIO | None = open(self.path, "a+")  # noqa: SIM115 - held for the run's lifetime
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            self._file = None
            raise LockError(holder) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"process {os.getpid()}")
        self._file.flush()

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing releases the flock
            self._file = None


def archive_name(folder: Path, stamp: str) -> Path:
    """`<folder>_archived_<stamp>`, with a counter if that name is taken (two archives in one second)."""
    candidate = folder.with_name(f"{folder.name}_archived_{stamp}")
    n = 2
    while candidate.exists():
        candidate = folder.with_name(f"{folder.name}_archived_{stamp}_{n}")
        n += 1
    return candidate


def check_writable_folder(path: Path, what: str) -> None:
    """Raise DiskError unless `path` is (or can be made) a folder this process can write in."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise DiskError(errno.ENOTDIR, f"{what} {path}: {probe} is a file, not a folder; choose another folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise DiskError(errno.EACCES, f"{what} {path}: {probe} is not writable; choose a folder you can write to")
