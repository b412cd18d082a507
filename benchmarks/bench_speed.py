#!/usr/bin/env python
"""Speed and memory benchmark of fsllm on CPU (SmolLM2-135M, CoNLL-2003).

    python benchmarks/bench_speed.py [--out benchmarks/results/speed.json] [--smoke] [--only PART,...]

Parts (see benchmarks/README.md for what each one measures and how):

* ``overhead``  forward+backward step time and peak memory of FS bidirectional / decay /
                causal against the plain ``AutoModelForTokenClassification`` + PEFT LoRA, causal
                (``baseline``) and bidirectional by ``config.is_causal = False`` (``hf-native``,
                the commodity path, built as the paper tables' hf-native row);
* ``train``     one epoch with fsllm's defaults against the LS-LLaMA/BiLLM recipe;
* ``inference`` sentences/s of fsllm's inference path against ``transformers.pipeline``;
* ``flops``     achieved FLOP/s of a training step and an inference batch against the
                measured peak matmul FLOP/s, and a ``torch.profiler`` table of a step;
* ``scaling``   step time, peak memory and mask size against sequence length.

Results are rewritten to the JSON file after every measurement, so an interrupted run keeps
what it finished; a markdown summary is printed at the end (and written next to the JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common
import torch
from timing import Timing, rss_peak, time_repeats, time_round_robin, timed

PARTS = ("overhead", "train", "inference", "flops", "scaling")
FS_KINDS = ("fs-bidirectional", "fs-decay", "fs-causal")
BASELINE = "baseline"
HF_NATIVE = "hf-native"
DECAY_LAMBDA = 0.5
BACKBONE = "smollm2-135m"
TARGETS = {"fs-bidirectional": 1.02, "fs-decay": 1.10}  # step-time ratio vs the plain (causal) baseline
# against the bidirectional commodity path: FS bidirectional no slower, decay at most 10% slower
HF_NATIVE_TARGETS = {"fs-bidirectional": 1.0, "fs-decay": 1.10}
MEMORY_TARGET = 1.05
INFERENCE_TARGET = 3.0  # fsllm predict's sentences/s over transformers.pipeline's, identical tags
# The train part's recipes. "fsllm" is fsllm's defaults (batch 16: half the optimizer steps of
# batch 8 in one epoch). "fsllm_b8" changes only the batch size to the LS recipe's 8, so both
# take the same number of steps at the same learning rate and differ only in the data pipeline
# (dynamic padding, length grouping, no 64-token cut): that pair is the like-for-like comparison.
# "fsllm_b8_shuffled" also drops length grouping (random batches, still dynamically padded), to
# tell the speed and the dev F1 that length grouping brings from those of dynamic padding.
TRAIN_RECIPES = {
    "fsllm": dict(batch_size=16),  # defaults: dynamic padding, length-grouped batches, max_length 128
    "fsllm_b8": dict(batch_size=8),
    "fsllm_b8_shuffled": dict(batch_size=8, group_by_length=False),
    # length-grouped like fsllm_b8, each token weighted the same whatever batch it falls in
    "fsllm_b8_balanced": dict(batch_size=8, length_balanced_loss=True),
    "ls_llama_billm": dict(batch_size=8, group_by_length=False, pad_to_length=64, max_length=64),
    # the commodity path (baselines.run_hf_native: AutoModelForTokenClassification, is_causal=False,
    # PEFT LoRA, HF Trainer with its own collator), at fsllm's batch and precision; only batch_size is read
    "hf_native": dict(batch_size=16),
}
HF_NATIVE_RECIPE = "hf_native"
# the overhead part's bf16 target: a bf16 autocast step at least this much faster than fp32's
BF16_STEP_TARGET = 1.4

log = logging.getLogger("bench_speed")


# ============================================================================ small helpers


class Results:
    """The JSON results file, rewritten atomically after every update."""

    def __init__(self, path: Path, header: dict):
        self.path = path
        self.data: dict[str, Any] = {**header, "parts": {}}
        if path.is_file():  # keep other parts of an earlier run (e.g. --only inference)
            with contextlib.suppress(json.JSONDecodeError):
                old = json.loads(path.read_text())
                if bool(old.get("smoke")) == bool(header.get("smoke")):
                    self.data["parts"] = old.get("parts", {})
        self.save()

    def part(self, name: str) -> dict:
        return self.data["parts"].setdefault(name, {})

    def save(self) -> None:
        common.write_json(self.path, self.data, default=_json_default)


def _json_default(o):
    if isinstance(o, (Path,)):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(type(o))


# ============================================================================ models and data


def conll():
    from fsllm.data import load_named

    return load_named("conll2003")


def build_model(kind: str, id2label: dict[int, str]):
    """One of ``fs-bidirectional``, ``fs-decay``, ``fs-causal`` (FS token classifiers with the
    default LoRA) or ``baseline`` (``AutoModelForTokenClassification`` + PEFT LoRA with the same
    target modules and rank; HF's own causal mask)."""
    from fsllm import FSConfig, FSForTokenClassification
    from fsllm.backbones import add_lora, builtin_model_path, default_lora_targets

    torch.manual_seed(0)
    label2id = {v: k for k, v in id2label.items()}
    if kind == HF_NATIVE:
        import baselines

        from fsllm import load_tokenizer

        labels = [id2label[i] for i in range(len(id2label))]
        model = baselines.load_hf_native(BACKBONE, "token", labels, load_tokenizer(BACKBONE))
    elif kind == BASELINE:
        from peft import LoraConfig
        from transformers import AutoModelForTokenClassification

        defaults = FSConfig()
        model = AutoModelForTokenClassification.from_pretrained(
            str(builtin_model_path(BACKBONE)),
            num_labels=len(id2label),
            id2label=id2label,
            label2id=label2id,
            attn_implementation="sdpa",
            dtype=torch.float32,
        )
        lora = LoraConfig(
            r=defaults.lora_r,
            lora_alpha=defaults.lora_alpha,
            lora_dropout=defaults.lora_dropout,
            target_modules=default_lora_targets(model.model),
            bias="none",
            task_type="TOKEN_CLS",
        )
        model = add_lora(model, lora, exact_targets=False)  # PEFT as a user calls it
    else:
        mode = kind.split("-", 1)[1]
        cfg = FSConfig(attention=mode, decay_lambda=DECAY_LAMBDA if mode == "decay" else 0.0)
        model = FSForTokenClassification.from_backbone(BACKBONE, fs_config=cfg, id2label=id2label, label2id=label2id)
    model.train()
    return model


def conll_batch(examples: list[dict], tok, label2id: dict[str, int], max_length: int = 128) -> dict[str, torch.Tensor]:
    """A training batch of CoNLL sentences (each one's first window), padded as fsllm's trainer pads."""
    from fsllm.tokenization import token_classification_features
    from fsllm.training import make_collator

    keep = ("input_ids", "attention_mask", "labels")
    feats = [token_classification_features(ex["tokens"], ex["tags"], tok, label2id, max_length)[0] for ex in examples]
    return dict(make_collator("token", tok)([{k: f[k] for k in keep} for f in feats]))


def batch_of_conll(tokenizer, n: int = 16, seed: int = 0) -> tuple[dict[str, torch.Tensor], int]:
    """``n`` seeded CoNLL-2003 training sentences as one padded batch with first-sub-token labels,
    and the number of labels."""
    from fsllm.data import load_any
    from fsllm.training import build_label_maps, seeded_subset

    td = load_any("conll2003")
    train = seeded_subset(list(td.splits["train"]), n, seed)
    id2label = build_label_maps("token", list(td.splits["train"]), td.label_names)
    return conll_batch(train, tokenizer, {v: k for k, v in id2label.items()}), len(id2label)


def step_ab_setup(doc: str, argv: list[str] | None, repeats: int, out: str) -> tuple[argparse.Namespace, dict, int]:
    """Options, batch and label count of the scripts that time two variants of one training step
    (``bench_compile``, ``bench_fused_lora``): ``--repeats``, ``--threads`` (set here), ``--out``
    (``out`` under benchmarks/results), and one batch of 16 seeded CoNLL-2003 sentences. Seeds torch
    with 0 last, so the caller's model is built from the same seed as before."""
    from fsllm import load_tokenizer

    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=repeats, help=f"timed steps per variant [{repeats}]")
    p.add_argument("--threads", type=int, default=2, help="torch threads [2]")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / out)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    batch, num_labels = batch_of_conll(load_tokenizer(BACKBONE))
    torch.manual_seed(0)
    return a, batch, num_labels


def synthetic_batch(length: int, num_labels: int, vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Batch 1, no padding, random token ids and labels (timing does not depend on the ids)."""
    g = torch.Generator().manual_seed(seed + length)
    ids = torch.randint(0, vocab, (1, length), generator=g)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": torch.randint(0, num_labels, (1, length), generator=g),
    }


def train_step(model, batch: dict[str, torch.Tensor], precision: str = "fp32") -> None:
    """One forward + backward (no optimizer step: it costs the same for every config); ``"bf16"``:
    the forward under bf16 autocast, the backward outside it, as the HF Trainer runs ``bf16=True``."""
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = model(**batch)
    out.loss.backward()


@contextlib.contextmanager
def record_masks(model):
    """Record every attention mask ``model`` builds during a forward: the model-level mask its
    decoder layers receive (HF's own causal mask for the plain baseline; for FS models the
    key-padding mask that fsllm registers with ``AttentionMaskInterface``, ``None`` without padding)
    and, for FS models, each layer's own mask (``FSModel.observe_masks``). Forward pre-hooks and the
    library's observer only: nothing is patched."""
    from fsllm import FSModel
    from fsllm.backbones import decoder_layers

    layer: dict[int, torch.Tensor] = {}
    model_level: dict[int, torch.Tensor] = {}
    # "create_causal_mask": model-level masks built, one per forward (a decoder without sliding windows)
    calls = {"layer_mask": 0, "create_causal_mask": 0}

    def on_layer_mask(layer_idx, mask):
        calls["layer_mask"] += 1
        if mask is not None:
            layer.setdefault(id(mask), mask)

    def on_decoder_layer(index):
        def hook(module, args, kwargs):
            calls["create_causal_mask"] += index == 0
            mask = kwargs.get("attention_mask")
            if isinstance(mask, torch.Tensor):
                model_level.setdefault(id(mask), mask)

        return hook

    def describe(masks: list[torch.Tensor]) -> dict:
        return {
            "count": len(masks),
            "bytes": sum(m.numel() * m.element_size() for m in masks),
            "shapes": sorted({f"{list(m.shape)} {str(m.dtype).replace('torch.', '')}" for m in masks}),
        }

    hooks = [
        m.register_forward_pre_hook(on_decoder_layer(i), with_kwargs=True) for i, m in enumerate(decoder_layers(model))
    ]
    out: dict[str, Any] = {}
    try:
        with model.observe_masks(on_layer_mask) if isinstance(model, FSModel) else contextlib.nullcontext():
            yield out
    finally:
        for h in hooks:
            h.remove()
        masks = list(layer.values()) + list(model_level.values())
        out.update(
            calls=calls,
            model_level_masks=describe(list(model_level.values())),
            per_layer_masks=describe(list(layer.values())),
            distinct_masks=len(masks),
            mask_bytes_total=sum(m.numel() * m.element_size() for m in masks),
        )


def mask_census(model, batch) -> dict:
    """What masks one forward builds (shapes, dtypes, bytes), measured on a no-grad forward."""
    with record_masks(model) as rec, torch.no_grad():
        model(**{k: v for k, v in batch.items() if k != "labels"})
    return rec


# ============================================================================ memory workers (subprocesses)


def worker_memory(spec: dict) -> dict:
    """Runs in its own process: load one model, then per batch (ascending size) do one warmup
    step, release free memory, reset the peak-RSS counter and measure ``steps`` more steps.
    Peak step memory = VmHWM during the measured steps - VmRSS just before them."""
    torch.set_num_threads(spec["threads"])
    id2label = {int(k): v for k, v in spec["id2label"].items()}
    rss_start = common.rss_mb()
    model = build_model(spec["kind"], id2label)
    common.release_free_memory()
    rss_loaded = common.rss_mb()
    batches = torch.load(spec["batches"]) if "batches" in spec else None
    precision = spec.get("precision", "fp32")
    results = []
    peak_load_warmup = 0.0
    for item in spec["items"]:
        if batches is not None:
            batch = batches[item]
        else:
            batch = synthetic_batch(int(item), len(id2label), spec["vocab"])
        train_step(model, batch, precision)  # warmup: first-call allocations, autograd and thread pools
        model.zero_grad(set_to_none=True)
        _, mem = rss_peak(lambda b=batch: [train_step(model, b, precision) for _ in range(spec["steps"])])
        peak_load_warmup = max(peak_load_warmup, mem.peak_before_reset_mb)
        results.append(
            {
                "item": item,
                "rss_before_step_mb": round(mem.rss_before_mb, 1),
                "peak_rss_mb": round(mem.peak_rss_mb, 1),
                "step_peak_mb": round(mem.step_peak_mb, 1),
                "method": mem.method,
            }
        )
        model.zero_grad(set_to_none=True)
    return {
        "kind": spec["kind"],
        "rss_at_start_mb": round(rss_start, 1),
        "rss_after_load_mb": round(rss_loaded, 1),
        "load_rss_growth_mb": round(rss_loaded - rss_start, 1),  # < model size: weights are mmapped
        # VmHWM before the first reset: the load (weights are mmapped, so they enter RSS only when
        # the warmup step touches them) plus the warmup step. (ru_maxrss is useless here: Linux
        # carries the parent's high-water mark over fork+exec.)
        "peak_load_and_warmup_mb": round(peak_load_warmup, 1),
        "results": results,
    }


def measure_memory(spec: dict, workdir: Path) -> dict:
    """Run ``worker_memory`` in a fresh Python process and return its JSON."""
    spec_path = workdir / f"mem-{spec['kind']}-{time.monotonic_ns()}.json"
    return common.run_worker(__file__, "--_memory-worker", spec, spec_path, f"memory worker for {spec['kind']}")


# ============================================================================ parts


@dataclass
class Ctx:
    args: argparse.Namespace
    results: Results
    workdir: Path
    tok: Any = None
    data: Any = None
    id2label: dict[int, str] = field(default_factory=dict)

    @property
    def label2id(self) -> dict[str, int]:
        return {v: k for k, v in self.id2label.items()}

    def sample(self, split: str, n: int, seed: int | None = None) -> list[dict]:
        rows = self.data.splits[split]
        idx = sorted(
            random.Random(self.args.seed if seed is None else seed).sample(range(len(rows)), min(n, len(rows)))
        )
        return [rows[i] for i in idx]


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None


def _suffix(precision: str) -> str:
    """Result keys of the overhead part: fp32's are unsuffixed (as before bf16 was measured)."""
    return "" if precision == "fp32" else f"_{precision}"


def part_overhead(ctx: Ctx) -> None:
    a = ctx.args
    res = ctx.results.part("overhead")
    examples = ctx.sample("train", a.batch_size)
    batch = conll_batch(examples, ctx.tok, ctx.label2id, a.max_length)
    real = int(batch["attention_mask"].sum())
    res["setup"] = {
        "batch_size": a.batch_size,
        "max_length": a.max_length,
        "padded_shape": list(batch["input_ids"].shape),
        "real_tokens": real,
        "padding_fraction": round(1 - real / batch["input_ids"].numel(), 3),
        "repeats": a.repeats,
        "warmup": a.warmup,
        "seed": a.seed,
        "decay_lambda": DECAY_LAMBDA,
        "precisions": a.overhead_precisions,
        "step": "zero_grad + forward (loss) + backward, train mode, no optimizer step; bf16: forward under autocast",
    }
    kinds = [*FS_KINDS, BASELINE, HF_NATIVE]
    models = {k: build_model(k, ctx.id2label) for k in kinds}
    res["trainable_params"] = {k: sum(p.numel() for p in m.parameters() if p.requires_grad) for k, m in models.items()}
    res["masks"] = {k: mask_census(m, batch) for k, m in models.items()}
    ctx.results.save()

    # Every (config, precision) in one round robin: a drift of the machine's speed hits them all alike.
    fns = {
        f"{k}@{p}": (lambda m=m, p=p: train_step(m, batch, p)) for p in a.overhead_precisions for k, m in models.items()
    }
    by_run = time_round_robin(fns, a.repeats, a.warmup)
    for p in a.overhead_precisions:
        timings = {k: by_run[f"{k}@{p}"] for k in kinds}
        base = timings[BASELINE].median
        res["time" + _suffix(p)] = {
            k: {
                **t.to_dict(),
                "ratio_vs_baseline": _ratio(t.median, base),
                "ratio_vs_hf_native": _ratio(t.median, timings[HF_NATIVE].median),
                "ratio_vs_fs_causal": _ratio(t.median, timings["fs-causal"].median),
            }
            for k, t in timings.items()
        }
        res["tokens_per_s" + _suffix(p)] = {k: round(real / t.median, 1) for k, t in timings.items()}
    if "bf16" in a.overhead_precisions and "fp32" in a.overhead_precisions:
        # how much faster each config's step is under bf16 autocast than in fp32 (same batch, same run)
        res["bf16_speedup"] = {k: _ratio(by_run[f"{k}@fp32"].median, by_run[f"{k}@bf16"].median) for k in kinds}
    ctx.results.save()
    del models
    common.release_free_memory()

    batch_path = ctx.workdir / "overhead_batch.pt"
    torch.save({"overhead": batch}, batch_path)
    checks = {}
    for p in a.overhead_precisions:
        mem = {}
        for k in kinds:
            spec = {
                "kind": k,
                "threads": a.threads,
                "id2label": ctx.id2label,
                "batches": str(batch_path),
                "items": ["overhead"],
                "steps": a.mem_steps,
                "precision": p,
            }
            w = measure_memory(spec, ctx.workdir)
            mem[k] = {
                **{x: w[x] for x in ("rss_after_load_mb", "load_rss_growth_mb", "peak_load_and_warmup_mb")},
                **w["results"][0],
            }
            mem[k].pop("item", None)
            res["memory" + _suffix(p)] = mem
            ctx.results.save()
        for k in kinds:
            mem[k]["ratio_vs_baseline"] = _ratio(mem[k]["step_peak_mb"], mem[BASELINE]["step_peak_mb"])
            mem[k]["ratio_vs_hf_native"] = _ratio(mem[k]["step_peak_mb"], mem[HF_NATIVE]["step_peak_mb"])
        time_p = res["time" + _suffix(p)]
        tag = "" if p == "fp32" else f" ({p})"
        for k, limit in TARGETS.items():
            r = time_p[k]["ratio_vs_baseline"]
            checks[f"{k} time <= {limit}x{tag}"] = {"ratio": r, "pass": r is not None and r <= limit}
        for k, limit in HF_NATIVE_TARGETS.items():
            r = time_p[k]["ratio_vs_hf_native"]
            checks[f"{k} time <= {limit}x hf-native{tag}"] = {"ratio": r, "pass": r is not None and r <= limit}
        for k in FS_KINDS:
            r = mem[k]["ratio_vs_baseline"]
            checks[f"{k} memory <= {MEMORY_TARGET}x{tag}"] = {"ratio": r, "pass": r is not None and r <= MEMORY_TARGET}
            r = mem[k]["ratio_vs_hf_native"]
            checks[f"{k} memory <= {MEMORY_TARGET}x hf-native{tag}"] = {
                "ratio": r, "pass": r is not None and r <= MEMORY_TARGET}
    if "bf16_speedup" in res:
        r = res["bf16_speedup"]["fs-bidirectional"]
        checks[f"fs-bidirectional bf16 step >= {BF16_STEP_TARGET}x faster than fp32"] = {
            "ratio": r, "pass": r is not None and r >= BF16_STEP_TARGET}
    res["targets"] = checks
    ctx.results.save()


def part_train(ctx: Ctx) -> None:
    from transformers import TrainerCallback

    from fsllm.config import resolve_precision
    from fsllm.training import TrainConfig, train

    a = ctx.args
    res = ctx.results.part("train")

    class StepMeter(TrainerCallback):
        """Sums optimizer-step time (on_step_begin -> on_step_end: forward, backward, optimizer)
        and counts the tokens of every training forward (real and padded)."""

        def __init__(self):
            self.step_s = 0.0
            self.steps = 0
            self.real_tokens = 0
            self.padded_tokens = 0
            self.loop_s = 0.0

        def on_train_begin(self, args, state, control, model=None, **kw):
            self._t_loop = time.perf_counter()
            forward = model.forward

            def counting_forward(*f_args, **f_kw):
                if model.training:
                    ids = f_kw.get("input_ids", f_args[0] if f_args else None)
                    mask = f_kw.get("attention_mask")
                    self.padded_tokens += int(ids.numel())
                    self.real_tokens += int(mask.sum()) if mask is not None else int(ids.numel())
                return forward(*f_args, **f_kw)

            model.forward = counting_forward

        def on_step_begin(self, args, state, control, **kw):
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.step_s += time.perf_counter() - self._t
            self.steps += 1

        def on_train_end(self, args, state, control, **kw):
            self.loop_s = time.perf_counter() - self._t_loop

    recipes = {k: v for k, v in TRAIN_RECIPES.items() if k in a.train_recipes}
    setup = {
        "train_subset": a.train_subset,
        "dev_subset": a.dev_subset,
        "epochs": 1,
        "learning_rate": a.lr,
        "max_steps": a.train_max_steps,
        "src_tree": common.src_tree(),
        # TrainConfig's default precision ("auto"), as resolved on this machine: every recipe runs it
        "precision": resolve_precision("auto")[0],
    }
    # One run per (recipe, seed), kept under "by_seed"; a rerun with the same setup (and the same
    # fsllm source tree) reuses the finished runs of unchanged recipes, so seeds or recipes can be
    # added later without redoing the others, and a code change invalidates them all.
    old = res.get("setup", {})
    same = {k: v for k, v in old.items() if k not in ("seed", "seeds", "recipes")} == setup
    old_recipes = old.get("recipes", {})
    by_seed = {}
    if same:
        by_seed = {
            k: v
            for k, v in res.get("by_seed", {}).items()
            if k.split("/")[0] in recipes and old_recipes.get(k.split("/")[0]) == recipes[k.split("/")[0]]
        }
    res["setup"] = {**setup, "recipes": recipes, "seeds": a.train_seeds}
    res["by_seed"] = by_seed
    for seed in a.train_seeds:
        for name, over in recipes.items():
            key = f"{name}/s{seed}"
            if key in by_seed:
                log.info("train: %s done, reused", key)
                continue
            out_dir = ctx.workdir / f"train-{name}-s{seed}"
            meter = StepMeter()
            load_start = [round(x, 2) for x in os.getloadavg()]
            t0 = time.perf_counter()
            if name == HF_NATIVE_RECIPE:
                import baselines

                metrics = baselines.run_hf_native(
                    "conll2003", out_dir, model_name=BACKBONE, train_subset=a.train_subset, dev_subset=a.dev_subset,
                    seed=seed, epochs=1, lr=a.lr, batch_size=over["batch_size"], max_steps=a.train_max_steps,
                    evaluate_test=False, precision=setup["precision"], callbacks=[meter])
            else:
                cfg = TrainConfig(
                    data="conll2003",
                    model=BACKBONE,
                    train_subset=a.train_subset,
                    dev_subset=a.dev_subset,
                    epochs=1,
                    max_steps=a.train_max_steps,
                    learning_rate=a.lr,
                    evaluate_test=False,
                    output_dir=str(out_dir),
                    seed=seed,
                    **over,
                )
                metrics = train(cfg, callbacks=[meter]).metrics
            total = time.perf_counter() - t0
            logs = [json.loads(ln) for ln in (out_dir / "train_log.jsonl").read_text().splitlines() if ln.strip()]
            evals = [r for r in logs if "eval_runtime" in r]
            dev = metrics.get("dev", {})
            by_seed[key] = {
                "seed": seed,
                "steps": meter.steps,
                "train_step_s": round(meter.step_s, 2),
                "train_loop_s": round(meter.loop_s, 2),
                "in_loop_dev_evals": len(evals),
                "in_loop_dev_eval_s": round(sum(r["eval_runtime"] for r in evals), 2),
                "whole_train_call_s": round(total, 2),
                "real_tokens": meter.real_tokens,
                "padded_tokens": meter.padded_tokens,
                "real_tokens_per_s": round(meter.real_tokens / meter.step_s, 1) if meter.step_s else None,
                "padded_tokens_per_s": round(meter.padded_tokens / meter.step_s, 1) if meter.step_s else None,
                "sentences_per_s": round(metrics["sizes"]["train"] / meter.step_s, 2)
                if meter.step_s and a.train_max_steps < 0
                else None,
                "train_loss": metrics["train"]["loss"],
                "dev_f1": dev.get("f1"),
                "dev_token_accuracy": dev.get("token_accuracy"),
                "load_average_start": load_start,
                "load_average_end": [round(x, 2) for x in os.getloadavg()],
            }
            ctx.results.save()
            if not a.keep_runs:
                shutil.rmtree(out_dir, ignore_errors=True)

    # Per recipe, over the seeds: total step time, tokens/s and dev F1 (mean, sample std, values).
    runs = {}
    for name in recipes:
        rs = [by_seed[f"{name}/s{seed}"] for seed in a.train_seeds]
        f1s = [r["dev_f1"] for r in rs if r["dev_f1"] is not None]
        step_s = statistics.median(r["train_step_s"] for r in rs)
        real = statistics.median(r["real_tokens"] for r in rs)
        padded = statistics.median(r["padded_tokens"] for r in rs)
        runs[name] = {
            "seeds": [r["seed"] for r in rs],
            "steps": rs[0]["steps"],
            "train_step_s": step_s,  # median over seeds
            "real_tokens_per_s": round(real / step_s, 1) if step_s else None,
            "padded_tokens_per_s": round(padded / step_s, 1) if step_s else None,
            "in_loop_dev_evals": rs[0]["in_loop_dev_evals"],
            "dev_f1": round(statistics.mean(f1s), 4) if f1s else None,
            "dev_f1_std": round(statistics.stdev(f1s), 4) if len(f1s) > 1 else None,
            "dev_f1_by_seed": [round(x, 4) for x in f1s],
        }
    res["runs"] = runs
    for k in [k for k in res if k.startswith("speedup_")] + ["targets", "fsllm_vs_hf_native"]:
        res.pop(k, None)
    if "fsllm" in runs and HF_NATIVE_RECIPE in runs:
        # fsllm's defaults against the commodity path at the same batch, seeds, data and precision
        hf, f = runs[HF_NATIVE_RECIPE], runs["fsllm"]
        paired = [by_seed[f"fsllm/s{s}"]["dev_f1"] - by_seed[f"{HF_NATIVE_RECIPE}/s{s}"]["dev_f1"]
                  for s in a.train_seeds]
        res["fsllm_vs_hf_native"] = {
            "train_step_time": _ratio(hf["train_step_s"], f["train_step_s"]),  # > 1: fsllm faster
            "dev_f1_paired_diffs": [round(d, 4) for d in paired],
            "dev_f1_paired_diff_mean": round(statistics.mean(paired), 4),
        }
    if "ls_llama_billm" not in runs:
        ctx.results.save()
        return
    ls = runs["ls_llama_billm"]
    for name in [n for n in runs if n != "ls_llama_billm"]:
        f = runs[name]
        # The seed draws the training subset too, so recipes are compared seed by seed (paired):
        # the spread of the paired differences is the noise to read the mean difference against.
        paired = [
            by_seed[f"{name}/s{s}"]["dev_f1"] - by_seed[f"ls_llama_billm/s{s}"]["dev_f1"]
            for s in a.train_seeds
            if by_seed[f"{name}/s{s}"]["dev_f1"] is not None and by_seed[f"ls_llama_billm/s{s}"]["dev_f1"] is not None
        ]
        res[f"speedup_{name}_vs_ls"] = {
            "train_step_time": _ratio(ls["train_step_s"], f["train_step_s"]),
            "real_tokens_per_s": _ratio(f["real_tokens_per_s"] or 0, ls["real_tokens_per_s"] or 0),
            "dev_f1_diff": (
                round(f["dev_f1"] - ls["dev_f1"], 4) if f["dev_f1"] is not None and ls["dev_f1"] is not None else None
            ),
            "dev_f1_paired_diffs": [round(d, 4) for d in paired],
            "dev_f1_paired_diff_sem": (
                round(statistics.stdev(paired) / math.sqrt(len(paired)), 4) if len(paired) > 1 else None
            ),
        }
    if "speedup_fsllm_b8_vs_ls" not in res:
        ctx.results.save()
        return
    # Target: at least 1.5x faster at equal or better dev F1 (mean over the seeds; the difference
    # is reported as measured, with no tolerance: read it against its standard error).
    sp = res["speedup_fsllm_b8_vs_ls"]
    res["targets"] = {
        "fsllm_b8 train step time >= 1.5x faster than ls_llama_billm": {
            "ratio": sp["train_step_time"],
            "pass": sp["train_step_time"] is not None and sp["train_step_time"] >= 1.5,
        },
        "fsllm_b8 mean dev F1 >= ls_llama_billm mean dev F1": {
            "ratio": sp["dev_f1_diff"],
            "pass": sp["dev_f1_diff"] is not None and sp["dev_f1_diff"] >= 0,
        },
    }
    ctx.results.save()


def _pipeline_word_tags(entities: list[dict], words: list[str]) -> list[str | None]:
    """Word-level tags from the pipeline's per-token output (``ignore_labels=[]``): a word takes
    the tag of its first sub-token (the token holding its first character), as fsllm does."""
    from fsllm.tokenization import join_words

    text, spans = join_words(words)
    owner = [-1] * (len(text) + 1)
    for w, (s, e) in enumerate(spans):
        for c in range(s, e):
            owner[c] = w
    tags: list[str | None] = [None] * len(words)
    for ent in sorted(entities, key=lambda e: e["index"]):
        for c in range(ent["start"], ent["end"]):
            w = owner[c]
            if w >= 0:
                if tags[w] is None:
                    tags[w] = ent["entity"]
                break
    return tags


def part_inference(ctx: Ctx) -> None:
    from transformers import pipeline

    from fsllm import FSForTokenClassification, load_model
    from fsllm.inference import Predictor, predict_word_tags
    from fsllm.metrics import ner_metrics

    a = ctx.args
    res = ctx.results.part("inference")
    test = list(ctx.data.splits["test"])
    if a.infer_sentences:
        test = test[: a.infer_sentences]
    sentences = [list(ex["tokens"]) for ex in test]
    texts = [" ".join(w) for w in sentences]
    if a.model_dir:
        model = load_model(a.model_dir)
        source = f"trained model {a.model_dir}"
    else:
        torch.manual_seed(0)
        model = FSForTokenClassification.from_backbone(BACKBONE, id2label=ctx.id2label)
        source = "freshly initialised FSForTokenClassification (untrained; near-uniform logits)"
    predictor = Predictor(model, ctx.tok, max_length=a.infer_max_length, batch_size=64)  # merges LoRA, eval mode
    res["setup"] = {
        "model": source,
        "attention": model.fs_config.attention,
        "sentences": len(sentences),
        "words": sum(map(len, sentences)),
        "max_length": a.infer_max_length,
        "fsllm": "predict_word_tags(Predictor.model) : merged LoRA, length-sorted batches of 64, inference_mode; "
        "time includes tokenisation and word mapping",
        "pipeline": "transformers.pipeline('token-classification', model=<the same model saved as a merged "
        "folder>) on the words joined by spaces, ignore_labels=[], no_grad; "
        "time includes tokenisation and post-processing",
    }
    runs = res.setdefault("runs", {})
    warm = sentences[:8]

    predict_word_tags(predictor.model, ctx.tok, warm, a.infer_max_length, 64)
    (fs_tags, _, _), dt = timed(lambda: predict_word_tags(predictor.model, ctx.tok, sentences, a.infer_max_length, 64))
    runs["fsllm"] = {"seconds": round(dt, 2), "sentences_per_s": round(len(sentences) / dt, 2)}
    gold = [list(ex["tags"]) for ex in test]
    if a.model_dir:
        runs["fsllm"]["test_f1"] = round(ner_metrics(gold, fs_tags)["f1"], 4)
    ctx.results.save()

    # The same model with its weights in bf16 (Predictor(precision="bf16")): its speed, and how far its
    # answers are from fp32's (the reason it is not the default).
    bf = Predictor(load_model(a.model_dir) if a.model_dir else copy.deepcopy(model), ctx.tok,
                   max_length=a.infer_max_length, batch_size=64, precision="bf16")
    predict_word_tags(bf.model, ctx.tok, warm, a.infer_max_length, 64)
    (bf_tags, _, _), dt = timed(lambda m=bf.model: predict_word_tags(m, ctx.tok, sentences, a.infer_max_length, 64))
    words = sum(len(w) for w in sentences)
    runs["fsllm_bf16"] = {
        "seconds": round(dt, 2), "sentences_per_s": round(len(sentences) / dt, 2),
        "speedup_vs_fsllm_fp32": _ratio(len(sentences) / dt, runs["fsllm"]["sentences_per_s"]),
        "sentence_agreement_with_fp32": round(sum(x == y for x, y in zip(bf_tags, fs_tags)) / len(sentences), 4),
        "word_agreement_with_fp32": round(
            sum(x == y for p, f in zip(bf_tags, fs_tags) for x, y in zip(p, f)) / words, 4),
    }
    if a.model_dir:
        runs["fsllm_bf16"]["test_f1"] = round(ner_metrics(gold, bf_tags)["f1"], 4)
    del bf
    ctx.results.save()

    # The pipeline loads the FS model from a folder, as a user would; merged, as Predictor runs it.
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder, tokenizer=ctx.tok, merged=True)
        pipe = pipeline("token-classification", model=folder, device="cpu")
    for name, kw in (("pipeline_bs1", {}), ("pipeline_bs64", {"batch_size": 64})):
        pipe([" ".join(w) for w in warm], ignore_labels=[], **kw)
        out, dt = timed(lambda kw=kw: pipe(texts, ignore_labels=[], **kw))
        sps = len(sentences) / dt
        p_tags = [_pipeline_word_tags(ents, w) for ents, w in zip(out, sentences, strict=True)]
        same_sent = sum(p == f for p, f in zip(p_tags, fs_tags, strict=True))
        words = sum(len(w) for w in sentences)
        same_words = sum(x == y for p, f in zip(p_tags, fs_tags, strict=True) for x, y in zip(p, f, strict=True))
        runs[name] = {
            "seconds": round(dt, 2),
            "sentences_per_s": round(sps, 2),
            "fsllm_speedup": _ratio(runs["fsllm"]["sentences_per_s"], sps),
            "sentence_agreement": round(same_sent / len(sentences), 4),
            "word_agreement": round(same_words / words, 4),
        }
        ctx.results.save()
    # The commodity anchor: the hf-native model (AutoModelForTokenClassification, is_causal=False, LoRA
    # merged) through the same pipeline, batch 64. Its weights are not the FS model's, so only its speed
    # is compared; its answers are not.
    hf = build_model(HF_NATIVE, ctx.id2label).merge_and_unload().eval()
    hf_pipe = pipeline("token-classification", model=hf, tokenizer=ctx.tok, device="cpu")
    hf_pipe([" ".join(w) for w in warm], ignore_labels=[], batch_size=64)
    _, dt = timed(lambda p=hf_pipe: p(texts, ignore_labels=[], batch_size=64))
    runs["hf_native_pipeline_bs64"] = {"seconds": round(dt, 2), "sentences_per_s": round(len(sentences) / dt, 2),
                                       "fsllm_speedup": _ratio(runs["fsllm"]["sentences_per_s"], len(sentences) / dt)}
    del hf, hf_pipe
    res.pop("target_fsllm_ge_2x", None)
    res["target_fsllm_ge_3x"] = {
        n: {"speedup": runs[n]["fsllm_speedup"], "pass": (runs[n]["fsllm_speedup"] or 0) >= INFERENCE_TARGET}
        for n in ("pipeline_bs1", "pipeline_bs64")
    }
    ctx.results.save()


def _matmul_gflops(n: int, dtype: torch.dtype, repeats: int) -> dict:
    x = torch.randn(n, n).to(dtype)
    y = torch.randn(n, n).to(dtype)
    t = time_repeats(lambda: torch.mm(x, y), repeats, warmup=1)
    return {
        "n": n,
        "dtype": str(dtype).replace("torch.", ""),
        "median_s": round(t.median, 5),
        "gflops": round(2 * n**3 / t.median / 1e9, 2),
    }


def _count_flops(fn: Callable[[], Any]) -> tuple[int, dict]:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    by_op = {str(op): int(v) for op, v in fc.get_flop_counts().get("Global", {}).items()}
    return int(fc.get_total_flops()), dict(sorted(by_op.items(), key=lambda kv: -kv[1]))


def _attention_flops(model, shape: list[int], training: bool) -> int:
    """Estimated FLOPs of the attention products (QK^T and PV: 4*B*H*L*L*D per layer forward;
    backward counted as 2x forward), which ``FlopCounterMode`` does not count for the CPU flash
    kernel (``aten._scaled_dot_product_flash_attention_for_cpu`` has no registered formula)."""
    from fsllm.backbones import base_model_of

    cfg = base_model_of(model.backbone).config if hasattr(model, "backbone") else model.config
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    b, length = shape
    fwd = 4 * b * heads * length * length * head_dim * cfg.num_hidden_layers
    return fwd * (3 if training else 1)


def _flops_record(model, shape, flops, by_op, t: Timing, peak_fp32: float, training: bool) -> dict:
    counted_sdpa = any("scaled_dot_product" in k for k in by_op)
    attn = 0 if counted_sdpa else _attention_flops(model, shape, training)
    return {
        "shape": list(shape),
        "flops_counted": flops,
        "flops_by_op": by_op,
        "attention_flops_estimate_uncounted": attn,
        **{f"time_{k}": v for k, v in t.to_dict().items() if k != "samples"},
        "achieved_gflops": round(flops / t.median / 1e9, 2),
        "achieved_gflops_incl_attention": round((flops + attn) / t.median / 1e9, 2),
        "fraction_of_fp32_peak": round(flops / t.median / peak_fp32, 4),
        "fraction_of_fp32_peak_incl_attention": round((flops + attn) / t.median / peak_fp32, 4),
    }


def part_flops(ctx: Ctx) -> None:
    from torch.profiler import ProfilerActivity, profile

    a = ctx.args
    res = ctx.results.part("flops")
    n = a.matmul_n
    peak = {"fp32": _matmul_gflops(n, torch.float32, a.repeats)}
    probe = _matmul_gflops(256, torch.bfloat16, 2)
    peak["bf16_probe_256"] = probe
    if probe["gflops"] > 0.5 * peak["fp32"]["gflops"]:
        peak["bf16"] = _matmul_gflops(n, torch.bfloat16, a.repeats)
    res["peak_matmul"] = peak
    ctx.results.save()
    peak_fp32 = peak["fp32"]["gflops"] * 1e9

    model = build_model("fs-bidirectional", ctx.id2label)
    batch = conll_batch(ctx.sample("train", a.batch_size), ctx.tok, ctx.label2id, a.max_length)
    flops, by_op = _count_flops(lambda: train_step(model, batch))
    t = time_repeats(lambda: train_step(model, batch), a.repeats, a.warmup)
    res["train_step"] = {
        "model": "fs-bidirectional, forward + backward (no optimizer step)",
        **_flops_record(model, batch["input_ids"].shape, flops, by_op, t, peak_fp32, training=True),
    }
    ctx.results.save()
    peak_bf16 = peak["bf16"]["gflops"] * 1e9 if "bf16" in peak else None
    if peak_bf16:
        # the same step under bf16 autocast (TrainConfig.precision="bf16"), against the bf16 matmul peak
        def bf16_step():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                train_step(model, batch)

        t16 = time_repeats(bf16_step, a.repeats, a.warmup)
        rec = _flops_record(model, batch["input_ids"].shape, flops, by_op, t16, peak_fp32, training=True)
        rec["fraction_of_bf16_peak"] = round(flops / t16.median / peak_bf16, 4)
        # where a bf16 step's time goes: on an AMX CPU the bf16 SDPA backward was the slow part
        with profile(activities=[ProfilerActivity.CPU]) as prof16:
            bf16_step()
        ka16 = prof16.key_averages()
        total16 = sum(e.self_cpu_time_total for e in ka16) or 1
        rec["profile_top8_self_cpu"] = [
            {"op": e.key, "self_pct": round(100 * e.self_cpu_time_total / total16, 1)}
            for e in sorted(ka16, key=lambda e: -e.self_cpu_time_total)[:8]
        ]
        res["train_step_bf16_autocast"] = {"model": "fs-bidirectional under bf16 autocast", **rec}
        ctx.results.save()

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_step(model, batch)
    ka = prof.key_averages()
    total_self = sum(e.self_cpu_time_total for e in ka) or 1
    top = sorted(ka, key=lambda e: -e.self_cpu_time_total)[:15]
    res["profile_top15_self_cpu"] = [
        {
            "op": e.key,
            "calls": e.count,
            "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 2),
            "cpu_total_ms": round(e.cpu_time_total / 1e3, 2),
            "self_pct": round(100 * e.self_cpu_time_total / total_self, 1),
        }
        for e in top
    ]
    prof_path = ctx.results.path.with_name(ctx.results.path.stem + "_profile.txt")
    prof_path.write_text(
        f"torch.profiler, one training step (fs-bidirectional, shape {list(batch['input_ids'].shape)}, "
        f"{a.threads} threads), top 15 ops by self CPU time\n\n" + ka.table(sort_by="self_cpu_time_total", row_limit=15)
    )
    res["profile_text"] = str(prof_path)
    ctx.results.save()

    # Where the step time goes beyond the matmuls: PEFT draws a fresh dropout mask on the input of
    # every adapted projection (7 per layer), and torch's CPU RNG is slow. Time the same step with
    # those dropouts replaced by identities (interleaved with the normal step) to put a number on it.
    no_drop = build_model("fs-bidirectional", ctx.id2label)
    from fsllm.fast_dropout import replace_lora_dropout

    replaced = replace_lora_dropout(no_drop, lambda d: torch.nn.Identity())
    tt = time_round_robin(
        {"lora_dropout_0.1": lambda: train_step(model, batch), "no_lora_dropout": lambda m=no_drop: train_step(m, batch)},
        a.repeats,
        a.warmup,
    )
    res["lora_dropout_cost"] = {
        "dropout_modules_replaced": replaced,
        "step_median_s": {k: round(v.median, 4) for k, v in tt.items()},
        "share_of_step": round(1 - tt["no_lora_dropout"].median / tt["lora_dropout_0.1"].median, 3),
    }
    del no_drop
    ctx.results.save()

    from peft import PeftModel

    if isinstance(model.backbone, PeftModel):
        model.backbone.merge_adapter()
    model.eval()
    ibatch = conll_batch(ctx.sample("test", a.infer_batch), ctx.tok, ctx.label2id, a.max_length)
    ibatch = {k: v for k, v in ibatch.items() if k != "labels"}

    def infer():
        with torch.inference_mode():
            model(**ibatch)

    flops_i, by_op_i = _count_flops(infer)
    t = time_repeats(infer, a.repeats, a.warmup)
    res["inference_batch"] = {
        "model": "fs-bidirectional, LoRA merged, inference_mode",
        **_flops_record(model, ibatch["input_ids"].shape, flops_i, by_op_i, t, peak_fp32, training=False),
    }
    ctx.results.save()
    if peak_bf16:
        model.to(torch.bfloat16)  # what Predictor(precision="bf16") runs
        t16 = time_repeats(infer, a.repeats, a.warmup)
        rec = _flops_record(model, ibatch["input_ids"].shape, flops_i, by_op_i, t16, peak_fp32, training=False)
        rec["fraction_of_bf16_peak"] = round(flops_i / t16.median / peak_bf16, 4)
        res["inference_batch_bf16"] = {"model": "fs-bidirectional, LoRA merged, weights in bf16", **rec}
        ctx.results.save()


def part_scaling(ctx: Ctx) -> None:
    a = ctx.args
    res = ctx.results.part("scaling")
    lengths = a.lengths
    kinds = list(FS_KINDS)
    res["setup"] = {
        "lengths": lengths,
        "batch_size": 1,
        "repeats": a.scaling_repeats,
        "warmup": 1,
        "decay_lambda": DECAY_LAMBDA,
        "input": "random token ids, no padding",
    }
    models = {k: build_model(k, ctx.id2label) for k in kinds}
    vocab = models["fs-causal"].config.decoder_config.vocab_size
    rows = res.setdefault("rows", {})
    for L in lengths:
        batch = synthetic_batch(L, len(ctx.id2label), vocab)
        t = time_round_robin(
            {k: (lambda m=m, b=batch: train_step(m, b)) for k, m in models.items()}, a.scaling_repeats, 1
        )
        row = {}
        for k in kinds:
            row[k] = {
                "step_median_s": round(t[k].median, 4),
                "step_iqr_s": round(t[k].iqr, 4),
                "ratio_vs_fs_causal": _ratio(t[k].median, t["fs-causal"].median),
                **mask_census(models[k], batch),
            }
        n_layers = models["fs-decay"].num_layers
        row["decay_mask_bytes_formula"] = {
            "per_mask_B*L*L*4": L * L * 4,
            f"per_forward_{n_layers}_layers": n_layers * L * L * 4,
        }
        rows[str(L)] = row
        ctx.results.save()
    del models
    common.release_free_memory()
    for k in kinds:
        spec = {"kind": k, "threads": a.threads, "id2label": ctx.id2label, "items": lengths, "steps": 1, "vocab": vocab}
        w = measure_memory(spec, ctx.workdir)
        for r in w["results"]:
            rows[str(r["item"])][k].update(step_peak_mb=r["step_peak_mb"], rss_before_step_mb=r["rss_before_step_mb"])
        ctx.results.save()
    for L in lengths:
        row = rows[str(L)]
        for k in kinds:
            if "step_peak_mb" in row[k]:
                row[k]["memory_ratio_vs_fs_causal"] = _ratio(row[k]["step_peak_mb"], row["fs-causal"]["step_peak_mb"])
    ctx.results.save()


# ============================================================================ summary


def _machine_line(m: dict) -> str:
    return (
        f"{m['cpu_model']} ({m['cpu_capability']}), {m['usable_cpus']} CPUs, {m['torch_threads']} torch threads, "
        f"torch {m['torch']}, transformers {m['transformers']}"
    )


def _part_line(part: dict, fallback: dict) -> str:
    """Where and how a part ran: parts can come from different runs (``--only``), even machines."""
    meta = part.get("meta", {})
    m = meta.get("machine", fallback)
    return (
        f"_{meta.get('started', '?')} on {_machine_line(m)}; load avg {meta.get('load_average_start', '?')} -> "
        f"{meta.get('load_average_end', '?')}; `{meta.get('command', '?')}`_"
    )


def _section(title: str, part: dict, machine: dict) -> list[str]:
    """A part's heading and the line that says where and how it ran."""
    return [title, "", _part_line(part, machine), ""]


def _table_head(*columns: str) -> list[str]:
    """A markdown table's header row and separator."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def _target_lines(part: dict) -> list[str]:
    """One line per target a part checks: its ratio and PASS or FAIL."""
    return [f"- target {name}: {c['ratio']} -> {'PASS' if c['pass'] else 'FAIL'}"
            for name, c in part.get("targets", {}).items()]


def markdown_summary(data: dict) -> str:
    P = data.get("parts", {})
    m = data["machine"]
    lines = [
        f"## fsllm speed benchmark{' (SMOKE)' if data.get('smoke') else ''}",
        "",
        "Each part below names the machine and command it ran with: ratios are only ever taken within a part.",
        "",
    ]
    o = P.get("overhead", {})
    if "time" in o:
        s = o["setup"]
        lines += [
            *_section(f"### overhead (batch {s['batch_size']}, shape {s['padded_shape']}, {s['repeats']} repeats)",
                      o, m),
        ]
        for prec in s.get("precisions", ["fp32"]):
            sfx = _suffix(prec)
            lines += [
                f"{prec}{' (forward under autocast)' if prec == 'bf16' else ''}:",
                "",
                *_table_head("config", "step median s", "IQR s", "time vs baseline", "time vs hf-native",
                             "step peak MB", "mem vs baseline", "mem vs hf-native", "masks/forward (bytes)"),
            ]
            for k, t in o.get("time" + sfx, {}).items():
                mem = o.get("memory" + sfx, {}).get(k, {})
                mk = o.get("masks", {}).get(k, {})
                lines.append(
                    f"| {k} | {t['median']:.3f} | {t['iqr']:.3f} | {t['ratio_vs_baseline']:.3f}x | "
                    f"{t['ratio_vs_hf_native']:.3f}x | {mem.get('step_peak_mb', '-')} | "
                    f"{mem.get('ratio_vs_baseline', '-')} | {mem.get('ratio_vs_hf_native', '-')} | "
                    f"{mk.get('distinct_masks', '-')} ({mk.get('mask_bytes_total', '-')}) |"
                )
            lines.append("")
        if o.get("bf16_speedup"):
            lines.append("- bf16 autocast step speed-up over fp32: "
                         + ", ".join(f"{k} {v}x" for k, v in o["bf16_speedup"].items()))
        lines += _target_lines(o)
        lines.append("")
    tr = P.get("train", {})
    if tr.get("runs"):
        lines += [
            *_section("### train", tr, m),
            *_table_head("recipe", "steps", "step time s (median over seeds)", "real tok/s", "padded tok/s",
                         "dev F1 mean ± std", "dev F1 by seed", "in-loop evals"),
        ]
        for k, r in tr["runs"].items():
            std = f" ± {r['dev_f1_std']:.4f}" if r.get("dev_f1_std") is not None else ""
            lines.append(
                f"| {k} | {r['steps']} | {r['train_step_s']} | {r['real_tokens_per_s']} | "
                f"{r['padded_tokens_per_s']} | {r['dev_f1']:.4f}{std} | {r.get('dev_f1_by_seed', '-')} | "
                f"{r['in_loop_dev_evals']} |"
            )
        if tr.get("setup", {}).get("precision"):
            lines.append(f"- every recipe ran at precision {tr['setup']['precision']} (TrainConfig's auto, resolved)")
        for key in [k for k in tr if k.startswith("speedup_")]:
            lines.append(f"- {key[len('speedup_'):-len('_vs_ls')]} vs LS-LLaMA/BiLLM: {tr[key]}")
        if tr.get("fsllm_vs_hf_native"):
            lines.append(f"- fsllm vs hf_native (step time ratio > 1: fsllm faster): {tr['fsllm_vs_hf_native']}")
        lines += _target_lines(tr)
        lines.append("")
    inf = P.get("inference", {})
    if inf.get("runs"):
        lines += [
            *_section(f"### inference ({inf['setup']['sentences']} test sentences; {inf['setup']['model']})", inf, m),
            *_table_head("path", "seconds", "sentences/s", "fsllm speedup", "sentence agreement", "word agreement",
                         "test F1"),
        ]
        for k, r in inf["runs"].items():
            speed = r.get("fsllm_speedup", "-")
            if "speedup_vs_fsllm_fp32" in r:
                speed = f"{r['speedup_vs_fsllm_fp32']} over fsllm fp32"
            lines.append(
                f"| {k} | {r['seconds']} | {r['sentences_per_s']} | {speed} | "
                f"{r.get('sentence_agreement', r.get('sentence_agreement_with_fp32', '-'))} | "
                f"{r.get('word_agreement', r.get('word_agreement_with_fp32', '-'))} | {r.get('test_f1', '-')} |"
            )
        if "fsllm_bf16" in inf["runs"]:
            lines.append("- fsllm_bf16's agreements are with fsllm fp32's tags; the pipelines' with fsllm's.")
        for k, c in inf.get("target_fsllm_ge_3x", {}).items():
            lines.append(f"- target fsllm >= {INFERENCE_TARGET:g}x {k}: {c['speedup']} -> {'PASS' if c['pass'] else 'FAIL'}")
        lines.append("")
    fl = P.get("flops", {})
    if fl.get("peak_matmul"):
        pk = fl["peak_matmul"]
        lines += [
            *_section("### flops", fl, m),
            "- peak matmul: " + ", ".join(f"{k} {v['gflops']} GFLOP/s (n={v['n']})" for k, v in pk.items()),
        ]
        for k in ("train_step", "train_step_bf16_autocast", "inference_batch", "inference_batch_bf16"):
            if k in fl:
                r = fl[k]
                bf = f"{100 * r['fraction_of_bf16_peak']:.1f}% of bf16 peak, " if "fraction_of_bf16_peak" in r else ""
                lines.append(
                    f"- {k} {r['shape']}: {r['flops_counted'] / 1e9:.1f} GFLOP in {r['time_median']:.3f} s = "
                    f"{r['achieved_gflops']} GFLOP/s ({bf}{100 * r['fraction_of_fp32_peak']:.1f}% of fp32 peak; "
                    f"{100 * r['fraction_of_fp32_peak_incl_attention']:.1f}% with the estimated attention FLOPs)"
                )
        if fl.get("train_step_bf16_autocast", {}).get("profile_top8_self_cpu"):
            top = ", ".join(f"{e['op']} {e['self_pct']}%" for e in fl["train_step_bf16_autocast"]["profile_top8_self_cpu"][:5])
            lines.append(f"- top self-CPU ops of a bf16 autocast step: {top}")
        if fl.get("profile_top15_self_cpu"):
            top = ", ".join(f"{e['op']} {e['self_pct']}%" for e in fl["profile_top15_self_cpu"][:5])
            lines.append(f"- top self-CPU ops of a step: {top}")
        dc = fl.get("lora_dropout_cost")
        if dc:
            lines.append(
                f"- LoRA dropout ({dc['dropout_modules_replaced']} masks per step): step "
                f"{dc['step_median_s']['lora_dropout_0.1']} s with it, {dc['step_median_s']['no_lora_dropout']} s "
                f"without: {100 * dc['share_of_step']:.1f}% of the step"
            )
        lines.append("")
    sc = P.get("scaling", {})
    if sc.get("rows"):
        lines += [
            *_section("### scaling (batch 1)", sc, m),
            *_table_head("L", "bidir s", "decay s", "causal s", "decay/causal", "bidir MB", "decay MB", "causal MB",
                         "decay layer masks/fwd (bytes)"),
        ]
        for L, row in sc["rows"].items():
            b, d, c = row["fs-bidirectional"], row["fs-decay"], row["fs-causal"]
            lines.append(
                f"| {L} | {b['step_median_s']} | {d['step_median_s']} | {c['step_median_s']} | {d['ratio_vs_fs_causal']} | "
                f"{b.get('step_peak_mb', '-')} | {d.get('step_peak_mb', '-')} | {c.get('step_peak_mb', '-')} | "
                f"{d['per_layer_masks']['count']} ({d['per_layer_masks']['bytes']}) |"
            )
        lines.append("")
    return "\n".join(lines)


# ============================================================================ main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results JSON (default benchmarks/results/speed.json; "
        "with --smoke speed_smoke.json); a .md summary and a _profile.txt go next to it",
    )
    p.add_argument("--smoke", action="store_true", help="tiny sizes to check that everything runs (a few minutes)")
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts among {','.join(PARTS)}")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--train-seeds",
        default="0",
        help="seeds of the train part, e.g. 0,1,2 (finished (recipe, seed) runs in the JSON are reused) [0]",
    )
    p.add_argument(
        "--train-recipes",
        default=",".join(TRAIN_RECIPES),
        help=f"recipes of the train part among {','.join(TRAIN_RECIPES)} [all]",
    )
    p.add_argument(
        "--overhead-precisions",
        default=None,
        help="precisions of the overhead part's steps, e.g. fp32,bf16 (default fp32,bf16 where the CPU or GPU has "
        "bf16 matmuls, else fp32)",
    )
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 15; smoke 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed warmup calls per config (default 2; smoke 1)")
    p.add_argument("--batch-size", type=int, default=None, help="overhead/flops training batch (default 16; smoke 4)")
    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="token cap of the overhead/flops sentences (default 128, fsllm's training max_length; smoke 16)",
    )
    p.add_argument("--mem-steps", type=int, default=None, help="measured steps per memory worker (default 2; smoke 1)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--train-subset", type=int, default=None, help="default 2000; smoke 48")
    p.add_argument("--dev-subset", type=int, default=None, help="default 500; smoke 16")
    p.add_argument("--train-max-steps", type=int, default=None, help="default -1 (one epoch); smoke 3")
    p.add_argument("--keep-runs", action="store_true", help="keep the train part's run folders")
    p.add_argument("--model-dir", default=None, help="saved fsllm model for the inference part (default: untrained)")
    p.add_argument(
        "--infer-sentences", type=int, default=None, help="first N test sentences (default all 3453; smoke 64)"
    )
    p.add_argument(
        "--infer-max-length",
        type=int,
        default=256,
        help="fsllm window length at inference (256: no CoNLL test sentence is windowed)",
    )
    p.add_argument(
        "--infer-batch", type=int, default=None, help="inference batch of the flops part (default 64; smoke 8)"
    )
    p.add_argument("--matmul-n", type=int, default=None, help="peak matmul size (default 2048; smoke 512)")
    p.add_argument("--lengths", default=None, help="scaling lengths (default 64,128,256,512,1024,2048; smoke 64,128)")
    p.add_argument("--scaling-repeats", type=int, default=None, help="default 5; smoke 1")
    p.add_argument("--_memory-worker", dest="memory_worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    full = dict(
        repeats=15,
        warmup=2,
        batch_size=16,
        max_length=128,
        mem_steps=2,
        infer_batch=64,
        train_subset=2000,
        dev_subset=500,
        train_max_steps=-1,
        infer_sentences=None,
        matmul_n=2048,
        lengths="64,128,256,512,1024,2048",
        scaling_repeats=5,
    )
    smoke = dict(
        repeats=2,
        warmup=1,
        batch_size=2,
        max_length=16,
        mem_steps=1,
        infer_batch=8,
        train_subset=24,
        dev_subset=8,
        train_max_steps=1,
        infer_sentences=32,
        matmul_n=512,
        lengths="16,32",
        scaling_repeats=1,
    )
    for k, v in (smoke if a.smoke else full).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.out is None:
        a.out = Path("benchmarks/results") / ("speed_smoke.json" if a.smoke else "speed.json")
    a.lengths = [int(x) for x in str(a.lengths).split(",")]
    if a.overhead_precisions is None:
        from fsllm.config import native_bf16

        a.overhead_precisions = "fp32,bf16" if native_bf16() else "fp32"
    a.overhead_precisions = [x.strip() for x in str(a.overhead_precisions).split(",") if x.strip()]
    if set(a.overhead_precisions) - {"fp32", "bf16"} or not a.overhead_precisions:
        p.error(f"--overhead-precisions {a.overhead_precisions}: choose among fp32, bf16")
    a.train_seeds = [int(x) for x in str(a.train_seeds).split(",") if x.strip()]
    a.train_recipes = [x.strip() for x in str(a.train_recipes).split(",") if x.strip()]
    unknown = sorted(set(a.train_recipes) - set(TRAIN_RECIPES))
    if unknown:
        p.error(f"unknown train recipes {unknown}; choose among {list(TRAIN_RECIPES)}")
    a.parts = [x.strip() for x in a.only.split(",") if x.strip()]
    bad = set(a.parts) - set(PARTS)
    if bad:
        p.error(f"unknown parts {sorted(bad)}; choose among {PARTS}")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.memory_worker:
        spec = json.loads(Path(a.memory_worker).read_text())
        common.print_result(worker_memory(spec))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(a.threads)
    import fsllm

    header = {
        "benchmark": "bench_speed",
        "smoke": a.smoke,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if argv is None else " ".join(argv),
        "machine": common.machine_info(),
        "fsllm": fsllm.__version__,
        "backbone": BACKBONE,
        "args": {k: v for k, v in vars(a).items() if k not in ("memory_worker", "out")},
    }
    load1 = os.getloadavg()[0]
    if load1 > 0.25 * len(os.sched_getaffinity(0)):
        log.warning(
            "load average %.2f on %d CPUs: other jobs are running, timings will be noisy",
            load1,
            len(os.sched_getaffinity(0)),
        )
    results = Results(a.out, header)
    ctx = Ctx(a, results, Path(tempfile.mkdtemp(prefix="fsllm-bench-")))
    ctx.tok = fsllm.load_tokenizer(BACKBONE)
    ctx.data = conll()
    ctx.id2label = dict(enumerate(ctx.data.label_names))
    parts = {
        "overhead": part_overhead,
        "train": part_train,
        "inference": part_inference,
        "flops": part_flops,
        "scaling": part_scaling,
    }
    failed = []
    try:
        for name in a.parts:
            log.info("part %s ...", name)
            # A rerun replaces a part's results, except that the train part reuses its finished
            # (recipe, seed) runs when the setup is unchanged; the meta is always renewed.
            kept = {"setup": results.part(name).get("setup"), "by_seed": results.part(name).get("by_seed"),
                    "runs": results.part(name).get("runs")} if name == "train" else {}
            results.data["parts"][name] = {
                **{k: v for k, v in kept.items() if v is not None},
                "meta": {
                    "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "command": results.data["command"],
                    "machine": common.machine_info(),
                    "load_average_start": [round(x, 2) for x in os.getloadavg()],
                    "args": {k: v for k, v in vars(a).items() if k not in ("memory_worker", "out")},
                },
            }
            t0 = time.perf_counter()
            try:
                parts[name](ctx)
                results.part(name)["part_seconds"] = round(time.perf_counter() - t0, 1)
            except Exception as e:  # noqa: BLE001 - keep the other parts; the error is recorded
                log.exception("part %s failed", name)
                results.part(name)["error"] = f"{type(e).__name__}: {e}"
                failed.append(name)
            results.part(name)["meta"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
            results.save()
            common.release_free_memory()
    finally:
        shutil.rmtree(ctx.workdir, ignore_errors=True)
    results.data["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    results.save()
    summary = markdown_summary(results.data)
    a.out.with_suffix(".md").write_text(summary + "\n")
    print("\n" + summary)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
