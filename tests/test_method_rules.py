"""Every registered method follows the stacking rules written in distiller/base.py (float64, CPU).

For each stackable method, two trials stacked as one (engine.replicas.StackedTrials: one vmap of the method's
own forward over their stacked states) train, over two SGD steps, to the same losses and the same states as
each trial trained alone on its own images (1e-10 relative, as tests/test_trials_equivalence.py: a grouped
convolution adds up in another order; a wrong step shows as 1e-3 or more), and no training step, stacked or
single, reads anything back to the host (tests/test_host_reads.py's probe). A method that cannot be stacked
says why in its file. Each method runs with its defaults (small CoCoRD heads) and its KD term on (loss_kd 1)
where it has one, on resnet8 -> resnet8 with 10 classes, batches of 8, and the samples' indices (arange) for
a method that reads them.
"""
import contextlib
import functools
import inspect
import sys

import pytest
import torch
from conftest import ROOT
from test_host_reads import HostReads

from distiller import METHODS, build_options
from engine.replicas import StackedTrials
from engine.step import build_optimizer, train_step
from models import build_model

sys.path.insert(0, str(ROOT / "bench"))
from harness import rel  # noqa: E402

ARCH, N_CLS, BATCH, TRIALS, STEPS = "resnet8", 10, 8, 2, 2
TRAIN_LABELS = torch.arange(40) % N_CLS  # a 40-image training set, for methods that index it
SMALL = {"cocord": {"key_size": 16, "hidden_dim": 32, "embedding_dim": 16, "pred_dim": 8}}
TOL = 1e-10
STACKABLE = sorted(name for name, cls in METHODS.items() if cls.stackable)
UNSTACKABLE = sorted(name for name, cls in METHODS.items() if not cls.stackable)


def method_options(name: str) -> dict:
    cls = METHODS[name]
    given = {"distill": name, "student_model": ARCH, "teacher_model": ARCH, "n_cls": N_CLS, "batch_size": BATCH}
    if name in SMALL:
        given[name] = SMALL[name]
    if "loss_kd" in cls.options:
        given["loss_kd"] = 1.0
    return build_options(given)


def make_trials(name: str, opt: dict, teacher: torch.nn.Module) -> list:
    """Trial k initialised from seed k + 1: called twice, the same trials twice."""
    trials = []
    for k in range(TRIALS):
        torch.manual_seed(k + 1)
        student = build_model(ARCH, N_CLS)
        extra = {"train_labels": TRAIN_LABELS} if METHODS[name].needs_index else {}
        trials.append(METHODS[name](student, teacher, opt, **extra).double())
    return trials


def batches(n_views: int, needs_index: bool) -> list:
    """Per step: views [trials, batch, 3, 32, 32] (each trial its own images), labels [trials, batch], and the
    samples' indices in the training set (arange) for a method that reads them."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(STEPS):
        views = [torch.randn((TRIALS, BATCH, 3, 32, 32), generator=g, dtype=torch.float64) for _ in range(n_views)]
        labels = torch.randint(0, N_CLS, (TRIALS, BATCH), generator=g)
        out.append((views, labels, torch.arange(BATCH).expand(TRIALS, BATCH) if needs_index else None))
    return out


def train(module, params: list, opt: dict, data: list) -> tuple[list[dict], list[str]]:
    """SGD steps on `data`: each step's loss terms, and what the steps after the first read back (the first
    may read once: lazy initialisation)."""
    optimizer = build_optimizer(params, opt)
    module.train()
    losses, probe = [], HostReads()
    for step, (views, labels, index) in enumerate(data):
        with probe if step > 0 else contextlib.nullcontext():
            out = train_step(module, optimizer, views, labels, index)
        losses.append({k: v.detach() for k, v in out.items() if k.startswith("loss")})
    return losses, probe.seen


@functools.cache
def stacked_and_alone(name: str) -> dict:
    """Two trials trained stacked, and each alone on its part of the same batches."""
    opt = method_options(name)
    torch.manual_seed(0)
    teacher = build_model(ARCH, N_CLS).double()
    data = batches(METHODS[name].n_views, METHODS[name].needs_index)

    group = StackedTrials.from_methods(make_trials(name, opt, teacher))
    group_losses, reads = train(group, group.trained_parameters(), opt, data)
    alone_losses, alone_states = [], []
    for k, method in enumerate(make_trials(name, opt, teacher)):
        own = [([v[k] for v in views], labels[k], None if index is None else index[k]) for views, labels, index in data]
        losses, seen = train(method, method.trainable_parameters(), opt, own)
        alone_losses.append(losses)
        alone_states.append(method.checkpoint_state())
        reads += seen
    return {"group_losses": group_losses, "group_states": [group.trial_state(k) for k in range(TRIALS)],
            "alone_losses": alone_losses, "alone_states": alone_states, "reads": reads}


@pytest.mark.parametrize("name", STACKABLE)
def test_stacked_trials_train_as_each_alone(name):
    run = stacked_and_alone(name)
    for step, group in enumerate(run["group_losses"], 1):
        for k, alone in enumerate(run["alone_losses"]):
            assert set(group) == set(alone[step - 1])
            for key, value in alone[step - 1].items():
                assert rel(group[key][k], value) < TOL, f"step {step}, trial {k}: {key}"
    for k, (group, alone) in enumerate(zip(run["group_states"], run["alone_states"])):
        assert list(group) == list(alone)
        worst = {key: rel(group[key], v) for key, v in alone.items() if v.is_floating_point()}
        assert max(worst.values()) < TOL, f"trial {k}: {max(worst, key=worst.get)} differs"
        assert all(torch.equal(group[key], v) for key, v in alone.items() if not v.is_floating_point())


@pytest.mark.parametrize("name", STACKABLE)
def test_a_step_reads_nothing_back(name):
    """Neither a stacked step nor a single trial's (whose CUDA graph could not capture a read either)."""
    assert stacked_and_alone(name)["reads"] == []


@pytest.mark.parametrize("name", UNSTACKABLE)
def test_an_unstackable_method_says_why(name):
    cls = METHODS[name]
    # Its own file, or the file of a class it builds on (the two-stage methods share theirs), says why.
    ours = [c for c in cls.__mro__ if c.__module__.startswith("distiller.") and c.__module__ != "distiller.base"]
    doc = " ".join(f"{inspect.getmodule(c).__doc__ or ''} {c.__doc__ or ''}" for c in ours)
    assert "stack" in doc.lower(), f"{name} sets stackable = False: its file's docstring must say why"


@pytest.mark.parametrize("name", STACKABLE)
def test_a_stackable_method_has_no_init_stage(name):
    """An init stage trains other modules with an optimizer of its own (distiller/base.py): a method with one
    cannot be stacked, and the engine runs it only for a trial trained alone."""
    from distiller import Distiller
    cls = METHODS[name]
    assert cls.init_forward is Distiller.init_forward and cls.init_modules is Distiller.init_modules, \
        f"{name} defines an init stage: set stackable = False"
