"""The parts of CRD, DKD and RepDistiller's two-stage methods (abound, factor, fsp) that the recorded reference
steps (test_baselines_fixture.py) do not reach: CRD's own negatives and its memory under torchrun, DKD's
warm-up written in place, which pairs and modules the two-stage methods accept and train."""
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from helpers import main_env
from test_host_reads import HostReads

from distiller import build_options, method_class
from distiller.crd import NegativeSampler
from engine.step import build_optimizer, train_step
from models import build_model
from options.schema import OptionsError


def draw(train_labels: torch.Tensor, k: int, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return NegativeSampler(train_labels, int(train_labels.max()) + 1, k)(labels, index)


def test_crd_negatives_are_other_classes_without_replacement_and_column_0_the_sample():
    train_labels = torch.arange(40) % 4  # 30 samples of other classes for each
    index = torch.tensor([0, 5, 10, 39])
    torch.manual_seed(0)
    drawn = draw(train_labels, 12, train_labels[index], index)
    assert drawn.shape == (4, 13) and torch.equal(drawn[:, 0], index)
    negatives = drawn[:, 1:]
    assert (train_labels[negatives] != train_labels[index].unsqueeze(1)).all()
    assert all(len(set(row.tolist())) == 12 for row in negatives)  # RepDistiller: replace = k > len(others)
    torch.manual_seed(0)  # the global generator decides: the same state, the same negatives
    assert torch.equal(draw(train_labels, 12, train_labels[index], index), drawn)


def test_crd_negatives_are_uniform_over_the_other_classes():
    train_labels = torch.arange(40) % 4
    torch.manual_seed(1)
    index = torch.zeros(2000, dtype=torch.long)  # sample 0 (class 0), 2000 times
    counts = torch.bincount(draw(train_labels, 12, train_labels[index], index)[:, 1:].flatten(), minlength=40)
    assert (counts[train_labels == 0] == 0).all()
    others = counts[train_labels != 0].double()  # 30 samples, each expected 800 times (sd about 26)
    assert (others - 800).abs().max() < 130


def test_crd_draws_with_replacement_only_for_classes_with_fewer_others_than_nce_k():
    train_labels = torch.tensor([0] * 35 + [1] * 5)  # class 0 has 5 others (< 12), class 1 has 35
    index = torch.tensor([0, 36])
    sampler = NegativeSampler(train_labels, 2, 12)
    torch.manual_seed(0)
    with HostReads() as reads:
        drawn = sampler(train_labels[index], index)[:, 1:]
    assert reads.seen == []
    assert (train_labels[drawn[0]] == 1).all() and len(set(drawn[0].tolist())) <= 5
    assert (train_labels[drawn[1]] == 0).all() and len(set(drawn[1].tolist())) == 12


def crd(loss_kd: float = 0.0):
    opt = build_options({"distill": "crd", "student_model": "resnet8", "teacher_model": "resnet8", "n_cls": 10,
                         "batch_size": 8, "loss_kd": loss_kd, "crd": {"feat_dim": 16, "nce_k": 12}})
    torch.manual_seed(0)
    method = method_class("crd")(build_model("resnet8", 10), build_model("resnet8", 10), opt,
                                 train_labels=torch.arange(40) % 10)
    return method.train(), opt


def test_crd_forward_draws_what_it_is_otherwise_given_and_reads_nothing_back():
    (drawing, opt), (given, _) = crd(1.0), crd(1.0)
    x, index = torch.randn(8, 3, 32, 32), torch.arange(8) * 5
    labels = index % 10
    torch.manual_seed(7)
    contrast_idx = given.sampler(labels, index)
    want = given(x, labels, index, contrast_idx=contrast_idx)
    torch.manual_seed(7)
    optimizer = build_optimizer(drawing.trainable_parameters(), opt)
    with HostReads() as reads:
        got = train_step(drawing, optimizer, [x], labels, index)
    assert reads.seen == []
    assert torch.equal(got["loss"], want["loss"])
    assert torch.equal(drawing.contrast.memory_v1, given.contrast.memory_v1)
    assert (drawing.contrast.params[2:4] > 0).all()  # Z set on this first batch


@pytest.mark.slow
def test_crd_memory_under_torchrun_is_identical_on_every_rank_and_equals_one_process(tmp_path):
    harness = str(ROOT / "tests" / "crd_ddp_harness.py")
    for launcher in ([], ["-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]):
        done = subprocess.run([sys.executable, *launcher, harness, str(tmp_path)], capture_output=True, text=True,
                              timeout=300, env=main_env(PYTHONPATH=str(ROOT)))
        assert done.returncode == 0, done.stderr[-3000:]
    alone, r0, r1 = (torch.load(tmp_path / name, weights_only=True)
                     for name in ("world1_rank0.pt", "world2_rank0.pt", "world2_rank1.pt"))
    for name, value in r0.items():
        assert torch.equal(value, r1[name]), name  # memory, Z, embeddings, student: the same on both ranks
        torch.testing.assert_close(value, alone[name], rtol=1e-9, atol=1e-10, msg=name)
    assert not torch.equal(r0["contrast.memory_v1"], crd()[0].contrast.memory_v1)  # the steps changed it


def test_dkd_start_epoch_writes_the_warmup_factor_in_place():
    opt = build_options({"distill": "dkd", "student_model": "resnet8", "teacher_model": "resnet8", "n_cls": 10})
    method = method_class("dkd")(build_model("resnet8", 10), build_model("resnet8", 10), opt)
    factor = method.warmup_factor
    for epoch, want in ((1, 0.05), (5, 0.25), (20, 1.0), (240, 1.0)):
        method.start_epoch(epoch)
        assert method.warmup_factor is factor and float(factor) == pytest.approx(want)
    assert "warmup_factor" not in method.state_dict()  # derived from the epoch, never checkpointed


def two_stage(name: str, student: str = "resnet8", teacher: str = "resnet14"):
    opt = build_options({"distill": name, "student_model": student, "teacher_model": teacher})
    return method_class(name)(build_model(student), build_model(teacher), opt)


def test_fsp_refuses_a_pair_whose_stages_differ_in_channels():
    with pytest.raises(OptionsError, match=r"fsp needs student and teacher stages of equal channels.*ShuffleV1"):
        two_stage("fsp", "ShuffleV1", "resnet32x4")


@pytest.mark.parametrize("student", ["resnet8", "resnet32x4", "wrn_16_2", "wrn_40_1", "ResNet50", "vgg8",
                                     "MobileNetV2", "ShuffleV1", "resnet18"])
def test_factor_init_lr_is_0_01_for_repdistillers_resnet_and_wrn_students_only(student):
    listed = {"resnet8", "resnet32x4", "wrn_16_2", "wrn_40_1"}  # in RepDistiller's list (helper/pretrain.py)
    opt = build_options({"distill": "factor", "student_model": student, "learning_rate": 0.05})
    assert method_class("factor").init_learning_rate(opt) == (0.01 if student in listed else 0.05)


@pytest.mark.parametrize("name,init_only,frozen", [("abound", ["connector"], ["connector"]),
                                                     ("factor", ["paraphraser"], ["paraphraser"]),
                                                     ("fsp", [], [])])
def test_two_stage_methods_train_the_init_modules_first_then_the_student(name, init_only, frozen):
    method = two_stage(name)
    trained = {n for n, p in method.named_parameters() if p.requires_grad}
    assert all(n.split(".")[0] not in frozen + ["teacher"] for n in trained) and "student.fc.weight" in trained
    method.init_train()
    trained = {id(p) for p in method.parameters() if p.requires_grad}
    assert trained == {id(p) for m in method.init_modules() for p in m.parameters()}
    assert all(m.training for m in method.init_modules()) and not method.student.fc.training
    assert all(getattr(method, n).training for n in init_only)
    method.train()
    assert {id(p) for p in method.parameters() if p.requires_grad} == {id(p) for p in method.trainable_parameters()}
    assert all(not getattr(method, n).training for n in frozen) and not method.teacher.training
