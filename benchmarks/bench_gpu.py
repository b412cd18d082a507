"""GPU attention benchmark: FS decay through ``flex_attention`` against SDPA with a float mask
and against causal SDPA (flash), on decoders shaped like 1B and 7B Llamas.

    python benchmarks/bench_gpu.py                  # needs a CUDA GPU; about 6 minutes on an H100
    python benchmarks/bench_gpu.py --shapes llama-1b --lengths 512,2048
    python benchmarks/bench_gpu.py --smoke          # tiny shapes; also runs on a CPU (forward only, no memory)

What one cell measures: one fsllm training step (forward + backward of
``FSForTokenClassification`` with LoRA r=8 on every projection, bf16 frozen weights,
batch 1, random tokens and labels), timed with ``torch.cuda.synchronize`` around each
step, median of ``--repeats`` after ``--warmup`` untimed steps (the first flex step
compiles its kernels), variants interleaved round-robin; and the step's peak GPU memory
above what was allocated before it (weights and LoRA state excluded).

Variants (attention implementation and FS mode of every layer):

* ``causal-sdpa``: the backbone's own causal attention (SDPA ``is_causal``: flash). The
  reference that the ratios divide by.
* ``bidirectional-sdpa``: FS bidirectional (SDPA without a mask: flash, non-causal).
* ``decay-sdpa``: FS decay through SDPA with a dense ``[L, L]`` float bias (what the
  CPU default does): flash cannot take a bias, so SDPA falls back to its memory-efficient
  kernel, and the bias is an L x L tensor.
* ``causal-flex``: causal ``flex_attention`` (block mask, no score_mod), for reference.
* ``decay-flex-full``: decay as a flex ``score_mod`` over every key (no L x L tensor).
* ``decay-flex``: fsllm's flex path: the same ``score_mod`` and a block mask that skips
  future keys beyond ``fsllm.attention.decay_horizon`` (bias below -50), so the kernel
  computes causal plus a band of ``50 / lambda`` keys.

The models are randomly initialised (speed and memory do not depend on the weights);
``llama-7b`` keeps fewer layers than the real model (``--layers-7b``) so that 8K-token
steps fit in memory next to the other variants; every layer is identical, so per-layer
costs and ratios carry over.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import common
import torch
from timing import cuda_peak_mib, cuda_sync, time_round_robin

from fsllm.attention import DECAY_HORIZON_BIAS as DEFAULT_HORIZON_BIAS

#: the LlamaConfig fields a shape sets, in the order of the rows below
SHAPE_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                "num_hidden_layers", "vocab_size")
SHAPES = {
    name: dict(zip(SHAPE_FIELDS, row, strict=True))
    for name, row in {
        "llama-1b": (2048, 8192, 32, 8, 64, 16, 128256),  # Llama-3.2-1B: 32 query / 8 key-value heads of 64
        "llama-7b": (4096, 11008, 32, 32, 128, 32, 32000),  # Llama-2-7B: 32 heads of 128
        "tiny": (64, 128, 4, 2, 16, 2, 256),  # the --smoke run's
    }.items()
}

#: name -> (FS mode of every layer, attention implementation, horizon on)
VARIANTS = {
    "causal-sdpa": ("causal", "sdpa", True),
    "bidirectional-sdpa": ("bidirectional", "sdpa", True),
    "decay-sdpa": ("decay", "sdpa", True),
    "causal-flex": ("causal", "flex_attention", True),
    "decay-flex-full": ("decay", "flex_attention", False),
    "decay-flex": ("decay", "flex_attention", True),
}
REFERENCE = "causal-sdpa"
NUM_LABELS = 9


def build(shape: str, layers: int | None, lam: float, device: str):
    """A random bf16 Llama of the given shape wrapped as an FS token classifier (LoRA on)."""
    from transformers import LlamaConfig, LlamaModel

    from fsllm import FSConfig, FSForTokenClassification

    cfg = dict(SHAPES[shape])
    if layers:
        cfg["num_hidden_layers"] = layers
    config = LlamaConfig(**cfg, max_position_embeddings=16384, attn_implementation="sdpa")
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            backbone = LlamaModel(config)
    finally:
        torch.set_default_dtype(torch.float32)
    model = FSForTokenClassification.from_backbone(backbone, num_labels=NUM_LABELS, fs_config=FSConfig(attention="decay", decay_lambda=lam)).to(device)
    model.train()
    return model, config


def set_variant(model, name: str) -> None:
    """Switch every layer's FS mode and the attention implementation in place (same weights)."""
    mode, impl, horizon = VARIANTS[name]
    # decay-flex-full: no horizon threshold, so flex computes every future key
    model.set_attention(mode=mode, layers="all", implementation=impl,
                        decay_horizon_bias=DEFAULT_HORIZON_BIAS if horizon else math.inf)


def step(model, batch) -> None:
    if not batch["input_ids"].is_cuda:  # flex has no backward on CPU: the CPU smoke run times forwards
        with torch.no_grad():
            model(input_ids=batch["input_ids"], labels=batch["labels"])
        return
    out = model(input_ids=batch["input_ids"], labels=batch["labels"])
    out.loss.backward()
    for p in model.parameters():
        p.grad = None


CHECK_PAIRS = [
    ("decay-flex", "decay-sdpa"),
    ("decay-flex-full", "decay-sdpa"),
    ("decay-flex", "decay-flex-full"),
    ("causal-flex", "causal-sdpa"),
    ("decay-sdpa", "causal-sdpa"),  # scale of a real difference, for comparison
]


@torch.no_grad()
def agreement(model, names: list[str], batch) -> dict:
    """Max |logit difference| between variants that compute the same function (same dropout masks)."""
    logits = {}
    for n in names:
        set_variant(model, n)
        torch.manual_seed(0)  # LoRA dropout draws the same masks in the same order for every variant
        logits[n] = model(input_ids=batch["input_ids"]).logits.float()
    out = {}
    for a, b in CHECK_PAIRS:
        if a in logits and b in logits:
            diff = (logits[a] - logits[b]).abs().max().item()
            out[f"{a} vs {b}"] = {"max_abs": round(diff, 5), "relative": round(diff / logits[b].abs().max().item(), 5)}
    set_variant(model, REFERENCE)
    return out


ATTENTION_KERNEL = re.compile(r"flash|fmha|attention|mem_eff|sdpa", re.I)


def profile(model, names: list[str], batch, steps: int = 2) -> dict:
    """Where a step's GPU time goes: attention kernels (flash, mem-efficient, flex templates) vs the rest."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    out = {}
    for n in names:
        set_variant(model, n)
        step(model, batch)
        cuda_sync()
        with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                step(model, batch)
            cuda_sync()
        kernels = {}
        for e in prof.key_averages():
            t = getattr(e, "self_device_time_total", 0) or getattr(e, "self_cuda_time_total", 0)
            if t > 0 and e.device_type == torch.autograd.DeviceType.CUDA:
                kernels[e.key] = kernels.get(e.key, 0.0) + t / 1000 / steps  # ms per step
        attn = {k: v for k, v in kernels.items() if ATTENTION_KERNEL.search(k)}
        other = {k: v for k, v in kernels.items() if k not in attn}
        total = sum(kernels.values())
        out[n] = {
            "gpu_ms_per_step": round(total, 2),
            "attention_kernels_ms": round(sum(attn.values()), 2),
            "other_kernels_ms": round(total - sum(attn.values()), 2),
            "top_attention_kernels": {k[:90]: round(v, 2) for k, v in sorted(attn.items(), key=lambda kv: -kv[1])[:4]},
            "top_other_kernels": {k[:90]: round(v, 2) for k, v in sorted(other.items(), key=lambda kv: -kv[1])[:8]},
        }
    return out


def measure(model, names: list[str], batch, repeats: int, warmup: int) -> dict:
    cuda = batch["input_ids"].is_cuda
    peak: dict[str, float] = {}
    errors: dict[str, str] = {}
    for n in names:  # warmup (compiles flex) and peak memory, one variant at a time
        try:
            set_variant(model, n)
            for _ in range(warmup):
                step(model, batch)
            peak[n] = cuda_peak_mib(lambda: step(model, batch)) if cuda else float("nan")
        except torch.cuda.OutOfMemoryError as e:
            errors[n] = f"out of memory: {str(e).splitlines()[0]}"
            torch.cuda.empty_cache()
    live = [n for n in names if n not in errors]
    # timed, round-robin so drifts hit every variant alike; switching variants is not timed
    times = time_round_robin({n: (lambda: step(model, batch)) for n in live}, repeats, warmup=0, sync=True,
                             prepare=lambda n: set_variant(model, n)) if live else {}
    out = {}
    for n in names:
        if n in errors:
            out[n] = {"error": errors[n]}
            continue
        t = times[n]
        out[n] = {
            "step_median_ms": round(1000 * t.median, 3),
            "step_min_ms": round(1000 * t.min, 3),
            "step_max_ms": round(1000 * t.max, 3),
            "peak_step_mib": round(peak[n], 1),
        }
    set_variant(model, REFERENCE)
    ref = out.get(REFERENCE, {})
    for n in live:
        if "step_median_ms" in ref:
            out[n]["time_vs_causal_sdpa"] = round(out[n]["step_median_ms"] / ref["step_median_ms"], 3)
            out[n]["memory_vs_causal_sdpa"] = round(out[n]["peak_step_mib"] / ref["peak_step_mib"], 3)
    return out


def markdown(data: dict) -> str:
    m = data["machine"]
    lines = [
        "# fsllm GPU attention benchmark",
        "",
        f"Command: `{data['command']}`  ",
        f"Machine: {m['gpu']}, torch {m['torch']} (CUDA {m['cuda']}), transformers {m['transformers']}; "
        f"{data['started']}  ",
        f"Step: {data.get('step', 'forward + backward')} of FSForTokenClassification, LoRA r=8 on every projection, bf16 weights, "
        f"batch 1, decay lambda = {data['lambda']} (flex horizon {data['horizon']} keys). Median of "
        f"{data['repeats']} steps after {data['warmup']} warmup steps; memory: the step's peak above the "
        f"allocation before it. Flex kernels: {data.get('flex_shapes', 'static')}.",
        "",
    ]
    for shape, rows in data["results"].items():
        layers = data["layers"][shape]
        lines += [f"## {shape} ({layers} layers)", ""]
        names = list(VARIANTS)
        lines.append("| tokens | " + " | ".join(names) + " |")
        lines.append("|---:|" + "---:|" * len(names))
        for L, row in rows.items():
            cells = []
            for n in names:
                r = row.get(n, {})
                if "error" in r:
                    cells.append("OOM" if "memory" in r["error"] else "error")
                elif "step_median_ms" in r:
                    cells.append(
                        f"{r['step_median_ms']:.1f} ms ({r.get('time_vs_causal_sdpa', 1):.2f}x), "
                        f"{r['peak_step_mib']:.0f} MiB ({r.get('memory_vs_causal_sdpa', 1):.2f}x)"
                    )
                else:
                    cells.append("-")
            lines.append(f"| {L} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("Ratios divide by causal-sdpa at the same length (time, memory).")
    if data.get("profile"):
        lines += ["", "GPU kernel time per step (torch.profiler; attention = flash / mem-efficient / flex kernels):", ""]
        lines.append("| shape, tokens | " + " | ".join(VARIANTS) + " |")
        lines.append("|---|" + "---:|" * len(VARIANTS))
        for shape, rec in data["profile"].items():
            cells = [
                f"{rec[n]['attention_kernels_ms']:.1f} attn + {rec[n]['other_kernels_ms']:.1f} other ms" if n in rec else "-"
                for n in VARIANTS
            ]
            lines.append(f"| {shape}, {rec['tokens']} | " + " | ".join(cells) + " |")
    if data.get("agreement"):
        lines += ["", "Agreement (max |logit difference|, same weights and dropout masks, bf16):", ""]
        for shape, rec in data["agreement"].items():
            pairs = ", ".join(f"{k}: {v['max_abs']:.3g} ({v['relative']:.2%} of max |logit|)" for k, v in rec.items() if k != "tokens")
            lines.append(f"- {shape}, {rec['tokens']} tokens: {pairs}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="llama-1b,llama-7b")
    p.add_argument("--lengths", default="512,1024,2048,4096,8192")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--layers-1b", type=int, default=16)
    p.add_argument("--layers-7b", type=int, default=8)
    p.add_argument("--lambda", dest="lam", type=float, default=0.5, help="decay rate [0.5]")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", type=Path, default=None, help="[benchmarks/results/gpu/speed_gpu.json; smoke: speed_gpu_smoke.json]")
    p.add_argument(
        "--dynamic",
        action="store_true",
        help="keep compiled flex kernels across lengths (torch.compile then recompiles them for dynamic shapes "
        "from the second length on); default: reset before each length, so every length gets static-shape kernels",
    )
    p.add_argument("--profile", action="store_true", help="also profile one step per variant at the longest length")
    p.add_argument("--smoke", action="store_true", help="tiny model, 2 lengths, 1 repeat: checks that it runs")
    a = p.parse_args(argv)
    if a.smoke:
        a.shapes, a.lengths, a.repeats, a.warmup = "tiny", "64,160", 1, 1
    if a.out is None:
        a.out = Path("benchmarks/results/gpu") / ("speed_gpu_smoke.json" if a.smoke else "speed_gpu.json")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not a.smoke:
        print("bench_gpu.py needs a CUDA GPU (none is visible); --smoke runs on a CPU", file=sys.stderr)
        return 2
    from fsllm.attention import decay_horizon

    # every (variant, length) is its own flex graph; keep them all compiled
    for knob in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit", "accumulated_recompile_limit"):
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 1024)
    names = [n.strip() for n in a.variants.split(",")]
    if REFERENCE not in names:
        names.insert(0, REFERENCE)
    lengths = [int(x) for x in a.lengths.split(",")]
    data = {
        "benchmark": "bench_gpu",
        "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {  # with a GPU, machine_info's gpu, gpu_memory_gib and cuda replace these CPU values
            "gpu": f"none (CPU: {common.cpu_model()})",
            "gpu_memory_gib": None,
            "cuda": torch.version.cuda,
            **common.machine_info(),
        },
        "flex_shapes": "dynamic after the first length" if a.dynamic else "static (compiled per length)",
        # flex has no backward on a CPU, so the CPU smoke run times forwards (see step())
        "step": "forward + backward" if device == "cuda" else "forward only",
        "lambda": a.lam,
        "horizon": decay_horizon(a.lam, 1 << 30),
        "repeats": a.repeats,
        "warmup": a.warmup,
        "layers": {},
        "results": {},
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    for shape in [s.strip() for s in a.shapes.split(",")]:
        layers = {"llama-1b": a.layers_1b, "llama-7b": a.layers_7b}.get(shape)
        model, config = build(shape, layers, a.lam, device)
        data["layers"][shape] = config.num_hidden_layers
        rows = data["results"].setdefault(shape, {})
        g = torch.Generator(device=device).manual_seed(0)
        # agreement where the flex horizon cuts: the shortest length past it (else the longest)
        horizon = decay_horizon(a.lam, 1 << 30) or 0
        check_at = min([L for L in lengths if L > horizon], default=max(lengths))
        for L in lengths:
            if not a.dynamic:
                torch._dynamo.reset()
            batch = {
                "input_ids": torch.randint(0, config.vocab_size, (1, L), device=device, generator=g),
                "labels": torch.randint(0, NUM_LABELS, (1, L), device=device, generator=g),
            }
            if L == check_at:
                data.setdefault("agreement", {})[shape] = {"tokens": L, **agreement(model, names, batch)}
                print(shape, "agreement", json.dumps(data["agreement"][shape]), flush=True)
            t0 = time.perf_counter()
            rows[str(L)] = measure(model, names, batch, a.repeats, a.warmup)
            rows[str(L)]["cell_seconds"] = round(time.perf_counter() - t0, 1)
            print(shape, L, json.dumps(rows[str(L)]), flush=True)
            if a.profile and L == max(lengths) and batch["input_ids"].is_cuda:
                data.setdefault("profile", {})[shape] = {"tokens": L, **profile(model, names, batch)}
                print(shape, "profile", json.dumps(data["profile"][shape]), flush=True)
            common.write_json(a.out, data, indent=1)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    data["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    common.write_json(a.out, data, indent=1)
    a.out.with_suffix(".md").write_text(markdown(data) + "\n")
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
