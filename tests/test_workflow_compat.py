"""What users of the published code bring along (its options files, its checkpoint keys, `-trial`), and the
machine a run lands on: the device, loader workers, the command line's own checks."""
import io
import os
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import ROOT
from helpers import TINY_NAME, lines, main_env, run_main, tiny_options, write_yaml
from test_train_e2e import COCORD_FOLDER

from engine.machine import select_device
from main import parse_args
from options.schema import DERIVED, OptionsError


@pytest.mark.slow
def test_published_options_and_checkpoint_keys(tmp_path, tiny_cifar, tiny_teacher):
    """An options.yml the published code wrote (its derived keys, gpu 0) runs here, with one note for the
    derived keys and one warning for the missing GPU; our checkpoint carries the published keys too."""
    options = tiny_options(tiny_cifar, tiny_teacher, epochs=1, gpu=0, trial=3)
    options["path"].update({"exp_root": "./experiments/old", "log": "./experiments/old/log",
                            "model": "./experiments/old/model", "state": "./experiments/old/state"})
    done = run_main(["-opt", write_yaml(tmp_path / "published.yml", options)], tmp_path)  # CUDA_VISIBLE_DEVICES=""
    assert done.returncode == 0, done.stderr
    said = lines(done.stdout + "\n" + done.stderr)
    notes = [line for line in said if line.startswith("note:") or "exp_root" in line]
    assert len(notes) == 1 and all(key in notes[0] for key in DERIVED), notes
    gpu = [line for line in said if "GPU" in line]
    assert len(gpu) == 1 and gpu[0].startswith("warning: no CUDA GPU"), gpu
    assert " on cpu " in done.stdout
    trial = tmp_path / "experiments" / COCORD_FOLDER / "trial_1"  # the command's trial, not the file's
    recorded = yaml.safe_load((trial / "options.yml").read_text())
    assert "trial" not in recorded and "exp_root" not in recorded["path"] and recorded["gpu"] == 0
    assert not (tmp_path / "experiments" / "old").exists()

    path = trial / "model" / "checkpoint.pth"
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["best_acc1"] == ckpt["best_acc"] and list(ckpt["s_model_dict"]) == list(ckpt["model"])
    for name, tensor in ckpt["model"].items():  # one tensor under two names: stored once
        alias = ckpt["s_model_dict"][name]
        assert alias.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr(), name
    without = io.BytesIO()
    torch.save({k: v for k, v in ckpt.items() if k != "s_model_dict"}, without)
    student_bytes = sum(t.nbytes for t in ckpt["model"].values())
    assert path.stat().st_size < without.getbuffer().nbytes + student_bytes / 2


@pytest.mark.slow
def test_more_workers_than_cores_on_the_cpu(tmp_path, tiny_cifar):
    cpus = sorted(os.sched_getaffinity(0))[:2]
    opt = write_yaml(tmp_path / "opt.yml", tiny_options(tiny_cifar, None, distill="none", epochs=1,
                                                          num_workers=len(cpus) + 3))
    done = subprocess.run([sys.executable, str(ROOT / "main.py"), "-opt", opt], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, preexec_fn=lambda: os.sched_setaffinity(0, cpus),
                          env=main_env())
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    said = [line for line in lines(output) if "num_workers" in line]
    assert said == [f"note: num_workers {len(cpus) + 3} is more than this machine's {len(cpus)} cores; using "
                    f"{len(cpus)}"], output
    assert "suggested max number of worker" not in output, output
    trial = tmp_path / "experiments" / ("resnet8_cifar100_vanilla" + TINY_NAME) / "trial_1"
    assert yaml.safe_load((trial / "options.yml").read_text())["num_workers"] == len(cpus)
    assert (trial / "train.log").read_text().count("num_workers") == 1


@pytest.mark.slow
def test_an_option_given_twice_is_an_error(tmp_path):
    opt = write_yaml(tmp_path / "opt.yml", {"epochs": 2})
    done = run_main(["-opt", opt, "--set", "epochs=3", "epochs=4"], tmp_path)
    assert done.returncode == 2
    assert lines(done.stderr) == ["error: option 'epochs' is given twice ('epochs=3' and 'epochs=4'); give it once"]
    assert not (tmp_path / "experiments").exists()


def test_the_published_trial_flag():
    assert parse_args(["-opt", "x.yml", "-trial", "2"]).trials == parse_args(["-opt", "x.yml", "-t", "2"]).trials
    assert parse_args(["-opt", "x.yml", "-trial", "2"]).trials == [2]


def test_select_device_cpu_when_asked():
    said = []
    assert select_device({"gpu": None}, said.append) == torch.device("cpu") and said == []


def test_select_device_falls_back_to_the_cpu_with_one_warning(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    said = []
    assert select_device({"gpu": 1}, said.append) == torch.device("cpu")
    assert len(said) == 1 and said[0].startswith("warning: no CUDA GPU found; training on the CPU"), said


def test_select_device_makes_the_chosen_gpu_current(monkeypatch):
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    said = []
    assert select_device({"gpu": 1}, said.append) == torch.device("cuda", 1)
    assert current == [torch.device("cuda", 1)] and said == []
    with pytest.raises(OptionsError, match="'gpu' is 2 but this machine has 2 GPU"):
        select_device({"gpu": 2}, said.append)
    assert len(current) == 1
