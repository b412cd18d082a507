#!/usr/bin/env python
"""Memory and step time of QLoRA (a 4-bit NF4 backbone) against a bf16 and the default fp32 backbone.

    python benchmarks/bench_qlora.py [--steps 6] [--out benchmarks/results/qlora.json]

The packaged SmolLM2-135M as ``FSForTokenClassification`` (9 labels, FSConfig defaults), trained on
one batch of 16 CoNLL-2003 training sentences (seeded draw, padded to the longest): zero_grad +
forward with loss + backward + AdamW step on LoRA and the head. Each backbone runs in its own fresh
process: ``fp32`` (``load_backbone`` default), ``bf16`` (``dtype=torch.bfloat16``: frozen weights
in bf16), ``4bit`` (``quantize="4bit"``: NF4, double quantisation, bf16 compute).

Reported per backbone: the bytes the backbone's weights take (parameters and buffers, as stored),
the process's resident memory after load and its peak over the measured steps (``VmHWM``; the
weights are paged in by a warmup step first), and the median step time over ``--steps`` steps
after one warmup step. The machine and the torch thread count go into the JSON with the results.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import common
import torch
from bench_speed import batch_of_conll
from timing import rss_peak, time_repeats, timed

BACKBONE = "smollm2-135m"
VARIANTS = ("fp32", "bf16", "4bit")
REPO = Path(__file__).resolve().parent.parent


def worker(variant: str, steps: int) -> dict:
    from fsllm import FSForTokenClassification, load_tokenizer

    common.release_free_memory()
    rss0 = common.rss_mb()
    tok = load_tokenizer(BACKBONE)
    batch, num_labels = batch_of_conll(tok)
    load = {"fp32": {}, "bf16": {"dtype": torch.bfloat16}, "4bit": {"quantize": "4bit"}}[variant]
    torch.manual_seed(0)
    model, load_s = timed(lambda: FSForTokenClassification.from_backbone(BACKBONE, num_labels=num_labels, **load))
    stored = [*model.backbone.named_parameters(), *model.backbone.named_buffers()]
    weight_bytes = sum(t.numel() * t.element_size() for n, t in stored if "lora_" not in n)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        opt.step()

    step()  # warmup: weights paged in, first-call allocations, optimizer state created
    times, mem = rss_peak(lambda: time_repeats(step, steps, warmup=0))
    return {
        "variant": variant, "load_seconds": round(load_s, 2), "backbone_weight_mb": round(weight_bytes / 2**20, 1),
        "rss_after_warmup_mb": round(mem.rss_before_mb - rss0, 1), "peak_rss_mb": round(mem.peak_rss_mb - rss0, 1),
        "step_seconds_median": round(times.median, 3), "step_seconds": [round(t, 3) for t in times.samples],
        "trainable_params": sum(p.numel() for p in trainable), "tokens_per_batch": int(batch["attention_mask"].sum()),
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=6, help="measured steps per backbone (after one warmup) [6]")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "qlora.json")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.worker, a.steps)))
        return 0
    import fsllm  # noqa: F401 - quiets bitsandbytes' import-time notice before machine_info imports peft

    rows = []
    for v in a.variants.split(","):
        out = subprocess.run([sys.executable, __file__, "--worker", v, "--steps", str(a.steps)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]))
    ref = {r["variant"]: r for r in rows}
    if "bf16" in ref:
        for r in rows:
            r["vs_bf16"] = {k: round(r[k] / ref["bf16"][k], 3) for k in
                            ("backbone_weight_mb", "peak_rss_mb", "step_seconds_median") if ref["bf16"][k]}
    data = {"command": "python benchmarks/bench_qlora.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "commit": common.git_commit(), "machine": common.machine_info(), "rows": rows}
    common.write_json(a.out, data, indent=1)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
