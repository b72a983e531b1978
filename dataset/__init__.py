"""Data layer: CIFAR-100 reading (safe unpickling), synthetic demo data, the augmentation (augment.py, used by
both loaders), the CPU and on-device loaders. Self-contained: nothing here imports the rest of the project.
"""
from dataset.augment import CIFAR100, Draws, Recipe, augment
from dataset.cifar import CifarArrays, DataError, load_cifar100
from dataset.cpu import MultiViewCIFAR, build_torchvision_loaders
from dataset.demo import make_tiny_cifar, write_demo_cifar, write_demo_imagefolder
from dataset.gpu import GPULoader, GPUTestLoader
from dataset.imagenet import build_imagenet_loaders

__all__ = ["CIFAR100", "Draws", "Recipe", "augment", "CifarArrays", "DataError", "load_cifar100", "make_tiny_cifar",
           "write_demo_cifar", "write_demo_imagefolder", "GPULoader", "GPUTestLoader", "build_imagenet_loaders",
           "MultiViewCIFAR", "build_torchvision_loaders"]
