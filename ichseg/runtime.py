"""Where and how torch runs: CUDA when present, CPU otherwise, with an explicit thread count.

ultralytics lowers torch to cpu_count−1 threads (1 on a 2-core machine, ≈1.7× slower), so every entry point
calls ``configure_threads`` after importing it.
"""

from __future__ import annotations

import os

import torch


def configure_threads(threads: int | None = None) -> int:
    """Use all cores (or ``ICH_THREADS``/``threads``) for torch's CPU kernels; returns the count set."""
    count = threads or int(os.environ.get("ICH_THREADS", "0")) or os.cpu_count() or 1
    torch.set_num_threads(count)
    return count


def default_device(requested: str | None = None) -> torch.device:
    """The requested device, else the first CUDA GPU when available, else the CPU — no code change needed."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
