"""The model zoo against the reference fixtures, and checkpoint loading (formats, mismatches, unsafe files)."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from conftest import ROOT
from helpers import (
    architectures_fixture,
    fill_by_fixture_rule,
    reference_input,
    rel_err,
    save_crd_checkpoint,
)
from torch import nn

import models
from models import (
    CRD_CIFAR_MODELS,
    CheckpointError,
    ZooModel,
    build_model,
    detect_architecture,
    identify_architecture,
    load_teacher,
)
from models.checkpoint import _signature, match_architectures, read_state_dict
from models.registry import MODEL_REGISTRY

FIX = architectures_fixture()
ARCHS = FIX["architectures"]
NUM_CLASSES = FIX["num_classes"]
IMAGENET = ("resnet18", "resnet34", "resnet50", "resnet101")


@cache
def filled(name: str) -> ZooModel:
    """A model with the fixture weights (built once; tests that change it must copy it)."""
    return fill_by_fixture_rule(build_model(name, NUM_CLASSES), FIX["salt"])


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg, f"not one line: {msg!r}"
    return msg


def test_registry_lists_the_crd_zoo():
    assert tuple(ARCHS) == CRD_CIFAR_MODELS
    assert set(CRD_CIFAR_MODELS) | set(IMAGENET) == set(models.model_dict)


@pytest.mark.parametrize("name", CRD_CIFAR_MODELS)
def test_state_dict_params_and_feature_dim(name, capsys):
    model = build_model(name, NUM_CLASSES)
    assert capsys.readouterr().out == ""  # constructors stay quiet
    ref = ARCHS[name]
    ours = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert ours == ref["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == ref["params"]
    assert isinstance(model.feature_dim, int) and model.feature_dim == ref["feature_dim"]


def _layer_facts(module: nn.Module) -> dict:
    """The fixture's description of a Conv2d / Linear / BatchNorm / pooling module."""
    t = type(module).__name__
    if isinstance(module, nn.Conv2d):
        return dict(type=t, **{"in": module.in_channels}, out=module.out_channels, kernel=list(module.kernel_size),
                    stride=list(module.stride), padding=list(module.padding), groups=module.groups,
                    bias=module.bias is not None)
    if isinstance(module, nn.Linear):
        return dict(type=t, **{"in": module.in_features}, out=module.out_features)
    if isinstance(module, nn.BatchNorm2d):
        return dict(type=t, features=module.num_features, eps=module.eps, momentum=module.momentum)
    return dict(type=t, repr=repr(module))


LAYER_TYPES = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d)


@pytest.mark.parametrize("name", CRD_CIFAR_MODELS)
def test_layers_match_fixture(name):
    model = filled(name)
    ref = {layer["name"]: {k: v for k, v in layer.items() if k != "name"} for layer in ARCHS[name]["layers"]}
    ours = {n: _layer_facts(m) for n, m in model.named_modules() if isinstance(m, LAYER_TYPES)}
    assert list(ours) == list(ref)  # no extra or missing layers (functional pools stay functional)
    for layer_name, facts in ref.items():
        assert ours[layer_name] == facts, layer_name
    if name == "MobileNetV2":  # its repr hides ceil_mode
        assert model.avgpool.ceil_mode


@pytest.mark.parametrize("name", CRD_CIFAR_MODELS)
def test_train_mode_outputs_match_fixture(name):
    model = filled(name).train()
    ref = ARCHS[name]
    x = reference_input()
    with torch.no_grad():
        features, logits = model(x, with_features=True)
        logits_only = model(x)
    assert features.shape == (4, ref["feature_dim"]) and logits.shape == (4, NUM_CLASSES)
    assert rel_err(logits, torch.tensor(ref["train_mode_logits"])) < 1e-4
    assert rel_err(features.sum(1), torch.tensor(ref["train_mode_features_sum"])) < 1e-4
    assert rel_err(features[:, :8], torch.tensor(ref["train_mode_features_first8"])) < 1e-4
    assert torch.allclose(logits_only, logits, rtol=1e-5, atol=1e-6)
    assert torch.allclose(model.classify(features), logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_2", "vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2"])
def test_channels_last_gives_the_same_outputs(name):
    model = filled(name).eval()
    x = reference_input()
    with torch.no_grad():
        ref_f, ref = model(x, with_features=True)
        cl = model.to(memory_format=torch.channels_last)
        f, out = cl(x.to(memory_format=torch.channels_last), with_features=True)
        model.to(memory_format=torch.contiguous_format)
    assert rel_err(out, ref) < 1e-5 and rel_err(f, ref_f) < 1e-5


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "ShuffleV1", "ShuffleV2"])
def test_traces_as_one_graph(name):
    """torch.compile(fullgraph=True) fails on any graph break (data-dependent control flow, host syncs)."""
    model = build_model(name, 10).train()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    x = torch.randn(2, 3, 32, 32)
    f, logits = compiled(x, with_features=True)
    assert f.shape == (2, model.feature_dim) and logits.shape == (2, 10)


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ValueError) as err:
        build_model("resnet2O")
    msg = one_line(err)
    assert "did you mean 'resnet20'?" in msg and "resnet32x4" in msg and "ShuffleV2" in msg
    with pytest.raises(ValueError, match="did you mean 'MobileNetV2'"):
        build_model("mobilenetv2")


def _assert_teacher_equals(teacher: ZooModel, model: ZooModel) -> None:
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    x = reference_input()
    with torch.no_grad():
        expected = model.eval()(x, with_features=True)
        got = teacher(x, with_features=True)
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "vgg8", "ShuffleV2"])
def test_crd_checkpoint_round_trip(name, tmp_path):
    model = filled(name)
    path = tmp_path / "ckpt_epoch_240.pth"
    save_crd_checkpoint(model, path)
    _assert_teacher_equals(load_teacher(path, name, NUM_CLASSES), model)


@pytest.mark.parametrize("layout", ["s_model_dict", "bare", "module_prefix", "crd_accuracy", "numpy_accuracy"])
def test_other_checkpoint_layouts_load(layout, tmp_path):
    model = filled("resnet14")
    sd = model.state_dict()
    obj = {
        "s_model_dict": {"s_model_dict": sd, "epoch": 240},
        "bare": sd,
        "module_prefix": {"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3},
        "crd_accuracy": {"epoch": 240, "model": sd, "accuracy": torch.tensor(70.1)},
        "numpy_accuracy": {"epoch": 240, "model": sd, "accuracy": np.float64(70.1), "step": np.int64(3)},
    }[layout]
    torch.save(obj, tmp_path / "x.pth")
    _assert_teacher_equals(load_teacher(tmp_path / "x.pth", "resnet14", NUM_CLASSES), model)


def test_wrong_architecture_names_what_the_file_is(tmp_path):
    path = tmp_path / "teacher.pth"
    save_crd_checkpoint(build_model("resnet32x4"), path)
    with pytest.raises(CheckpointError) as err:
        load_teacher(path, "resnet56", 100)
    msg = one_line(err)
    assert "is a resnet32x4" in msg and "resnet56" in msg and "teacher_model: resnet32x4" in msg


def test_wrong_class_count_is_named(tmp_path):
    path = tmp_path / "teacher.pth"
    save_crd_checkpoint(build_model("resnet8x4", 10), path)
    assert match_architectures(read_state_dict(path)) == [("resnet8x4", 10)]
    with pytest.raises(CheckpointError, match="resnet8x4 with 10 classes, but 100 classes") as err:
        load_teacher(path, "resnet8x4", 100)
    msg = one_line(err)
    assert "set n_cls: 10" in msg and "num_classes" not in msg  # the options key, not the parameter name
    with pytest.raises(CheckpointError, match="is a resnet8x4 with 10 classes, but the options say resnet20"):
        load_teacher(path, "resnet20", 100)


def _save_matching_no_model(path: Path) -> dict[str, torch.Tensor]:
    """Saves (and returns) a resnet8 state dict less `fc.bias` and plus `extra.weight`: keys no model of the zoo
    has."""
    sd = build_model("resnet8").state_dict()
    sd.pop("fc.bias")
    sd["extra.weight"] = torch.zeros(3)
    torch.save(sd, path)
    return sd


def test_no_zoo_match_shows_keys(tmp_path):
    _save_matching_no_model(tmp_path / "odd.pth")
    with pytest.raises(CheckpointError) as err:
        load_teacher(tmp_path / "odd.pth", "resnet8", 100)
    msg = one_line(err)
    assert "matches no model" in msg and "fc.bias" in msg and "extra.weight" in msg


def test_identify_every_entry_building_each_signature_once():
    """Identifying a checkpoint compares it with every zoo entry; each entry's signature is built once (on the
    meta device) and reused, not rebuilt per checkpoint: the work counted, not timed."""
    state_dicts = {}
    for name in models.model_dict:
        with torch.device("meta"):
            state_dicts[name] = build_model(name, 100).state_dict()
    _signature.cache_clear()  # the cold path: no signature built yet
    found = {name: identify_architecture(sd, 100) for name, sd in state_dicts.items()}
    assert found == {name: [name] for name in state_dicts}
    assert _signature.cache_info().misses == len(models.model_dict)
    assert identify_architecture(state_dicts["resnet8"], 10) == []
    assert identify_architecture(state_dicts["resnet8"], None) == ["resnet8"]


def test_missing_file_says_how_to_get_a_teacher(tmp_path):
    path = tmp_path / "nope" / "ckpt_epoch_240.pth"
    with pytest.raises(CheckpointError) as err:
        load_teacher(path, "resnet56", 100)
    msg = one_line(err)
    assert str(path) in msg and "options/train_teacher.yml" in msg and "tools/fetch_teachers.py" in msg


def test_unknown_arch_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="did you mean 'resnet56'"):
        load_teacher(tmp_path / "x.pth", "resnet65", 100)


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("garbage", "is not a PyTorch checkpoint"),
        ("truncated", "damaged or truncated"),
        ("empty", "is empty"),
        ("list", "holds a list"),
        ("no_state_dict", "holds no state_dict"),
    ],
)
def test_unreadable_files_give_clear_errors(kind, expected, tmp_path):
    path = tmp_path / "bad.pth"
    if kind == "garbage":
        path.write_bytes(bytes((i * 37 + 11) % 256 for i in range(4096)))
    elif kind == "truncated":
        save_crd_checkpoint(build_model("resnet8"), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "list":
        torch.save([torch.zeros(2)], path)
    else:
        torch.save({"epoch": 240, "best_acc": 70.0}, path)
    with pytest.raises(CheckpointError) as err:
        load_teacher(path, "resnet8", 100)
    assert expected in one_line(err)


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _WritesFile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("variant", ["torch_save_os_system", "pickle_builtin_open"])
def test_malicious_pickle_is_refused_and_never_run(variant, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    if variant == "torch_save_os_system":
        torch.save({"model": _RunsShell(marker), "epoch": 1}, path)
    else:
        with open(path, "wb") as f:
            pickle.dump({"model": _WritesFile(marker)}, f, protocol=2)
        # Control: the file really is live (plain pickle runs it).
        with open(path, "rb") as f:
            pickle.load(f)["model"].close()
        assert marker.exists()
        marker.unlink()
    with pytest.raises(CheckpointError) as err:
        load_teacher(path, "resnet8", 100)
    assert "refused as unsafe" in one_line(err)
    assert not marker.exists()


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_keys_equal_torchvision(name):
    with torch.device("meta"):
        ours = build_model(name, 10).state_dict()
        theirs = getattr(torchvision.models, name)(weights=None, num_classes=10).state_dict()
    assert [(k, v.shape) for k, v in ours.items()] == [(k, v.shape) for k, v in theirs.items()]


@pytest.mark.parametrize("name, dim", [("resnet18", 512), ("resnet50", 2048)])
def test_imagenet_features(name, dim):
    model = build_model(name, 10).eval()
    with torch.no_grad():
        f, logits = model(torch.randn(2, 3, 32, 32), with_features=True)
    assert model.feature_dim == dim and f.shape == (2, dim) and logits.shape == (2, 10)


def test_torchvision_checkpoint_loads_as_teacher(tmp_path):
    tv = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    torch.save(tv.state_dict(), tmp_path / "r18.pth")
    teacher = load_teacher(tmp_path / "r18.pth", "resnet18", 10)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(teacher(x), tv(x))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def _published_mobilenetv2(num_classes: int = NUM_CLASSES) -> tuple[ZooModel, nn.Module]:
    """Ours with the fixture's weights, and the same network laid out as the published CoCoRD code has it:
    its classifier a plain Linear, so its state_dict says `classifier.weight` where ours says `classifier.0.weight`."""
    ours = fill_by_fixture_rule(build_model("MobileNetV2", num_classes), FIX["salt"])
    theirs = fill_by_fixture_rule(build_model("MobileNetV2", num_classes), FIX["salt"])
    theirs.classifier = nn.Linear(theirs.feature_dim, num_classes)
    with torch.no_grad():
        theirs.classifier.weight.copy_(ours.classifier[0].weight)
        theirs.classifier.bias.copy_(ours.classifier[0].bias)
    return ours, theirs


@pytest.mark.parametrize("layout", ["bare", "model", "s_model_dict"])
def test_published_mobilenetv2_checkpoint_loads(layout, tmp_path):
    ours, theirs = _published_mobilenetv2()
    sd = theirs.state_dict()
    assert "classifier.weight" in sd and "classifier.bias" in sd and "classifier.0.weight" not in sd
    obj = {
        "bare": sd,
        "model": {"epoch": 240, "model": sd, "best_acc": torch.tensor(64.6)},
        # As the published main.py saves: the student alone, then the whole method under 'state_dict'.
        "s_model_dict": {"epoch": 240, "s_model_dict": sd, "best_acc1": torch.tensor(64.6),
                         "state_dict": {f"s_q_encoder.{k}": v for k, v in sd.items()}},
    }[layout]
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save(obj, path)
    loaded = read_state_dict(path)
    assert match_architectures(loaded) == [("MobileNetV2", NUM_CLASSES)]
    assert identify_architecture(loaded, NUM_CLASSES) == ["MobileNetV2"]
    assert identify_architecture(loaded, None) == ["MobileNetV2"]
    assert detect_architecture(path, NUM_CLASSES) == "MobileNetV2"
    teacher = load_teacher(path, "MobileNetV2", NUM_CLASSES)
    _assert_teacher_equals(teacher, ours)
    with torch.no_grad():  # and it computes what the published network computes
        assert torch.equal(teacher(reference_input()), theirs.eval()(reference_input()))


def test_published_mobilenetv2_layout_keeps_the_checks(tmp_path):
    _, theirs = _published_mobilenetv2(10)
    torch.save(theirs.state_dict(), tmp_path / "m10.pth")
    with pytest.raises(CheckpointError, match="MobileNetV2 with 10 classes, but 100 classes"):
        load_teacher(tmp_path / "m10.pth", "MobileNetV2", 100)
    with pytest.raises(CheckpointError, match="is a MobileNetV2 with 10 classes, but the options say ShuffleV2"):
        load_teacher(tmp_path / "m10.pth", "ShuffleV2", 100)
    # A file holding both names must not have one tensor silently replace the other.
    mixed = {**theirs.state_dict(), "classifier.0.weight": torch.zeros(10, 1280)}
    torch.save(mixed, tmp_path / "mixed.pth")
    assert match_architectures(mixed) == []
    with pytest.raises(CheckpointError, match="matches no model in the zoo"):
        load_teacher(tmp_path / "mixed.pth", "MobileNetV2", 10)


def test_legacy_keys_are_declared_by_the_zoo_class():
    """The one mechanism: a zoo class lists the foreign names it accepts; each maps to a key of its own."""
    for name in models.model_dict:
        sig = _signature(name)
        assert all(ours in sig.shapes and theirs not in sig.shapes for theirs, ours in sig.legacy_keys.items()), name
    assert dict(_signature("MobileNetV2").legacy_keys) == {
        "classifier.weight": "classifier.0.weight", "classifier.bias": "classifier.0.bias"}


def _run_isolated(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter with this checkout first on the path; a hang becomes a timeout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_fifo_is_refused_without_a_blocking_open(tmp_path):
    fifo = tmp_path / "ckpt_epoch_240.pth"
    os.mkfifo(fifo)
    # Nothing ever writes to the pipe: an open() that may block waits for a writer forever. The audit hook counts
    # the pipe's opens without O_NONBLOCK (there must be none); the subprocess timeout only turns a hang into a
    # failure.
    code = """
import os, sys
opened = []
def blocking_open(event, args):
    if event == "open" and isinstance(args[0], str) and os.path.basename(args[0]) == "ckpt_epoch_240.pth" \\
            and not (isinstance(args[2], int) and args[2] & os.O_NONBLOCK):
        opened.append(args[0])
sys.addaudithook(blocking_open)
from models import CheckpointError, detect_architecture, load_teacher, read_state_dict
calls = (read_state_dict, lambda p: load_teacher(p, "resnet8", 100), lambda p: detect_architecture(p, 100))
for call in calls:
    try:
        call(sys.argv[1])
    except CheckpointError as e:
        print(len(opened), e)
"""
    proc = _run_isolated(code, str(fifo))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3, proc.stdout
    for line in lines:
        opens, msg = line.split(" ", 1)
        assert opens == "0"
        assert msg == f"checkpoint {fifo} is a named pipe (FIFO), not a regular file; point at a saved .pth file"


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="needs /dev/null")
def test_device_is_refused():
    with pytest.raises(CheckpointError) as err:
        read_state_dict("/dev/null")
    assert "is a character device, not a regular file" in one_line(err)


@pytest.mark.parametrize("name", ["resnet8", "resnet32x4", "wrn_40_1", "vgg8", "ShuffleV1", "ResNet50", "resnet18"])
def test_detect_architecture(name, tmp_path):
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in build_model(name, 10).state_dict().items()}
    path = tmp_path / "t.pth"
    torch.save({"epoch": 240, "model": {k: torch.zeros(s) for k, s in shapes.items()}}, path)
    assert detect_architecture(path, 10) == name
    assert detect_architecture(path, None) == name


def test_detect_architecture_wrong_class_count(tmp_path):
    path = tmp_path / "t.pth"
    save_crd_checkpoint(build_model("resnet8x4", 10), path)
    with pytest.raises(CheckpointError) as err:
        detect_architecture(path, 100)
    msg = one_line(err)
    assert "is a resnet8x4 with 10 classes, but 100 classes" in msg and "set n_cls: 10" in msg


def test_detect_architecture_no_match_says_what_it_is(tmp_path):
    sd = _save_matching_no_model(tmp_path / "odd.pth")
    with pytest.raises(CheckpointError) as err:
        detect_architecture(tmp_path / "odd.pth", 100)
    msg = one_line(err)
    assert f"state_dict of {len(sd)} tensors that matches no model in the zoo" in msg
    assert "closest: resnet8" in msg and "fc.bias" in msg and "extra.weight" in msg


def test_detect_architecture_several_matches_are_named(tmp_path, monkeypatch):
    # Two zoo names for one network (an alias, say) make `auto` ambiguous: both are named.
    monkeypatch.setitem(MODEL_REGISTRY, "resnet8_alias", MODEL_REGISTRY["resnet8"])
    save_crd_checkpoint(build_model("resnet8"), tmp_path / "t.pth")
    with pytest.raises(CheckpointError) as err:
        detect_architecture(tmp_path / "t.pth", 100)
    msg = one_line(err)
    assert "fits several models of the zoo (resnet8, resnet8_alias)" in msg and "teacher_model" in msg


def test_detect_architecture_reports_unreadable_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        detect_architecture(tmp_path / "none.pth", 100)
    (tmp_path / "e.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        detect_architecture(tmp_path / "e.pth", None)
