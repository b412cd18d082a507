"""What a cell records about where it ran: the machine, the library versions and the commit of the code.

Kept apart from the runner so that the report, which runs nothing, can describe the machine it is
written on without importing the code that trains.
"""

from __future__ import annotations

import functools

import common


@functools.cache
def code_commit() -> str | None:
    """The commit of the code this process runs, read once when it starts (``main`` calls it before
    any cell): a long run keeps the fsllm it imported even if the checkout moves on meanwhile."""
    return common.git_commit()


def machine_info() -> dict:
    """The machine of a cell, in the keys the report reads (``cpu``, ``cores``, ...)."""
    m = common.machine_info()
    info = {
        "cpu": m["cpu_model"], "cores": m["usable_cpus"], "torch_threads": m["torch_threads"], "platform": m["platform"],
        "python": m["python"], "torch": m["torch"], "transformers": m["transformers"], "peft": m["peft"],
    }
    if "gpu" in m:
        info["gpu"] = m["gpu"]
    commit = code_commit()
    if commit:
        info["fsllm_commit"] = commit
    return info
