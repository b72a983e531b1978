"""tools/fetch_teachers.py against real tars in mdistiller's layout, served over real local HTTP."""
from __future__ import annotations

import functools
import gzip
import http.server
import importlib.util
import io
import os
import socket
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from helpers import save_crd_checkpoint

from models import build_model, load_teacher

SCRIPT = ROOT / "tools" / "fetch_teachers.py"
sys.path.insert(0, str(SCRIPT.parent))  # as when it runs as a script: its sibling teacher_archive.py
_spec = importlib.util.spec_from_file_location("fetch_teachers", SCRIPT)
ft = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ft)
import teacher_archive  # noqa: E402  (tools/, put on the path above)

ta = teacher_archive
MIB = ta.MIB

ACC = {"resnet8": 71.25, "resnet14": 68.5}


def _ckpt(tmp: Path, arch: str, acc: float = 70.0) -> Path:
    torch.manual_seed(0)
    path = tmp / f"src_{arch}_{acc}.pth"
    save_crd_checkpoint(build_model(arch, 100), path, best_acc=acc)
    return path


def _tar(path: Path, files: dict[str, Path]) -> Path:
    """A tar holding `files` as {member name: source file}, with the folders mdistiller's has."""
    with tarfile.open(path, "w") as tar:
        folder = tarfile.TarInfo("cifar_teachers")
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        for name, src in files.items():
            tar.add(src, arcname=name)
    return path


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cifar_teachers.tar with resnet8 and resnet14 teachers (small real CRD-format checkpoints)."""
    tmp = tmp_path_factory.mktemp("served")
    files = {f"cifar_teachers/{a}_vanilla/ckpt_epoch_240.pth": _ckpt(tmp, a, acc) for a, acc in ACC.items()}
    return _tar(tmp / "cifar_teachers.tar", files)


@pytest.fixture(scope="module")
def server(archive: Path):
    """A real HTTP server on 127.0.0.1 serving the archive's folder; yields its base URL."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    class QuietServer(http.server.ThreadingHTTPServer):
        def handle_error(self, request: object, client_address: object) -> None:
            pass  # a client that stops reading (a download over its limit) is no error of the server's

    httpd = QuietServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(archive.parent)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_download_over_http_places_and_verifies(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "t_model"
    r = _run("--url", f"{server}/cifar_teachers.tar", "--dest", str(dest), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for arch, acc in ACC.items():
        path = dest / arch / "ckpt_epoch_240.pth"
        assert load_teacher(path, arch, 100).training is False
        assert f"{arch}: ok, {path} (accuracy {acc:.2f}% as recorded in the file)" in r.stdout
    assert sorted(p.name for p in dest.iterdir()) == ["resnet14", "resnet8"]
    assert [p.name for p in tmp_path.iterdir()] == ["t_model"]  # the downloaded temp tar is gone
    assert [p.name for p in (dest / "resnet8").iterdir()] == ["ckpt_epoch_240.pth"]


def test_closed_port_fails_with_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port that was just free: nothing listens there now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/cifar_teachers.tar"
    r = _run("--url", url, "--dest", "t_model", cwd=tmp_path)
    assert r.returncode == 2
    lines = _lines(r.stderr)
    assert len(lines) == 1, r.stderr
    assert f"download from {url} failed" in lines[0] and "--archive" in lines[0] and "train_teacher.yml" in lines[0]
    assert list(tmp_path.iterdir()) == []  # no dest, no partial download


def test_http_404_is_a_fetch_error(server: str, tmp_path: Path) -> None:
    with pytest.raises(ft.FetchError, match=r"HTTP 404 .*--archive"):
        ft.fetch(f"{server}/missing.tar", tmp_path / "t_model")
    assert list(tmp_path.iterdir()) == []


def test_archive_with_archs_subset(archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert ft.main(["--archive", str(archive), "--archs", "resnet14", "--dest", "t"]) == 0
    assert [p.name for p in (tmp_path / "t").iterdir()] == ["resnet14"]
    load_teacher(tmp_path / "t" / "resnet14" / "ckpt_epoch_240.pth", "resnet14")
    expected = "resnet14: ok, t/resnet14/ckpt_epoch_240.pth (accuracy 68.50% as recorded in the file)"
    assert _lines(capsys.readouterr().out) == [expected]


def test_unknown_arch_lists_what_the_archive_has(archive: Path, tmp_path: Path) -> None:
    with pytest.raises(ft.FetchError, match=r"resnet20 not in .* it has: resnet14, resnet8"):
        ft.install_from_archive(archive, tmp_path / "t", ["resnet8", "resnet20"])
    with pytest.raises(ft.FetchError, match=r"unknown architecture\(s\) resnet9999"):
        ft.install_from_archive(archive, tmp_path / "t", ["resnet9999"])
    assert ft.main(["--archive", str(archive), "--dest", str(tmp_path / "t"), "--archs", "resnet20"]) == 2
    assert list(tmp_path.iterdir()) == []  # nothing written before the names were checked


def test_lying_folder_is_reported_and_removed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small = _ckpt(tmp_path, "resnet8")
    tar = _tar(tmp_path / "lies.tar", {"cifar_teachers/resnet56_vanilla/ckpt_epoch_240.pth": small,
                                      "cifar_teachers/resnet8_vanilla/ckpt_epoch_240.pth": small})
    dest = tmp_path / "t_model"
    assert ft.main(["--archive", str(tar), "--dest", str(dest)]) == 1
    out, err = capsys.readouterr()
    failed = [line for line in _lines(err) if line.startswith("resnet56: FAILED")]
    assert len(failed) == 1 and "is a resnet8" in failed[0] and "lies.tar:cifar_teachers/resnet56_vanilla" in failed[0]
    assert not (dest / "resnet56").exists()
    assert "resnet8: ok" in out and (dest / "resnet8" / "ckpt_epoch_240.pth").is_file()
    assert not list(dest.rglob("*.tmp"))


def test_good_file_kept_unless_force_bad_file_replaced(archive: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "t"
    ft.install_from_archive(archive, dest, ["resnet8"])
    target = dest / "resnet8" / "ckpt_epoch_240.pth"
    other = _ckpt(tmp_path, "resnet8", acc=12.0)  # a different, equally good resnet8
    target.write_bytes(other.read_bytes())
    ft.install_from_archive(archive, dest, ["resnet8"])
    assert "already present, kept" in capsys.readouterr().out
    assert teacher_archive._recorded_accuracy(target) == pytest.approx(12.0)  # the good file was not overwritten
    ft.install_from_archive(archive, dest, ["resnet8"], force=True)
    assert teacher_archive._recorded_accuracy(target) == pytest.approx(71.25)
    target.write_bytes(b"not a checkpoint")  # a broken existing file is replaced without --force
    ft.install_from_archive(archive, dest, ["resnet8"])
    load_teacher(target, "resnet8")


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink"])
def test_unsafe_members_are_refused(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _ckpt(tmp_path, "resnet8")
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        tar.add(good, arcname="cifar_teachers/resnet8_vanilla/ckpt_epoch_240.pth")
        if kind == "dotdot":
            _add_bytes(tar, "cifar_teachers/../../evil", b"pwned")
        elif kind == "absolute":
            _add_bytes(tar, str(tmp_path / "evil"), b"pwned")
        else:
            link = tarfile.TarInfo("cifar_teachers/resnet14_vanilla/ckpt_epoch_240.pth")
            link.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
            link.linkname = str(tmp_path / "evil") if kind == "symlink" else "../../evil"
            tar.addfile(link)
    dest = tmp_path / "d" / "t_model"
    assert ft.main(["--archive", str(bad), "--dest", str(dest)]) == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and "unsafe member" in err[0], err
    with pytest.raises(ft.FetchError, match="unsafe member"):
        ft.install_from_archive(bad, dest)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "d").exists()
    assert not list(tmp_path.rglob("evil"))


def test_corrupt_archive_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "cifar_teachers.tar"
    junk.write_bytes(b"<html>this is a login page, not a tar</html>" * 50)
    assert ft.main(["--archive", str(junk), "--dest", str(tmp_path / "t")]) == 2
    err = _lines(capsys.readouterr().err)
    assert len(err) == 1 and "not a readable tar archive (it is an HTML page)" in err[0]
    assert not (tmp_path / "t").exists()


def test_empty_archive_says_what_it_expected(tmp_path: Path) -> None:
    empty = tmp_path / "e.tar"
    with tarfile.open(empty, "w") as tar:
        _add_bytes(tar, "README.md", b"hello")
    with pytest.raises(ft.FetchError, match="holds no cifar_teachers/<arch>_vanilla"):
        ft.install_from_archive(empty, tmp_path / "t")



def test_keep_archive_keeps_the_complete_tar_beside_dest(server: str, archive: Path, tmp_path: Path) -> None:
    placed = ft.fetch(f"{server}/cifar_teachers.tar", tmp_path / "t_model", ["resnet8"], keep_archive=True)
    assert placed == [tmp_path / "t_model" / "resnet8" / "ckpt_epoch_240.pth"]
    assert (tmp_path / "cifar_teachers.tar").read_bytes() == archive.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar_teachers.tar", "t_model"]


def _refused(argv: list[str], *words: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert ft.main(argv) == 2
    out, err = capsys.readouterr()
    lines = _lines(err)
    assert len(lines) == 1 and not _lines(out), (out, err)
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_dest_that_cannot_hold_teachers_is_refused(archive: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("mine")
    _refused(["--archive", str(archive), "--dest", str(afile)], f"destination {afile} is not a folder", capsys=capsys)
    _refused(["--archive", str(archive), "--dest", str(afile / "t")], f"{afile} is not a folder", capsys=capsys)
    dest = tmp_path / "t_model"
    dest.mkdir()
    (dest / "resnet8").write_text("mine")  # installed after resnet14: nothing may be written before the check
    _refused(["--archive", str(archive), "--dest", str(dest)], f"{dest / 'resnet8'} is not a folder", capsys=capsys)
    (dest / "resnet8").unlink()
    (dest / "resnet8" / "ckpt_epoch_240.pth").mkdir(parents=True)
    _refused(["--archive", str(archive), "--dest", str(dest)], "ckpt_epoch_240.pth is not a regular file",
             capsys=capsys)
    with pytest.raises(ft.FetchError, match="is not a folder"):  # before any download
        ft.fetch("http://127.0.0.1:9/never-asked.tar", afile)
    assert afile.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["afile", "t_model"]
    assert [str(p.relative_to(dest)) for p in sorted(dest.rglob("*"))] == ["resnet8", "resnet8/ckpt_epoch_240.pth"]


def test_archive_that_is_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _refused(["--archive", str(tmp_path), "--dest", str(tmp_path / "t")], "is a directory", "cifar_teachers.tar",
             capsys=capsys)
    assert list(tmp_path.iterdir()) == []


def test_archive_that_is_a_named_pipe_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "cifar_teachers.tar"
    os.mkfifo(fifo)  # opening it would wait for a writer forever
    r = _run("--archive", str(fifo), "--dest", "t_model", cwd=tmp_path)
    assert r.returncode == 2 and len(_lines(r.stderr)) == 1 and "is not a regular file" in r.stderr, r.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["cifar_teachers.tar"]


def _gz_tar(path: Path, members: dict[str, int]) -> Path:
    """A .tar.gz holding {name: size} members of zeros (a few KB on disk however large the members)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, size in members.items():
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(bytes(size)))
    return path


def test_teacher_over_the_size_limit_is_refused_unwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A small .tar.gz whose teacher is megabytes of zeros (the review's: 3 MB holding 3 GiB), with the limit
    set low: refused in one line naming the limit, before anything is written."""
    bomb = _gz_tar(tmp_path / "bomb.tar.gz", {"cifar_teachers/resnet8_vanilla/ckpt_epoch_240.pth": 3 * MIB})
    assert bomb.stat().st_size < 50_000
    dest = tmp_path / "t_model"
    line = _refused(["--archive", str(bomb), "--dest", str(dest), "--max-teacher-mb", "1"], "over the 1 MiB limit",
                    "resnet8_vanilla", "--max-teacher-mb", capsys=capsys)
    assert "3.0 MiB" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.tar.gz"]  # no dest, no temp file
    with pytest.raises(ft.FetchError, match="over the 1 MiB limit"):
        ft.install_from_archive(bomb, dest, max_teacher_bytes=MIB)


def test_bomb_under_another_name_is_not_expanded_to_list_members(tmp_path: Path) -> None:
    """A member (not a teacher) whose header claims 64 MiB, then the teacher: refused at the header. The
    member's data is cut short, so a reader that expanded it to reach the next header would find the archive
    truncated instead of reporting the size."""
    header = tarfile.TarInfo("junk/zeros.bin")
    header.size = 64 * MIB
    cut = tmp_path / "bomb.tar.gz"
    with gzip.open(cut, "wb") as f:
        f.write(header.tobuf() + bytes(4096))
    with pytest.raises(ft.FetchError, match=r"member 'junk/zeros.bin' holds 64.0 MiB .* over the 1 MiB limit"):
        ft.install_from_archive(cut, tmp_path / "t", max_teacher_bytes=MIB)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.tar.gz"]


def test_members_over_the_archive_limit_in_all(tmp_path: Path) -> None:
    members = {f"cifar_teachers/x{i}/notes.bin": MIB - 1000 for i in range(ta.ARCHIVE_FACTOR + 1)}
    many = _gz_tar(tmp_path / "many.tar.gz", members)
    with pytest.raises(ft.FetchError, match=f"more than {ta.ARCHIVE_FACTOR} MiB or {ta.MAX_MEMBERS} members in all"):
        ft.install_from_archive(many, tmp_path / "t", max_teacher_bytes=MIB)


def test_copy_stops_at_the_limit_whatever_the_header_said(tmp_path: Path) -> None:
    out = io.BytesIO()
    ta._copy_limited(io.BytesIO(bytes(1000)), out, 1000, "member")
    assert out.getvalue() == bytes(1000)
    with pytest.raises(ft.FetchError, match="over the"):
        ta._copy_limited(io.BytesIO(bytes(3000)), io.BytesIO(), 1000, "member")


def test_download_over_the_limit_stops(server: str, tmp_path: Path) -> None:
    with pytest.raises(ft.FetchError, match="over the .* limit for the archive"):
        ft.fetch(f"{server}/cifar_teachers.tar", tmp_path / "t_model", max_teacher_bytes=1000)
    assert list(tmp_path.iterdir()) == []  # the partial download is gone


def test_help_states_the_limits(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        ft.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"--max-teacher-mb MB size limit of one teacher in MiB (default: {ta.MAX_TEACHER_MIB}" in text
    assert f"{ta.ARCHIVE_FACTOR} times that in all" in text
