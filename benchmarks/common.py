"""What every benchmark script records the same way: the machine, the code's commit, and result files;
and how a script runs a measurement in a fresh process (:func:`run_worker`). Timing lives in ``timing.py``.

A result is read against the machine and the code that produced it, so these are written by one
function each, not by a copy per script (copies drift: one script read the CPU flags, another the
core count under a different name). Results are written atomically, because the scripts rewrite
them after every measurement and a kill mid-write must not leave a half file that a rerun takes
for finished work.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

#: CPU feature flags that decide matmul speed (vector widths, bf16/int8 matrix units, fused multiply-add)
_SPEED_FLAGS = ("avx", "amx", "fma")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; elsewhere ``platform.processor()``)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The speed-relevant CPU flags (AVX*, AMX*, FMA, F16C), sorted; empty where unknown."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(f for f in flags if f.startswith(_SPEED_FLAGS) or f == "f16c")
    return []


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask), which can be fewer than the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def machine_info() -> dict[str, Any]:
    """The machine and library versions a result was measured with; GPU fields when CUDA is visible."""
    import peft
    import torch
    import transformers

    mem_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_gb = round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": mem_gb,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    return info


def _git(*args: str) -> str | None:
    """``git -C REPO args`` stdout, stripped; ``None`` outside a checkout or without git."""
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _src_dirty() -> bool:
    """Whether ``src/`` has uncommitted changes (then the commit alone does not name the code that ran)."""
    return bool(_git("status", "--porcelain", "--", "src"))


def git_commit(mark_dirty: bool = True) -> str | None:
    """Short hash of HEAD, with ``+dirty-src`` when ``src/`` has uncommitted changes (``mark_dirty``)."""
    rev = _git("rev-parse", "--short", "HEAD")
    if rev is None:
        return None
    return rev + ("+dirty-src" if mark_dirty and _src_dirty() else "")


def src_tree() -> str | None:
    """Git hash of the ``src/`` tree (12 digits, ``+dirty`` with uncommitted changes).

    Unlike the commit it changes only when the library's code does, so results that depend on
    the library alone (not on the benchmark scripts or the docs) stay valid across other commits.
    """
    tree = _git("rev-parse", "HEAD:src")
    if tree is None:
        return None
    return tree[:12] + ("+dirty" if _src_dirty() else "")


def write_json(
    path: str | os.PathLike,
    data: Any,
    *,
    indent: int = 2,
    newline: bool = False,
    default: Callable[[Any], Any] | None = None,
) -> None:
    """Write ``data`` as JSON atomically: a temporary file in the same folder, then ``os.replace``.

    The folder is created if needed; ``newline`` ends the file with one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=indent, default=default) + ("\n" if newline else "")
    # one temporary name per process: two processes writing the same file never share it
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- process memory (Linux)


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def rss_mb() -> float:
    """Resident memory of this process now."""
    return _status_kb("VmRSS") / 1024


def peak_rss_mb() -> float:
    """Peak resident memory of this process since start or the last ``reset_peak_rss``."""
    return _status_kb("VmHWM") / 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS (Linux >= 4.0); False where refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def release_free_memory() -> None:
    """Collect garbage and hand glibc's free pages back to the OS, so RSS is live memory."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# ----------------------------------------------------------------------------- fresh-process workers

RESULT_MARK = "@@RESULT "


def print_result(result: Any) -> None:
    """A worker's answer to :func:`run_worker`: one marked JSON line (anything else it prints is ignored)."""
    print(RESULT_MARK + json.dumps(result), flush=True)


def run_worker(script: str | os.PathLike, flag: str, spec: dict, spec_path: Path, what: str,
               env: dict[str, str] | None = None) -> dict:
    """Run ``python script flag spec_path`` in a fresh process (so no measurement inherits another's heap)
    with ``spec`` written to ``spec_path``, and return the result the worker printed with :func:`print_result`.

    ``what`` names the worker in the errors raised when it fails or prints no result.
    """
    spec_path.write_text(json.dumps(spec))
    cmd = [sys.executable, str(Path(script).resolve()), flag, str(spec_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{proc.stderr[-3000:]}")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    raise RuntimeError(f"{what} printed no result:\n{proc.stdout[-2000:]}")
