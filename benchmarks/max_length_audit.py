#!/usr/bin/env python
"""Which test inputs a model reads differently at 128 and at 256 tokens (``max_length``).

    python benchmarks/max_length_audit.py [--datasets conll2003,rt-polarity,tweets-3] [--model smollm2-135m]

A model folder written before ``FSLLMConfig.max_length`` existed records no ``max_length``, and
``Predictor`` on such a folder reads 256 tokens; ``papertables.runner.score_fs_test`` scored the test split
of the grid-chosen FS cells that way, after training and dev selection at 128. An input whose
features are the same at both lengths gets the same prediction, so a cell's test score can move only
through the inputs counted here. The features are built by the code ``evaluate_examples`` runs
(``example_features``: one truncated input per text; ``word_features``: NER windows), on each data
set's full test split (the cells use no test subset) with the backbone's tokenizer.
"""

from __future__ import annotations

import argparse
import json
import sys
from types import SimpleNamespace

from fsllm.backbones import load_tokenizer
from fsllm.data import load_any
from fsllm.evaluation import example_features, word_features

#: the data sets of the committed FS cells scored by score_fs_test (benchmarks/results/tuned)
DATASETS = ("conll2003", "rt-polarity", "tweets-3")
#: a max_length no input reaches: every input whole, in one window
UNLIMITED = 10**9


def audit(dataset: str, tokenizer, short: int = 128, long: int = 256) -> dict:
    """Counts of the test inputs over ``short`` and ``long`` tokens, and of those whose model inputs
    differ between the two lengths (the only ones whose prediction can differ)."""
    data = load_any(dataset)
    test = list(data.splits["test"])
    if data.task == "token":
        sentences = [ex["tokens"] for ex in test]

        def features(max_length: int) -> list[list[list[int]]]:  # per sentence, its windows' ids
            feats, owner = word_features(sentences, tokenizer, max_length)
            out: list[list[list[int]]] = [[] for _ in sentences]
            for f, n in zip(feats, owner):
                out[n].append(f["input_ids"])
            return out

        unit = "sentences"
    else:
        paired = any(ex.get("text_pair") is not None for ex in test)
        model = SimpleNamespace(config=SimpleNamespace(text_pair=paired))

        def features(max_length: int) -> list[list[list[int]]]:
            return [[f["input_ids"]] for f in example_features(model, tokenizer, test, max_length)]

        unit = "texts"
    full = [sum(len(w) for w in ws) for ws in features(UNLIMITED)]  # one window each: the whole input
    at_short, at_long = features(short), features(long)
    differ = [n for n, (a, b) in enumerate(zip(at_short, at_long)) if a != b]
    out = {
        "dataset": dataset, "task": data.task, "test_inputs": len(test), "unit": unit,
        "over_short": sum(n > short for n in full), "over_long": sum(n > long for n in full),
        "read_differently": len(differ), "longest_tokens": max(full), "short": short, "long": long,
    }
    if data.task == "token":  # the gold entities whose prediction can move, of all the test split's
        entities = [sum(t.startswith("B-") for t in ex["tags"]) for ex in test]
        out["gold_entities_there"] = sum(entities[n] for n in differ)
        out["gold_entities"] = sum(entities)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--model", default="smollm2-135m", help="the backbone whose tokenizer reads the data")
    p.add_argument("--json", action="store_true", help="one JSON object per data set instead of a table")
    a = p.parse_args(argv)
    tokenizer = load_tokenizer(a.model)
    rows = [audit(name, tokenizer) for name in a.datasets.split(",") if name]
    if a.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    print("| data set | test inputs | over 128 tokens | over 256 tokens | read differently at 128 vs 256 "
          "(their gold entities) | longest input (tokens) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        there = f" ({r['gold_entities_there']} of {r['gold_entities']})" if "gold_entities" in r else ""
        print(f"| {r['dataset']} | {r['test_inputs']} {r['unit']} | {r['over_short']} | {r['over_long']} | "
              f"{r['read_differently']}{there} | {r['longest_tokens']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
