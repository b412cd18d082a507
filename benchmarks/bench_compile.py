#!/usr/bin/env python
"""Does ``torch.compile`` (inductor) pay for an FS training step on this machine?

    python benchmarks/bench_compile.py [--repeats 5] [--threads 2] [--out benchmarks/results/compile.json]

The packaged SmolLM2-135M as ``FSForTokenClassification`` (FSConfig defaults), one batch of 16
seeded CoNLL-2003 training sentences. Reported: the compile time (first compiled step), the
largest logit difference against eager in eval mode (no dropout, so the same function), and the
median step time (zero_grad + forward with loss + backward) of the compiled and the eager model
timed in alternation after one untimed round (``bench_speed.time_round_robin``). Dropout draws other masks under inductor, so the
training losses of the two differ by that alone.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import common
import torch
from bench_qlora import batch_of_conll
from bench_speed import time_round_robin, train_step

from fsllm import FSForTokenClassification, load_tokenizer

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="timed steps per variant [5]")
    p.add_argument("--threads", type=int, default=2, help="torch threads [2]")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "compile.json")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    tok = load_tokenizer("smollm2-135m")
    batch, num_labels = batch_of_conll(tok)
    torch.manual_seed(0)
    eager = FSForTokenClassification.from_backbone("smollm2-135m", num_labels=num_labels)
    target = copy.deepcopy(eager)
    compiled = torch.compile(target, dynamic=False)
    eager.eval(), target.eval()
    with torch.no_grad():
        t0 = time.perf_counter()
        got = compiled(**batch).logits
        eval_compile_s = time.perf_counter() - t0
        want = eager(**batch).logits
    eager.train(), target.train()
    t0 = time.perf_counter()
    train_step(compiled, batch)
    train_compile_s = time.perf_counter() - t0
    timings = time_round_robin({"compiled": lambda: train_step(compiled, batch), "eager": lambda: train_step(eager, batch)},
                               a.repeats, warmup=1)
    times = {k: t.samples for k, t in timings.items()}
    med = {k: t.median for k, t in timings.items()}
    data = {
        "command": "python benchmarks/bench_compile.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": common.git_commit(), "machine": common.machine_info(), "torch": torch.__version__,
        "eval_compile_seconds": round(eval_compile_s, 1), "train_compile_seconds": round(train_compile_s, 1),
        "eval_max_abs_logit_diff": float((got - want).abs().max()), "max_abs_logit": float(want.abs().max()),
        "step_seconds": {k: [round(t, 4) for t in v] for k, v in times.items()},
        "median_seconds": {k: round(v, 4) for k, v in med.items()},
        "compiled_vs_eager": round(med["compiled"] / med["eager"], 4),
    }
    common.write_json(a.out, data, indent=1)
    print(json.dumps({k: v for k, v in data.items() if k not in ("machine", "step_seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
