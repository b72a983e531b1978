"""The ImageNet-style path end to end: an ImageFolder tree, torchvision ResNets, a torchvision-format teacher."""
import json

import torch
import torchvision
from helpers import run_main, write_yaml

from dataset import write_demo_imagefolder


def test_imagenet_folder_cocord_end_to_end(tmp_path):
    write_demo_imagefolder(str(tmp_path / "imagenet"), num_classes=3, per_class=2, size=48)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / "resnet18_teacher.pth")
    options = {"dataset": "imagenet", "data_folder": str(tmp_path / "imagenet"), "student_model": "resnet18",
               "teacher_model": "resnet18", "n_cls": 3, "batch_size": 4, "num_workers": 0, "epochs": 1, "gpu": None,
               "seed": 0, "path": {"teacher": str(tmp_path / "resnet18_teacher.pth")},
               "cocord": {"key_size": 16, "hidden_dim": 32, "embedding_dim": 16, "pred_dim": 8}}
    done = run_main(["-opt", write_yaml(tmp_path / "opt.yml", options)], tmp_path)
    assert done.returncode == 0, done.stderr
    folder = ("S_resnet18_T_resnet18_imagenet_cocord_ctr1.0cls1.0p4.0"  # then every option not at its default
              "_batch_size4_n_cls3_key_size16_pred_dim8_hidden_dim32_embedding_dim16")
    trial = tmp_path / "experiments" / folder / "trial_1"
    results = json.loads((trial / "results.json").read_text())
    assert results["finished"] and results["history"][0]["images"] == 6  # every image: a batch of 4, a short one of 2
    assert 0.0 <= results["last_acc"] <= 100.0
    state = torch.load(trial / "model" / "best.pth", weights_only=True)["model"]
    assert set(state) == set(torchvision.models.resnet18(num_classes=3).state_dict())  # torchvision's keys
