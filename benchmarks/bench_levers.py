#!/usr/bin/env python
"""Memory and step time of the training levers (sequence repetition, full fine-tuning, rsLoRA, DoRA, decay)
against fsllm's default (FSConfig(): bidirectional, LoRA r8), CPU, fp32.

    python benchmarks/bench_levers.py [--threads 1] [--batch-size 16] [--length 128] [--steps 2] \\
        [--out benchmarks/results/levers/levers.json]

The packaged SmolLM2-135M as ``FSForTokenClassification`` (9 labels), one synthetic batch of
``batch-size x length`` random token ids without padding. Each config runs in a fresh Python process
(as in ``bench_memory.py``): build the model and an AdamW over its trainable parameters, one warmup
step (forward + backward + optimizer step, so the optimizer state exists), then the trainable
parameters' bytes, their gradients' and the optimizer state's bytes, VmRSS, a reset of the kernel's
high-water mark, ``--steps`` timed steps (``timing.time_repeats``), and the steps' peak
(VmHWM - VmRSS before them: what a step allocates on top of what the process already holds).
The step is ``bench_speed.train_step`` (zero_grad, forward with loss, backward) plus the optimizer
step, which full fine-tuning makes expensive. A separate head or lambda learning rate, LoRA+'s rate for
LoRA's B and the lambda schedule change no tensor shape: their cost is the default's (the schedule needs
``attention="decay"``, measured as ``decay``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import common
import torch
from timing import rss_peak, time_repeats

BACKBONE = "smollm2-135m"
NUM_LABELS = 9
CONFIGS: dict[str, dict] = {
    "default": {},
    "repeat2-causal": {"attention": "causal", "repeat": 2},
    "repeat2-bidirectional": {"repeat": 2},
    "decay": {"attention": "decay", "decay_lambda": 0.5},
    "rslora": {"use_rslora": True},
    "dora": {"use_dora": True},
    "full-finetune": {"full_finetune": True},
}
REPO = Path(__file__).resolve().parent.parent


def tensor_mb(tensors) -> float:
    return round(sum(t.numel() * t.element_size() for t in tensors) / 2**20, 1)


def worker(spec: dict) -> dict:
    """One config in this (fresh) process; see the module doc."""
    import bench_speed

    from fsllm import FSConfig, FSForTokenClassification

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    rss_start = common.rss_mb()
    model = FSForTokenClassification.from_backbone(BACKBONE, num_labels=NUM_LABELS, fs_config=FSConfig(**spec["fs"]))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    vocab = model.config.decoder_config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (spec["batch_size"], spec["length"]), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "labels": torch.randint(0, NUM_LABELS, ids.shape, generator=g)}

    def step() -> None:
        bench_speed.train_step(model, batch)
        optimizer.step()

    step()  # warmup: mmapped weights paged in, first-call allocations, optimizer state created
    sizes = {
        "trainable_params": sum(p.numel() for p in params),
        "trainable_params_mb": tensor_mb(params),
        "grads_mb": tensor_mb(p.grad for p in params if p.grad is not None),
        "optimizer_state_mb": tensor_mb(v for s in optimizer.state.values() for v in s.values()
                                        if torch.is_tensor(v) and v.dim() > 0),
    }
    model.zero_grad(set_to_none=True)
    timing, mem = rss_peak(lambda: time_repeats(step, repeats=spec["steps"], warmup=0))
    return {
        "fs": spec["fs"],
        **sizes,
        "rss_after_load_and_warmup_mb": round(mem.rss_before_mb, 1),
        "rss_growth_from_start_mb": round(mem.rss_before_mb - rss_start, 1),
        "step_peak_mb": round(mem.step_peak_mb, 1),
        "peak_method": "VmHWM after reset via /proc/self/clear_refs" if mem.reset else "VmHWM without reset",
        "step_seconds": timing.to_dict(),
    }


def run_config(name: str, spec: dict, workdir: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])}
    return common.run_worker(__file__, "--_worker", spec, workdir / f"{name}.json", name, env=env)


def markdown(data: dict) -> str:
    s = data["setup"]
    base = data["configs"]["default"]
    lines = [
        f"# Training levers: memory and step time (SmolLM2-135M, token task, batch {s['batch_size']} x {s['length']}, "
        f"fp32, {s['threads']} thread(s))",
        "",
        f"Command: `{data['command']}`; commit {data['commit']}; CPU: {data['machine'].get('cpu_model')}.",
        "Indicative: the CPU was shared with other work while this ran, and each step time is the median of "
        f"{s['steps']} steps after one warmup step.",
        "",
        "| config | trainable params | params + grads + AdamW state (MB) | step peak (MB) | step s (median) | x default |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in data["configs"].items():
        state = r["trainable_params_mb"] + r["grads_mb"] + r["optimizer_state_mb"]
        t = r["step_seconds"]["median"]
        lines.append(f"| {name} | {r['trainable_params']:,} | {state:,.1f} | {r['step_peak_mb']:,.1f} | {t:.2f} | "
                     f"{t / base['step_seconds']['median']:.2f} |")
    lines += ["", "A separate head or lambda learning rate and the lambda schedule change no tensor: the default's "
              "cost (the schedule runs in decay mode: the `decay` row).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--steps", type=int, default=2, help="timed steps per config, after one warmup step")
    p.add_argument("--only", default=",".join(CONFIGS), help="comma-separated configs")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "levers" / "levers.json"))
    p.add_argument("--_worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._worker:
        common.print_result(worker(json.loads(Path(a._worker).read_text())))
        return 0
    setup = {"batch_size": a.batch_size, "length": a.length, "threads": a.threads, "steps": a.steps}
    data = {"command": "python benchmarks/bench_levers.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "commit": common.git_commit(), "machine": common.machine_info(), "setup": setup, "configs": {}}
    out = Path(a.out)
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.only.split(","):
            data["configs"][name] = run_config(name, {**setup, "fs": CONFIGS[name]}, Path(tmp))
            common.write_json(out, data, newline=True)
            print(name, json.dumps(data["configs"][name]), flush=True)
    if "default" in data["configs"]:
        out.with_suffix(".md").write_text(markdown(data))
        print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
