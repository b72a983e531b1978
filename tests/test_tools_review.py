"""Review of the tools as a user meets them: edge cases of evaluate, fetch_teachers, plot, runs."""
from __future__ import annotations

import gzip
import importlib.util
import io
import lzma
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from models import build_model

TOOLS = ROOT / "tools"
sys.path.insert(0, str(TOOLS))  # as when the tools run as scripts: their siblings importable


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"review_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _teachers_tar() -> bytes:
    """An uncompressed cifar_teachers.tar with two 100-class teachers, byte for byte the same on every call."""
    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.save({"model": build_model("resnet8", 100).state_dict()}, buf)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for arch in ("resnet8", "resnet14"):
            info = tarfile.TarInfo(f"cifar_teachers/{arch}_vanilla/ckpt_epoch_240.pth")
            info.size = len(buf.getvalue())
            tar.addfile(info, io.BytesIO(buf.getvalue()))
    return out.getvalue()


@pytest.mark.parametrize(("suffix", "at"), [("xz", 0.5), ("gz", 491978)])
def test_corrupt_compressed_archive_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       suffix: str, at: float) -> None:
    """A .tar.xz or .tar.gz damaged in the middle: the decompressor's own error (LZMAError, zlib.error) escaped
    as a traceback with exit status 1, which the tool's doc reserves for teachers that failed verification."""
    data = bytearray(lzma.compress(_teachers_tar()) if suffix == "xz" else gzip.compress(_teachers_tar(), mtime=0))
    start = int(len(data) * at) if isinstance(at, float) else at
    data[start:start + 200] = bytes(200)
    archive = tmp_path / f"cifar_teachers.tar.{suffix}"
    archive.write_bytes(bytes(data))
    code = _tool("fetch_teachers").main(["--archive", str(archive), "--dest", str(tmp_path / "t")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "corrupt or truncated" in err[0], err
    assert not (tmp_path / "t").exists()


def _hand_made_run(root: Path) -> Path:
    """One finished resnet56 -> resnet20 CoCoRD trial on CIFAR-100, written by hand (as tests/test_tools.py)."""
    from test_tools import opts, result, write_run
    return write_run(root, "S_resnet20_T_resnet56_cifar100_cocord_ctr1.0cls1.0p4.0", "trial_1",
                     opts("resnet20", "resnet56", "cocord"), result("resnet20", "resnet56", "cocord", 71.5, 71.2, 72.3))


@pytest.mark.parametrize("blocked", ["out_is_a_file", "figure_name_is_a_folder"])
def test_plot_into_a_place_it_cannot_write_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              blocked: str) -> None:
    """--out naming a file, or a figure's name taken by a folder, was a traceback (FileExistsError...)."""
    _hand_made_run(tmp_path / "experiments")
    out = tmp_path / "figs"
    if blocked == "out_is_a_file":
        out.write_text("notes\n")
    else:
        (out / "paper_comparison.png").mkdir(parents=True)
    code = _tool("plot").main([str(tmp_path / "experiments"), "--out", str(out), "--bench", str(tmp_path / "none")])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: cannot write the figures into {out}"), err
    assert captured.out == ""
    assert out.is_file() if blocked == "out_is_a_file" else (out / "paper_comparison.png").is_dir()


def test_experiment_name_holding_archived_is_a_live_run(tmp_path: Path) -> None:
    """experiment_name: ablation_archived_runs is legal; its trials were skipped as 'archived' (any '_archived_' in
    the path), so summarize and plot said a finished run was an archived one and left it out."""
    from runs import collect_runs
    from test_tools import opts, result, write_run
    root = tmp_path / "experiments"
    live = write_run(root, "ablation_archived_runs", "trial_1", opts("resnet20", "resnet56", "cocord"),
                     result("resnet20", "resnet56", "cocord", 71.5, 71.2, 72.3))
    old = write_run(root, "ablation_archived_runs", "trial_1_archived_261126-101010",
                    opts("resnet20", "resnet56", "cocord"), result("resnet20", "resnet56", "cocord", 9.0, 9.0, 72.3))
    gone = write_run(root, "S_x_archived_261126-101010_2", "trial_1", opts("resnet20", "resnet56", "cocord"),
                     result("resnet20", "resnet56", "cocord", 9.0, 9.0, 72.3))
    runs, _ = collect_runs(root)
    assert {r["path"]: r["status"] for r in runs} == {str(live): "finished", str(old): "archived",
                                                       str(gone): "archived"}


def test_an_arch_named_twice_is_installed_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--archs resnet8 resnet8 installed it, then said '[already present, kept; --force replaces it]' of the file it
    had just written (with --force: wrote it twice)."""
    archive = tmp_path / "cifar_teachers.tar"
    archive.write_bytes(_teachers_tar())
    code = _tool("fetch_teachers").main(["--archive", str(archive), "--dest", str(tmp_path / "t"),
                                         "--archs", "resnet8", "resnet8"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and out == [f"resnet8: ok, {tmp_path / 't' / 'resnet8' / 'ckpt_epoch_240.pth'}"], out


def test_evaluate_negative_workers_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--workers -1 on ImageNet reached DataLoader: a ValueError traceback."""
    from dataset import write_demo_imagefolder
    write_demo_imagefolder(str(tmp_path / "imagenet"), num_classes=3, per_class=1, size=32, seed=0)
    torch.save(build_model("resnet18", 3).state_dict(), tmp_path / "r18.pth")
    code = _tool("evaluate").main([str(tmp_path / "r18.pth"), "--cpu", "--dataset", "imagenet", "--data-folder",
                                   str(tmp_path / "imagenet"), "--workers", "-1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: --workers"), err


@pytest.mark.parametrize("gpu", [-1, 2])
def test_evaluate_refuses_a_gpu_index_outside_the_visible_ones(monkeypatch, gpu):
    """--gpu -1 on a machine with GPUs went on to torch.device('cuda:-1'), a traceback (the device count is
    torch's, faked: this machine has no GPU)."""
    evaluate = _tool("evaluate")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(evaluate.UsageError, match=f"--gpu {gpu}: no such CUDA device"):
        evaluate.pick_device(gpu, cpu=False)
    assert evaluate.pick_device(1, cpu=False) == torch.device("cuda:1")


@pytest.mark.parametrize("where", ["checkpoint", "data_folder"])
def test_evaluate_a_name_too_long_is_one_line_exit_2(tmp_path, capsys, where):
    """Python 3.11's Path.exists and is_dir raise ENAMETOOLONG: a checkpoint path or --data-folder holding a 300-byte
    name was a traceback, exit status 1."""
    evaluate = _tool("evaluate")
    long = tmp_path / ("x" * 300)
    checkpoint = tmp_path / "ckpt.pth"
    torch.save({"model": build_model("resnet8", 10).state_dict()}, checkpoint)
    args, words = ([str(long / "a.pth")], "does not exist") if where == "checkpoint" else \
        ([str(checkpoint), "--data-folder", str(long)], "CIFAR-100 not found")
    assert evaluate.main([*args, "--cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ") and words in err, err
