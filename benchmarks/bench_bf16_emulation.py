#!/usr/bin/env python
"""What bf16 costs on this CPU: a matmul of SmolLM2-135M's MLP shape and an FS training step, fp32 against bf16.

    python benchmarks/bench_bf16_emulation.py [--repeats 2] [--threads 2] [--out benchmarks/results/bf16_emulation.json]

A CPU with AMX or AVX512-BF16 runs bf16 matmuls natively (faster than fp32); elsewhere torch emulates them.
This measures both on the machine it runs on, so that ``precision="auto"`` (fp32 without the hardware) and the
warning fsllm gives for an explicit bf16 (``fsllm.config.emulated_bf16``) rest on numbers: the GFLOPS of a
(2048 x 576) @ (576 x 1536) matmul in each dtype (median of 10 after 2 untimed), and the median step time
(zero_grad + forward with loss + backward, the forward under bf16 autocast as the HF Trainer runs ``bf16=True``)
of the packaged SmolLM2-135M as ``FSForTokenClassification`` (FSConfig defaults) on one batch of 16 seeded
CoNLL-2003 training sentences, fp32 and bf16 timed in alternation after one untimed round.
"""

from __future__ import annotations

import json
import sys

import common
import torch
from bench_speed import step_ab_setup, train_step
from timing import compare_steps, time_repeats

from fsllm import FSForTokenClassification
from fsllm.config import bf16_hardware

SHAPE = (2048, 576, 1536)  # tokens x hidden x MLP width of SmolLM2-135M


def matmul_gflops(dtype: torch.dtype, repeats: int = 10) -> float:
    """GFLOPS of one (m x k) @ (k x n) matmul in ``dtype``, the median of ``repeats`` after two untimed."""
    m, k, n = SHAPE
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    return 2 * m * k * n / time_repeats(lambda: a @ b, repeats, warmup=2).median / 1e9


def main(argv: list[str] | None = None) -> int:
    a, batch, num_labels = step_ab_setup(__doc__, argv, repeats=2, out="bf16_emulation.json")
    gflops = {"fp32": round(matmul_gflops(torch.float32), 1), "bf16": round(matmul_gflops(torch.bfloat16), 1)}
    model = FSForTokenClassification.from_backbone("smollm2-135m", num_labels=num_labels)
    model.train()
    steps = compare_steps({"bf16": lambda: train_step(model, batch, "bf16"),
                           "fp32": lambda: train_step(model, batch, "fp32")}, a.repeats)
    data = {
        "command": "python benchmarks/bench_bf16_emulation.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": common.git_commit(), "machine": common.machine_info(), "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "bf16_hardware": bf16_hardware(),
        "threads": a.threads, "matmul_shape": list(SHAPE), "matmul_gflops": gflops,
        "matmul_bf16_vs_fp32_speed": round(gflops["bf16"] / gflops["fp32"], 4), **steps,
    }
    common.write_json(a.out, data, indent=1)
    print(json.dumps({k: v for k, v in data.items() if k not in ("machine", "step_seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
