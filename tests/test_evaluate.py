"""tools/evaluate.py end to end: real checkpoints in every layout, real-format data, the tool as a subprocess."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT
from helpers import run_main, save_crd_checkpoint, tiny_options, write_yaml

from dataset import build_imagenet_loaders, write_demo_imagefolder
from dataset.constants import CIFAR100_MEAN, CIFAR100_STD
from engine.replicas import evaluate
from models import build_model

EVALUATE = ROOT / "tools" / "evaluate.py"


def run_tool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EVALUATE), *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


def evaluated(*args: str, cwd: Path | None = None) -> dict:
    proc = run_tool(*args, "--cpu", "--json", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory, tiny_cifar: str) -> Path:
    """A run as `make demo` makes one: 10 classes of data in ./data_demo (relative, as the demo's options say),
    trained by main.py; returns its folder (the working directory of the run)."""
    work = tmp_path_factory.mktemp("demo")
    shutil.copytree(tiny_cifar, work / "data_demo")
    write_yaml(work / "opt.yml", tiny_options("./data_demo", None, distill="none", epochs=2))
    proc = run_main(["-opt", "opt.yml", "-t", "1", "--quiet"], cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return work


def reference(model: torch.nn.Module, data: str) -> dict:
    """Accuracy computed here, from the raw cifar-100-python file, without the project's data code."""
    with open(Path(data) / "cifar-100-python" / "test", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    images = torch.from_numpy(np.asarray(raw["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)).float() / 255
    images = (images - torch.tensor(CIFAR100_MEAN).view(3, 1, 1)) / torch.tensor(CIFAR100_STD).view(3, 1, 1)
    labels = torch.tensor(raw["fine_labels"])
    with torch.no_grad():
        logits = model.eval()(images)
    top5 = logits.topk(5, dim=1).indices
    return {"top1": 100.0 * int((top5[:, 0] == labels).sum()) / len(labels),
            "top5": 100.0 * int((top5 == labels[:, None]).any(dim=1).sum()) / len(labels),
            "loss": F.cross_entropy(logits, labels).item(), "images": len(labels),
            "evaluate": evaluate(model, [(images, labels)])}


@pytest.fixture(scope="module")
def student() -> torch.nn.Module:
    torch.manual_seed(3)
    return build_model("resnet8", 10)


LAYOUTS = {  # how each kind of file holds the weights
    "project": lambda sd: {"epoch": 1, "model": sd},
    "cocord_published": lambda sd: {"s_model_dict": sd, "epoch": 240},
    "bare_ddp": lambda sd: {f"module.{k}": v for k, v in sd.items()},
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_accuracy_matches_a_direct_computation(tmp_path: Path, tiny_cifar: str, student: torch.nn.Module,
                                               layout: str) -> None:
    path = tmp_path / "ckpt.pth"
    torch.save(LAYOUTS[layout](student.state_dict()), path)
    out = evaluated(str(path), "--data-folder", tiny_cifar, "--batch-size", "16")  # 40 images: a short last batch
    ref = reference(student, tiny_cifar)
    assert (out["architecture"], out["n_cls"], out["images"]) == ("resnet8", 10, ref["images"])
    assert out["top1"] == pytest.approx(ref["top1"], abs=1e-9) and out["top5"] == pytest.approx(ref["top5"], abs=1e-9)
    assert out["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    assert out["top1"] == pytest.approx(ref["evaluate"]["top1"]) and out["loss"] == pytest.approx(
        ref["evaluate"]["loss"], rel=1e-5)


def test_crd_teacher_and_text_line(tmp_path: Path, tiny_cifar: str) -> None:
    torch.manual_seed(5)
    model = build_model("wrn_16_1", 10)
    path = tmp_path / "ckpt_epoch_240.pth"
    save_crd_checkpoint(model, path)
    proc = run_tool(str(path), "--data-folder", tiny_cifar, "--cpu")
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert len(line.splitlines()) == 1 and line.startswith("wrn_16_1 ") and "40 images" in line, line
    ref = reference(model, tiny_cifar)
    assert f"top-1 {ref['top1']:.2f}%" in line and f"top-5 {ref['top5']:.2f}%" in line, line
    printed_loss = float(line.split("loss ")[1].split()[0])
    assert math.isclose(printed_loss, ref["loss"], abs_tol=6e-5), (line, ref["loss"])  # 4 decimals printed


@pytest.mark.slow
def test_checkpoints_of_a_real_run(demo_run: Path) -> None:
    """best.pth and the last epoch's file of a `main.py` run score what the run recorded."""
    (trial,) = (demo_run / "experiments").glob("*/trial_1")
    results = json.loads((trial / "results.json").read_text())
    data = str(demo_run / "data_demo")
    best = evaluated(str(trial / "model" / "best.pth"), "--data-folder", data)
    last = evaluated(str(trial / "model" / "ckpt_epoch_2.pth"), "--data-folder", data)
    assert best["architecture"] == last["architecture"] == "resnet8"
    assert math.isclose(best["top1"], results["best_acc"], abs_tol=1e-9)
    assert math.isclose(last["top1"], results["last_acc"], abs_tol=1e-9)
    assert math.isclose(last["top5"], results["last_top5"], abs_tol=1e-9)
    assert math.isclose(last["loss"], results["history"][-1]["val_loss"], rel_tol=1e-4)


@pytest.mark.slow
def test_a_run_is_evaluated_on_its_own_data(demo_run: Path, tmp_path: Path) -> None:
    """No flags: the data_folder, dataset and n_cls of the run's options.yml (trial_N/ beside model/), as the run
    itself read them (relative to where it ran); from elsewhere, one line says where the data was looked for."""
    (trial,) = (demo_run / "experiments").glob("*/trial_1")
    rel = trial.relative_to(demo_run) / "model" / "best.pth"
    out = evaluated(str(rel), cwd=demo_run)
    assert math.isclose(out["top1"], json.loads((trial / "results.json").read_text())["best_acc"], abs_tol=1e-9)
    assert (out["data_folder"], out["n_cls"], out["options"]) == ("./data_demo", 10, str(trial / "options.yml"))
    proc = run_tool(str(trial / "model" / "best.pth"), "--cpu", cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"no cifar-100-python/ folder in ./data_demo (the data_folder of {trial / 'options.yml'})" in proc.stderr
    assert "download" not in proc.stderr and "--data-folder" in proc.stderr


def test_imagenet_folder(tmp_path: Path) -> None:
    data = tmp_path / "imagenet"
    write_demo_imagefolder(str(data), num_classes=3, per_class=2, size=64, seed=0)
    torch.manual_seed(0)
    model = build_model("resnet18", 3)
    path = tmp_path / "r18.pth"
    torch.save(model.state_dict(), path)
    out = evaluated(str(path), "--dataset", "imagenet", "--data-folder", str(data), "--workers", "0")
    _, val = build_imagenet_loaders(str(data), 4, 1, 0, False)
    ref = evaluate(model, val)
    assert (out["architecture"], out["n_cls"], out["images"]) == ("resnet18", 3, 6)
    assert out["top1"] == pytest.approx(ref["top1"]) and out["loss"] == pytest.approx(ref["loss"], rel=1e-5)


def test_bad_input_one_line_exit_2(tmp_path: Path, tiny_cifar: str) -> None:
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n")
    small = tmp_path / "five.pth"
    torch.save({"model": build_model("resnet8", 5).state_dict()}, small)
    ok = tmp_path / "ten.pth"
    torch.save({"model": build_model("resnet8", 10).state_dict()}, ok)
    diverged = tmp_path / "nan.pth"
    weights = build_model("resnet8", 10).state_dict()
    weights["fc.weight"][0, 0] = float("nan")
    torch.save({"model": weights}, diverged)
    cases = {
        "checkpoint": [str(tmp_path / "missing.pth"), "--data-folder", tiny_cifar],
        "not finite": [str(diverged), "--data-folder", tiny_cifar],
        "not a PyTorch checkpoint": [str(text), "--data-folder", tiny_cifar],
        "CIFAR-100 not found": [str(ok), "--data-folder", str(tmp_path / "no_data")],
        "not what --n-cls 100": [str(ok), "--data-folder", tiny_cifar, "--n-cls", "100"],
        "head has 5 classes": [str(small), "--data-folder", tiny_cifar],
        "ImageNet folder not found": [str(ok), "--dataset", "imagenet", "--data-folder", tiny_cifar],
    }
    # In this process (the tool's main), one start-up for all six; the other tests run it as a subprocess.
    spec = importlib.util.spec_from_file_location("evaluate_tool", EVALUATE)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    for expected, args in cases.items():
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = tool.main([*args, "--cpu"])
        assert code == 2, (expected, out.getvalue(), err.getvalue())
        assert out.getvalue() == "" and len(err.getvalue().strip().splitlines()) == 1, (expected, err.getvalue())
        assert err.getvalue().startswith("error: ") and expected in err.getvalue(), (expected, err.getvalue())
        assert "allow the download" not in err.getvalue()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        tool.main([str(tmp_path / "missing.pth"), "--cpu"])
    assert f"checkpoint {tmp_path / 'missing.pth'} does not exist; give a .pth file" in err.getvalue()
    assert "teacher" not in err.getvalue()  # a missing checkpoint is not a missing teacher
