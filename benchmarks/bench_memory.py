#!/usr/bin/env python
"""Peak memory of one training step with and without gradient checkpointing (CPU, fp32).

    python benchmarks/bench_memory.py [--lengths 512,2048] [--backbone-dtype fp32] [--out benchmarks/results/memory.json]

The packaged SmolLM2-135M as ``FSForTokenClassification`` (9 labels, FSConfig defaults: bidirectional
attention, LoRA 8/32/0.1), batch 1, random token ids without padding. Every (length, checkpointing)
cell runs in its own fresh Python process, so no cell inherits another's heap.

Method (the one ``bench_speed.py`` uses, see benchmarks/README.md "Memory"): load the model, run
one warmup step (the mmapped safetensors weights page in, first-call allocations happen), free
the gradients, ``gc.collect()`` + ``malloc_trim(0)`` so RSS is live memory, read VmRSS, reset the
kernel's high-water mark (``echo 5 > /proc/self/clear_refs``), run the measured step and report
``VmHWM - VmRSS before``. Why not ``ru_maxrss`` minus the RSS after load: the weights are mmapped
and enter RSS only when the first forward touches them, so that difference mostly counts the
weights paging in, and ``ru_maxrss`` cannot be reset. ``tracemalloc`` sees only Python's allocator,
not tensor storage. The step is zero_grad + forward with loss + backward (no optimizer step: its
state is the same with and without checkpointing).

Each worker also saves the loss and the trainable parameters' gradients of the measured step
(seeded, so LoRA dropout draws the same masks); the parent compares them between the two
settings at each length: checkpointing must change memory, not the numbers.

``--backbone-dtype bf16`` loads the backbone's frozen weights in bf16 (``TrainConfig.backbone_dtype``;
LoRA and the head stay fp32); every cell also reports the model's parameter bytes by dtype, so two
runs (fp32, bf16) give the memory the option saves.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import common
import torch
from bench_speed import synthetic_batch
from timing import rss_peak, timed

from fsllm.backbones import decoder_layers

BACKBONE = "smollm2-135m"
NUM_LABELS = 9  # CoNLL-2003's IOB2 tags
SEED = 0
GRAD_TOLERANCE = 1e-5
REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- the worker


def train_step(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(SEED)  # the same dropout masks in every cell: gradients are comparable
    out = model(**batch)
    out.loss.backward()
    return out.loss.detach()


def worker(spec: dict) -> dict:
    """One cell in a fresh process: load, warm up, measure one step, save loss and gradients."""
    from fsllm import FSForTokenClassification

    torch.set_num_threads(spec["threads"])
    rss_start = common.rss_mb()
    torch.manual_seed(SEED)
    from fsllm.config import torch_dtype

    model = FSForTokenClassification.from_backbone(BACKBONE, num_labels=NUM_LABELS,
                                                   dtype=torch_dtype(spec.get("backbone_dtype", "fp32")))
    param_bytes: dict[str, int] = {}
    for p in model.parameters():
        key = f"{'trainable' if p.requires_grad else 'frozen'}_{str(p.dtype).removeprefix('torch.')}"
        param_bytes[key] = param_bytes.get(key, 0) + p.numel() * p.element_size()
    if spec["checkpointing"]:
        model.activation_checkpointing_enable()  # what TrainingArguments(gradient_checkpointing=True) calls
    model.train()
    layers = decoder_layers(model.backbone)
    enabled = [bool(getattr(layer, "gradient_checkpointing", False)) for layer in layers]
    common.release_free_memory()
    rss_loaded = common.rss_mb()
    batch = synthetic_batch(spec["length"], NUM_LABELS, model.config.decoder_config.vocab_size, seed=SEED)
    train_step(model, batch)  # warmup: weights page in, first-call allocations, thread pools
    model.zero_grad(set_to_none=True)
    (loss, seconds), mem = rss_peak(lambda: timed(lambda: train_step(model, batch)))
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    torch.save({"loss": loss, "grads": grads}, spec["grads_path"])
    return {
        "length": spec["length"],
        "checkpointing": spec["checkpointing"],
        "backbone_dtype": spec.get("backbone_dtype", "fp32"),
        "param_bytes": param_bytes,
        "param_mb": round(sum(param_bytes.values()) / 2**20, 1),
        "layers_with_checkpointing": sum(enabled),
        "layers": len(enabled),
        "rss_at_start_mb": round(rss_start, 1),
        "rss_after_load_mb": round(rss_loaded, 1),
        "peak_load_and_warmup_mb": round(mem.peak_before_reset_mb, 1),
        "rss_before_step_mb": round(mem.rss_before_mb, 1),
        "peak_rss_mb": round(mem.peak_rss_mb, 1),
        "step_peak_mb": round(mem.step_peak_mb, 1),
        "peak_reset": mem.reset,
        "method": mem.method,
        "loss": float(loss),
        "trainable_tensors_with_grad": len(grads),
        "step_seconds_not_a_result": round(seconds, 2),  # the machine may be loaded: not a timing result
    }


def run_cell(spec: dict, workdir: Path, env: dict[str, str]) -> dict:
    spec_path = workdir / f"spec-{spec['length']}-{int(spec['checkpointing'])}.json"
    return common.run_worker(__file__, "--_worker", spec, spec_path, f"worker {spec}", env=env)


def compare(a_path: str, b_path: str) -> dict:
    """Loss and gradient differences between the two settings at one length."""
    a, b = torch.load(a_path), torch.load(b_path)
    assert a["grads"].keys() == b["grads"].keys(), "different parameters got gradients"
    diffs = {n: (a["grads"][n] - b["grads"][n]).abs().max().item() for n in a["grads"]}
    scale = max(t.abs().max().item() for t in a["grads"].values())
    worst = max(diffs, key=diffs.get)
    return {
        "loss_abs_diff": abs(a["loss"].item() - b["loss"].item()),
        "grad_max_abs_diff": diffs[worst],
        "grad_max_abs": scale,
        "worst_tensor": worst,
        "tensors_compared": len(diffs),
        "tolerance": GRAD_TOLERANCE,
        "same": abs(a["loss"].item() - b["loss"].item()) <= GRAD_TOLERANCE and diffs[worst] <= GRAD_TOLERANCE,
    }


def markdown(data: dict) -> str:
    lines = [
        "# Peak training-step memory with and without gradient checkpointing",
        "",
        f"`{data['command']}` at commit `{data['commit']}`, {data['started']}.",
        f"Machine: {data['machine']['cpu_model']}, {data['machine']['usable_cpus']} CPUs, "
        f"{data['machine']['torch_threads']} torch threads, torch {data['machine']['torch']}, "
        f"transformers {data['machine']['transformers']}, peft {data['machine']['peft']}.",
        "",
        f"{data['setup']['model']}; batch 1, random ids, no padding; one zero_grad + forward + backward, no autocast; "
        f"backbone weights in {data['setup'].get('backbone_dtype', 'fp32')} (LoRA and head fp32). "
        "Step peak = VmHWM during the step − VmRSS before it (each cell in a fresh process; see bench_memory.py). "
        f"glibc mmap threshold: {data['setup']['malloc_mmap_threshold']}.",
        "",
        "| tokens | checkpointing | layers checkpointed | parameters (MB) | RSS before step (MB) | step peak (MB) | saving "
        "| loss | max |Δgrad| vs off |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for L in data["setup"]["lengths"]:
        off = data["cells"][f"{L}-off"]
        on = data["cells"][f"{L}-on"]
        cmp_ = data["comparisons"][str(L)]
        for cell in (off, on):
            saving = "" if not cell["checkpointing"] else f"{1 - cell['step_peak_mb'] / off['step_peak_mb']:.0%}"
            delta = "" if not cell["checkpointing"] else f"{cmp_['grad_max_abs_diff']:.1e}"
            lines.append(
                f"| {L} | {'on' if cell['checkpointing'] else 'off'} | {cell['layers_with_checkpointing']}/{cell['layers']} "
                f"| {cell.get('param_mb', '')} | {cell['rss_before_step_mb']:.0f} | {cell['step_peak_mb']:.0f} | {saving} | {cell['loss']:.6f} | {delta} |"
            )
    lines += ["", "Same loss and gradients (≤ 1e-5) with and without checkpointing: "
              + ", ".join(f"{L} tokens: {'yes' if data['comparisons'][str(L)]['same'] else 'NO'}" for L in data["setup"]["lengths"]),
              "", "Step times are not reported: the machine was shared."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lengths", default="512,2048", help="comma-separated sequence lengths")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0")) or os.cpu_count())
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "memory.json"))
    p.add_argument("--backbone-dtype", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="the dtype the backbone's frozen weights load in (TrainConfig.backbone_dtype)")
    p.add_argument("--mmap-threshold", type=int, default=None,
                   help="glibc M_MMAP_THRESHOLD in bytes for the workers (MALLOC_MMAP_THRESHOLD_). By default glibc "
                        "raises it up to 32 MB as large blocks are freed, so tensors below that come from the heap, "
                        "whose freed pages stay resident: the peak then includes heap fragmentation. 65536 sends "
                        "every tensor above 64 kB to its own mmap, so the peak is close to the live tensors.")
    p.add_argument("--_worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._worker:
        common.print_result(worker(json.loads(Path(a._worker).read_text())))
        return 0
    lengths = [int(x) for x in a.lengths.split(",")]
    env = dict(os.environ)
    if a.mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(a.mmap_threshold)
    data: dict = {
        "command": "python benchmarks/bench_memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": common.git_commit(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": {**common.machine_info(), "torch_threads": a.threads},  # what each worker runs with
        "setup": {
            "model": f"FSForTokenClassification.from_backbone({BACKBONE!r}, num_labels={NUM_LABELS}) (FSConfig defaults)",
            "lengths": lengths,
            "batch_size": 1,
            "dtype": "float32",
            "backbone_dtype": a.backbone_dtype,
            "seed": SEED,
            "malloc_mmap_threshold": env.get("MALLOC_MMAP_THRESHOLD_", "glibc default (dynamic, up to 32 MB)"),
        },
        "cells": {},
        "comparisons": {},
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for L in lengths:
            paths = {}
            for gc_on in (False, True):
                paths[gc_on] = str(work / f"grads-{L}-{int(gc_on)}.pt")
                spec = {"length": L, "checkpointing": gc_on, "threads": a.threads, "grads_path": paths[gc_on],
                        "backbone_dtype": a.backbone_dtype}
                cell = run_cell(spec, work, env)
                data["cells"][f"{L}-{'on' if gc_on else 'off'}"] = cell
                print(f"{L} tokens, checkpointing {'on ' if gc_on else 'off'}: step peak {cell['step_peak_mb']} MB", flush=True)
            data["comparisons"][str(L)] = compare(paths[False], paths[True])
            common.write_json(out, data)
    common.write_json(out, data)
    md = markdown(data)
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0 if all(c["same"] for c in data["comparisons"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
