"""Shared test setup: the reference fixtures (tests/fixtures) and small real-format data and teachers."""
import os
import signal
import sys
from pathlib import Path

# A shell starts a background command (`make test &`) with SIGINT ignored, and the processes the tests start would
# inherit that: the Ctrl-C tests would find main.py deaf to Ctrl-C. Python's own handler is reset at their exec.
signal.signal(signal.SIGINT, signal.default_int_handler)

# pytest-xdist's workers share the cores: each gives torch its share of them (set before torch is imported), as
# the processes the tests start take one thread each (helpers.main_env). More threads than cores spin and slow
# every test many times over.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory) -> str:
    """A few images in the real cifar-100-python format (10 classes), read like real data."""
    from dataset import make_tiny_cifar
    folder = tmp_path_factory.mktemp("cifar")
    make_tiny_cifar(str(folder), n_train=100, n_test=40, num_classes=10, seed=0)
    return str(folder)


@pytest.fixture(scope="session")
def data16(tmp_path_factory) -> str:
    """16 training images: one step an epoch, for runs whose checks do not depend on the data's size."""
    from dataset import make_tiny_cifar
    folder = tmp_path_factory.mktemp("cifar16")
    make_tiny_cifar(str(folder), n_train=16, n_test=16, num_classes=10, seed=0)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> str:
    """A resnet8 with 10 classes saved in CRD's checkpoint layout (random weights)."""
    from helpers import save_random_teacher
    return save_random_teacher(tmp_path_factory.mktemp("teacher") / "ckpt_epoch_240.pth", "resnet8", seed=0)
