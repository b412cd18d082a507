"""How many torch threads a command runs on: ``OMP_NUM_THREADS`` when it is set, for every entry point.

Why this exists: torch takes ``MKL_NUM_THREADS`` over ``OMP_NUM_THREADS`` when both are set, so a command
started with ``OMP_NUM_THREADS=2 MKL_NUM_THREADS=1`` silently runs on one thread. Every ``fsllm`` command
(``serve`` per worker, where ``--threads`` wins) and the benchmark runner read the variable through this
module, so they agree on what it means.
"""

from __future__ import annotations

import os


def omp_threads() -> int | None:
    """``OMP_NUM_THREADS`` as a positive number; ``None`` when it is unset, empty or not a positive number
    (then torch's own handling stands)."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def apply_omp_threads() -> int:
    """Run this process's torch on ``OMP_NUM_THREADS`` threads when it is set; the thread count torch uses."""
    import torch

    threads = omp_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()
