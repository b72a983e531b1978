"""What every method shares, and the contract through which the engine knows a method.

As in mdistiller, `forward(*views, labels)` returns a dict: `loss` is the total to minimise, each
`loss_<term>` one of its terms, `logits` the student's logits for its first view; the trainer sums nothing.
A method with `needs_index = True` (CRD: its memory is indexed by sample) also gets each sample's position in
the training set, `forward(*views, labels, index)`, and the label of every training sample as its
constructor's `train_labels`. The teacher, and whatever `frozen_modules()` names, is kept in eval mode here,
in one place, whatever `train()` is asked.

A method is one file under distiller/ that subclasses `Distiller`, registers itself with `@register(name)`
and declares, as class attributes, everything the engine needs to know about it:

- `options`: its keys in the options file (a block named after the method, and top-level loss weights
  `loss_<term>`), as `options.schema.Field`s (a resume keeps them, unless a Field says otherwise);
  `check_options` adds the rules between keys;
- `accuracy_outputs`: the accuracies it logs (`acc_train` -> `acc_train/top_1`, `acc_train/top_5`);
- `n_views`, `needs_teacher`, `needs_index`, `min_batch`, `stackable`, and `experiment_name` (the published
  part of its folder's name, showing `named_options()`; `folder_name` adds every other option that differs
  from its default).

Logged terms follow one rule: every `loss_<term>` the method returns is logged as `loss_train/<term>`, and
`loss` as `loss_train/total`. What must stay identical across processes is `replicated_state()`, by
default everything the method checkpoints.

Optional parts, each a no-op by default:
- an init stage (RepDistiller's two-stage methods): `init_epochs(opt)` epochs before the first, training
  `init_modules()` on `init_forward(...)["loss"]` with SGD at `init_learning_rate(opt)`, modes set by
  `init_train()` (`init_forward` takes the same arguments as `forward`, first view only);
- `start_epoch(epoch)` before each epoch (e.g. a warm-up factor); it must write tensors in place, since a
  captured CUDA graph reads them when replayed.
- `step_bytes(opt)`: what one step allocates where an option makes it large (CRD's negatives), so that the
  memory check refuses such options before anything is built.

Stacking rules. Several trials of a run train as one batch (`-t 1-5`): their states are stacked and one
`torch.func.vmap` runs the method's own forward. A method with `stackable = True` (the default) must follow
these rules; tests check them for every registered stackable method (tests/test_method_rules.py):
1. No host reads in forward: no `.item()`, `bool(tensor)`, `if tensor:`, `.tolist()`, no tensor made from
   Python data (`torch.tensor(...)`); sizes come from shapes, which are known.
2. No random draws in forward (vmap runs with randomness="error"); draw in the loader or not at all.
3. Operators vmap can batch: `xlogy` rather than `F.kl_div`; no `torch._foreach_*`; `index_put_` on a
   transposed view rather than `index_copy_`; state updated in place (`buffer.copy_`, `mul_`), never by
   rebinding an attribute.
4. A buffer that forward both reads for autograd and then overwrites in place is read through a reduction
   (`buf.unsqueeze(0).sum(0)`), not `clone()`: torch.compile may recompute a clone after the write.
A method that cannot follow them (random draws per sample, an init stage) sets `stackable = False`: its
trials then train one after another in the same process, with the same folders and files.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from options import schema
from options.method_keys import method_key_names
from options.schema import COMMON, OptionsError, merge_schemas
from options.settings import folder_name
from utils.meter import Accuracy

METHODS: dict[str, type[Distiller]] = {}


def register(name: str) -> Callable[[type[Distiller]], type[Distiller]]:
    """Class decorator: the method becomes `distill: <name>`."""
    def add(cls: type[Distiller]) -> type[Distiller]:
        if name in METHODS:
            raise ValueError(f"method {name!r} registered twice")
        METHODS[name] = cls
        cls.name = name
        return cls
    return add


def method_class(name: str) -> type[Distiller]:
    try:
        return METHODS[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), list(METHODS), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise OptionsError(f"option 'distill' must be one of {', '.join(sorted(METHODS))}, got {name!r}; {hint}"
                           "each is one file under distiller/ (docs/methods.md)") from None


# A run's options: the common keys (options/schema.py, checked by main.py before torch is imported) joined with
# the chosen method's own (declared in its file under distiller/), each key validated once.


def complete_options(common: dict[str, Any], deferred: dict[str, Any], overrides: list[str] = ()) -> dict[str, Any]:
    """`common` as main.py validated it, plus the keys it set aside (`deferred`, raw): those of the chosen method
    are validated now; those of other methods are dropped if the options file gave them (one file may serve
    several methods), refused if `overrides` (the command's --set) did (it would do nothing in this run); any
    other is an error that names the closest valid key."""
    cls = method_class(common["distill"])
    known = {key for c in METHODS.values() for key in c.options}
    unknown = [key for key in deferred if key not in known]
    if unknown:
        def hint(key: str) -> str:
            close = schema.did_you_mean(key, list(common) + sorted(known))
            return close if "did you mean" in close else schema.did_you_mean(key, list(common) + list(cls.options))
        raise schema.OptionsError("; ".join(f"unknown option '{schema.show_name(str(k))}'{hint(str(k))}"
                                            for k in unknown))
    _refuse_other_methods_overrides(cls, overrides)
    own = schema.build_options({k: v for k, v in deferred.items() if k in cls.options}, (), cls.options)
    return {**common, **own, "distill": cls.name}


def _refuse_other_methods_overrides(cls: type[Distiller], overrides: list[str]) -> None:
    """A --set of a key only other methods have would change nothing (a sweep over it would train the same run
    once per value): refused, naming the methods that have it."""
    given = [item.partition("=")[0] for item in overrides]
    foreign = [key for key in given if key.split(".")[0] not in cls.options and key.split(".")[0] not in COMMON]
    if foreign:
        def owners(key: str) -> str:
            names = sorted(n for n, c in METHODS.items() if key.split(".")[0] in c.options)
            return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise schema.OptionsError("; ".join(
            f"--set {schema.show_name(key)} would change nothing with distill: {cls.name} (it is an option of "
            f"{owners(key)}); leave it out, or set distill too" for key in foreign))


def build_options(given: dict[str, Any], overrides: list[str] = ()) -> dict[str, Any]:
    """Defaults, the given values and `key=value` overrides, checked key by key (the rules between keys are the
    method's `check_options`, which the run applies once it knows how many processes share a batch)."""
    deferred: dict[str, Any] = {}
    common = schema.build_options(given, overrides, partial=method_key_names() or True, deferred=deferred)
    return complete_options(common, deferred, overrides)


def load_options(path: str | Path, overrides: list[str] = ()) -> dict[str, Any]:
    return build_options(schema.read_options_file(path), overrides)


class Distiller(nn.Module):
    name: ClassVar[str] = ""
    n_views: ClassVar[int] = 1          # augmented views of each image the method takes
    needs_teacher: ClassVar[bool] = True
    min_batch: ClassVar[int] = 1        # smaller batches cannot train it (BatchNorm1d needs 2); they are skipped
    needs_index: ClassVar[bool] = False  # forward takes each sample's training-set index; __init__ train_labels
    stackable: ClassVar[bool] = True    # follows the stacking rules above: trials can train as one batch
    options: ClassVar[dict[str, Any]] = {}
    accuracy_outputs: ClassVar[dict[str, Accuracy]] = {"acc_train": Accuracy("logits")}
    side_stream: torch.cuda.Stream | None = None  # set by the engine on a GPU: a method may overlap work on it

    def __init__(self, student: nn.Module, teacher: nn.Module | None, opt: dict[str, Any]):
        super().__init__()
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()

    @classmethod
    def check_options(cls, opt: dict[str, Any], world_size: int = 1) -> None:
        """Rules between keys, raised as OptionsError; `world_size` processes each take `batch_size`."""

    @classmethod
    def step_bytes(cls, opt: dict[str, Any]) -> int:
        """What one training step of one trial allocates beyond the weights, where an option makes it large (CRD's
        negatives: nce_k memory rows per sample), for the memory check before anything is built; 0: nothing
        worth counting."""
        return 0

    @classmethod
    def experiment_name(cls, opt: dict[str, Any]) -> str:
        """RepDistiller's folder naming: the pair, the dataset, the method and its loss weights."""
        weights = "".join(f"{key.removeprefix('loss_')}{float(opt[key])}" for key in cls.named_options())
        return f"S_{opt['student_model']}_T_{opt['teacher_model']}_{opt['dataset']}_{cls.name}_{weights}"

    @classmethod
    def named_options(cls) -> tuple[str, ...]:
        """The keys of its own that `experiment_name` shows: by default its loss weights."""
        return tuple(key for key in cls.options if key.startswith("loss_"))

    @classmethod
    def folder_name(cls, opt: dict[str, Any]) -> str:
        """The run's folder under experiments_dir: `experiment_name` if the options set one; else the method's
        name, then every other option that can change the result and differs from its default (`_T0.07`), so
        that runs with other settings never share a folder."""
        if opt["experiment_name"]:
            return opt["experiment_name"]
        shown = {"student_model", "teacher_model", "dataset", "distill", *cls.named_options()}
        if not cls.needs_teacher:
            shown.add("teacher_model")
        return folder_name(cls.experiment_name(opt), opt, merge_schemas(COMMON, cls.options), shown)

    def frozen_modules(self) -> list[nn.Module]:
        """Modules kept in eval mode in training (not trained): the teacher, and any a method adds."""
        return [self.teacher] if self.teacher is not None else []

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def trainable_modules(self) -> list[nn.Module]:
        """The modules SGD trains (their parameters, in this order)."""
        return [self.student]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.trainable_modules() for p in m.parameters()]

    def start_epoch(self, epoch: int) -> None:
        """Called before each training epoch (1-based); writes tensors in place only."""

    # The init stage (none unless a method defines init_modules and init_forward).
    @classmethod
    def init_epochs(cls, opt: dict[str, Any]) -> int:
        return 0

    @classmethod
    def init_learning_rate(cls, opt: dict[str, Any]) -> float:
        return opt["learning_rate"]

    def init_modules(self) -> list[nn.Module]:
        """The modules the init stage trains (SGD over their parameters, in this order)."""
        return []

    def init_train(self) -> None:
        """Modes for the init stage: everything in eval mode but the modules it trains."""
        super().train(False)
        for module in self.init_modules():
            module.train()

    def init_forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The init stage's `loss` (and its terms) on a batch of the first view (and `index` if needs_index)."""
        raise NotImplementedError

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        """Everything a resume needs; the teacher is left out (it is read from its own file)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("teacher.")}

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        """A state that does not fit raises KeyError or ValueError, whose message says why (the engine shows it)."""
        own = self.state_dict()
        for key, value in state.items():
            if key in own and value.shape != own[key].shape:
                raise ValueError(f"checkpoint does not fit this method: {key} is {list(value.shape)} there, "
                                 f"{list(own[key].shape)} here")
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("teacher.")]
        if missing or unexpected:
            raise KeyError(f"checkpoint does not fit this method: missing {missing[:3]}, unexpected {unexpected[:3]}")

    def replicated_state(self) -> dict[str, torch.Tensor]:
        """What every process of a torchrun job must hold identically (checked once per epoch)."""
        return self.checkpoint_state()

    def describe(self) -> list[str]:
        """Lines worth a log line once (e.g. a frozen teacher head)."""
        return []
