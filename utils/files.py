"""Files a run writes: whole or not at all, never beside another process writing the same run."""
from __future__ import annotations

import errno
import io
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout


class DiskError(OSError):
    """A write that failed for want of space or permission; one line saying where and what to do."""

    def __str__(self) -> str:
        return str(self.strerror)  # the message alone, without OSError's "[Errno N]"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Temporary file, fsync, rename: a stop at any moment leaves the old file whole, and a failed or
    interrupted write (a full disk, Ctrl-C) leaves no temporary file behind. The file's own folder is made if it
    is missing, not the folders above it: a run whose folder was removed does not make a new, partial one."""
    path.parent.mkdir(exist_ok=True)
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
    """Another process holds the lock; the message names it."""


class FolderLock:
    """An exclusive lock on a name inside `folder` (an flock, through filelock: released by the kernel whatever
    ends the process, so a lock file left by a dead run does not block). The file names the process holding it."""

    def __init__(self, folder: Path, name: str):
        self.path = folder / f".{name}.lock"
        self._lock = FileLock(self.path, timeout=0)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
        except Timeout:
            try:
                holder = self.path.read_text(errors="replace").strip()[:80]
            except OSError:
                holder = ""
            raise LockError(holder or "another process") from None
        except OSError as err:
            raise _lock_problem(self.path, err) from None
        try:
            self.path.write_text(f"process {os.getpid()}")
        except OSError:
            pass  # the name is for a second process's message only; the lock holds without it

    def release(self) -> None:
        self._lock.release()  # a second release does nothing


def _lock_problem(path: Path, err: OSError) -> OSError:
    """What keeps a lock from being taken, as one line where the cause is the file system or its permissions."""
    if err.errno == errno.ENOLCK:
        return DiskError(err.errno, f"cannot lock {path}: its file system offers no file locks (as NFS without a "
                                    "lock daemon); put experiments_dir on a file system that does, e.g. a local disk")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        where = path if path.exists() else path.parent
        return DiskError(err.errno, f"cannot lock {path}: {where} is not writable by this user ({err.strerror}); if "
                                    "another user left it and no run of this trial is going on, remove it, or choose "
                                    "an experiments_dir you can write to")
    return DiskError(err.errno, f"cannot lock {path}: {err.strerror}; if no run of this trial is going on, remove it")


def archive_name(folder: Path, stamp: str) -> Path:
    """`<folder>_archived_<stamp>`, with a counter if that name is taken (two archives in one second)."""
    candidate = folder.with_name(f"{folder.name}_archived_{stamp}")
    n = 2
    while candidate.exists():
        candidate = folder.with_name(f"{folder.name}_archived_{stamp}_{n}")
        n += 1
    return candidate


def check_writable_folder(path: Path, what: str, advice: str = "choose a folder you can write to") -> None:
    """Raise DiskError unless `path` is (or can be made) a folder this process can write in."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise DiskError(errno.ENOTDIR, f"{what} {path}: {probe} is a file, not a folder; {advice}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise DiskError(errno.EACCES, f"{what} {path}: {probe} is not writable; {advice}")


def check_name_lengths(path: Path, what: str, advice: str, room: int = 0) -> None:
    """Raise DiskError if a name in `path` is longer than its file system takes, or the whole path with `room`
    bytes more (for the files a run writes inside it): told before the run writes, not as it writes."""
    probe = path.absolute()
    while not os.path.lexists(probe) and probe != probe.parent:  # lexists: False, not an error, for a long name
        probe = probe.parent
    def limit(name: str, default: int) -> int:
        try:
            return os.pathconf(probe, name)
        except (OSError, ValueError):
            return default
    name_max, path_max = limit("PC_NAME_MAX", 255), limit("PC_PATH_MAX", 4096)
    for part in path.parts:
        size = len(os.fsencode(part))
        if size > name_max:
            raise DiskError(errno.ENAMETOOLONG, f"{what}: the name {part[:30]!r}... is {size} bytes long, and this "
                                                f"file system takes at most {name_max}; {advice}")
    size = len(os.fsencode(str(path.absolute()))) + room
    if size > path_max:
        raise DiskError(errno.ENAMETOOLONG, f"{what}: {str(path)[:30]!r}... makes paths of {size} bytes, and this "
                                            f"file system takes at most {path_max}; {advice}")
