#!/usr/bin/env python
"""Does ``torch.compile`` (inductor) pay for an FS training step on this machine?

    python benchmarks/bench_compile.py [--repeats 5] [--threads 2] [--out benchmarks/results/compile.json]

The packaged SmolLM2-135M as ``FSForTokenClassification`` (FSConfig defaults), one batch of 16
seeded CoNLL-2003 training sentences. Reported: the compile time (first compiled step), the
largest logit difference against eager in eval mode (no dropout, so the same function), and the
median step time (zero_grad + forward with loss + backward) of the compiled and the eager model
timed in alternation after one untimed round (``timing.compare_steps``). Dropout draws other masks
under inductor, so the training losses of the two differ by that alone.
"""

from __future__ import annotations

import copy
import json
import sys

import common
import torch
from bench_speed import step_ab_setup, train_step
from timing import compare_steps, timed

from fsllm import FSForTokenClassification


def main(argv: list[str] | None = None) -> int:
    a, batch, num_labels = step_ab_setup(__doc__, argv, repeats=5, out="compile.json")
    eager = FSForTokenClassification.from_backbone("smollm2-135m", num_labels=num_labels)
    target = copy.deepcopy(eager)
    compiled = torch.compile(target, dynamic=False)
    eager.eval(), target.eval()
    with torch.no_grad():
        got, eval_compile_s = timed(lambda: compiled(**batch).logits)
        want = eager(**batch).logits
    eager.train(), target.train()
    _, train_compile_s = timed(lambda: train_step(compiled, batch))
    steps = compare_steps({"compiled": lambda: train_step(compiled, batch), "eager": lambda: train_step(eager, batch)},
                          a.repeats)
    data = {
        "command": "python benchmarks/bench_compile.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": common.git_commit(), "machine": common.machine_info(), "torch": torch.__version__,
        "eval_compile_seconds": round(eval_compile_s, 1), "train_compile_seconds": round(train_compile_s, 1),
        "eval_max_abs_logit_diff": float((got - want).abs().max()), "max_abs_logit": float(want.abs().max()),
        **steps,
    }
    common.write_json(a.out, data, indent=1)
    print(json.dumps({k: v for k, v in data.items() if k not in ("machine", "step_seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
