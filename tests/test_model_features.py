"""The zoo's intermediate features (`forward_stages`, `feature_modules`) against RepDistiller's `is_feat=True`.

fixtures/features.json was recorded from RepDistiller's own models (see fixtures/README.md); the agreement rule
and tolerance are the baselines fixtures' (1e-10 in float64).
"""
from __future__ import annotations

import copy
import json
import math
import zlib
from functools import cache
from itertools import chain

import pytest
import torch
from conftest import FIXTURES
from helpers import architectures_fixture, fill_by_fixture_rule, reference_input
from torch import Tensor, nn
from torch.func import functional_call, vmap

from models import CRD_CIFAR_MODELS, ZooModel, build_model

TOL = 1e-10
FIX = architectures_fixture()
with open(FIXTURES / "features.json") as _f:
    RECORDED = json.load(_f)["architectures"]
MODES = ("train", "train_preact", "eval", "eval_preact")


@cache
def filled64(name: str) -> ZooModel:
    """The fixture weights in float64 (built once; tests run copies)."""
    return fill_by_fixture_rule(build_model(name, FIX["num_classes"]), FIX["salt"]).double()


def fingerprint(v: Tensor, seed_text: str) -> tuple[Tensor, int]:
    """[sum, sum of squares, dot with a randn seeded by crc32(seed_text)] of v in float64, and v's size."""
    v = v.detach().double().flatten()
    r = torch.randn(v.numel(), generator=torch.Generator().manual_seed(zlib.crc32(seed_text.encode())),
                    dtype=torch.float64)
    return torch.stack([v.sum(), (v * v).sum(), (v * r).sum()]), v.numel()


def assert_agrees(v: Tensor, seed_text: str, recorded: list[float], what: str) -> None:
    """The baselines fixtures' rule: |d sum| and |d dot| <= tol sqrt(n q), |d q| <= tol q (q recorded)."""
    (s, q, d), n = fingerprint(v, seed_text)
    rs, rq, rd = recorded
    scale = math.sqrt(n * rq)
    misses = (abs(float(s) - rs) / scale, abs(float(q) - rq) / rq, abs(float(d) - rd) / scale)
    assert max(misses) <= TOL, f"{what}: relative misses (sum, squares, dot) {misses}"


def buffers_vector(model: nn.Module) -> Tensor:
    return torch.cat([b.double().flatten() for b in model.buffers()])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", CRD_CIFAR_MODELS)
def test_stage_features_equal_repdistillers(name, mode):
    """Every entry of `is_feat=True`, the logits and (train mode) the BatchNorm buffers the call leaves."""
    recorded = RECORDED[name][mode]
    model = copy.deepcopy(filled64(name)).train(mode.startswith("train"))
    with torch.no_grad():
        feats, logits = model.forward_stages(reference_input().double(), preact=mode.endswith("preact"))
    assert [list(f.shape) for f in feats] == recorded["shapes"]
    for i, (feat, ref) in enumerate(zip(feats, recorded["feats"])):
        assert_agrees(feat, f"fp.feats.{i}", ref, f"{name} {mode} feats[{i}]")
    assert_agrees(logits, "fp.logits", recorded["logits"], f"{name} {mode} logits")
    if "buffers_after" in recorded:
        assert_agrees(buffers_vector(model), "fp.buffers", recorded["buffers_after"], f"{name} {mode} buffers")


@pytest.mark.parametrize("name", CRD_CIFAR_MODELS)
def test_feature_modules_cover_what_repdistiller_trains(name):
    """The same state_dict entries, and the same modules in the same order (parameter-free ones may be left out)."""
    recorded = RECORDED[name]
    model = build_model(name, FIX["num_classes"])
    module_names = {id(m): n for n, m in model.named_modules()}
    ours = [module_names[id(m)] for m in model.feature_modules()]
    assert ours == [n for n in recorded["feature_modules"] if n in ours]
    covered = {id(t) for m in model.feature_modules() for t in chain(m.parameters(), m.buffers())}
    left_out = [k for k, t in model.state_dict(keep_vars=True).items() if id(t) not in covered]
    assert left_out == recorded["feature_modules_leave_out"]


@pytest.mark.parametrize("preact", [False, True])
@pytest.mark.parametrize("name", CRD_CIFAR_MODELS)
def test_last_entry_and_logits_are_the_plain_forwards(name, preact):
    """feats[-1] is `with_features=True`'s features and the logits are `model(x)`'s, bit for bit; a loss on every
    entry backpropagates (no entry is overwritten in place after autograd saved it)."""
    torch.manual_seed(0)
    model = build_model(name, 10).train()
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    features, logits = model(x, with_features=True)
    feats, stage_logits = model.forward_stages(x, preact=preact)
    assert torch.equal(feats[-1], features) and torch.equal(stage_logits, logits)
    assert torch.equal(model(x), logits)
    sum(f.square().mean() for f in feats).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_imagenet_stages_are_the_layer_outputs(name):
    """RepDistiller has no ImageNet zoo: the entries are the stem, the layers' outputs (with preact, their last
    sums before the ReLU) and the pooled features; feature_modules cover everything but fc."""
    torch.manual_seed(0)
    model = build_model(name, 10).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        post, logits = model.forward_stages(x)
        pre, _ = model.forward_stages(x, preact=True)
        features, expected_logits = model(x, with_features=True)
        h = model.relu(model.bn1(model.conv1(x)))
        expected = [h, model.layer1(model.maxpool(h))]
        for layer in (model.layer2, model.layer3, model.layer4):
            expected.append(layer(expected[-1]))
    assert all(torch.equal(a, b) for a, b in zip(post, [*expected, features]))
    assert len(post) == 6 and torch.equal(logits, expected_logits)
    assert torch.equal(pre[0], post[0]) and torch.equal(pre[-1], post[-1])
    assert all(torch.equal(torch.relu(a), b) and (a < 0).any() for a, b in zip(pre[1:-1], post[1:-1]))
    covered = {id(p) for m in model.feature_modules() for p in m.parameters()}
    assert [n for n, p in model.named_parameters() if id(p) not in covered] == ["fc.weight", "fc.bias"]


class Stages(nn.Module):
    """How a method calls the zoo inside a stacked trial group: forward_stages on a submodule."""

    def __init__(self, model: ZooModel):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        return self.model.forward_stages(x, preact=True)


@pytest.mark.parametrize("name", ["wrn_16_1", "ShuffleV2"])
def test_stacked_trials_equal_separate_calls(name):
    """Two trials stacked under vmap + functional_call (as engine.replicas.StackedTrials runs them), in train mode
    with preact (WRN's second BatchNorm pass, ShuffleV2's unshuffled entries): the same entries, the same buffers
    after, the same gradients as two separate calls."""
    trials = [fill_by_fixture_rule(build_model(name, 10), salt).double().train() for salt in (0, 1)]
    x = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    skeleton = Stages(copy.deepcopy(trials[0]))
    states = [Stages(t).state_dict() for t in trials]
    stacked = {k: torch.stack([s[k] for s in states]) for k in states[0]}
    params = {k: v.requires_grad_() for k, v in stacked.items() if v.is_floating_point() and "running" not in k}
    run = vmap(lambda state, xs: functional_call(skeleton, state, (xs,), tie_weights=False), randomness="error")
    feats, logits = run({**stacked, **params}, x)
    sum(f.square().flatten(1).mean(1).sum() for f in [*feats, logits]).backward()  # each trial's own loss
    for k, trial in enumerate(trials):
        one_feats, one_logits = trial.forward_stages(x[k], preact=True)
        sum(f.square().mean() for f in [*one_feats, one_logits]).backward()
        for got, expected in zip([*feats, logits], [*one_feats, one_logits]):
            assert torch.allclose(got[k], expected, rtol=1e-10, atol=1e-12)
        for key, value in Stages(trial).state_dict().items():
            assert torch.allclose(stacked[key][k].to(value.dtype), value, rtol=1e-10, atol=1e-14), key
        for pname, p in Stages(trial).named_parameters():
            assert torch.allclose(params[pname].grad[k], p.grad, rtol=1e-9, atol=1e-12), pname


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_2", "vgg8", "ShuffleV2"])
def test_channels_last_gives_the_same_stages(name):
    model = copy.deepcopy(filled64(name)).eval()
    x = reference_input().double()
    with torch.no_grad():
        ref_feats, ref_logits = model.forward_stages(x, preact=True)
        model.to(memory_format=torch.channels_last)
        feats, logits = model.forward_stages(x.to(memory_format=torch.channels_last), preact=True)
    for got, expected in zip([*feats, logits], [*ref_feats, ref_logits]):
        assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12)
