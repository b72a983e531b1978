"""The CoCoRD step against three steps recorded from the published implementation in float64."""
import pytest
import torch
from conftest import FIXTURES
from helpers import rel_err

from distiller import CoCoRD, build_options
from engine.step import build_optimizer, train_step
from models import build_model

STEPS_FILE = FIXTURES / "cocord_steps_resnet8_resnet14.pt"


def build_from_fixture(fx: dict) -> tuple[CoCoRD, torch.optim.Optimizer]:
    cfg = fx["config"]
    opt = build_options({k: cfg[k] for k in ("student_model", "teacher_model", "n_cls", "cocord", "learning_rate",
                                               "momentum", "weight_decay", "loss_ctr", "loss_cls", "loss_pred",
                                               "batch_size")})
    init = fx["initial"]
    student = build_model(cfg["student_model"], cfg["n_cls"]).double()
    student.load_state_dict(init["student"])
    teacher = build_model(cfg["teacher_model"], cfg["n_cls"]).double()
    teacher.load_state_dict(init["teacher"])
    method = CoCoRD(student, teacher, opt).double()
    # The slow copies and the teacher head start as copies of the recorded student head (docs/method.md).
    for head in (method.student_head, method.slow_student_head, method.teacher_head):
        head.load_state_dict(init["student_head"])
    method.predictor.load_state_dict(init["predictor"])
    method.queue.copy_(init["queue"])
    method.train()
    return method, build_optimizer(method.trainable_parameters(), opt)


@pytest.fixture(scope="module")
def recorded():
    return torch.load(STEPS_FILE, weights_only=True)


def test_three_steps_match_published(recorded):
    method, optimizer = build_from_fixture(recorded)
    teacher_before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
    for i, step in enumerate(recorded["steps"]):
        views = [step["x_s"], step["x_s2"], step["x_t"]]
        out = train_step(method, optimizer, views, step["labels"])
        checks = {"loss_ctr": (out["loss_ctr"], step["loss_ctr"]), "loss_cls": (out["loss_cls"], step["loss_cls"]),
                  "loss_pred": (out["loss_pred"], step["loss_pred"]), "loss": (out["loss"], step["loss_total"]),
                  "ctr_logits": (out["ctr_logits"], step["ctr_logits"]),
                  "logits": (out["logits"], step["student_logits"]), "queue": (method.queue, step["queue_after"])}
        for name, (ours, ref) in checks.items():
            assert ours.shape == ref.shape, (i, name)
            assert rel_err(ours.detach(), ref) < 1e-10, f"step {i}: {name} differs by {rel_err(ours.detach(), ref):.2e}"
        assert int(method.queue_ptr) == int(step["queue_ptr_after"]), f"step {i}: queue pointer"

    final = recorded["final"]
    for part in ("student", "student_head", "predictor", "slow_student", "slow_student_head", "teacher_head"):
        ours = getattr(method, part).state_dict()
        assert list(ours) == list(final[part]), part
        for key, ref in final[part].items():
            err = rel_err(ours[key], ref)
            assert err < 1e-10, f"final {part}.{key} differs by {err:.2e}"
    for key, value in method.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), f"teacher {key} changed"
        assert rel_err(value.double().sum(), final["teacher_sums"][key]) < 1e-10, f"teacher sum {key}"
    assert method.teacher.training is False


def test_only_student_side_is_trained(recorded):
    method, optimizer = build_from_fixture(recorded)
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    expected = {id(p) for m in (method.student, method.student_head, method.predictor) for p in m.parameters()}
    assert trained == expected
    for module in (method.teacher, method.slow_student, method.slow_student_head, method.teacher_head):
        assert not any(p.requires_grad for p in module.parameters())
