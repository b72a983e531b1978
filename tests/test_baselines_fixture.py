"""Every baseline against steps recorded from its reference implementation (RepDistiller, mdistiller) in float64.

One test case per file in tests/fixtures/baselines/ (README there): a file added to that folder is checked with
no code change. Weights and images come from the files' rules; our modules are filled by the same rule, an
init stage (two-stage methods) and two training steps run through the same functions the trainer uses, and
every state_dict entry of the student and of the method's own modules must match the recorded fingerprints
to 1e-10, and the step's loss too.
"""
from __future__ import annotations

import functools
import math
import zlib
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import FIXTURES
from torch import nn

from distiller import Distiller, build_options, method_class
from engine.step import build_optimizer, train_step
from models import build_model

FILES = sorted((FIXTURES / "baselines").glob("*.pt"))
TOL = 1e-10
# The recordings' method names that are ours under another name (CRD+KD is CRD with a KD weight; its files
# are named crd_kd__*.pt and record the method as "crd+kd").
METHOD = {"crd_kd": "crd", "crd+kd": "crd"}
# RepDistiller's module names (the files' owners) where ours differ: owner -> attribute of our method.
OWNER_ATTRIBUTES: dict[str, str] = {}


def rule_value(owner: str, key: str, like: torch.Tensor) -> torch.Tensor:
    """The files' weight rule for state_dict entry `key` of `owner`."""
    g = torch.Generator().manual_seed(zlib.crc32(f"{owner}.{key}".encode()))
    z = torch.randn(like.shape, generator=g, dtype=torch.float64)
    last = key.rsplit(".", 1)[-1]
    if not like.is_floating_point():
        return torch.zeros_like(like)
    if last == "running_var":
        return 1 + 0.1 * z.abs()
    if last in ("running_mean", "bias"):
        return 0.1 * z
    if like.dim() == 1:
        return 1 + 0.1 * z
    return z * math.sqrt(2 / math.prod(like.shape[1:]))


def fingerprint(owner: str, key: str, v: torch.Tensor) -> torch.Tensor:
    v = v.detach().double().flatten()
    r = torch.randn(v.numel(), generator=torch.Generator().manual_seed(zlib.crc32(f"fp.{owner}.{key}".encode())),
                    dtype=torch.float64)
    return torch.stack([v.sum(), (v * v).sum(), (v * r).sum()])


def owner_module(method: Distiller, owner: str) -> nn.Module:
    return method.student if owner == "student" else getattr(method, OWNER_ATTRIBUTES.get(owner, owner))


@torch.no_grad()
def fill(module: nn.Module, owner: str) -> None:
    for key, tensor in module.state_dict().items():
        tensor.copy_(rule_value(owner, key, tensor))


def our_options(fx: dict[str, Any]) -> dict[str, Any]:
    """The recording's configuration as our options file says it."""
    name, cfg = METHOD.get(fx["method"], fx["method"]), fx["config"]
    cls = method_class(name)
    given: dict[str, Any] = {"distill": name, "student_model": fx["student_model"],
                             "teacher_model": fx["teacher_model"], "n_cls": fx["n_cls"],
                             **{k: cfg[k] for k in ("batch_size", "learning_rate", "momentum", "weight_decay")}}
    top = {"kd_T": cfg.get("kd_T"), f"loss_{name}": cfg.get("beta"), "loss_cls": cfg.get("gamma", cfg.get("ce_weight")),
           "loss_kd": cfg.get("alpha") if "gamma" in cfg else None}  # RepDistiller: gamma CE + alpha KD + beta method
    given.update({k: v for k, v in top.items() if v is not None and k in cls.options})
    block = cls.options.get(name)
    if isinstance(block, dict):
        given[name] = {k: cfg[k] for k in block if k in cfg}
    return build_options(given)


def build(fx: dict[str, Any]) -> tuple[Distiller, dict[str, Any]]:
    opt = our_options(fx)
    student = build_model(fx["student_model"], fx["n_cls"]).double()
    teacher = build_model(fx["teacher_model"], fx["n_cls"]).double()
    fill(student, "student")
    fill(teacher, "teacher")
    bn, state = fx["teacher_bn"], teacher.state_dict()
    with torch.no_grad():
        for key, part in zip(bn["keys"], bn["values"].split(bn["numel"].tolist())):
            state[key].copy_(part.view_as(state[key]))
    cls = method_class(opt["distill"])
    extra = {"train_labels": fx["dataset_labels"]} if cls.needs_index else {}
    method = cls(student, teacher, opt, **extra).double()
    for owner in fx["owners"]:
        fill(owner_module(method, owner), owner)
    if "contrast" in fx["owners"]:  # CRD's memory: [K, T, Z_v1, Z_v2, momentum], Z unset (-1) until the first batch
        cfg = fx["config"]
        owner_module(method, "contrast").params.copy_(
            torch.tensor([cfg["nce_k"], cfg["nce_t"], -1.0, -1.0, cfg["nce_m"]], dtype=torch.float64))
    return method, opt


def images(batch: dict[str, Any]) -> torch.Tensor:
    x = torch.randn((8, 3, 32, 32), generator=torch.Generator().manual_seed(int(batch["x_seed"])), dtype=torch.float64)
    assert torch.allclose(torch.stack([x.sum(), (x * x).sum()]), batch["x_check"], rtol=1e-12), "image rule"
    return x


def index_of(method: Distiller, batch: dict[str, Any]) -> torch.Tensor | None:
    return batch["index"] if method.needs_index else None


def check_states(method: Distiller, recorded: dict[str, Any], when: str) -> None:
    problems = []
    for owner, entry in recorded.items():
        state = owner_module(method, owner).state_dict()
        assert list(entry["keys"]) == [k for k in state if k in set(entry["keys"])], f"{when}: {owner} keys"
        for key, want in zip(entry["keys"], entry["values"]):
            if key not in state:
                problems.append(f"{owner}.{key}: missing")
                continue
            got, n = fingerprint(owner, key, state[key]), state[key].numel()
            q = float(want[1])
            limits = (TOL * math.sqrt(n * q), TOL * q, TOL * math.sqrt(n * q))
            misses = [abs(float(g - w)) - lim for g, w, lim in zip(got, want, limits)]
            if max(misses) > 0:
                problems.append(f"{owner}.{key}: |d| {[f'{abs(float(g - w)):.2e}' for g, w in zip(got, want)]}"
                                f" allowed {[f'{lim:.2e}' for lim in limits]}")
    assert not problems, f"{when}: {len(problems)} entries differ: " + "; ".join(problems[:6])


def run_init_stage(method: Distiller, opt: dict[str, Any], fx: dict[str, Any]) -> None:
    assert method.init_learning_rate(opt) == pytest.approx(fx["config"]["init_learning_rate"], rel=1e-12)
    optimizer = build_optimizer([p for m in method.init_modules() for p in m.parameters()], opt,
                                lr=method.init_learning_rate(opt))
    method.init_train()
    batch = fx["init"]["batch"]
    train_step(method.init_forward, optimizer, [images(batch)], batch["y"], index_of(method, batch))
    check_states(method, fx["init"]["after"], "after the init stage")


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_baseline_steps_match_reference(path: Path):
    fx = torch.load(path, weights_only=True)
    method, opt = build(fx)
    check_states(method, fx["initial"], "initially")
    if "init" in fx:
        run_init_stage(method, opt, fx)
    optimizer = build_optimizer(method.trainable_parameters(), opt)
    method.train()
    for i, step in enumerate(fx["steps"], 1):
        batch = step["batch"]
        if "epoch" in step:
            method.start_epoch(int(step["epoch"]))
        forward = method
        if "contrast_idx" in batch:  # CRD's negatives as the reference drew them
            forward = functools.partial(method, contrast_idx=batch["contrast_idx"])
        out = train_step(forward, optimizer, [images(batch)], batch["y"], index_of(method, batch))
        loss, want = float(out["loss"].detach()), float(step["loss"])
        assert abs(loss - want) <= TOL * abs(want), f"step {i}: loss {loss!r}, recorded {want!r}"
        check_states(method, step["after"], f"after step {i}")
    assert not method.teacher.training
