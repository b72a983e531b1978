"""Every teacher -> student pair of the paper's two tables builds and takes a CoCoRD step."""
import pytest
import torch
import yaml
from conftest import ROOT
from helpers import TINY_COCORD

from distiller import CoCoRD, build_options
from engine.step import build_optimizer, train_step
from models import build_model

TABLES = yaml.safe_load((ROOT / "tools" / "paper_results.yml").read_text())
PAIRS = [(row["teacher"], row["student"]) for table in TABLES.values() for row in table]


@pytest.mark.parametrize("teacher_name,student_name", PAIRS, ids=[f"{t}->{s}" for t, s in PAIRS])
def test_pair_takes_a_step(teacher_name, student_name):
    torch.manual_seed(0)
    opt = build_options({"student_model": student_name, "teacher_model": teacher_name, "batch_size": 4,
                         "cocord": TINY_COCORD, "loss_kd": 1.0})
    method = CoCoRD(build_model(student_name), build_model(teacher_name), opt).train()
    with torch.no_grad():  # move it off the student head, so that a moving average shows
        for p in method.teacher_head.parameters():
            p.add_(torch.randn_like(p))
    teacher_head = {k: v.clone() for k, v in method.teacher_head.named_parameters()}
    student_head = {k: v.clone() for k, v in method.student_head.named_parameters()}
    views = [torch.randn(4, 3, 32, 32) for _ in range(3)]
    out = train_step(method, build_optimizer(method.trainable_parameters(), opt), views, torch.tensor([0, 1, 2, 3]))
    assert all(torch.isfinite(out[k]) for k in ("loss", "loss_ctr", "loss_cls", "loss_pred", "loss_kd"))
    assert out["ctr_logits"].shape == (4, 1 + TINY_COCORD["key_size"]) and int(method.queue_ptr) == 4
    same = method.teacher.feature_dim == method.student.feature_dim
    assert method.teacher_head_follows == same
    for name, value in method.teacher_head.named_parameters():
        if same:  # m * teacher_head + (1 - m) * student_head, with the student head as it was
            expected = 0.999 * teacher_head[name] + 0.001 * student_head[name]
            assert torch.allclose(value, expected, atol=1e-7), name
        else:  # random and frozen (the published code crashes here)
            assert torch.equal(value, teacher_head[name]), name
    assert bool(method.describe()) == (not same)
