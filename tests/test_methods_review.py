"""The baselines under the trainer where the other tests do not reach: what a run of a two-stage method (AB, FT,
FSP) says and does when its init stage fails, through main.py on tiny data (16 images: one step per epoch), and
inputs a method cannot train on, refused in one line."""
import pytest
from helpers import method_options, run_main

from dataset import make_tiny_cifar
from distiller import build_options, method_class
from models import build_model
from options.schema import OptionsError


@pytest.mark.slow
def test_an_init_stage_that_diverges_stops_there_and_says_so(tmp_path, data16, tiny_teacher):
    """A learning rate that makes AB's init stage NaN stops the trial after that init epoch (not 30 epochs of NaN
    later), and the line blames the init stage and its learning rate, not 'before any update ... not the learning
    rate' of the main stage's first step."""
    opt = method_options(tmp_path, data16, tiny_teacher, "abound", abound={"init_epochs": 4}, learning_rate=1e30)
    done = run_main(["-opt", opt], tmp_path)
    assert done.returncode == 1, done.stderr
    line = done.stderr.strip().splitlines()[-1]  # init epoch 1's one step runs before any update
    assert "init stage" in line and "init epoch 2 of 4" in line and "learning_rate" in line, line
    assert "before any update" not in done.stdout + done.stderr, done.stdout + done.stderr
    assert "init stage epoch 3/4" not in done.stdout, done.stdout


@pytest.mark.slow
def test_the_first_step_after_an_init_stage_is_not_said_to_be_before_any_update(tmp_path, data16, tiny_teacher):
    """The init stage's last update (one step per epoch here) is what makes the main stage's first step NaN: the
    line says to lower learning_rate, not that the learning rate cannot be the cause."""
    opt = method_options(tmp_path, data16, tiny_teacher, "abound", abound={"init_epochs": 1}, learning_rate=1e30)
    done = run_main(["-opt", opt], tmp_path)
    assert done.returncode == 1, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert "epoch 1, step 1" in line and "lower learning_rate" in line and "before any update" not in line, line


@pytest.mark.slow
def test_crd_on_a_training_set_of_one_class_is_one_line(tmp_path, tiny_teacher):
    """CRD contrasts each sample with samples of other classes: a training split of one class is refused in one
    line, exit status 2 (it was a ValueError's traceback, exit status 1)."""
    data = tmp_path / "one_class"
    make_tiny_cifar(str(data), n_train=16, n_test=8, num_classes=1, seed=0)
    done = run_main(["-opt", method_options(tmp_path, str(data), tiny_teacher, "crd")], tmp_path)
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert "\n" not in line and line.startswith("error: ") and "two classes" in line, done.stderr


@pytest.mark.parametrize("student,teacher", [("vgg8", "resnet8"), ("wrn_16_1", "MobileNetV2")])
def test_abound_refuses_a_pair_whose_numbers_of_stages_differ(student, teacher):
    """AB's connector pairs the stages one to one (RepDistiller asserts equal lengths): a pair that cannot be
    paired is an OptionsError (one line, exit status 2), not zip()'s ValueError (a traceback, exit status 1)."""
    opt = build_options({"distill": "abound", "student_model": student, "teacher_model": teacher, "n_cls": 10})
    with pytest.raises(OptionsError, match=rf"abound pairs the stages.*{student} has \d and {teacher} \d"):
        method_class("abound")(build_model(student, 10), build_model(teacher, 10), opt)
