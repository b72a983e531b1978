"""Run by tests/test_distributed.py under `torchrun --nproc_per_node=2`: CoCoRD steps through the engine's
DDP wrapping on the CPU (gloo); each rank saves what it computed and what it holds, for the test to compare."""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from distiller import CoCoRD, build_options
from engine.machine import sync_epoch, wrap_ddp
from engine.step import build_optimizer, train_step
from models import build_model
from utils import distributed
from utils.meter import DeviceMeter

out = Path(sys.argv[1])
opt = build_options({"student_model": "resnet8", "teacher_model": "resnet14", "batch_size": 8, "n_cls": 10, "seed": 0,
                     "cocord": {"key_size": 40, "hidden_dim": 32, "embedding_dim": 16, "pred_dim": 8}})
rank, world = distributed.setup()
torch.manual_seed(0)  # every rank the same seed: models, heads and queue start identical
method = CoCoRD(build_model("resnet8", 10), build_model("resnet14", 10), opt).train()
ddp = wrap_ddp(method, torch.device("cpu"))
optimizer = build_optimizer(method.trainable_parameters(), opt)
meter = DeviceMeter(method.accuracy_outputs, torch.device("cpu"))
keys = []
method.teacher_head.register_forward_hook(lambda module, inputs, output: keys.append(F.normalize(output, dim=1)))

data = torch.Generator().manual_seed(100 + rank)  # each rank its own images, as a sampler would give
saved = {"queue_before": method.queue.clone()}
for step in range(4):
    views = [torch.randn(8, 3, 32, 32, generator=data) for _ in range(3)]
    labels = torch.randint(0, 10, (8,), generator=data)
    train_step(ddp, optimizer, views, labels, meter=meter)
    if step == 0:
        saved.update(keys=keys[0].clone(), queue_after_first=method.queue.clone(), ptr=int(method.queue_ptr))
saved["parameters"] = {k: v.clone() for k, v in method.named_parameters() if not k.startswith("teacher.")}
sync_epoch(method, meter)  # the epoch end: BatchNorm statistics from rank 0, statistics reduced, compared
saved.update(state=method.checkpoint_state(), images=meter.read()[0]["images"])
torch.save(saved, out / f"rank{rank}.pt")
