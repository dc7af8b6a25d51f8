"""Where and how torch runs: CUDA when present, CPU otherwise, with an explicit thread count and precision.

ultralytics lowers torch to cpu_count−1 threads (1 on a 2-core machine, ≈1.7× slower), so every entry point
calls ``configure_threads`` after importing it. torch is imported by the functions, not by the module: the app's
settings (``PRECISIONS``) are checked before torch loads.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "bf16", "fp32")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with bf16 dot-product instructions


def configure_threads(threads: int | None = None) -> int:
    """Use all cores (or ``ICH_THREADS``/``threads``) for torch's CPU kernels; returns the count set."""
    import torch

    count = threads or int(os.environ.get("ICH_THREADS", "0")) or os.cpu_count() or 1
    torch.set_num_threads(count)
    return count


def default_device(requested: str | None = None) -> torch.device:
    """The requested device, else the first CUDA GPU when available, else the CPU — no code change needed."""
    import torch

    if requested:
        return torch.device(requested)
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU computes bf16 in hardware; emulated bf16 autocast is slower than fp32."""
    try:
        flags = cpuinfo.read_text()
    except OSError:
        return False
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``: bf16 where the hardware has it (auto), else None (fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    import torch

    if precision == "fp32":
        return None
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
    else:
        native = cpu_has_native_bf16()
    if precision == "bf16" or native:
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass (weights stay fp32); a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device.type, dtype=dtype)
