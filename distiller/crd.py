"""CRD, Contrastive Representation Distillation (Tian et al., ICLR 2020), as RepDistiller computes it.

RepDistiller's crd/criterion.py and crd/memory.py with its train_student.py weighting: loss = loss_cls x CE +
loss_kd x KD(kd_T) + loss_crd x (NCE loss, student anchor + teacher anchor). Each side's pooled feature goes
through an Embed (linear, L2 norm) to `feat_dim`; one memory bank per side (n_data x feat_dim: `memory_v1` the
student's, `memory_v2` the teacher's) supplies the negatives and is updated by momentum `nce_m` at the batch's
training-set indices; the normalisation constants Z are set on the first batch and kept. CRD+KD is this with
loss_kd 1. The module names and state_dict keys are RepDistiller's (embed_s, embed_t, contrast.params /
memory_v1 / memory_v2; params = [K, T, Z_v1, Z_v2, momentum], Z < 0 until set).

Negatives ('exact' mode, RepDistiller's CIFAR100InstanceSample): each sample's row holds its own index, then
`nce_k` indices of samples of other classes, drawn uniformly without replacement (with replacement where a
class has fewer than `nce_k` others, as its `replace = k > len(...)`). They are drawn in forward, on the
device, from the global torch generator, unless `contrast_idx` is given; the reference draws them in its
loader workers with NumPy, so the numbers differ, not their distribution.

Not stackable: the negatives are random draws in forward (vmap runs with randomness="error"); trials train
one after another.

Under torchrun every rank keeps the whole memory and all ranks keep it identical: the batch's embeddings,
indices and labels are gathered in rank order (as CoCoRD's queue gathers its keys) and every rank writes all of
them; the negatives are drawn for the gathered batch from the generator every rank holds in the same state,
and each rank takes its own rows (so ranks draw different negatives, as one process with the whole batch
would); Z is the mean over ranks of the per-rank first-batch estimates. With one process nothing changes.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from distiller.base import Distiller, register
from distiller.kd import KD_OPTIONS, LOSS_CLS, ce_and_kd
from options.schema import NONNEG, POS, UNIT, Field, OptionsError
from utils import distributed

EPS = 1e-7  # RepDistiller's crd/criterion.py eps

OPTIONS = {
    **LOSS_CLS,
    **KD_OPTIONS,
    "loss_crd": Field(0.8, "float", *NONNEG),  # RepDistiller's beta for CRD
    "crd": {
        "feat_dim": Field(128, "int", *POS),     # embedding size, and the memory's width
        "nce_k": Field(16384, "int", *POS),      # negatives per sample
        "nce_t": Field(0.07, "float", *POS),     # temperature
        "nce_m": Field(0.5, "float", *UNIT),     # momentum of the memory update
    },
}


class Embed(nn.Module):
    """RepDistiller's Embed: linear, then L2 normalisation (written as its Normalize(2))."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x.view(x.shape[0], -1))
        return x.div(x.pow(2).sum(1, keepdim=True).pow(0.5))


class ContrastMemory(nn.Module):
    """RepDistiller's ContrastMemory: the two banks, their scores against a batch, their momentum update."""

    def __init__(self, feat_dim: int, n_data: int, nce_k: int, nce_t: float, nce_m: float):
        super().__init__()
        self.n_data = n_data
        self.register_buffer("params", torch.tensor([nce_k, nce_t, -1.0, -1.0, nce_m]))
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("memory_v1", torch.rand(n_data, feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_v2", torch.rand(n_data, feat_dim).mul_(2 * stdv).add_(-stdv))

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, index: torch.Tensor, contrast_idx: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores [B, K+1, 1] of the student (`v1`) against the teacher's memory rows `contrast_idx` and of the
        teacher (`v2`) against the student's, divided by Z; then the memory update at `index`."""
        batch, dim = v1.shape
        # Autograd keeps the T it divides by, and params is written below: read it through a reduction (a
        # copy torch.compile never recomputes after the write; distiller/base.py, rule 4).
        T = self.params[1].unsqueeze(0).sum(0)
        weight_v1 = self.memory_v1.index_select(0, contrast_idx.view(-1)).detach().view(batch, -1, dim)
        out_v2 = torch.exp(torch.div(torch.bmm(weight_v1, v2.view(batch, dim, 1)), T))
        weight_v2 = self.memory_v2.index_select(0, contrast_idx.view(-1)).detach().view(batch, -1, dim)
        out_v1 = torch.exp(torch.div(torch.bmm(weight_v2, v1.view(batch, dim, 1)), T))
        z = self._normalisation(out_v1, out_v2)
        out_v1 = torch.div(out_v1, z[0]).contiguous()
        out_v2 = torch.div(out_v2, z[1]).contiguous()
        self._update(v1, v2, index)
        return out_v1, out_v2

    @torch.no_grad()
    def _normalisation(self, out_v1: torch.Tensor, out_v2: torch.Tensor) -> torch.Tensor:
        """[Z_v1, Z_v2]: set on the first batch (while negative) to mean score x n_data, then kept."""
        estimate = torch.stack([out_v1.mean(), out_v2.mean()]) * self.n_data
        if distributed.active():
            distributed.all_reduce_sum(estimate)
            estimate = estimate / dist.get_world_size()
        z = torch.where(self.params[2:4] < 0, estimate, self.params[2:4])
        self.params[2:4].copy_(z)
        return z

    @torch.no_grad()
    def _update(self, v1: torch.Tensor, v2: torch.Tensor, index: torch.Tensor) -> None:
        """row <- normalise(m x row + (1 - m) x embedding) at each sample's index, every rank's samples."""
        both = torch.cat([v1, v2], dim=1)
        if distributed.active():
            both, index = distributed.gather_in_rank_order(both), distributed.gather_in_rank_order(index)
            # A sample twice in the gathered batch (a sampler's padding) would be written twice by index_copy_,
            # in an order a GPU does not fix, so ranks could differ: every copy takes its last occurrence's value.
            positions = torch.arange(len(index), device=index.device)
            last = torch.zeros(self.n_data, dtype=torch.long, device=index.device)
            both = both[last.scatter_reduce_(0, index, positions, "amax")[index]]
        momentum = self.params[4]
        for memory, new in ((self.memory_v1, both[:, :v1.shape[1]]), (self.memory_v2, both[:, v1.shape[1]:])):
            rows = memory.index_select(0, index.view(-1))
            rows.mul_(momentum)
            rows.add_(torch.mul(new, 1 - momentum))
            memory.index_copy_(0, index, rows.div(rows.pow(2).sum(1, keepdim=True).pow(0.5)))


def contrast_loss(x: torch.Tensor, n_data: int) -> torch.Tensor:
    """RepDistiller's ContrastLoss (the paper's eq. 18): NCE with noise probability 1 / n_data, column 0 the
    positive; a batch mean."""
    m = x.size(1) - 1
    noise = m * (1 / float(n_data))
    p_pos = x.select(1, 0)
    log_d1 = torch.div(p_pos, p_pos.add(noise + EPS)).log()
    p_neg = x.narrow(1, 1, m)
    log_d0 = torch.div(torch.full_like(p_neg, noise), p_neg.add(noise + EPS)).log()
    return -(log_d1.sum() + log_d0.sum()) / x.shape[0]


class NegativeSampler(nn.Module):
    """Draws `k` training-set indices of other classes per sample, on the device, without host reads.

    Without replacement: the `k` smallest of uniform keys over the training set, the sample's own class keyed
    out of reach. With replacement (classes with fewer than `k` others): uniform positions in the class's row
    of a table of the other classes' indices. Which classes need which is known from the labels once."""

    def __init__(self, train_labels: torch.Tensor, n_cls: int, k: int):
        super().__init__()
        labels = train_labels.detach().to("cpu", torch.long)
        self.k = k
        n_other = len(labels) - torch.bincount(labels, minlength=n_cls)  # negatives of each class
        present = torch.bincount(labels, minlength=n_cls) > 0
        if bool((n_other[present] == 0).any()):
            raise OptionsError("crd needs training samples of at least two classes (it contrasts other classes): "
                            "check data_folder and n_cls")
        needs_replacement = present & (n_other < k)
        self.with_replacement = bool(needs_replacement.any())
        self.without_replacement = bool((present & ~needs_replacement).any())
        self.register_buffer("labels", labels, persistent=False)
        self.register_buffer("replace", needs_replacement, persistent=False)
        if self.with_replacement:
            table = torch.zeros(n_cls, int(n_other.max()), dtype=torch.long, device="cpu")
            for c in needs_replacement.nonzero().flatten().tolist():
                others = (labels != c).nonzero().flatten()
                table[c, :len(others)] = others
            self.register_buffer("table", table, persistent=False)
            self.register_buffer("n_other", n_other, persistent=False)

    @torch.no_grad()
    def forward(self, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """[B, k + 1]: each sample's own index, then its negatives."""
        batch, device = labels.shape[0], labels.device
        if self.without_replacement:
            keys = torch.rand(batch, self.labels.shape[0], device=device, dtype=torch.float64)  # ties: 2^-53
            keys.masked_fill_(self.labels.unsqueeze(0) == labels.unsqueeze(1), 2.0)  # never among the k smallest
            negatives = keys.topk(self.k, dim=1, largest=False, sorted=False).indices
        if self.with_replacement:
            n = self.n_other[labels].unsqueeze(1)
            position = (torch.rand(batch, self.k, device=device, dtype=torch.float64) * n).long().clamp_(max=n - 1)
            drawn = self.table[labels].gather(1, position)
            negatives = torch.where(self.replace[labels].unsqueeze(1), drawn, negatives) \
                if self.without_replacement else drawn
        return torch.cat([index.view(-1, 1), negatives], dim=1)


@register("crd")
class CRD(Distiller):
    n_views = 1
    needs_index = True  # the memory holds one row per training sample
    stackable = False  # random negatives drawn in forward (see the module's docstring)
    options = OPTIONS

    def __init__(self, student, teacher, opt: dict[str, Any], train_labels: torch.Tensor):
        super().__init__(student, teacher, opt)
        c = opt["crd"]
        self.w_cls, self.w_kd, self.kd_T, self.w_crd = opt["loss_cls"], opt["loss_kd"], opt["kd_T"], opt["loss_crd"]
        self.n_data = len(train_labels)
        self.embed_s = Embed(student.feature_dim, c["feat_dim"])
        self.embed_t = Embed(teacher.feature_dim, c["feat_dim"])
        self.contrast = ContrastMemory(c["feat_dim"], self.n_data, c["nce_k"], c["nce_t"], c["nce_m"])
        self.sampler = NegativeSampler(train_labels, opt["n_cls"], c["nce_k"])

    @classmethod
    def step_bytes(cls, opt: dict[str, Any]) -> int:
        """The nce_k + 1 memory rows each sample's scores read, from both banks, in float32."""
        return 2 * opt["batch_size"] * (opt["crd"]["nce_k"] + 1) * opt["crd"]["feat_dim"] * 4

    def trainable_modules(self) -> list[nn.Module]:
        return [self.student, self.embed_s, self.embed_t]

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        rows = state.get("contrast.memory_v1")
        if rows is not None and rows.shape[0] != self.n_data:  # a resume on another training set
            raise ValueError(f"crd keeps one memory row per training image, and the run trained on {rows.shape[0]} "
                             f"images; this training set holds {self.n_data}: resume with the run's data_folder")
        super().load_checkpoint_state(state)

    def draw_negatives(self, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """This rank's rows of the negatives drawn for the whole (gathered) batch."""
        if not distributed.active():
            return self.sampler(labels, index)
        both = distributed.gather_in_rank_order(torch.stack([labels, index], dim=1))
        rank, batch = dist.get_rank(), labels.shape[0]
        return self.sampler(both[:, 0], both[:, 1])[rank * batch:(rank + 1) * batch]

    def forward(self, x: torch.Tensor, labels: torch.Tensor, index: torch.Tensor,
                contrast_idx: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """`contrast_idx`: the negatives (column 0 the sample itself), drawn here unless given."""
        features, logits = self.student(x, with_features=True)
        with torch.no_grad():
            teacher_features, teacher_logits = self.teacher(x, with_features=True)
        if contrast_idx is None:
            contrast_idx = self.draw_negatives(labels, index)
        out_v1, out_v2 = self.contrast(self.embed_s(features), self.embed_t(teacher_features), index, contrast_idx)
        loss_crd = contrast_loss(out_v1, self.n_data) + contrast_loss(out_v2, self.n_data)
        out = ce_and_kd(logits, labels, teacher_logits, self.w_cls, self.w_kd, self.kd_T)
        out.update(loss_crd=loss_crd, loss=out["loss"] + loss_crd * self.w_crd, logits=logits)
        return out
