"""CoCoRD under torchrun on the CPU (gloo): identical ranks, a queue filled in rank order."""
import json
import re
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from helpers import TINY_COCORD_NAME, TINY_NAME, main_env, tiny_options, write_yaml

from dataset import make_tiny_cifar

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]


def torchrun(args, cwd, timeout=300):
    env = main_env()
    return subprocess.run(TORCHRUN + args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def test_ranks_stay_identical_and_the_queue_is_in_rank_order(tmp_path):
    done = torchrun([str(ROOT / "tests" / "ddp_harness.py"), str(tmp_path)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert not torch.allclose(r0["keys"], r1["keys"])  # the ranks saw different images
    batch = r0["keys"].shape[0]
    for saved in (r0, r1):
        queue = saved["queue_after_first"]
        assert torch.equal(queue[:, :batch], r0["keys"].t()) and torch.equal(queue[:, batch:2 * batch], r1["keys"].t())
        assert torch.equal(queue[:, 2 * batch:], saved["queue_before"][:, 2 * batch:])
        assert saved["ptr"] == 2 * batch
    for name, value in r0["parameters"].items():  # parameters agree with no broadcast at all
        assert torch.equal(value, r1["parameters"][name]), name
    assert list(r0["state"]) == list(r1["state"])
    for name, value in r0["state"].items():  # student, slow student, heads, queue, BN statistics
        assert torch.equal(value, r1["state"][name]), name
    assert r0["images"] == r1["images"] == 2 * 4 * batch  # statistics reduced over both ranks


# Every method, as main.py runs it under torchrun: each declares what must stay identical across processes.
METHODS = {"cocord": ({}, "S_resnet8_T_resnet8_cifar100_cocord_ctr1.0cls1.0p4.0" + TINY_COCORD_NAME),
           "kd": ({"distill": "kd", "loss_cls": 0.1, "loss_kd": 0.9},
                  "S_resnet8_T_resnet8_cifar100_kd_cls0.1kd0.9T4.0" + TINY_NAME),
           "none": ({"distill": "none"}, "resnet8_cifar100_vanilla" + TINY_NAME)}
# Each of the two processes takes a batch of 8: the folders say so.
METHODS = {m: (changes, folder.replace("batch_size16", "batch_size8")) for m, (changes, folder) in METHODS.items()}


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_main_under_torchrun_trains_and_resumes(tmp_path, tiny_cifar, tiny_teacher, method):
    changes, folder = METHODS[method]
    opt = write_yaml(tmp_path / "opt.yml", tiny_options(tiny_cifar, tiny_teacher, batch_size=8, epochs=2, **changes))
    done = torchrun([str(ROOT / "main.py"), "-opt", opt, "--set", "epochs=1"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("epoch 1/1") == 1  # rank 0 alone prints
    done = torchrun([str(ROOT / "main.py"), "-opt", opt, "--resume", "--set", "epochs=2"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    trial = tmp_path / "experiments" / folder / "trial_1"
    results = json.loads((trial / "results.json").read_text())
    assert results["finished"] and [h["epoch"] for h in results["history"]] == [1, 2]
    assert results["history"][0]["images"] == 100  # both ranks' halves of the 100 training images
    assert torch.load(trial / "model" / "checkpoint.pth", weights_only=True)["epoch"] == 2


@pytest.mark.slow
def test_a_rank_that_falls_behind_does_not_mistake_rank_0s_files_for_another_run(tmp_path, tiny_cifar, tiny_teacher):
    """Rank 1 reads its data late while rank 0, with no teacher to evaluate and so nothing to wait for, has made
    the trial folder and not yet written its options. Only the writing process may judge what a folder holds:
    otherwise rank 1 takes rank 0's half-made folder for another run and refuses it."""
    opt = write_yaml(tmp_path / "opt.yml", tiny_options(tiny_cifar, tiny_teacher, batch_size=8, epochs=1,
                                                        distill="none"))
    done = torchrun([str(ROOT / "tests" / "killpoint.py"), "read:cifar-100-python/train", "1", "sleep:2@1",
                     "trial_1/options.yml.tmp", "1", "sleep:6@0", "--", "-opt", opt], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    trial = tmp_path / "experiments" / METHODS["none"][1] / "trial_1"
    assert json.loads((trial / "results.json").read_text())["finished"]


def our_errors(stderr: str) -> list[str]:
    """The lines main.py's processes said on stderr (torchrun adds its own report of the failed processes)."""
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


@pytest.mark.slow
def test_a_refusal_stops_every_process_and_a_resume_keeps_the_process_count(tmp_path, tiny_cifar, tiny_teacher):
    """Under torchrun, a refusal only rank 0 can make (a finished trial with other settings; a trial another
    process holds) stops both processes with rank 0's one line, exit status 2, instead of a lost connection on
    rank 1. The run records how many processes trained it (run.json, checkpoint): a resume in another number,
    which would train on batches of another size, is refused."""
    opt = write_yaml(tmp_path / "opt.yml", tiny_options(tiny_cifar, tiny_teacher, batch_size=8, epochs=1,
                                                        distill="none", experiment_name="mine"))
    main = [str(ROOT / "main.py"), "-opt", opt]
    done = torchrun(main, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    trial = tmp_path / "experiments" / "mine" / "trial_1"
    assert [s["processes"] for s in json.loads((trial / "run.json").read_text())["sessions"]] == [2]

    other = torchrun([*main, "--set", "learning_rate=0.1"], tmp_path)
    from utils.files import FolderLock
    lock = FolderLock(trial.parent, trial.name)  # this test process holds trial 1, as a run training it would
    try:
        busy = torchrun([*main, "--resume", "--set", "epochs=2"], tmp_path)
    finally:
        lock.release()
    for refused, words in ((other, "other settings: learning_rate 0.05 -> 0.1"), (busy, "is being trained by")):
        assert refused.returncode != 0
        said = our_errors(refused.stderr)
        assert len(said) == 1 and words in said[0], refused.stderr[-3000:]
        # Both stop cleanly: exit status 2 (torchrun may end the later one with SIGTERM as the first exits, once
        # rank 0 has spoken), never 1, a traceback.
        codes = re.findall(r"exitcode  : (-?\d+)", refused.stderr)
        assert len(codes) == 2 and "2" in codes and set(codes) <= {"2", "-15"}, refused.stderr[-3000:]
        assert "gloo" not in refused.stderr and "Connection closed" not in refused.stderr, refused.stderr[-3000:]

    alone = subprocess.run([sys.executable, *main, "--resume", "--set", "epochs=2"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300, env=main_env())
    assert alone.returncode == 2
    said = alone.stderr.strip().splitlines()
    assert len(said) == 1 and "trained in 2 processes" in said[0] and "--nproc_per_node=2" in said[0], said
    assert json.loads((trial / "results.json").read_text())["history"][-1]["epoch"] == 1


@pytest.fixture(scope="module")
def data32(tmp_path_factory) -> str:
    """32 training images: two steps an epoch of 2 processes x 8 (the 100-image set cost every method's every
    epoch seven)."""
    folder = tmp_path_factory.mktemp("distributed") / "d32"
    make_tiny_cifar(str(folder), n_train=32, n_test=16, num_classes=10, seed=0)
    return str(folder)


@pytest.mark.slow
def test_every_baseline_trains_and_resumes_under_torchrun(tmp_path, data32, tiny_teacher):
    """Each baseline for one epoch, then resumed to two, by 2 gloo processes (one launch runs them all, through
    main.main as main.py does): each finishes with both epochs and every process holding the same state (the
    trainer compares what each method declares replicated at every epoch's end and stops if it differs)."""
    from main_batch import __file__ as batch_script
    from test_methods_e2e import BASELINES, options
    cases = []
    for name in BASELINES:
        opt = write_yaml(tmp_path / f"{name}.yml", {**options(name, data32, tiny_teacher), "batch_size": 8,
                                                    "experiment_name": name})
        cases += [["-opt", opt, "--set", "epochs=1"], ["-opt", opt, "--resume", "--set", "epochs=2"]]
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    done = torchrun([batch_script, str(tmp_path / "cases.json"), str(tmp_path / "results.json")], tmp_path,
                    timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        results = json.loads((tmp_path / f"results.json.{rank}").read_text())
        failed = [(r["argv"][1], r["stderr"][-400:]) for r in results if r["rc"] != 0]
        assert not failed, failed
    for name in BASELINES:
        results = json.loads((tmp_path / "experiments" / name / "trial_1" / "results.json").read_text())
        assert results["finished"] and [h["epoch"] for h in results["history"]] == [1, 2], name
        assert results["history"][0]["images"] == 32, name  # both processes' halves of the 32 images
