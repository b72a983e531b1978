"""Fetch the pretrained CRD CIFAR-100 teachers and place them where the options files expect them.

    python tools/fetch_teachers.py [--dest t_model] [--archs resnet56 resnet110 ...]
                                     [--url URL | --archive cifar_teachers.tar] [--keep-archive] [--force]
                                     [--max-teacher-mb 512]

RepDistiller's download host is gone; mdistiller republishes the same files as `cifar_teachers.tar`,
laid out as `cifar_teachers/<arch>_vanilla/ckpt_epoch_240.pth`. Each one is placed as
`<dest>/<arch>/ckpt_epoch_240.pth` only after it loads strictly as <arch> (see models.load_teacher).
Sizes are limited (a CIFAR teacher is at most a few hundred MB): a member over --max-teacher-mb (default 512
MiB), or members over 8 times that in all, or a download over that total, are refused without reading on.
Exit status: 0 all placed, 1 some teacher failed verification, 2 download/archive/usage error.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import teacher_archive as ta
from teacher_archive import FetchError, TeachersFailed, check_dest, check_known, install_from_archive

DEFAULT_URL = "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar"


class _TooLarge(Exception):
    """A download past its size limit (args[0]: the bytes seen or announced)."""


def download(url: str, target: Path, timeout: float = 60.0,
             max_bytes: int = ta.ARCHIVE_FACTOR * ta.MAX_TEACHER_MIB * ta.MIB) -> None:
    """Stream `url` into `target` (the caller cleans it up), at most `max_bytes`; FetchError on any failure."""
    shown = False
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(target, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0)
            done, last = 0, 0.0
            if total > max_bytes:
                raise _TooLarge(total)
            while chunk := resp.read(ta.CHUNK):
                out.write(chunk)
                done += len(chunk)
                if done > max_bytes:
                    raise _TooLarge(done)
                if time.monotonic() - last > 0.5 or done == total:  # throttled progress line
                    last, shown = time.monotonic(), True
                    size = f"/{total / 2**20:.1f} MiB ({100 * done / total:.0f}%)" if total else " MiB"
                    print(f"\rdownloading {url}: {done / 2**20:.1f}{size}", end="", file=sys.stderr, flush=True)
        if not total or done == total:
            return
        reason = f"connection closed after {done} of {total} bytes"
    except _TooLarge as e:
        reason = f"{e.args[0] / ta.MIB:.1f} MiB or more, over the {ta.limit_text(max_bytes)} limit for the archive"
    except urllib.error.HTTPError as e:
        reason = f"HTTP {e.code} {e.reason}"
    except urllib.error.URLError as e:
        reason = str(e.reason)
    except TimeoutError:
        reason = f"timed out after {timeout:g} s"
    except Exception as e:  # reset connections, malformed URLs, IncompleteRead ...
        reason = f"{type(e).__name__}: {e}"
    finally:
        if shown:  # end the progress line so the next message starts on its own
            print(file=sys.stderr)
    raise FetchError(f"download from {url} failed ({reason}); download cifar_teachers.tar by hand from {url} and "
                     "run `python tools/fetch_teachers.py --archive cifar_teachers.tar`, or train a teacher: "
                     "`python main.py -opt options/train_teacher.yml --set student_model=resnet56`")


def fetch(url: str = DEFAULT_URL, dest: str | os.PathLike[str] = "t_model", archs: list[str] | None = None,
          force: bool = False, keep_archive: bool = False, timeout: float = 60.0,
          max_teacher_bytes: int = ta.MAX_TEACHER_MIB * ta.MIB) -> list[Path]:
    """Download the archive (to a temp file beside `dest`) and install from it; see install_from_archive."""
    dest = Path(dest)
    check_known(archs)
    check_dest(dest, archs or [])
    where = dest.resolve().parent
    fd, tmp_name = tempfile.mkstemp(dir=where if where.is_dir() else None, prefix=".cifar_teachers.",
                                    suffix=".tar.part")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        download(url, tmp, timeout, ta.ARCHIVE_FACTOR * max_teacher_bytes)
        archive = tmp
        if keep_archive:  # renamed only once complete, so a kept archive is never a partial one
            where.mkdir(parents=True, exist_ok=True)
            archive = where / "cifar_teachers.tar"
            shutil.move(tmp, archive)
            print(f"archive kept as {archive}", file=sys.stderr)
        return install_from_archive(archive, dest, archs, force, max_teacher_bytes)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--dest", default="t_model", help="folder for <arch>/ckpt_epoch_240.pth (default: t_model)")
    p.add_argument("--archs", nargs="+", metavar="ARCH", help="only these teachers (default: all in the archive)")
    p.add_argument("--url", default=DEFAULT_URL, help="where to download cifar_teachers.tar from")
    p.add_argument("--archive", help="a cifar_teachers.tar already on disk (no download)")
    p.add_argument("--keep-archive", action="store_true", help="keep the downloaded tar beside --dest")
    p.add_argument("--force", action="store_true", help="replace teachers that are already present and load")
    p.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds (default: 60)")
    p.add_argument("--max-teacher-mb", type=float, default=ta.MAX_TEACHER_MIB, metavar="MB",
                   help=f"size limit of one teacher in MiB (default: {ta.MAX_TEACHER_MIB}; a CIFAR teacher is at most "
                   f"a few hundred MB); an archive may hold {ta.ARCHIVE_FACTOR} times that in all; past a limit "
                   "nothing more is read")
    args = p.parse_args(argv)
    if not args.max_teacher_mb > 0:
        print("error: --max-teacher-mb must be a positive number of MiB", file=sys.stderr)
        return 2
    limit = int(args.max_teacher_mb * ta.MIB)
    try:
        if args.archive:
            install_from_archive(args.archive, args.dest, args.archs, args.force, limit)
        else:
            fetch(args.url, args.dest, args.archs, args.force, args.keep_archive, args.timeout, limit)
    except TeachersFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except FetchError as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)  # always one line
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing partial was left in place", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
