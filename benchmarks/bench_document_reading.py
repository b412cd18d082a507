"""How to give a document to an NER model trained with document context: three readings of one split.

- ``sentences + documents``: each sentence with up to N sub-tokens of its neighbours, as it was trained and
  scored (``Predictor.predict(words=..., documents=...)``, ``fsllm predict --pre-split`` objects naming their
  ``document``, the server's pre-split sentences);
- ``whole document``: each document's sentences joined into one sequence of words, read in overlapping
  windows of the model's ``max_length`` (what a paragraph sent as one text to ``Predictor.predict`` or
  ``fsllm serve`` gets), its tags split back into the sentences;
- ``sentences alone``: each sentence without context.

Each reading is scored by ``fsllm.metrics.ner_metrics`` (seqeval, strict IOB2) against the split's tags. It
compares ways of reading one trained model, so it runs on the validation split by default, not on test.

    python benchmarks/bench_document_reading.py RUN --data conll2003 --split validation \\
        --out benchmarks/results/document_reading/RUN_NAME.json
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

from common import git_commit, machine_info, write_json

from fsllm.evaluation import document_context_of
from fsllm.inference import Predictor
from fsllm.metrics import ner_metrics
from fsllm.prepare import eval_examples


def documents_of(rows: list[dict]) -> list[list[int]]:
    """The row indices of each document: consecutive rows with the same ``document``; a row without one
    is a document of its own (nothing says what its neighbours are)."""
    out: list[list[int]] = []
    for key, group in itertools.groupby(range(len(rows)), key=lambda i: rows[i].get("document")):
        idx = list(group)
        out.extend([[i] for i in idx] if key is None else [idx])
    return out


def whole_document_tags(pred: Predictor, rows: list[dict], progress: bool | str = False) -> list[list[str]]:
    """Each document read as one word sequence (windows of the model's ``max_length``), tags split back
    into its sentences."""
    docs = documents_of(rows)
    answers = pred.predict(words=[[w for i in d for w in rows[i]["tokens"]] for d in docs], progress=progress)
    tags: list[list[str]] = [[] for _ in rows]
    for d, answer in zip(docs, answers):
        at = 0
        for i in d:
            n = len(rows[i]["tokens"])
            tags[i] = answer["tags"][at:at + n]
            at += n
    return tags


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="run folder or model folder of a token (NER) model")
    p.add_argument("--data", default="conll2003")
    p.add_argument("--split", default="validation", choices=["train", "validation", "test"])
    p.add_argument("--subset", type=int, default=None,
                   help="the first N sentences (whole documents are cut at N: a seeded sample would break them)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--out", default=None, help="write the results here (JSON)")
    a = p.parse_args()

    pred = Predictor.from_pretrained(a.model, precision=a.precision)
    if pred.task != "token":
        raise SystemExit(f"{a.model} is a {pred.task} model; this reads NER (token) models")
    rows = eval_examples(a.data, a.split, None)[: a.subset]
    gold = [r["tags"] for r in rows]
    words = [r["tokens"] for r in rows]
    readings = {
        "sentences + documents": lambda: [x["tags"] for x in pred.predict(
            words=words, documents=[r.get("document") for r in rows], progress="with documents")],
        "whole document": lambda: whole_document_tags(pred, rows, progress="whole documents"),
        "sentences alone": lambda: [x["tags"] for x in pred.predict(words=words, progress="alone")],
    }
    out = {"model": str(Path(a.model).resolve()), "data": a.data, "split": a.split, "sentences": len(rows),
           "documents": len(documents_of(rows)), "document_context": document_context_of(pred.model),
           "max_length": pred.max_length, "precision": a.precision, "decoding": list(pred.decoding),
           "commit": git_commit(), "machine": machine_info(), "readings": {}}
    for name, read in readings.items():
        t0 = time.perf_counter()
        tags = read()
        seconds = time.perf_counter() - t0
        m = ner_metrics(gold, tags)
        out["readings"][name] = {"f1": m["f1"], "precision": m["precision"], "recall": m["recall"],
                                 "seconds": round(seconds, 1), "ms_per_sentence": round(1000 * seconds / len(rows), 1)}
        print(f"{name}: F1 {100 * m['f1']:.2f} ({seconds:.0f} s)", flush=True)
    if a.out:
        write_json(a.out, out, newline=True)


if __name__ == "__main__":
    main()
