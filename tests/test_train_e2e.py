"""`main.py` as users run it: a real subprocess on real-format data, real files read back."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT
from helpers import TINY_COCORD_NAME, TINY_NAME, run_main, tiny_options, write_yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from models import load_teacher

PUBLISHED_TAGS = {"loss_train/total", "acc_train/top_1", "acc_train/top_5", "acc_cocord/top_1", "acc_cocord/top_5",
                  "loss_val/loss", "acc_val/top_1", "acc_val/top_5"}
COCORD_FOLDER = "S_resnet8_T_resnet8_cifar100_cocord_ctr1.0cls1.0p4.0" + TINY_COCORD_NAME


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def tiny_cocord_run(work: Path, tiny_cifar: str, tiny_teacher: str) -> tuple[str, subprocess.CompletedProcess, Path]:
    """`main.py -t 1` with the tiny CoCoRD options, in `work`: (its options file, the finished process, the trial
    folder)."""
    opt = write_yaml(work / "opt.yml", tiny_options(tiny_cifar, tiny_teacher))
    done = run_main(["-opt", opt, "-t", "1"], work)
    assert done.returncode == 0, done.stderr
    return opt, done, work / "experiments" / COCORD_FOLDER / "trial_1"


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, tiny_cifar, tiny_teacher):
    work = tmp_path_factory.mktemp("run")
    _, done, trial = tiny_cocord_run(work, tiny_cifar, tiny_teacher)
    return work, done, trial


def test_run_leaves_the_published_folder(distilled):
    work, done, trial = distilled
    assert "teacher resnet8 test accuracy:" in done.stdout
    for name in ("options.yml", "network_summary.txt", "results.json", "model/checkpoint.pth", "model/best.pth",
                 "model/ckpt_epoch_2.pth"):
        assert (trial / name).is_file(), name
    options = yaml.safe_load((trial / "options.yml").read_text())
    assert options["epochs"] == 2 and options["cocord"]["key_size"] == 64
    assert "student_head" in (trial / "network_summary.txt").read_text()


def test_event_files_hold_the_published_tags_once_per_epoch(distilled):
    tags = scalars(distilled[2])
    assert PUBLISHED_TAGS <= set(tags)
    for tag in PUBLISHED_TAGS:
        assert [step for step, _ in tags[tag]] == [1, 2], tag


def test_checkpoints_and_results(distilled):
    trial = distilled[2]
    ckpt = torch.load(trial / "model/checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["arch"] == "resnet8"
    assert ckpt["method"]["queue"].shape == (16, 64) and int(ckpt["method"]["queue_ptr"]) == (2 * 100) % 64
    assert not any(k.startswith("teacher.") for k in ckpt["method"])  # the teacher lives in its own file
    results = json.loads((trial / "results.json").read_text())
    history = results["history"]
    assert results["finished"] and [h["epoch"] for h in history] == [1, 2]
    best = max(history, key=lambda h: h["val_top1"])
    assert results["best_acc"] == best["val_top1"] and results["best_epoch"] == best["epoch"]
    assert results["last_acc"] == history[-1]["val_top1"] and results["last_epoch"] == 2
    assert torch.load(trial / "model/best.pth", weights_only=True)["epoch"] == results["best_epoch"]
    assert [h["lr"] for h in history] == [0.05, pytest.approx(0.005)]
    assert all(h["seconds"] > 0 and h["test_seconds"] > 0 for h in history)  # training and testing, timed apart
    # A student we trained loads as a teacher, as any CRD checkpoint does.
    load_teacher(str(trial / "model/best.pth"), "resnet8", 10)


def test_a_second_run_archives_the_first(distilled, tiny_cifar, tiny_teacher, tmp_path):
    # On a copy: the other tests read the shared run, and pytest may order this one before them.
    work = Path(shutil.copytree(distilled[0], tmp_path / "run"))
    trial = work / distilled[2].relative_to(distilled[0])
    opt = write_yaml(work / "one_epoch.yml", tiny_options(tiny_cifar, tiny_teacher, epochs=1))
    before = (trial / "results.json").read_text()
    done = run_main(["-opt", opt, "-t", "1", "--replace"], work)  # other settings (epochs): archived when asked
    assert done.returncode == 0, done.stderr
    archived = [p for p in trial.parent.iterdir() if p.name.startswith("trial_1_archived_")]
    assert len(archived) == 1 and (archived[0] / "results.json").read_text() == before
    assert json.loads((trial / "results.json").read_text())["last_epoch"] == 1


def test_teacher_training_then_distillation(tmp_path, tiny_cifar):
    """Issue 4: train a teacher with distill none, then distil from the checkpoint it wrote."""
    opt = tiny_options(tiny_cifar, None, distill="none", epochs=1, student_model="resnet14")
    done = run_main(["-opt", write_yaml(tmp_path / "teacher.yml", opt)], tmp_path)
    assert done.returncode == 0, done.stderr
    trial = tmp_path / "experiments" / ("resnet14_cifar100_vanilla" + TINY_NAME) / "trial_1"
    ckpt_path = trial / "model" / "ckpt_epoch_1.pth"
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert set(ckpt) == {"epoch", "model", "best_acc", "optimizer"}  # CRD's layout
    assert load_teacher(str(ckpt_path), "resnet14", 10).training is False
    student = tiny_options(tiny_cifar, str(ckpt_path), teacher_model="resnet14", epochs=1)
    done = run_main(["-opt", write_yaml(tmp_path / "student.yml", student)], tmp_path)
    assert done.returncode == 0, done.stderr
    student_folder = "S_resnet8_T_resnet14_cifar100_cocord_ctr1.0cls1.0p4.0" + TINY_COCORD_NAME
    assert (tmp_path / "experiments" / student_folder).is_dir()


def test_published_options_without_dataset_say_where_to_put_it(tmp_path):
    """The default command with a teacher in place and no data (no network): one line, exit 2."""
    from helpers import save_crd_checkpoint

    from models import build_model
    (tmp_path / "t_model" / "resnet56").mkdir(parents=True)
    save_crd_checkpoint(build_model("resnet56"), tmp_path / "t_model" / "resnet56" / "ckpt_epoch_240.pth")
    done = run_main(["-opt", str(ROOT / "options" / "train_student.yml"), "-t", "1"], tmp_path, timeout=200)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cifar-100-python" in lines[0] and "data_cifar100" in lines[0], done.stderr
    assert not (tmp_path / "experiments").exists() and not (tmp_path / "data_cifar100").exists()
