"""Where a run came from: the code (git commit, uncommitted changes), the libraries, the machine, the command."""
from __future__ import annotations

import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def git_state(root: Path = ROOT) -> dict[str, Any]:
    """{'commit': sha or None, 'dirty': bool or None}: None where the code is not a git checkout."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def environment(device: torch.device) -> dict[str, Any]:
    import torchvision
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "torchvision": torchvision.__version__, "cuda": torch.version.cuda,
                            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                            "host_platform": platform.platform(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def command_line(argv: list[str]) -> str:
    return shlex.join([Path(sys.executable).name, "main.py", *argv])


def session(argv: list[str], device: torch.device, speed: dict[str, Any], seed: int, processes: int = 1
            ) -> dict[str, Any]:
    """One entry of a trial's run.json: a start or a resume of it (`processes`: under torchrun, how many)."""
    return {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command_line(argv), "seed": seed,
            "processes": processes, "git": git_state(), "environment": environment(device), "speed": speed}
