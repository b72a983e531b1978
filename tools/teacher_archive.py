"""Installing teachers from mdistiller's `cifar_teachers.tar` (for tools/fetch_teachers.py): every member checked
before anything is extracted, each teacher extracted beside its place, loaded as its architecture, then renamed
into place.

Sizes are bounded before anything is decompressed past them: a member whose header claims more than the teacher
limit is refused at its header (a compressed bomb is never expanded, not even to list the members after it), all
members together may hold ARCHIVE_FACTOR times that, and each copy stops at the limit whatever the header said."""
from __future__ import annotations

import lzma
import os
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from models import MODEL_REGISTRY, CheckpointError, load_teacher
from models.checkpoint import _numpy_scalars_allowed  # same safe-load rules as the zoo

CKPT_NAME = "ckpt_epoch_240.pth"
# `cifar_teachers/<arch>_vanilla/ckpt_epoch_240.pth`, tolerating a leading `./` or a missing top folder.
_MEMBER_RE = re.compile(r"^(?:\./)?(?:cifar_teachers/)?([A-Za-z0-9_]+)_vanilla/" + re.escape(CKPT_NAME) + r"$")
CHUNK = 1 << 20
MIB = 1 << 20
MAX_TEACHER_MIB = 512  # the largest CRD teacher (ResNet50 with its optimizer state) is under 200 MiB
ARCHIVE_FACTOR = 8  # all members together: mdistiller's archive holds a handful of teachers
MAX_MEMBERS = 10_000
# What reading a damaged archive raises: tarfile's errors, and the decompressors' own (a corrupt .tar.xz or .tar.gz
# raises LZMAError or zlib.error while tarfile seeks past a member; tarfile does not wrap them there).
READ_ERRORS = (tarfile.TarError, EOFError, OSError, lzma.LZMAError, zlib.error)


class FetchError(RuntimeError):
    """A download/archive/usage problem; the message is one line saying what to do."""


class TeachersFailed(FetchError):
    """Some teachers failed verification (each already reported); the others were installed."""


def check_known(archs: list[str] | None) -> None:
    """Fail before a long download if a requested name is not a model of the zoo at all."""
    unknown = [a for a in archs or [] if a not in MODEL_REGISTRY]
    if unknown:
        raise FetchError(f"unknown architecture(s) {', '.join(unknown)}; known: {', '.join(MODEL_REGISTRY)}")


def check_dest(dest: Path, archs: list[str] = ()) -> None:
    """Refuse a destination that cannot hold the teachers before anything is written or downloaded."""
    existing = next((p for p in (dest, *dest.parents) if p.exists() or p.is_symlink()), None)
    if existing is not None and not existing.is_dir():
        what = f"{dest} is" if existing == dest else f"{dest} cannot be made: {existing} is"
        raise FetchError(f"destination {what} not a folder; give --dest a folder (default: t_model)")
    for arch in archs:
        folder, target = dest / arch, dest / arch / CKPT_NAME
        if (folder.exists() or folder.is_symlink()) and not folder.is_dir():
            raise FetchError(f"{folder} is not a folder; move it away or give another --dest")
        if (target.exists() or target.is_symlink()) and not target.is_file():
            raise FetchError(f"{target} is not a regular file; move it away or give another --dest")


def _check_archive(archive: Path) -> None:
    """A regular file, checked before opening it: opening a named pipe would wait for a writer forever."""
    try:
        mode = archive.stat().st_mode
    except FileNotFoundError:
        raise FetchError(f"archive {archive} does not exist") from None
    except OSError as e:
        raise FetchError(f"archive {archive} cannot be read ({e.strerror})") from None
    if stat.S_ISDIR(mode):
        raise FetchError(f"archive {archive} is a directory; give the cifar_teachers.tar file itself")
    if not stat.S_ISREG(mode):
        raise FetchError(f"archive {archive} is not a regular file (a pipe, socket or device); "
                         "give the cifar_teachers.tar file itself")


def _unsafe(member: tarfile.TarInfo, dest: Path) -> str | None:
    """Why a member must not be trusted, or None. Any such member makes the whole archive suspect."""
    if member.name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", member.name):
        return "absolute path"
    if ".." in PurePosixPath(member.name).parts:
        return "path outside the archive (..)"
    if member.issym() or member.islnk():
        return f"link to {member.linkname!r}"
    if not (member.isfile() or member.isdir()):
        return "device or special file"
    if hasattr(tarfile, "data_filter"):  # the stdlib's own 'data' filter as a second opinion
        try:
            tarfile.data_filter(member, str(dest))
        except tarfile.FilterError as e:
            return str(e)
    return None


def _recorded_accuracy(path: Path) -> float | None:
    """The test accuracy CRD saved in the checkpoint, if any."""
    try:
        with _numpy_scalars_allowed():
            obj = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("accuracy", "best_acc", "acc"):
            if key in obj:
                return float(obj[key])
    except Exception:  # only decoration for the report line; the load itself was already verified
        pass
    return None


def _report_ok(arch: str, path: Path, note: str = "") -> None:
    acc = _recorded_accuracy(path)
    acc_text = f" (accuracy {acc:.2f}% as recorded in the file)" if acc is not None else ""
    print(f"{arch}: ok, {path}{acc_text}{note}", flush=True)


def limit_text(max_teacher_bytes: int) -> str:
    return f"{max_teacher_bytes / MIB:g} MiB"


def _over_limit(what: str, size: int, max_teacher_bytes: int) -> FetchError:
    return FetchError(f"{what} holds {size / MIB:.1f} MiB or more, over the {limit_text(max_teacher_bytes)} limit for "
                      "one teacher (CIFAR teachers are at most a few hundred MB); refusing it without reading on "
                      "(a trusted archive with larger teachers: raise --max-teacher-mb)")


def _teachers(tar: tarfile.TarFile, archive: Path, dest: Path, max_teacher_bytes: int) -> dict[str, tarfile.TarInfo]:
    """{arch: its member}, every member checked as soon as its header is read: safe path, size within the limits."""
    found: dict[str, tarfile.TarInfo] = {}
    count = total = 0
    while (m := tar.next()) is not None:
        reason = _unsafe(m, dest)
        if reason:
            raise FetchError(f"archive {archive} holds an unsafe member {m.name!r} ({reason}); refusing it")
        if m.size > max_teacher_bytes:
            raise _over_limit(f"archive {archive}: member {m.name!r}", m.size, max_teacher_bytes)
        total, count = total + m.size, count + 1
        if total > ARCHIVE_FACTOR * max_teacher_bytes or count > MAX_MEMBERS:
            raise FetchError(f"archive {archive} holds more than {limit_text(ARCHIVE_FACTOR * max_teacher_bytes)} "
                             f"or {MAX_MEMBERS} members in all ({ARCHIVE_FACTOR} teachers at the "
                             f"{limit_text(max_teacher_bytes)} limit); refusing it without reading on")
        match = _MEMBER_RE.match(m.name)
        if match and m.isfile():
            found.setdefault(match.group(1), m)
    return found


def _copy_limited(src: Any, out: Any, limit: int, label: str) -> None:
    """Copy at most `limit` bytes; one more is an error (whatever a header claimed)."""
    done = 0
    while chunk := src.read(min(CHUNK, limit + 1 - done)):
        done += len(chunk)
        if done > limit:
            raise _over_limit(label, done, limit)
        out.write(chunk)


def _install_one(tar: tarfile.TarFile, member: tarfile.TarInfo, arch: str, target: Path, label: str,
                 max_teacher_bytes: int) -> None:
    """Extract to a temp file beside `target`, verify it, then rename it into place."""
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{CKPT_NAME}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            _copy_limited(tar.extractfile(member), out, max_teacher_bytes, label)  # a regular file: see `found`
            out.flush()
            os.fsync(out.fileno())
        try:
            load_teacher(tmp, arch, 100)
        except CheckpointError as e:  # name the archive member, not our temp file
            raise CheckpointError(str(e).replace(str(tmp), label)) from None
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def install_from_archive(archive: str | os.PathLike[str], dest: str | os.PathLike[str] = "t_model",
                         archs: list[str] | None = None, force: bool = False,
                         max_teacher_bytes: int = MAX_TEACHER_MIB * MIB) -> list[Path]:
    """Place the archive's teachers under `dest`, verified; returns the placed paths.

    Raises FetchError for an unreadable/unsafe archive, one over the size limits (a member over
    `max_teacher_bytes`, all members over ARCHIVE_FACTOR times that) or unknown names (nothing written), and
    TeachersFailed after reporting each teacher if any of them did not load as its named architecture.
    """
    archive, dest = Path(archive), Path(dest)
    archs = list(dict.fromkeys(archs)) if archs else archs  # --archs a a: once (not 'already present, kept')
    check_known(archs)
    _check_archive(archive)
    check_dest(dest)
    try:
        tar = tarfile.open(archive, "r:*")
    except READ_ERRORS:
        with open(archive, "rb") as f:  # a saved error page is the usual culprit: say so
            html = f.read(512).lstrip().lower().startswith((b"<!doctype", b"<html"))
        what = "it is an HTML page" if html else "tar, tar.gz, tar.bz2 or tar.xz expected"
        raise FetchError(f"{archive} is not a readable tar archive ({what}); "
                         "download cifar_teachers.tar again") from None
    installed: list[Path] = []
    failed: list[str] = []
    with tar:
        try:
            found = _teachers(tar, archive, dest, max_teacher_bytes)
        except READ_ERRORS as e:
            raise FetchError(f"archive {archive} is corrupt or truncated ({e}); download it again") from None
        if not found:
            raise FetchError(f"archive {archive} holds no cifar_teachers/<arch>_vanilla/{CKPT_NAME} files; "
                             "is it mdistiller's cifar_teachers.tar?")
        missing = [a for a in archs or [] if a not in found]
        if missing:
            raise FetchError(f"teacher(s) {', '.join(missing)} not in {archive}; it has: {', '.join(sorted(found))}")
        check_dest(dest, archs or sorted(found))

        created_dest = not dest.exists()
        for arch in archs or sorted(found):
            target = dest / arch / CKPT_NAME
            label = f"{archive}:{found[arch].name}"
            if target.exists() and not force:
                try:  # keep a good existing file; replace a bad one
                    load_teacher(target, arch, 100)
                    _report_ok(arch, target, " [already present, kept; --force replaces it]")
                    installed.append(target)
                    continue
                except CheckpointError:
                    pass
            created_dir = not target.parent.exists()
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                _install_one(tar, found[arch], arch, target, label, max_teacher_bytes)
            except (CheckpointError, FetchError, *READ_ERRORS) as e:
                print(f"{arch}: FAILED, {e}; not installed", file=sys.stderr, flush=True)
                failed.append(arch)
                if created_dir:  # leave no empty folder behind for a teacher that is not there
                    shutil.rmtree(target.parent, ignore_errors=True)
                continue
            _report_ok(arch, target)
            installed.append(target)
        if created_dest and dest.is_dir() and not any(dest.iterdir()):
            dest.rmdir()
    if failed:
        raise TeachersFailed(f"{len(failed)} teacher(s) failed verification and were not installed: "
                             f"{', '.join(failed)}")
    return installed


