"""CoCoRD, exactly as the published code computes one step (docs/method.md).

The step is written so that it can be captured whole in a CUDA graph (no host synchronisation, the queue
pointer lives on the device) and run for several trials at once under torch.func.vmap (engine/replicas.py):
every part reads its tensors when it runs and writes them in place.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distiller.base import Distiller, register
from distiller.kd import KD_OPTIONS, LOSS_CLS, kd_loss
from options.schema import NONNEG, POS, UNIT, Field, OptionsError
from utils.distributed import gather_in_rank_order
from utils.meter import Accuracy

OPTIONS = {
    "cocord": {
        "T": Field(0.10, "float", lambda v: v >= 1e-3, "must be at least 0.001 (the logits are divided by it)"),
        "key_size": Field(2048, "int", *POS),       # queue length
        "momentum": Field(0.999, "float", *UNIT),   # teacher head: moving average of the student head
        "b_momentum": Field(0.9, "float", *UNIT),   # slow student and its head
        "pred_dim": Field(512, "int", *POS),
        "hidden_dim": Field(2048, "int", *POS),
        "embedding_dim": Field(2048, "int", *POS),
    },
    "loss_ctr": Field(1.0, "float", *NONNEG),
    **LOSS_CLS,
    "loss_pred": Field(4.0, "float", *NONNEG),
    **KD_OPTIONS,
}


def projection_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear -> BatchNorm1d -> ReLU -> Linear (state_dict keys 0.*, 1.*, 3.*)."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim),
                         nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


def prediction_distance(p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """2 - 2 cos(p, target) per row: the squared distance of the L2-normalised vectors."""
    return 2 - 2 * (F.normalize(p, dim=1) * F.normalize(target, dim=1)).sum(dim=1)


class MovingAverage:
    """target <- m * target + (1 - m) * source over parameters only (BatchNorm statistics stay apart).

    The parameters are read at each update, not kept: several trials run as one through torch.func swap in
    their own. foreach kernels have no vmap rule, so under vmap the same two operations go tensor by tensor."""

    def __init__(self, target: nn.Module, source: nn.Module, momentum: float):
        self.target, self.source, self.momentum = target, source, momentum

    @torch.no_grad()
    def update(self) -> None:
        targets, sources = list(self.target.parameters()), list(self.source.parameters())
        if torch._C._functorch.is_batchedtensor(targets[0]):
            for t, s in zip(targets, sources):
                t.mul_(self.momentum)
                t.add_(s, alpha=1.0 - self.momentum)
        else:
            torch._foreach_mul_(targets, self.momentum)
            torch._foreach_add_(targets, sources, alpha=1.0 - self.momentum)


@register("cocord")
class CoCoRD(Distiller):
    n_views = 3  # student view, second student view, teacher view
    min_batch = 2  # the heads' BatchNorm1d cannot train on one image
    options = OPTIONS
    accuracy_outputs = {"acc_train": Accuracy("logits"), "acc_cocord": Accuracy("ctr_logits", target="first")}

    def __init__(self, student: nn.Module, teacher: nn.Module, opt: dict[str, Any]):
        super().__init__(student, teacher, opt)
        c = opt["cocord"]
        self.T, self.key_size = c["T"], c["key_size"]
        self.w_ctr, self.w_cls, self.w_pred = opt["loss_ctr"], opt["loss_cls"], opt["loss_pred"]
        self.w_kd, self.kd_T = opt["loss_kd"], opt["kd_T"]

        self.student_head = projection_head(student.feature_dim, c["hidden_dim"], c["embedding_dim"])
        self.predictor = projection_head(c["embedding_dim"], c["pred_dim"], c["embedding_dim"])
        # Copies as they are now, parameters and buffers.
        self.slow_student = copy.deepcopy(student)
        self.slow_student_head = copy.deepcopy(self.student_head)
        # The teacher head follows the student head only if their first layers have one shape;
        # otherwise it is random and frozen, as the paper says (the published code crashes there).
        self.teacher_head_follows = teacher.feature_dim == student.feature_dim
        if self.teacher_head_follows:
            self.teacher_head = copy.deepcopy(self.student_head)
        else:
            self.teacher_head = projection_head(teacher.feature_dim, c["hidden_dim"], c["embedding_dim"])
        for module in (self.slow_student, self.slow_student_head, self.teacher_head):
            module.requires_grad_(False)

        queue = F.normalize(torch.randn(c["embedding_dim"], self.key_size), dim=0)
        self.register_buffer("queue", queue)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("_offsets", torch.arange(self.key_size), persistent=False)

        self._averages = [MovingAverage(self.slow_student, student, c["b_momentum"]),
                          MovingAverage(self.slow_student_head, self.student_head, c["b_momentum"])]
        if self.teacher_head_follows:
            self._averages.append(MovingAverage(self.teacher_head, self.student_head, c["momentum"]))

    def trainable_modules(self) -> list[nn.Module]:
        return [self.student, self.student_head, self.predictor]

    def _online(self, x_s: torch.Tensor, x_s2: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Steps 1-3: the two student passes, their projections and predictions."""
        f1, logits = self.student(x_s, with_features=True)
        z1 = self.student_head(f1)
        f2, _ = self.student(x_s2, with_features=True)
        z2 = self.student_head(f2)
        return logits, z1, self.predictor(z1), self.predictor(z2)

    @torch.no_grad()
    def _targets(self, x_s: torch.Tensor, x_s2: torch.Tensor, x_t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Step 4: moving averages first (student as left by the last SGD step), then keys and targets."""
        for average in self._averages:
            average.update()
        teacher_in = torch.cat([x_t, x_s]) if self.w_kd > 0 else x_t  # eval mode: batch-independent
        teacher_features, teacher_logits = self.teacher(teacher_in, with_features=True)
        batch = x_t.shape[0]
        k = F.normalize(self.teacher_head(teacher_features[:batch]), dim=1)
        s1 = self.slow_student_head(self.slow_student(x_s2, with_features=True)[0])
        s2 = self.slow_student_head(self.slow_student(x_s, with_features=True)[0])
        return k, s1, s2, teacher_logits[batch:]

    def forward(self, x_s: torch.Tensor, x_s2: torch.Tensor, x_t: torch.Tensor,
                labels: torch.Tensor) -> dict[str, torch.Tensor]:
        side = self.side_stream
        if side is not None:
            # The teacher, the slow student and the moving averages do not depend on the student's
            # passes of this step: run them beside those on a second CUDA stream.
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                k, s1, s2, teacher_logits = self._targets(x_s, x_s2, x_t)
            logits, z1, p1, p2 = self._online(x_s, x_s2)
            torch.cuda.current_stream().wait_stream(side)
        else:
            logits, z1, p1, p2 = self._online(x_s, x_s2)
            k, s1, s2, teacher_logits = self._targets(x_s, x_s2, x_t)

        q = F.normalize(z1, dim=1)
        # Read the queue before this step's keys go in; autograd keeps what it multiplies, so use a copy. The
        # copy is a sum over one element (the same values) rather than clone(): torch.compile (2.14) may redo a
        # clone in the backward, after the enqueue below has overwritten the queue (wrong gradients, pytorch
        # PR 197039); it never redoes a reduction.
        positives = (q * k).sum(dim=1, keepdim=True)
        negatives = q @ self.queue.unsqueeze(0).sum(0)
        ctr_logits = torch.cat([positives, negatives], dim=1) / self.T
        self._enqueue(k)

        loss_ctr = (torch.logsumexp(ctr_logits, dim=1) - ctr_logits[:, 0]).mean()  # CE, target column 0
        loss_cls = F.cross_entropy(logits, labels)
        loss_pred = (prediction_distance(p1, s1) + prediction_distance(p2, s2)).mean()
        loss = loss_ctr * self.w_ctr + loss_cls * self.w_cls + loss_pred * self.w_pred
        out = {"loss_ctr": loss_ctr, "loss_cls": loss_cls, "loss_pred": loss_pred}
        if self.w_kd > 0:
            out["loss_kd"] = kd_loss(logits, teacher_logits, self.kd_T)
            loss = loss + out["loss_kd"] * self.w_kd
        out.update(loss=loss, logits=logits, ctr_logits=ctr_logits)
        return out

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        """Write keys as columns from queue_ptr on, wrapping around; on the device, no host sync.
        Under torchrun every rank writes every rank's keys, in rank order, so queues stay identical."""
        keys = gather_in_rank_order(keys)
        batch = keys.shape[0]
        columns = (self.queue_ptr + self._offsets[:batch]) % self.key_size
        # index_put_ on the transposed view: the column write that vmap can batch (index_copy_ it cannot)
        self.queue.t().index_put_((columns,), keys.to(self.queue.dtype))
        self.queue_ptr.copy_((self.queue_ptr + batch) % self.key_size)

    def describe(self) -> list[str]:
        if self.teacher_head_follows:
            return []
        return [f"teacher and student pooled features differ ({self.teacher.feature_dim} vs "
                f"{self.student.feature_dim}): the teacher head is random and frozen (not a moving average)"]

    @classmethod
    def check_options(cls, opt: dict[str, Any], world_size: int = 1) -> None:
        key_size, batch = opt["cocord"]["key_size"], opt["batch_size"]
        if key_size < batch * world_size:
            raise OptionsError(f"cocord.key_size ({key_size}) is smaller than the batch ({batch} x {world_size} "
                               "process(es)): one batch of keys must fit in the queue; raise key_size or lower "
                               "batch_size")

    @classmethod
    def experiment_name(cls, opt: dict[str, Any]) -> str:
        name = (f"S_{opt['student_model']}_T_{opt['teacher_model']}_{opt['dataset']}_cocord_"
                f"ctr{float(opt['loss_ctr'])}cls{float(opt['loss_cls'])}p{float(opt['loss_pred'])}")
        if opt["loss_kd"] > 0:
            name += f"kd{float(opt['loss_kd'])}"
        return name
