"""Score a trained NER model under each decoding: greedy / Viterbi (IOB2) x first / mean sub-token.

One forward over the split, then the four readings of the same logits
(``fsllm.evaluation.decoding_readings``, as a run's ``decodings`` table reads them), each scored by
``fsllm.metrics.ner_metrics`` (seqeval, strict IOB2), as ``fsllm eval --decoding D --word-scores W`` scores each. Also counts the sentences whose greedy tags
hold a stray ``I-`` (an ``I-X`` after neither ``B-X`` nor ``I-X``), the case the decodings differ on.
``--pipeline N``: also, on the first N sentences (words joined by spaces), whether
``pipeline("token-classification", aggregation_strategy="first")`` on the model finds the entities fsllm
finds under each reading (the model's ``word_starts`` computed from its tokenizer when its folder lacks them).

    python benchmarks/ner_decoding.py RUN --data conll2003 --split validation --subset 500 \\
        --out benchmarks/results/ner_decoding/RUN_NAME.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import torch

from fsllm.decoding import entities_from_tags, iob2_spans, set_decoding, word_start_table
from fsllm.decoding import raw_logits as raw
from fsllm.evaluation import batched_logits, decoding_readings, word_features
from fsllm.inference import Predictor
from fsllm.metrics import ner_metrics
from fsllm.prepare import eval_examples
from fsllm.tokenization import join_words


def pipeline_agreement(pred: Predictor, sentences: list, tags: list, decoding: str, scores: str) -> int:
    """Sentences on which transformers' pipeline() finds the entities of ``tags`` (fsllm's reading)."""
    import warnings

    from transformers import pipeline

    set_decoding(pred.model, decoding, scores)
    if pred.model.config.word_starts is None:
        pred.model.config.word_starts = word_start_table(pred.tokenizer)
    ner = pipeline("token-classification", model=pred.model, tokenizer=pred.tokenizer, aggregation_strategy="first",
                   device=pred.model.device)
    same = 0
    for words, tg in zip(sentences, tags):
        text, spans = join_words(list(words))
        want = [(e["entity_group"], e["start"], e["end"]) for e in entities_from_tags(tg, [1.0] * len(tg), spans, text)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # a byte-level BPE token's offsets take in the space before it
            got = [(e["entity_group"], e["start"] + (text[e["start"]] == " "), e["end"]) for e in ner(text)]
        same += got == want
    return same


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="run folder or model folder of a token (NER) model")
    p.add_argument("--data", default="conll2003")
    p.add_argument("--split", default="validation", choices=["train", "validation", "test"])
    p.add_argument("--subset", type=int, default=None, help="a seeded sample of N sentences (as fsllm eval --subset)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", default=None, help="write the results here (JSON)")
    p.add_argument("--pipeline", type=int, default=0, metavar="N", help="compare pipeline() on the first N sentences")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="the forward's autocast: a run trained under bf16 scored its dev and test under the Trainer's "
                        "bf16 autocast, which bf16 here comes close to (within bf16's rounding); fp32 (default) reads "
                        "the weights as saved")
    a = p.parse_args()

    pred = Predictor.from_pretrained(a.model, batch_size=a.batch_size)
    if pred.task != "token":
        raise SystemExit(f"{a.model} is not a token-classification model")
    exs = eval_examples(a.data, a.split, a.subset, task="token", labels=pred.model.label2id)
    sentences = [ex["tokens"] for ex in exs]
    gold = [list(ex["tags"]) for ex in exs]
    start = time.time()
    features = word_features(sentences, pred.tokenizer, pred.max_length)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if a.precision == "bf16" else contextlib.nullcontext()
    with raw(pred.model), autocast:
        logits = batched_logits(pred.model, features[0], a.batch_size, pred.tokenizer.pad_token_id or 0, progress=a.split)
    forward_s = time.time() - start
    results = {}
    for key, tags in decoding_readings(pred.model, pred.tokenizer, sentences, pred.max_length, features, logits):
        decoding, scores = key.split("/")
        m = ner_metrics(gold, tags)
        stray = sum(any(t.startswith("I-") for t in tg) and
                    sum(e - s for _, s, e in iob2_spans(tg)) < sum(t != "O" for t in tg) for tg in tags)
        results[key] = {k: m[k] for k in ("precision", "recall", "f1", "n_pred_entities",
                                          "n_correct_entities")} | {"sentences_with_stray_I": stray}
        if a.pipeline:
            same = pipeline_agreement(pred, sentences[: a.pipeline], tags[: a.pipeline], decoding, scores)
            results[key]["pipeline_identical_sentences"] = f"{same}/{min(a.pipeline, len(tags))}"
        print(f"{decoding:8s} {scores:6s} f1 {m['f1']:.4f}  P {m['precision']:.4f}  R {m['recall']:.4f}  "
              f"pred {m['n_pred_entities']}  stray-I sentences {stray}"
              + (f"  pipeline() identical {results[key]['pipeline_identical_sentences']}" if a.pipeline else ""))
    out = {"model": str(a.model), "data": a.data, "split": a.split, "subset": a.subset, "precision": a.precision,
           "n_sentences": len(exs),
           "n_gold_entities": ner_metrics(gold, gold)["n_true_entities"], "forward_seconds": round(forward_s, 1),
           "results": results}
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
