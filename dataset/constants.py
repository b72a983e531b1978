"""Normalisation constants, kept in one place so every loader path uses the same numbers."""

# CIFAR-100 channel statistics as the published CRD/CoCoRD code uses them (docs/method.md, data pipeline).
CIFAR100_MEAN: tuple[float, float, float] = (0.5071, 0.4867, 0.4408)
CIFAR100_STD: tuple[float, float, float] = (0.2675, 0.2565, 0.2761)

# The usual ImageNet statistics (torchvision's reference recipes).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

CIFAR_IMAGE_SIZE = 32
CIFAR_PADDING = 4
CIFAR_NUM_CLASSES = 100
CIFAR_FOLDER = "cifar-100-python"
