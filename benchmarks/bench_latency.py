#!/usr/bin/env python
"""Inference cost per CoNLL-2003 sentence of each NER row a user chooses between.

    python benchmarks/bench_latency.py [--sentences 256] [--threads 2] [--out benchmarks/results/latency.json]

Rows: ``fs-bidirectional`` (FS-SmolLM2, LoRA merged, as ``fsllm predict`` runs it), ``hf-native``
(SmolLM2's ``AutoModelForTokenClassification`` with ``is_causal = False``, LoRA merged), ``minilm``
and ``mpnet`` (the encoders, as the paper tables score them). Weights are freshly initialised:
the cost of a forward does not depend on them. Each row labels the first ``--sentences`` test
sentences twice through the row's own scoring path: one sentence per call (the latency a
single request sees; median over sentences) and in batches of 64 (throughput, as the tables'
evaluations run). ``benchmarks/paper_tables.py report`` draws test F1 against these numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import baselines
import common
import torch
from timing import Timing, timed

from fsllm import FSForTokenClassification, load_tokenizer
from fsllm.data import load_named
from fsllm.evaluation import predict_word_tags
from fsllm.inference import Predictor

REPO = Path(__file__).resolve().parent.parent
ROWS = ("fs-bidirectional", "hf-native", "minilm", "mpnet")


def scorer(row: str, labels: list[str]):
    """``label(sentences, batch_size)`` for a row, with its model built and put in eval mode."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    if row in ("fs-bidirectional", "hf-native"):
        tok = load_tokenizer("smollm2-135m")
        if row == "fs-bidirectional":
            model = Predictor(FSForTokenClassification.from_backbone(
                "smollm2-135m", id2label=dict(enumerate(labels))), tok).model  # LoRA merged, eval mode
        else:
            model = baselines.load_hf_native("smollm2-135m", "token", labels, tok).merge_and_unload().eval()
        return lambda sents, bs: predict_word_tags(model, tok, sents, 128, bs)
    folder = baselines.minilm_dir() if row == "minilm" else baselines.mpnet_dir(None)[0]
    if folder is None:
        raise SystemExit(f"{row}: not installed (see benchmarks/README.md)")
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForTokenClassification.from_pretrained(str(folder), num_labels=len(labels)).eval()
    examples = {}

    def label(sents, bs):
        exs = [examples.setdefault(id(s), {"tokens": s, "tags": ["O"] * len(s)}) for s in sents]
        return baselines.evaluate_encoder(model, tok, "token", exs, labels, 512, bs)

    return label


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sentences", type=int, default=256, help="test sentences per row [256]")
    p.add_argument("--threads", type=int, default=2, help="torch threads [2]")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "latency.json")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    td = load_named("conll2003")
    sentences = [list(ex["tokens"]) for ex in list(td.splits["test"])[: a.sentences]]
    labels = list(td.label_names)
    rows = {}
    for row in a.rows.split(","):
        torch.manual_seed(0)
        label = scorer(row, labels)
        label(sentences[:8], 8)  # warmup
        one = Timing([timed(partial(label, [s], 1))[1] for s in sentences])  # one sample per sentence
        _, batched = timed(partial(label, sentences, 64))
        rows[row] = {"ms_per_sentence_alone_median": round(1000 * one.median, 2),
                     "ms_per_sentence_batched": round(1000 * batched / len(sentences), 2),
                     "sentences_per_s_batched": round(len(sentences) / batched, 1)}
        print(row, json.dumps(rows[row]), flush=True)
    data = {"command": "python benchmarks/bench_latency.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "commit": common.git_commit(), "machine": common.machine_info(), "sentences": len(sentences),
            "threads": a.threads, "rows": rows}
    common.write_json(a.out, data, indent=1)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
