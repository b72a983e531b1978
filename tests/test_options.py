"""The options file, overrides and what a run prints."""
import io

import pytest
import yaml
from conftest import ROOT
from helpers import TINY_NAME, run_main, tiny_options, write_yaml

from distiller import CoCoRD, build_options, load_options
from options.schema import COMMON, OptionsError, defaults, merge_schemas, parse_overrides
from utils.progress import Progress

PUBLISHED = """student_model: resnet20
teacher_model: resnet56
gpu: 0
dataset: cifar100
data_folder: ./data_cifar100
batch_size: 64
num_workers: 8
start_epoch: 0
epochs: 240
learning_rate: 0.05
lr_decay_epochs: [150, 180, 210]
lr_decay_rate: 0.1
weight_decay: 5e-4
momentum: 0.9
print_freq: 300
path:
  resume: ~
  teacher: ./t_model/resnet56/ckpt_epoch_240.pth
cocord:
  T: 0.10
  key_size: 2048
  momentum: 0.999
  b_momentum: 0.9
  pred_dim: 512
  hidden_dim: 2048
  embedding_dim: 2048
distill: cocord
seed: ~
pin_memory: true
loss_ctr: 1.0
loss_cls: 1.0
loss_pred: 4.0
n_cls: 100
"""


def test_a_published_options_file_runs_unchanged(tmp_path):
    path = tmp_path / "published.yml"
    path.write_text(PUBLISHED)
    opt = load_options(path)
    assert opt["weight_decay"] == 5e-4  # YAML 1.1 reads 5e-4 as text; it is still a number
    assert opt == load_options(ROOT / "options" / "train_student.yml")
    # every key at its default, but the teacher the published file names (absent, it is read from the checkpoint)
    assert opt == {**defaults(merge_schemas(COMMON, CoCoRD.options)), "teacher_model": "resnet56"}


def test_overrides_nest_and_parse_values():
    opt = build_options({}, ["cocord.T=0.07", "epochs=10", "lr_decay_epochs=[5, 8]", "seed=null", "pin_memory=false"])
    assert opt["cocord"]["T"] == 0.07 and opt["cocord"]["key_size"] == 2048
    assert opt["epochs"] == 10 and opt["lr_decay_epochs"] == [5, 8] and opt["seed"] is None
    assert opt["pin_memory"] is False
    assert parse_overrides(["path.teacher=a/b.pth"]) == {"path": {"teacher": "a/b.pth"}}


@pytest.mark.parametrize("overrides,words", [
    (["epochs"], "key=value"), (["epoch=3"], "did you mean 'epochs'"), (["cocord.T=hot"], "must be a number"),
    (["cocord=3"], "must be a mapping"), (["lr_decay_epochs=7"], "list of integers"),
])
def test_bad_overrides(overrides, words):
    with pytest.raises(OptionsError, match=words):
        build_options({}, overrides)


def test_another_methods_key_is_dropped_from_a_file_and_refused_from_the_command_line():
    """One options file may serve several methods (its other blocks do nothing); a --set of a key the chosen method
    lacks does nothing either, and a sweep over it would train the same run once per value: it is refused."""
    shared = {"distill": "crd", "cocord": {"T": 0.05}, "hint": {"hint_layer": 3}, "loss_hint": 10.0}
    opt = build_options(shared)
    assert "cocord" not in opt and "hint" not in opt and "loss_hint" not in opt
    for overrides, words in ((["hint.hint_layer=3"], "hint.hint_layer would change nothing with distill: crd"),
                             (["distill=none", "loss_kd=1"], "loss_kd would change nothing with distill: none"),
                             (["cocord.T=0.05"], "it is an option of cocord")):
        with pytest.raises(OptionsError, match=words):
            build_options(shared, overrides)
    assert build_options(shared, ["distill=hint", "hint.hint_layer=1"])["hint"]["hint_layer"] == 1


def test_overrides_are_recorded_and_progress_is_one_line_per_epoch(tmp_path, tiny_cifar, tiny_teacher):
    opt = write_yaml(tmp_path / "opt.yml", tiny_options(tiny_cifar, tiny_teacher, epochs=1))
    done = run_main(["-opt", opt, "--set", "cocord.T=0.07", "epochs=2", "loss_pred=2"], tmp_path)
    assert done.returncode == 0, done.stderr
    trial = tmp_path / "experiments" / ("S_resnet8_T_resnet8_cifar100_cocord_ctr1.0cls1.0p2.0" + TINY_NAME
                                   + "_T0.07_key_size64_pred_dim8_hidden_dim32_embedding_dim16") / "trial_1"
    recorded = yaml.safe_load((trial / "options.yml").read_text())
    assert recorded["cocord"]["T"] == 0.07 and recorded["epochs"] == 2 and recorded["loss_pred"] == 2.0
    epoch_lines = [line for line in done.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epoch_lines] == ["1/2", "2/2"]  # not a terminal: one line per epoch
    assert "\r" not in done.stdout
    for line in epoch_lines:
        assert "img/s" in line and "top1" in line and "left" in line


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal():
    """tqdm on a terminal: the bar advances at every step (no statistics read), the statistics show when read,
    and the epoch's line replaces the bar."""
    out = Terminal()
    progress = Progress(epochs=3, steps_per_epoch=10, stream=out)
    progress.start_epoch(1, 0.05)
    for _ in range(5):
        progress.step()
    progress.update({"loss": 2.5, "acc_train_top1": 40.0, "images": 40})
    progress.bar.refresh()
    screen = out.getvalue()
    assert "epoch 1/3" in screen and "5/10" in screen and "img/s" in screen and "loss 2.500" in screen
    progress.end_epoch([("", {"loss": 2.0, "images": 80}, {"loss": 1.0, "top1": 50.0, "top5": 90.0})])
    assert progress.bar is None and out.getvalue().endswith("\n")
    assert out.getvalue().splitlines()[-1].startswith("epoch 1/3 lr 0.05 | train loss 2.0000")
    assert "test loss 1.0000 top1 50.00%" in out.getvalue()
