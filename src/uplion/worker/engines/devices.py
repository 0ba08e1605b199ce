"""Where a PyTorch engine runs: the device asked for, checked against what is visible, and a dtype
suited to it. Shared by the local engines; PyTorch is imported only when these are called.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from uplion.worker.engines import base

if TYPE_CHECKING:
    import torch

DTYPES = ("auto", "float32", "bfloat16", "float16")
"""The values of an engine's ``dtype`` option."""


def resolve_device(requested: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N`` for ``requested`` (``auto``: CUDA when a GPU is visible);
    ``base.Unrecoverable("DeviceUnavailable")`` when the GPU asked for is not there."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return "cpu"
    if requested == "cuda" or requested.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise base.Unrecoverable(
                "DeviceUnavailable",
                f"device {requested!r} was asked for but no CUDA GPU is visible to this worker "
                "(set device: auto or cpu, or run the worker on a GPU node)",
            )
        index = requested.partition(":")[2]
        count = torch.cuda.device_count()
        if index and int(index) >= count:
            raise base.Unrecoverable(
                "DeviceUnavailable",
                f"device {requested!r} was asked for but this worker sees {count} CUDA GPU(s) "
                f"(cuda:0 to cuda:{count - 1})",
            )
        return requested
    raise base.Unrecoverable(
        "InvalidConfig", f"device {requested!r} is not one of auto, cpu, cuda, cuda:N"
    )


def torch_dtype(device: str, requested: str = "auto", decodes: bool = False) -> torch.dtype:
    """The dtype to load weights in: ``requested``, or for ``auto`` bfloat16 (float16 where the
    GPU lacks it) on CUDA; on the CPU float32, except bfloat16 for a model that ``decodes`` text
    on a CPU with bfloat16 instructions (decoding reads every weight once per step: half the
    bytes, and the answers stay right, see ``bench/generation_dtype.py``)."""
    import torch

    if requested not in DTYPES:
        raise base.Unrecoverable(
            "InvalidConfig", f"option 'dtype' must be one of {', '.join(DTYPES)}, not {requested!r}"
        )
    if requested != "auto":
        dtype: torch.dtype = getattr(torch, requested)
        return dtype
    if device == "cpu":
        return torch.bfloat16 if decodes and cpu_has_bfloat16() else torch.float32
    with torch.cuda.device(device):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
"""CPU flags of native bfloat16 arithmetic (x86 AVX-512 and AMX, Arm's ``bf16`` feature);
without them PyTorch emulates bfloat16, slower than float32."""


def cpu_has_bfloat16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU computes in bfloat16 natively (``False`` where ``cpuinfo`` is unreadable)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return not _BF16_FLAGS.isdisjoint(value.split())
    return False


def set_cpu_threads(threads: int | None) -> int:
    """Size PyTorch's CPU thread pool (``None``: ``default_cpu_threads``); returns the size. The
    pool is the process's: engines hosted in one process share the last size set."""
    import torch

    count = threads if threads is not None else default_cpu_threads(len(os.sched_getaffinity(0)))
    torch.set_num_threads(count)
    return count


def default_cpu_threads(cpus: int) -> int:
    """Two threads, but never every CPU this process may run on: one stays for the gateway,
    the broker and the worker's event loop. An OpenMP thread sharing its core with them stalls
    every parallel step until it is scheduled again (measured on 2 cores under load: a SmolLM2
    decoding step 37 ms on one thread, 200-900 ms on two), while one thread reads weights
    nearly as fast as two (37 vs 34 ms a step, quiet)."""
    return min(2, max(1, cpus - 1))
