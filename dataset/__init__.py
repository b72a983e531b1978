"""Data layer: CIFAR-100 reading (safe unpickling), synthetic demo data, CPU and on-device loaders.

Self-contained: nothing here imports the rest of the project. The package exports what the engine,
tools and benchmarks use; the rest (constants, transforms, class names) lives in the submodules.
"""
from dataset.cifar import CifarArrays, DataError, load_cifar100
from dataset.demo import make_tiny_cifar, write_demo_cifar, write_demo_imagefolder
from dataset.gpu import GPULoader, GPUTestLoader, augment, crop_flip_normalize
from dataset.imagenet import build_imagenet_loaders
from dataset.views import MultiViewCIFAR, build_torchvision_loaders

__all__ = [
    "CifarArrays", "DataError", "load_cifar100",
    "make_tiny_cifar", "write_demo_cifar", "write_demo_imagefolder",
    "GPULoader", "GPUTestLoader", "augment", "crop_flip_normalize",
    "build_imagenet_loaders",
    "MultiViewCIFAR", "build_torchvision_loaders",
]
