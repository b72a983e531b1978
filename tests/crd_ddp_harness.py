"""Run by tests/test_baseline_methods.py: three CRD(+KD) steps on a batch of 16, either in one process or under
`torchrun --nproc_per_node=2` (each rank 8 of the 16 samples, through the engine's DDP wrapping, gloo). The
student runs in eval mode (BatchNorm on running statistics), so a sample's features do not depend on the
batch it shares: both ways compute the same step, in float64 so that only the summation order differs. Saves
what each process holds after the steps."""
import sys
from pathlib import Path

import torch

from distiller import build_options, method_class
from engine.machine import wrap_ddp
from engine.step import build_optimizer, train_step
from models import build_model
from utils import distributed

out = Path(sys.argv[1])
opt = build_options({"distill": "crd", "student_model": "resnet8", "teacher_model": "resnet8", "n_cls": 10,
                     "batch_size": 8, "loss_kd": 1.0, "crd": {"feat_dim": 16, "nce_k": 12}})
train_labels = torch.arange(40) % 10
rank, world = distributed.setup()
torch.set_default_dtype(torch.float64)
torch.manual_seed(0)  # every process the same seed: models, embeddings, memory and negatives' draws agree
method = method_class("crd")(build_model("resnet8", 10), build_model("resnet8", 10), opt, train_labels=train_labels)
method.train()
method.student.eval()
module = wrap_ddp(method, torch.device("cpu")) if world > 1 else method
optimizer = build_optimizer(method.trainable_parameters(), opt)
data = torch.Generator().manual_seed(100)  # the same 16 samples everywhere; each rank takes its half
for step in range(3):
    images, index = torch.randn(16, 3, 32, 32, generator=data), torch.randperm(40, generator=data)[:16]
    if step == 1:
        index[15] = index[0]  # one sample on both ranks (a sampler's padding): its last occurrence is written
    mine = slice(rank * 16 // world, (rank + 1) * 16 // world)
    train_step(module, optimizer, [images[mine]], train_labels[index][mine], index[mine])
torch.save(method.checkpoint_state(), out / f"world{world}_rank{rank}.pt")
