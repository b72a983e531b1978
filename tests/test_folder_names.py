"""One table of options: what names a run's folder, what a resume keeps, and what makes two settings differ all
come from the options' Fields; a sweep over any result-affecting option never lands in its base run's folder."""
import pytest
from helpers import TINY_COCORD_NAME, run_main, tiny_options, write_yaml
from main_batch import run_batch

from distiller import build_options, method_class
from options.common import COMMON
from options.schema import OptionsError
from options.settings import fields, result_settings

PUBLISHED = "S_resnet20_T_resnet56_cifar100_cocord_ctr1.0cls1.0p4.0"


def folder(overrides=(), given=None):
    opt = build_options({"teacher_model": "resnet56", **(given or {})}, list(overrides))
    return method_class(opt["distill"]).folder_name(opt)


def test_published_settings_keep_the_published_name():
    assert folder() == PUBLISHED
    # Neither the schedule a resume may extend (epochs, lr_decay_epochs) nor the machine names a run.
    assert folder(["epochs=10", "lr_decay_epochs=[5]", "seed=3", "gpu=null", "num_workers=2",
                   "speed.compile=false"]) == PUBLISHED
    assert folder(["loss_kd=1.0"]) == PUBLISHED + "kd1.0"  # CoCoRD+KD, as the published rule names it
    assert folder(["distill=kd", "loss_cls=0.1", "loss_kd=0.9"]) == "S_resnet20_T_resnet56_cifar100_kd_cls0.1kd0.9T4.0"
    assert folder(["distill=none", "student_model=resnet56"]) == "resnet56_cifar100_vanilla"


@pytest.mark.parametrize("overrides, suffix", [
    (["cocord.T=0.07"], "_T0.07"),
    (["learning_rate=0.01"], "_learning_rate0.01"),
    (["lr_decay_rate=0.2", "weight_decay=1e-4"], "_lr_decay_rate0.2_weight_decay0.0001"),
    (["cocord.momentum=0.99"], "_cocord.momentum0.99"),  # `momentum` alone would be SGD's
    (["momentum=0.8", "batch_size=128"], "_batch_size128_momentum0.8"),  # in the table's order
    (["speed.amp=true"], "_ampTrue"),
])
def test_every_result_affecting_option_off_its_default_names_the_folder(overrides, suffix):
    assert folder(overrides) == PUBLISHED + suffix


def test_a_sweep_never_shares_a_folder():
    names = {folder([f"cocord.T={t}"]) for t in (0.05, 0.1, 0.2)} | {folder([f"learning_rate={lr}"])
                                                                      for lr in (0.01, 0.05, 0.1)}
    assert len(names) == 5 and PUBLISHED in names  # T 0.1 and lr 0.05 are the defaults: the base run


def test_only_the_methods_own_keys_count():
    # A KD run from a file holding a cocord block: those keys do nothing here, and are not the run's.
    opt = build_options({"distill": "kd", "cocord": {"T": 0.5}, "loss_ctr": 3.0, "loss_cls": 0.1, "loss_kd": 0.9})
    assert "cocord" not in opt and "loss_ctr" not in opt
    assert method_class("kd").folder_name(opt) == "S_resnet20_T_auto_cifar100_kd_cls0.1kd0.9T4.0"
    vanilla = build_options({"distill": "none", "teacher_model": "resnet56", "student_model": "resnet8"})
    assert method_class("none").folder_name(vanilla) == "resnet8_cifar100_vanilla"  # no teacher in its name


def test_a_long_list_of_settings_is_named_by_a_digest():
    many = [f"cocord.{k}={v}" for k, v in (("key_size", 4096), ("pred_dim", 1024), ("hidden_dim", 4096),
                                          ("embedding_dim", 1024), ("momentum", 0.9999), ("b_momentum", 0.99))]
    name = folder(many + ["learning_rate=0.0123456789", "weight_decay=0.000123456789", "lr_decay_rate=0.123456789"])
    assert name.startswith(PUBLISHED + "_opts-") and len(name.encode()) < 255
    assert folder(many) != name


def test_experiment_name_is_taken_as_given():
    assert folder(["experiment_name=mine", "cocord.T=0.07"]) == "mine"


def test_the_table_sorts_every_common_key():
    table = fields(COMMON)
    assert {f.resume for f in table.values()} <= {"keep", "change", "machine"}
    assert all(not f.result for f in table.values() if f.resume == "machine")
    neutral = {k for k in table if not table[k].result}
    assert {"seed", "experiment_name", "gpu", "data_folder", "path.teacher", "speed.compile"} <= neutral
    assert result_settings({"seed": 1, "gpu": 0, "epochs": 3, "cocord": {"T": 0.1}}) == {"epochs": 3.0,
                                                                                        "cocord.T": 0.1}


def test_two_typos_are_reported_at_once():
    with pytest.raises(OptionsError) as caught:
        build_options({"epohcs": 3, "lerning_rate": 0.1, "speed": {"compil": True}})
    message = str(caught.value)
    assert "'epochs'" in message and "'learning_rate'" in message and "'compile'" in message
    assert "\n" not in message


@pytest.mark.slow
def test_trials_trained_with_other_options_resume_alone_not_as_a_group(tmp_path, tiny_cifar, tiny_teacher):
    """Each trial resumes with its own options: two trials of one folder (a shared experiment_name) that were
    trained with different options are refused as a group, with what to do, and nothing is written."""
    opt = write_yaml(tmp_path / "opt.yml", tiny_options(tiny_cifar, tiny_teacher, epochs=1, experiment_name="x"))
    results = run_batch([
        ["-opt", opt, "-t", "1", "--set", "learning_rate=0.1"],
        ["-opt", opt, "-t", "2", "--set", "cocord.key_size=32"],
        ["-opt", opt, "-t", "1-2", "--resume", "--set", "epochs=2"],
    ], tmp_path)
    assert [r["rc"] for r in results[:2]] == [0, 0], results
    refused = results[2]
    assert refused["rc"] == 2 and len(refused["stderr"].strip().splitlines()) == 1, refused["stderr"]
    line = refused["stderr"]
    assert "trials 1 and 2" in line and "learning_rate" in line and "-t 1 --resume" in line, line
    trial_2 = tmp_path / "experiments" / "x" / "trial_2"
    assert "key_size: 32" in (trial_2 / "options.yml").read_text()  # its options.yml left as it was


@pytest.mark.slow
def test_a_resume_finds_its_run_by_the_options_that_named_it(tmp_path, tiny_cifar, tiny_teacher):
    """A run started with --set learning_rate=0.1 lives in its own folder and resumes from there."""
    opt = write_yaml(tmp_path / "opt.yml", tiny_options(tiny_cifar, tiny_teacher, epochs=1))
    assert run_main(["-opt", opt, "--set", "learning_rate=0.1"], tmp_path).returncode == 0
    done = run_main(["-opt", opt, "--resume", "--set", "learning_rate=0.1", "epochs=2"], tmp_path)
    assert done.returncode == 0, done.stderr
    base = "S_resnet8_T_resnet8_cifar100_cocord_ctr1.0cls1.0p4.0"
    swept = tmp_path / "experiments" / (base + "_batch_size16_learning_rate0.1" + TINY_COCORD_NAME[len(
        "_batch_size16"):]) / "trial_1"
    assert (swept / "model" / "ckpt_epoch_2.pth").is_file()
    assert sorted(p.name for p in (tmp_path / "experiments").iterdir()) == [swept.parent.name]


@pytest.mark.slow
def test_a_run_from_before_folder_names_held_options_still_resumes(tmp_path, tiny_cifar, tiny_teacher):
    """Runs started before folder names held their options live under the published name alone: a resume looks
    there when the run's own name holds nothing."""
    opt = write_yaml(tmp_path / "opt.yml", tiny_options(tiny_cifar, tiny_teacher, epochs=1))
    assert run_main(["-opt", opt], tmp_path).returncode == 0
    experiments = tmp_path / "experiments"
    [named] = list(experiments.iterdir())
    legacy = experiments / "S_resnet8_T_resnet8_cifar100_cocord_ctr1.0cls1.0p4.0"
    named.rename(legacy)
    done = run_main(["-opt", opt, "--resume", "--set", "epochs=2"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert (legacy / "trial_1" / "model" / "ckpt_epoch_2.pth").is_file()
    assert sorted(p.name for p in experiments.iterdir()) == [legacy.name]
