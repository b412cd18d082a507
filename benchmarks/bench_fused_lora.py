#!/usr/bin/env python
"""Step time of FS training with the fused LoRA forward (``fsllm.fused_lora``) against PEFT's own.

    python benchmarks/bench_fused_lora.py [--repeats 10] [--threads 2] [--out benchmarks/results/fused_lora.json]

The packaged SmolLM2-135M as ``FSForTokenClassification`` (FSConfig defaults: LoRA 8/32/0.1 on all
210 projections, ``FastDropout``), one batch of 16 seeded CoNLL-2003 training sentences; a step is
zero_grad + forward with loss + backward. Two copies of the same model, one whose LoRA layers run
PEFT's ``lora.Linear.forward`` again, are timed in alternation (``timing.compare_steps``,
one untimed round), so drifts in the machine's speed hit both alike. Loss and gradients of one seeded step
are compared first: the fused forward must not change them.
"""

from __future__ import annotations

import copy
import json
import sys

import common
import torch
from bench_speed import step_ab_setup, train_step
from peft.tuners.lora import Linear as LoraLinear
from timing import compare_steps

from fsllm import FSForTokenClassification
from fsllm.fused_lora import FusedLoraLinear


def main(argv: list[str] | None = None) -> int:
    a, batch, num_labels = step_ab_setup(__doc__, argv, repeats=10, out="fused_lora.json")
    fused = FSForTokenClassification.from_backbone("smollm2-135m", num_labels=num_labels).train()
    with torch.no_grad():  # a trained-looking adapter: B away from zero, so the update is computed for real
        for n, prm in fused.named_parameters():
            if "lora_B" in n:
                prm.normal_(0, 0.02)
    peft = copy.deepcopy(fused)
    layers = [m for m in peft.modules() if type(m) is FusedLoraLinear]
    for m in layers:
        m.__class__ = LoraLinear
    losses, grads = [], []
    for model in (fused, peft):
        torch.manual_seed(0)  # the same dropout masks
        model.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        losses.append(float(loss))
        grads.append({n: prm.grad.clone() for n, prm in model.named_parameters() if prm.requires_grad})
    max_grad_diff = max(float((grads[0][n] - grads[1][n]).abs().max()) for n in grads[0])
    steps = compare_steps({name: (lambda m=m: train_step(m, batch)) for name, m in (("fused", fused), ("peft", peft))},
                          a.repeats)
    data = {
        "command": "python benchmarks/bench_fused_lora.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": common.git_commit(), "machine": common.machine_info(), "lora_layers": len(layers),
        "tokens": int(batch["attention_mask"].sum()), "loss": losses, "max_grad_diff": max_grad_diff,
        **steps,
    }
    common.write_json(a.out, data, indent=1)
    print(json.dumps({k: data[k] for k in ("loss", "max_grad_diff", "median_seconds", "fused_vs_peft")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
