"""Every bad input: exit status 2, one line that names the problem, no traceback, nothing written."""
import os
import pickle
from pathlib import Path

import pytest
from helpers import run_main, save_crd_checkpoint, tiny_options, write_yaml
from main_batch import run_batch
from test_train_e2e import COCORD_FOLDER

from models import build_model


class Boom:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def make_inputs(work: Path, data: str) -> dict[str, str]:
    """Broken teachers and data beside a working setup."""
    paths = {"resnet14_teacher": str(work / "r14.pth"), "garbage_teacher": str(work / "garbage.pth"),
             "evil_teacher": str(work / "evil.pth"), "broken_data": str(work / "broken_data")}
    save_crd_checkpoint(build_model("resnet14", 10), paths["resnet14_teacher"])
    Path(paths["garbage_teacher"]).write_bytes(os.urandom(4096))
    Path(paths["evil_teacher"]).write_bytes(pickle.dumps(Boom(), protocol=2))
    broken = Path(paths["broken_data"]) / "cifar-100-python"
    broken.mkdir(parents=True)
    for name in ("train", "test", "meta"):
        (broken / name).write_bytes((Path(data) / "cifar-100-python" / name).read_bytes())
    (broken / "train").write_bytes(b"not a pickle at all")
    return paths


# (case, options changes, extra command-line arguments, words the one-line message must contain)
CASES = [
    ("typo in a key", {"epoch": 3}, [], ["unknown option 'epoch'", "'epochs'"]),
    ("typo in a nested key", {"cocord": {"key_sise": 64}}, [], ["cocord.key_sise", "'key_size'"]),
    ("wrong type", {"batch_size": "sixteen"}, [], ["batch_size", "integer"]),
    ("negative lr", {"learning_rate": -0.1}, [], ["learning_rate", "> 0"]),
    ("momentum above 1", {"momentum": 1.5}, [], ["momentum", "[0, 1]"]),
    ("decay epochs out of order", {"lr_decay_epochs": [3, 1]}, [], ["lr_decay_epochs", "increasing"]),
    ("start_epoch from the published code", {"start_epoch": 5}, [], ["start_epoch", "path.resume"]),
    ("unknown method", {"distill": "crdd"}, [], ["distill", "cocord", "did you mean 'crd'"]),
    ("kd without weight", {"distill": "kd"}, [], ["loss_kd"]),
    ("queue smaller than a batch", {"cocord": {"key_size": 8}}, [], ["key_size", "batch"]),
    ("CRD negatives beyond memory", {"distill": "crd"}, ["--set", "crd.nce_k=1000000000000"],
     ["GiB", "a training step"]),
    ("unknown student", {"student_model": "resnet2O"}, [], ["student_model", "'resnet20'"]),
    ("unknown teacher", {"teacher_model": "wrn_40_3"}, [], ["teacher_model", "wrn_40_2"]),
    ("teacher file missing", {"path": {"teacher": "nowhere/ckpt.pth"}}, [], ["nowhere/ckpt.pth", "train_teacher"]),
    ("teacher of another architecture", {"path": {"teacher": "@resnet14_teacher"}}, [], ["resnet14", "resnet8"]),
    ("teacher not a checkpoint", {"path": {"teacher": "@garbage_teacher"}}, [], ["garbage.pth"]),
    ("teacher pickle that runs code", {"path": {"teacher": "@evil_teacher"}}, [], ["evil.pth", "unsafe"]),
    ("no dataset", {"data_folder": "missing_data"}, [], ["cifar-100-python", "missing_data"]),
    ("unreadable dataset", {"data_folder": "@broken_data"}, [], ["train"]),
    ("labels beyond n_cls", {"n_cls": 5, "distill": "none"}, [], ["n_cls"]),
    ("gpu index negative", {"gpu": -1}, [], ["gpu", ">= 0"]),
    ("SyncBatchNorm on the CPU", {"sync_bn": True}, [], ["sync_bn", "CPU"]),
    ("override without '='", {}, ["--set", "epochs"], ["key=value"]),
    ("override of an unknown key", {}, ["--set", "cocord.TT=0.1"], ["cocord.TT", "'T'"]),
    ("override of another method's key", {}, ["--set", "crd.nce_k=5"], ["crd.nce_k", "nothing", "distill: cocord"]),
    ("bad override value", {}, ["--set", "epochs=-3"], ["epochs", "> 0"]),
    ("resume with nothing to resume", {}, ["--resume"], ["nothing to resume"]),
    ("resume target missing", {"path": {"resume": "no/such/run"}}, [], ["no/such/run"]),
]


def snapshot(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_cifar, tiny_teacher):
    work = tmp_path_factory.mktemp("bad")
    existing = work / "experiments" / COCORD_FOLDER / "trial_2"
    existing.mkdir(parents=True)
    (existing / "results.json").write_text("{}")  # a run of someone's, which must not be archived or touched
    return work, make_inputs(work, tiny_cifar)


def resolve(value, paths):
    if isinstance(value, dict):
        return {k: resolve(v, paths) for k, v in value.items()}
    return paths[value[1:]] if isinstance(value, str) and value.startswith("@") else value


@pytest.fixture(scope="module")
def refused(workspace, tiny_cifar, tiny_teacher):
    """Every case's run, one after another in one process (main_batch: one start-up for all of them), and what
    the experiments folder held before and after them all."""
    work, paths = workspace
    cases = []
    for i, (_, changes, args, _) in enumerate(CASES):
        options = tiny_options(tiny_cifar, tiny_teacher)
        for key, value in resolve(changes, paths).items():
            options[key] = {**options[key], **value} if isinstance(value, dict) and key in options else value
        cases.append(["-opt", write_yaml(work / f"opt_{i}.yml", options), "-t", "2", *args])
    before = snapshot(work / "experiments")
    results = run_batch(cases, work)
    return results, before, snapshot(work / "experiments")


@pytest.mark.parametrize("case,changes,args,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input(refused, workspace, case, changes, args, words):
    results, _, _ = refused
    done = results[[c[0] for c in CASES].index(case)]
    assert done["rc"] == 2, (case, done["stderr"])
    lines = done["stderr"].strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done["stderr"], done["stderr"]
    for word in words:
        assert word in lines[0], (case, lines[0])


def test_bad_inputs_write_nothing(refused, workspace):
    _, before, after = refused
    assert after == before  # no case wrote, renamed or archived anything
    assert not (workspace[0] / "PWNED").exists()


def test_yaml_syntax_error_names_the_line(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("epochs: 3\ncocord: {T: 0.1\nseed: 1\n")
    done = run_main(["-opt", str(bad)], tmp_path)
    assert done.returncode == 2 and "not valid YAML" in done.stderr and "line" in done.stderr
    assert not (tmp_path / "experiments").exists()


def test_missing_options_file(tmp_path):
    done = run_main(["-opt", "nope.yml"], tmp_path)
    assert done.returncode == 2 and "nope.yml not found" in done.stderr
