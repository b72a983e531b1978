"""A new method is one new file: a copy of the project gains distiller/toy.py and nothing else, and that
method trains, logs its own terms, resumes, checks its options, and runs under torchrun and as a group."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from helpers import tiny_options, write_yaml
from test_distributed import TORCHRUN
from test_train_e2e import scalars

PACKAGES = ("options", "models", "distiller", "dataset", "engine", "utils")
FILES = ("main.py", "pyproject.toml")

TOY = '''"""A made-up method: cross-entropy plus an L2 penalty on the student's logits."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from distiller.base import Distiller, register
from options.schema import NONNEG, Field
from utils.meter import Accuracy


@register("toy")
class Toy(Distiller):
    options = {"toy": {"weight": Field(0.5, "float", *NONNEG)}}
    accuracy_outputs = {"acc_train": Accuracy("logits"), "acc_teacher": Accuracy("teacher_logits")}

    def __init__(self, student, teacher, opt: dict[str, Any]):
        super().__init__(student, teacher, opt)
        self.weight = opt["toy"]["weight"]

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.student(x)
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        loss_cls = F.cross_entropy(logits, labels)
        loss_smooth = logits.pow(2).mean()
        return {"loss": loss_cls + self.weight * loss_smooth, "loss_cls": loss_cls, "loss_smooth": loss_smooth,
                "logits": logits, "teacher_logits": teacher_logits}

    @classmethod
    def experiment_name(cls, opt: dict[str, Any]) -> str:
        return f"S_{opt['student_model']}_T_{opt['teacher_model']}_toy_w{opt['toy']['weight']}"
'''
FOLDER = "S_resnet8_T_resnet8_toy_w0.5_batch_size16_n_cls10"  # then the options not at their defaults
TOY_TAGS = ("loss_train/smooth", "loss_train/cls", "loss_train/total", "acc_teacher/top_1", "acc_teacher/top_5",
            "acc_train/top_1")


def files_of(root: Path) -> dict[str, bytes]:
    """Every file of the project's code under `root` (caches left out), by relative path."""
    found = {}
    for name in FILES:
        found[name] = (root / name).read_bytes()
    for package in PACKAGES:
        for path in (root / package).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                found[str(path.relative_to(root))] = path.read_bytes()
    return found


@pytest.fixture(scope="module")
def copy(tmp_path_factory) -> Path:
    """The project's code, copied, plus distiller/toy.py."""
    root = tmp_path_factory.mktemp("project")
    for name in FILES:
        shutil.copy2(ROOT / name, root / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "distiller" / "toy.py").write_text(TOY)
    return root


def env_for(copy: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(copy), "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": "",
            "OMP_NUM_THREADS": "1"}


def main(copy: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The copy's main.py, importing the copy's packages (cwd and PYTHONPATH are the copy)."""
    return subprocess.run([sys.executable, str(copy / "main.py"), *args], cwd=copy, env=env_for(copy),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def toy_options(copy, tmp_path_factory, data16, tiny_teacher) -> tuple[str, Path]:
    work = tmp_path_factory.mktemp("toy_work")  # options and runs outside the copy: its tree stays the code only
    options = tiny_options(data16, tiny_teacher, distill="toy", experiments_dir=str(work / "experiments"))
    del options["cocord"]
    return write_yaml(work / "toy.yml", options), work / "experiments"


@pytest.mark.slow
def test_a_new_method_is_one_file(copy, toy_options):
    opt, experiments = toy_options
    trial = experiments / FOLDER / "trial_1"

    done = main(copy, "-opt", opt, "-t", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(toy, 1 trial)" in done.stdout and done.stdout.count("epoch 2/2 lr") == 1
    tags = scalars(trial)
    for tag in TOY_TAGS:
        assert [step for step, _ in tags.get(tag, [])] == [1, 2], tag
    assert "acc_cocord/top_1" not in tags
    history = json.loads((trial / "results.json").read_text())["history"]
    assert [h["loss_smooth"] for h in history] == pytest.approx([v for _, v in tags["loss_train/smooth"]], rel=1e-5)

    done = main(copy, "-opt", opt, "-t", "1", "--resume", "--set", "epochs=3")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "epochs=3" in done.stdout and "epoch 3/3 lr" in done.stdout
    tags = scalars(trial)
    for tag in TOY_TAGS:
        assert [step for step, _ in tags[tag]] == [1, 2, 3], tag
    assert torch.load(trial / "model" / "checkpoint.pth", weights_only=True)["epoch"] == 3

    # Its fixed option cannot change on resume; its block's keys are checked like any other.
    ckpt = (trial / "model" / "checkpoint.pth").read_bytes()
    done = main(copy, "-opt", opt, "--set", "epochs=4", f"path.resume={trial}", "toy.weight=0.7")
    assert done.returncode == 2 and "toy.weight=0.7" in done.stderr and "must keep" in done.stderr, done.stderr
    # By trial number, the weight names the folder (experiment_name): the run it would resume is not there.
    done = main(copy, "-opt", opt, "-t", "1", "--resume", "--set", "epochs=4", "toy.weight=0.7")
    assert done.returncode == 2 and "--set toy.weight=0.7 only chooses which run" in done.stderr, done.stderr
    assert (trial / "model" / "checkpoint.pth").read_bytes() == ckpt
    assert sorted(p.name for p in experiments.iterdir()) == [FOLDER]
    done = main(copy, "-opt", opt, "--set", "toy.wieght=0.7")
    assert done.returncode == 2 and "unknown option 'toy.wieght'" in done.stderr, done.stderr
    assert "did you mean 'weight'" in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr

    # Two trials trained together (one vmap of the method's forward).
    done = main(copy, "-opt", opt, "-t", "2-3")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(toy, 2 trials)" in done.stdout
    for t in (2, 3):
        tags = scalars(experiments / FOLDER / f"trial_{t}")
        assert [step for step, _ in tags["loss_train/smooth"]] == [1, 2], t
        assert [step for step, _ in tags["acc_teacher/top_1"]] == [1, 2], t

    # No other file of the project changed: the method is toy.py alone.
    original, copied = files_of(ROOT), files_of(copy)
    assert copied.pop("distiller/toy.py") == TOY.encode()
    assert sorted(copied) == sorted(original)
    assert [name for name in original if copied[name] != original[name]] == []


@pytest.mark.slow
def test_a_new_method_runs_under_torchrun(copy, toy_options):
    opt, experiments = toy_options
    ddp = experiments.parent / "ddp"
    done = subprocess.run(TORCHRUN + [str(copy / "main.py"), "-opt", opt, "--set", "epochs=1",
                                      f"experiments_dir={ddp}", "batch_size=8"],
                          cwd=copy, env=env_for(copy), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("epoch 1/1 lr") == 1  # rank 0 alone prints
    trial = ddp / FOLDER.replace("batch_size16", "batch_size8") / "trial_1"  # its folder says its batch
    tags = scalars(trial)
    assert [step for step, _ in tags["loss_train/smooth"]] == [1]
    assert json.loads((trial / "results.json").read_text())["history"][0]["images"] == 16  # both ranks' halves
