"""How every benchmark script times a step or a forward, and measures the memory it takes.

One definition for all of them, so that two scripts' numbers mean the same thing: untimed warm-up
calls first (first-call allocations, thread pools, compiled kernels), then repeats timed with
``time.perf_counter`` around each call alone (on a GPU with ``torch.cuda.synchronize`` on both
sides, since kernels run asynchronously), several functions interleaved so a drift of the machine's
speed hits them alike, and the median reported (with quartiles, min and the samples). A step's
memory is its peak above what the process held before it: resident memory (``VmHWM`` after a reset,
minus ``VmRSS`` before) on a CPU, ``torch.cuda.max_memory_allocated`` above the allocation before
it on a GPU. Serving load tests time HTTP requests in their own client loops and share
:func:`percentile` for their latencies.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import common

T = TypeVar("T")


@dataclass
class Timing:
    """Summary of repeated wall-clock measurements (seconds)."""

    samples: list[float]
    median: float = 0.0
    q1: float = 0.0
    q3: float = 0.0
    iqr: float = 0.0
    min: float = 0.0

    def __post_init__(self):
        s = sorted(self.samples)
        self.median = statistics.median(s)
        if len(s) >= 2:
            q = statistics.quantiles(s, n=4, method="inclusive")
            self.q1, self.q3 = q[0], q[2]
        else:
            self.q1 = self.q3 = s[0]
        self.iqr = self.q3 - self.q1
        self.min = s[0]

    @property
    def max(self) -> float:
        return max(self.samples)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["samples"] = [round(x, 6) for x in self.samples]
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in d.items()}


def cuda_sync() -> None:
    """Wait for the GPU's queued kernels (nothing without CUDA), so a clock read covers their work."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], T], *, sync: bool = False) -> tuple[T, float]:
    """``fn()``'s result and the wall-clock seconds it took (``sync``: GPU work included)."""
    if sync:
        cuda_sync()
    t0 = time.perf_counter()
    out = fn()
    if sync:
        cuda_sync()
    return out, time.perf_counter() - t0


def time_round_robin(
    fns: dict[str, Callable[[], Any]],
    repeats: int,
    warmup: int,
    *,
    sync: bool = False,
    prepare: Callable[[str], None] | None = None,
) -> dict[str, Timing]:
    """Time each function ``repeats`` times after ``warmup`` untimed rounds, interleaved; the starting
    function rotates every round so none is always first (the first call after another model's step
    runs on colder caches). ``prepare(name)``, untimed, runs before each call (e.g. switching a shared
    model to that variant); ``sync`` synchronises the GPU around each timed call."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            if prepare is not None:
                prepare(n)
            fns[n]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            if prepare is not None:
                prepare(n)
            samples[n].append(timed(fns[n], sync=sync)[1])
    return {n: Timing(s) for n, s in samples.items()}


def time_repeats(fn: Callable[[], Any], repeats: int, warmup: int, *, sync: bool = False) -> Timing:
    """One function timed ``repeats`` times after ``warmup`` untimed calls."""
    return time_round_robin({"fn": fn}, repeats, warmup, sync=sync)["fn"]


def compare_steps(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, Any]:
    """Two variants of one step timed in alternation: their samples, medians and the first's median
    over the second's (``"<first>_vs_<second>"``), as the A/B scripts report them."""
    first, second = fns
    timings = time_round_robin(fns, repeats, warmup)
    med = {k: t.median for k, t in timings.items()}
    return {
        "step_seconds": {k: [round(s, 4) for s in t.samples] for k, t in timings.items()},
        "median_seconds": {k: round(v, 4) for k, v in med.items()},
        f"{first}_vs_{second}": round(med[first] / med[second], 4),
    }


def percentile(xs: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``xs`` by nearest rank, no interpolation: a latency some request saw."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


# ----------------------------------------------------------------------------- a step's peak memory


@dataclass
class RssPeak:
    """What :func:`rss_peak` read around the measured calls (MB)."""

    rss_before_mb: float
    peak_rss_mb: float
    #: VmHWM before the reset: the load and the warm-up (weights are mmapped and page in on first use)
    peak_before_reset_mb: float
    reset: bool

    @property
    def step_peak_mb(self) -> float:
        return self.peak_rss_mb - self.rss_before_mb

    @property
    def method(self) -> str:
        if self.reset:
            return "VmHWM after reset via /proc/self/clear_refs"
        return "VmHWM without reset (includes load+warmup)"


def rss_peak(fn: Callable[[], T]) -> tuple[T, RssPeak]:
    """Run ``fn`` (the measured steps, after the caller's warm-up) and read the resident memory it peaks
    at above what the process held just before: free memory is handed back first so RSS is live
    memory, then the kernel's high-water mark is reset (Linux >= 4.0; without it the peak includes the
    load and the warm-up). ``ru_maxrss`` cannot be reset, and ``tracemalloc`` misses tensor storage."""
    common.release_free_memory()
    base = common.rss_mb()
    before = common.peak_rss_mb()
    ok = common.reset_peak_rss()
    out = fn()
    return out, RssPeak(base, common.peak_rss_mb(), before, ok)


def cuda_peak_mib(fn: Callable[[], Any]) -> float:
    """Peak GPU memory of ``fn()`` above what was allocated before it (MiB), synchronised on both sides."""
    import torch

    cuda_sync()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    cuda_sync()
    return (torch.cuda.max_memory_allocated() - before) / 2**20
