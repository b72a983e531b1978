"""Data layer: CIFAR-100 reading (safe unpickling), synthetic demo data, CPU and on-device loaders.

Self-contained: nothing here imports the rest of the project.
"""
from .cifar import CifarArrays, DataError, load_cifar100
from .constants import CIFAR100_MEAN, CIFAR100_STD, IMAGENET_MEAN, IMAGENET_STD
from .demo import class_names, make_tiny_cifar, render_images, write_demo_cifar, write_demo_imagefolder
from .gpu import GPULoader, GPUTestLoader, augment, crop_flip_normalize
from .imagenet import build_imagenet_loaders
from .views import (
    MultiViewCIFAR,
    MultiViewTransform,
    build_torchvision_loaders,
    cifar_test_transform,
    cifar_train_transform,
    seed_worker,
)

__all__ = [
    "CIFAR100_MEAN", "CIFAR100_STD", "IMAGENET_MEAN", "IMAGENET_STD",
    "CifarArrays", "DataError", "load_cifar100",
    "class_names", "make_tiny_cifar", "render_images", "write_demo_cifar", "write_demo_imagefolder",
    "GPULoader", "GPUTestLoader", "augment", "crop_flip_normalize",
    "build_imagenet_loaders",
    "MultiViewCIFAR", "MultiViewTransform", "build_torchvision_loaders",
    "cifar_test_transform", "cifar_train_transform", "seed_worker",
]
