"""Model zoo: the 22 CRD/RepDistiller CIFAR networks plus torchvision's ImageNet ResNets.

Importing a family module registers its constructors; the import order below is the registry's order.
"""
from . import (  # noqa: F401  (CRD order)
    imagenet,  # noqa: F401
    mobilenetv2,
    resnet,
    resnetv2,
    shufflenetv1,
    shufflenetv2,
    vgg,
    wrn,
)
from .base import ZooModel
from .checkpoint import (
    CheckpointError,
    detect_architecture,
    identify_architecture,
    load_teacher,
    match_architectures,
    read_state_dict,
)
from .registry import MODEL_REGISTRY, build_model, register, unknown_model_message

# name -> constructor taking `num_classes`, as RepDistiller's `model_dict`.
model_dict = MODEL_REGISTRY

CRD_CIFAR_MODELS: tuple[str, ...] = (
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
    "resnet8x4", "resnet32x4", "ResNet50",
    "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2",
    "vgg8", "vgg11", "vgg13", "vgg16", "vgg19",
    "MobileNetV2", "ShuffleV1", "ShuffleV2",
)

__all__ = [
    "CRD_CIFAR_MODELS", "CheckpointError", "ZooModel", "build_model", "detect_architecture", "identify_architecture",
    "load_teacher", "match_architectures", "model_dict", "read_state_dict", "register",
    "unknown_model_message",
]
