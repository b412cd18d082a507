"""The prior a verbalizer head starts from: the untrained FS model's dev accuracy, per attention mode.

An untrained FS sequence model with a prompt (``FSConfig.prompt``) and a verbalizer head scores each label
as the backbone's LM head scores the label's word after text + prompt. Under the causal mask that is the
language model's zero-shot reading; under the released mask it is what survives of it before training.
The dev subset is the one the paper table's cells draw (``--dev-subset``, seed).

    python benchmarks/bench_verbalizer_prior.py --data rt-polarity --dev-subset 500 \\
        --out benchmarks/results/verbalizer_prior.json

``--label-words`` compares verbalizers on dev (``;`` between sets, each ``label=word,...``; ``-`` alone: the
label names): how a data set's words are chosen without touching test, e.g. rt-5's five labels, whose names
"very negative" and "very positive" begin with the same token.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from baselines import load_splits
from common import git_commit, machine_info, write_json

from fsllm import FSConfig, FSForSequenceClassification
from fsllm.backbones import load_tokenizer
from fsllm.config import parse_label_words


def prior_accuracy(model: FSForSequenceClassification, tokenizer, examples: list[dict], labels: list[str],
                   max_length: int, batch_size: int = 16) -> float:
    """Accuracy of the untrained model's argmax over ``examples`` (batched, right-padded)."""
    correct = 0
    for i in range(0, len(examples), batch_size):
        batch = examples[i:i + batch_size]
        enc = tokenizer([e["text"] for e in batch], return_tensors="pt", padding=True, truncation=True,
                        max_length=max_length)
        with torch.no_grad():
            predicted = model(**enc).logits.argmax(-1).tolist()
        correct += sum(labels[p] == e["label"] for p, e in zip(predicted, batch, strict=True))
    return correct / len(examples)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="rt-polarity")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--prompt", default="\nSentiment:")
    p.add_argument("--dev-subset", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--attention", default="causal,bidirectional", help="comma-separated attention modes")
    p.add_argument("--label-words", default="-", help="';'-separated verbalizers, each label=word,... ('-': label names)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    splits = load_splits(a.data, None, a.dev_subset, None, a.seed)
    tokenizer = load_tokenizer(a.model)
    rows = []
    verbalizers = [None if v.strip() == "-" else parse_label_words(v) for v in a.label_words.split(";")]
    for words in verbalizers:
        for mode in a.attention.split(","):
            fs = FSConfig(attention=mode, pooling="last", head="verbalizer", prompt=a.prompt, label_words=words)
            model = FSForSequenceClassification.from_backbone(a.model, id2label=dict(enumerate(splits.labels)),
                                                              fs_config=fs, tokenizer=tokenizer).eval()
            acc = prior_accuracy(model, tokenizer, splits.dev, splits.labels, a.max_length)
            rows.append({"attention": mode, "dev_accuracy": round(100 * acc, 2),
                         "label_words": [tokenizer.decode([t]) for t in model.config.verbalizer_ids]})
            print(json.dumps(rows[-1]), flush=True)
    quoted = ("prompt", "label_words")
    result = {"command": "python benchmarks/bench_verbalizer_prior.py " + " ".join(
                  f"--{k.replace('_', '-')} {json.dumps(v) if k in quoted else v}" for k, v in vars(a).items()),
              "commit": git_commit(), "machine": machine_info(), "data": a.data, "model": a.model, "prompt": a.prompt,
              "dev_examples": len(splits.dev), "rows": rows}
    write_json(a.out, result, newline=True)


if __name__ == "__main__":
    main()
