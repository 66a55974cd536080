"""Where and how the computation runs: the ``auto`` device and the CPU thread count.

``auto`` means CUDA when this process sees a GPU, else the CPU. It is resolved by the process
that computes (:func:`resolve_device`), never by one that only prints or plans commands: a
login node without a GPU must not write ``cpu`` into a command meant for a GPU node.

Threads (:func:`configure_threads`, called by the CLI before torch loads): unless the user
chose them, OpenMP's idle threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``) and
PyTorch runs one intra-op thread per CPU this process may use (its affinity mask, lowered to the
cgroup CPU quota of a container, which PyTorch's own default ignores). Spinning threads burn the
cores that the next operation, the soft-DTW kernel's threads or other jobs on a shared machine
need: measured on the project's 2-core machine, docs/threads.md. ``OMP_NUM_THREADS`` and
``OMP_WAIT_POLICY`` set by the user are left as they are; the settings pass on to the
commands the CLI starts (``run_superb.sh`` stages).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import MutableMapping

DEVICE_CHOICES = "auto | cpu | cuda | cuda:N"
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:[0-9]+)?)$"


def device_name(text: str) -> str:
    """An argparse type: ``text`` if it names a device (:data:`DEVICE_PATTERN`)."""
    import argparse
    import re

    if not re.fullmatch(DEVICE_PATTERN, text):
        raise argparse.ArgumentTypeError(f"{text!r}: expected {DEVICE_CHOICES}")
    return text


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` if CUDA is available in this process, else ``cpu``; other names as given."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, lowered to the cgroup v2 CPU quota if any."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    try:  # cgroup v2: "<quota> <period>" or "max <period>"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


def configure_threads(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set the thread defaults in ``environ`` where the user set none; returns what it set.

    Call it before torch is imported: OpenMP reads its settings once, when it loads.
    """
    chosen = {}
    if not environ.get("OMP_WAIT_POLICY"):
        chosen["OMP_WAIT_POLICY"] = "PASSIVE"
    if not environ.get("OMP_NUM_THREADS"):
        chosen["OMP_NUM_THREADS"] = str(usable_cpus())
    environ.update(chosen)
    return chosen
