"""Cost of ``fsllm adapt`` (MNTP before supervised training) on SmolLM2-135M, and what it does to the MNTP loss.

    OMP_NUM_THREADS=1 python benchmarks/bench_adapt.py --steps 20 --precision fp32 --out benchmarks/results/adapt

Runs ``fsllm.adapt`` on the main job's 1,000 CoNLL-2003 training sentences (default settings otherwise: batch
8, max length 128, LoRA r 16 on every projection, bidirectional attention) for ``--steps`` steps, then the
MNTP loss (bidirectional and causal attention) of the backbone before and after on 128 of those training
texts with fixed masks (the default 80/10/10 masking): a check that the adaptation lowers its own objective, not a measure of
accuracy. Writes ``adapt_<precision>_<threads>t.json``: seconds per step (the Trainer's ``train_runtime`` over
the steps, model loading and saving left out), the wall time of the whole command, peak RSS, the losses and
the machine's load average before and after (the CPU may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import torch

from fsllm.adaptation import (
    BERT_SPLIT,
    AdaptConfig,
    MNTPCollator,
    adapt,
    load_causal_lm,
    mask_token_id,
    mntp_loss,
    release_attention,
    released_logits,
    training_texts,
)
from fsllm.backbones import load_tokenizer


def probe(model_path: str, texts: list[str]) -> dict[str, float]:
    """The mean MNTP loss of ``model_path`` on ``texts`` (batches of 16, masks fixed by the seed) per attention."""
    tok = load_tokenizer("smollm2-135m")
    special = [i for i in tok.all_special_ids if i is not None]
    collate = MNTPCollator(tok.pad_token_id, mask_token_id(tok), special, 0.2, seed=123, split=BERT_SPLIT,
                           vocab_size=len(tok))  # fsllm adapt's default masking
    batches = [collate([{"input_ids": tok(t, truncation=True, max_length=128)["input_ids"]} for t in texts[i:i + 16]])
               for i in range(0, len(texts), 16)]
    model = load_causal_lm(model_path).eval()
    out = {}
    for attention in ("bidirectional", "causal"):
        state = release_attention(model, AdaptConfig(attention=attention))
        with torch.no_grad():
            losses = [mntp_loss(released_logits(model, state, b["input_ids"], b["attention_mask"]), b["labels"]).item()
                      for b in batches]
        out[attention] = round(sum(losses) / len(losses), 4)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--out", default="benchmarks/results/adapt")
    a = p.parse_args()
    threads = torch.get_num_threads()
    load_before = os.getloadavg()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        folder = adapt(AdaptConfig(data="conll2003", train_subset=1000, steps=a.steps, logging_steps=1,
                                   precision=a.precision, output_dir=str(Path(tmp) / "adapted")))
        wall = time.time() - t0
        log = [json.loads(ln) for ln in (folder / "train_log.jsonl").read_text().splitlines()]
        runtime = next(r["train_runtime"] for r in log if "train_runtime" in r)
        texts = training_texts(AdaptConfig(data="conll2003", train_subset=1000))[-128:]
        result = {
            "command": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} python benchmarks/bench_adapt.py "
                       f"--steps {a.steps} --precision {a.precision}",
            "model": "smollm2-135m", "steps": a.steps, "batch_size": 8, "precision": a.precision, "threads": threads,
            "seconds_per_step": round(runtime / a.steps, 2), "train_runtime_s": round(runtime, 1),
            "command_wall_s": round(wall, 1),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "step_losses": [round(r["loss"], 3) for r in log if "loss" in r],
            "mntp_loss_before": probe("smollm2-135m", texts), "mntp_loss_after": probe(str(folder), texts),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "torch": torch.__version__,
        }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"adapt_{a.precision}_{threads}t.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
