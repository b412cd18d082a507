#!/usr/bin/env python
"""Two real-data tasks for the task kinds no packaged data set has: multi-label and text pairs.

    python benchmarks/derived_tasks.py OUT_DIR      # writes OUT_DIR/{conll-types,rt-pairs}/{train,dev,test}.jsonl

Both are derived from human annotations of packaged data, with each source split kept apart
(train from train, dev from validation, test from test), so no test text is seen in training:

* ``conll-types`` (multi-label): a CoNLL-2003 sentence, labelled with the entity types that occur
  in it (any of PER, LOC, ORG, MISC; none is a valid answer). Sentences of 3 or more words.
* ``rt-pairs`` (text pairs): two movie-review snippets of the ``rt-score`` split, labelled
  ``first`` or ``second`` by which one the human raters scored more positive; pairs whose
  scores differ by less than 1.0 are left out (their order is noise in the ratings). Every
  snippet appears in at most one pair.

Then, for instance: ``fsllm train --data OUT_DIR/conll-types --multi-label ...`` and
``fsllm train --data OUT_DIR/rt-pairs --text-pair-column text_pair ...`` (commands and results
in docs/results.md).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from fsllm.data import load_named

SPLITS = {"train": "train", "dev": "validation", "test": "test"}


def conll_types(split) -> list[dict]:
    rows = []
    for ex in split:
        if len(ex["tokens"]) < 3:
            continue
        types = sorted({t.split("-", 1)[1] for t in ex["tags"] if t != "O"})
        rows.append({"text": " ".join(ex["tokens"]), "label": types})
    return rows


def rt_pairs(split, seed: int, min_gap: float = 1.0) -> list[dict]:
    items = list(split)
    random.Random(seed).shuffle(items)
    rows = []
    for a, b in zip(items[0::2], items[1::2]):
        if abs(a["label"] - b["label"]) < min_gap:
            continue
        rows.append({"text": a["text"], "text_pair": b["text"], "label": "first" if a["label"] > b["label"] else "second"})
    return rows


def write(folder: Path, name: str, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"{name}.jsonl").open("w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    out = Path(argv[0])
    conll, rt = load_named("conll2003").splits, load_named("rt-score").splits
    for seed, (name, source) in enumerate(SPLITS.items()):
        write(out / "conll-types", name, conll_types(conll[source]))
        write(out / "rt-pairs", name, rt_pairs(rt[source], seed))
    for task in ("conll-types", "rt-pairs"):
        counts = {s: sum(1 for _ in open(out / task / f"{s}.jsonl")) for s in SPLITS}
        print(task, counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
