"""Every baseline through main.py on tiny data: it trains, resumes to the same bits as a run that never stopped,
and trains a group of two trials (stacked, or one after another if it cannot be stacked)."""
import json

import pytest
import torch
from helpers import tiny_options, write_yaml
from main_batch import run_batch
from test_train_e2e import scalars

from distiller import METHODS

pytestmark = pytest.mark.slow

# cocord, kd and none have end-to-end tests of their own (test_train_e2e, test_trials_e2e, test_resume).
BASELINES = sorted(set(METHODS) - {"cocord", "kd", "none"})


def options(name: str, data: str, teacher: str) -> dict:
    opt = tiny_options(data, teacher, distill=name, epochs=2)
    del opt["cocord"]
    block = METHODS[name].options.get(name)
    if isinstance(block, dict) and "init_epochs" in block:
        opt[name] = {"init_epochs": 1}  # a two-stage method's init stage, one epoch of it
    return opt


@pytest.mark.parametrize("name", BASELINES)
def test_a_baseline_trains_resumes_exactly_and_trains_a_group(name, tmp_path, tiny_cifar, tiny_teacher):
    opt = write_yaml(tmp_path / "opt.yml", options(name, tiny_cifar, tiny_teacher))
    results = run_batch([
        ["-opt", opt, "--set", "experiment_name=straight"],
        ["-opt", opt, "--set", "experiment_name=stopped", "epochs=1"],
        ["-opt", opt, "--resume", "--set", "experiment_name=stopped", "epochs=2"],
        ["-opt", opt, "-t", "1-2", "--set", "experiment_name=group", "epochs=1"],
    ], tmp_path)
    assert [r["rc"] for r in results] == [0, 0, 0, 0], [r["stderr"][-600:] for r in results]
    experiments = tmp_path / "experiments"
    straight = torch.load(experiments / "straight/trial_1/model/checkpoint.pth", weights_only=True)
    resumed = torch.load(experiments / "stopped/trial_1/model/checkpoint.pth", weights_only=True)
    assert straight["epoch"] == resumed["epoch"] == 2
    assert list(straight["method"]) == list(resumed["method"])
    for key, value in straight["method"].items():
        assert torch.equal(value, resumed["method"][key]), f"{name}: {key} differs after a resume"
    tags = scalars(experiments / "stopped/trial_1")
    assert [s for s, _ in tags["loss_train/total"]] == [1, 2]  # each epoch logged once
    assert any(tag.startswith("loss_train/") and tag != "loss_train/total" for tag in tags)  # the method's terms
    for t in (1, 2):
        done = json.loads((experiments / f"group/trial_{t}/results.json").read_text())
        assert done["finished"] and done["distill"] == name and done["seed"] == t - 1
