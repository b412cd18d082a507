"""Do ``transformers.pipeline()`` and the Auto classes give what fsllm gives, on a real trained model?

For a model folder written by ``fsllm train`` (``RUN/model``) this checks, on a data set's test split:

* the round trip: the folder loaded by ``AutoModelFor*Classification.from_pretrained`` (the small
  folder, and a merged copy of it) gives the logits of ``fsllm.load_model`` (max |difference|);
* NER: ``pipeline("token-classification", model=folder, aggregation_strategy="first")`` on each
  test sentence's words joined by spaces, against ``fsllm predict`` on the same words (the
  ``entity_group``, ``start``, ``end`` and ``word`` of every entity, once the pipeline's entities
  lose the leading space of their first byte-level BPE token, and the largest score difference);
* sequence tasks: ``pipeline("text-classification", model=folder)`` against ``fsllm predict``
  on the test texts (labels and scores).

    python benchmarks/parity.py RUN/model --data conll2003 --out benchmarks/results/parity/conll2003.json

NER: ``--decoding`` / ``--word-scores`` compare under another reading than the folder's: the folder is
saved again with them (and its tokenizer, so it records ``word_starts``) into a temporary folder, which
both sides then load.

Results go to a JSON file and a short markdown summary next to it.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

import common
import torch
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, pipeline

from fsllm import load_model
from fsllm.data import load_any
from fsllm.decoding import NER_DECODINGS, WORD_SCORES, set_decoding
from fsllm.inference import Predictor, entities_from_tags, predict_word_tags
from fsllm.tokenization import join_words, sequence_features


def round_trip(folder: Path, predictor: Predictor, texts: list[str]) -> dict:
    """Max |logit difference| between ``fsllm.load_model`` and the Auto class, small and merged folders."""
    auto = AutoModelForTokenClassification if predictor.task == "token" else AutoModelForSequenceClassification
    reference = load_model(folder).eval()
    feats = [sequence_features(t, predictor.tokenizer, predictor.max_length)[0] for t in texts]
    batch = predictor.tokenizer.pad({"input_ids": [f["input_ids"] for f in feats]}, return_tensors="pt")
    out = {}
    with torch.no_grad():
        want = reference(batch["input_ids"], batch["attention_mask"]).logits
        out["max_abs_logit"] = float(want.abs().max())
        got = auto.from_pretrained(folder)(batch["input_ids"], batch["attention_mask"]).logits
        out["small_folder_max_abs_diff"] = float((got - want).abs().max())
        with tempfile.TemporaryDirectory() as merged:
            reference.save_pretrained(merged, merged=True)
            got = auto.from_pretrained(merged)(batch["input_ids"], batch["attention_mask"]).logits
        out["merged_folder_max_abs_diff"] = float((got - want).abs().max())
    return out


def pipeline_entity_key(e: dict) -> tuple:
    """An entity of the pipeline without the spaces that byte-level BPE tokens carry.

    With such tokenizers (SmolLM2, GPT-2, Llama 3) the pipeline's ``word`` is the decoded tokens,
    so it starts with the space before the word, and ``start`` points at that space; an entity can
    also end in a space token of its own (SmolLM2 writes " 1996" as a lone space, then digits, and
    the pipeline takes that lone space for a word). fsllm's entities hold just the words
    (``text[start:end] == word``).
    """
    word = e["word"]
    lead, trail = len(word) - len(word.lstrip()), len(word) - len(word.rstrip())
    return (e["entity_group"], int(e["start"]) + lead, int(e["end"]) - trail, word.strip())


def ner_parity(folder: Path, predictor: Predictor, sentences: list[list[str]]) -> dict:
    t0 = time.perf_counter()
    tags, scores, _ = predict_word_tags(predictor.model, predictor.tokenizer, sentences, predictor.max_length, 64)
    ours = []
    for words, tg, sc in zip(sentences, tags, scores):
        text, spans = join_words(words)
        ours.append(entities_from_tags(tg, sc, spans, text))
    fs_seconds = time.perf_counter() - t0
    ner = pipeline("token-classification", model=str(folder), aggregation_strategy="first", device="cpu")
    t0 = time.perf_counter()
    theirs = ner([" ".join(w) for w in sentences], batch_size=64)
    pipe_seconds = time.perf_counter() - t0
    too_long = sum(len(predictor.tokenizer(" ".join(w))["input_ids"]) > predictor.max_length for w in sentences)
    same, max_score_diff, examples = 0, 0.0, []
    score_diffs = []  # (difference, the entity holds a lone space token) per entity of identical sentences
    for n, (a, b) in enumerate(zip(theirs, ours)):
        key_a = [pipeline_entity_key(e) for e in a]
        key_b = [(e["entity_group"], e["start"], e["end"], e["word"]) for e in b]
        if key_a == key_b:
            same += 1
            for x, y in zip(a, b):
                d = abs(float(x["score"]) - y["score"])
                max_score_diff = max(max_score_diff, d)
                score_diffs.append((d, re.search(r"\s\d", y["word"]) is not None))  # a space before a digit
        elif len(examples) < 5:
            examples.append({"sentence": n, "pipeline": key_a, "fsllm": key_b})
    return {
        "sentences": len(sentences),
        "entities_fsllm": sum(len(e) for e in ours),
        "entities_pipeline": sum(len(e) for e in theirs),
        "sentences_identical": same,
        "sentences_longer_than_max_length": too_long,
        "max_score_diff_where_identical": max_score_diff,
        # The pipeline averages an entity's words' scores, and takes a lone space token inside an entity
        # ("Super 12": SmolLM2 writes the space before a digit alone) for a word of its own, with the score
        # fsllm's whitespace rule gives it: such entities' scores differ, the others' do not.
        "entities_with_score_diff_over_1e-3": sum(d > 1e-3 for d, _ in score_diffs),
        "max_score_diff_without_lone_space": max((d for d, lone in score_diffs if not lone), default=0.0),
        "differing_examples": examples,
        "seconds": {"fsllm": round(fs_seconds, 1), "pipeline": round(pipe_seconds, 1)},
    }


def sequence_parity(folder: Path, predictor: Predictor, texts: list[str]) -> dict:
    t0 = time.perf_counter()
    ours = predictor.predict(texts)
    fs_seconds = time.perf_counter() - t0
    clf = pipeline("text-classification", model=str(folder), device="cpu")
    t0 = time.perf_counter()
    theirs = clf(texts, batch_size=64)
    pipe_seconds = time.perf_counter() - t0
    same = sum(a["label"] == b["label"] for a, b in zip(theirs, ours))
    too_long = sum(len(predictor.tokenizer(t)["input_ids"]) > predictor.max_length for t in texts)
    return {
        "texts": len(texts),
        "labels_identical": same,
        "texts_longer_than_max_length": too_long,
        "max_score_diff": max(abs(a["score"] - b["score"]) for a, b in zip(theirs, ours)),
        "seconds": {"fsllm": round(fs_seconds, 1), "pipeline": round(pipe_seconds, 1)},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="a model folder written by fsllm (RUN/model)")
    p.add_argument("--data", required=True, help="data set whose test split is compared (e.g. conll2003, rt-polarity)")
    p.add_argument("--subset", type=int, default=None, help="first N test examples (default: all)")
    p.add_argument("--out", type=Path, required=True, help="results JSON; a .md summary goes next to it")
    p.add_argument("--decoding", choices=NER_DECODINGS, default=None, help="NER: FSConfig.ner_decoding to compare under")
    p.add_argument("--word-scores", choices=WORD_SCORES, default=None, help="NER: FSConfig.word_scores to compare under")
    a = p.parse_args()
    torch.manual_seed(0)
    given = a.model
    if a.decoding or a.word_scores:
        tmp = tempfile.TemporaryDirectory()
        model = load_model(a.model)
        set_decoding(model, a.decoding, a.word_scores)
        model.save_pretrained(tmp.name, tokenizer=Predictor.from_pretrained(a.model).tokenizer)
        a.model = Path(tmp.name)
    predictor = Predictor.from_pretrained(a.model)
    test = list(load_any(a.data, task=predictor.task).splits["test"])[: a.subset]
    result = {
        "command": "python benchmarks/parity.py " + " ".join(
            [str(given), "--data", a.data, "--out", str(a.out)] + (["--subset", str(a.subset)] if a.subset else [])
            + (["--decoding", a.decoding] if a.decoding else []) + (["--word-scores", a.word_scores] if a.word_scores else [])
        ),
        "commit": common.git_commit(mark_dirty=False) or "unknown",
        "machine": f"{common.cpu_model()}, {torch.get_num_threads()} torch threads",
        "model": str(given),
        "data": a.data,
        "decoding": list(predictor.decoding) if predictor.task == "token" else None,
    }
    texts = [" ".join(ex["tokens"]) for ex in test] if predictor.task == "token" else [ex["text"] for ex in test]
    result["round_trip"] = round_trip(a.model, predictor, texts[:64])
    if predictor.task == "token":
        result["ner"] = ner_parity(a.model, predictor, [list(ex["tokens"]) for ex in test])
    else:
        result["sequence"] = sequence_parity(a.model, predictor, texts)
    common.write_json(a.out, result, newline=True)
    lines = [f"# pipeline() and Auto classes vs fsllm on {a.data} (test)", "", f"`{result['command']}`", "",
             f"commit {result['commit']}; {result['machine']}", ""]
    rt = result["round_trip"]
    lines.append(f"- round trip (64 test inputs): small folder max |Δlogit| {rt['small_folder_max_abs_diff']:.2e}, "
                 f"merged folder {rt['merged_folder_max_abs_diff']:.2e} (largest |logit| {rt['max_abs_logit']:.1f})")
    if "ner" in result:
        r = result["ner"]
        lines.append(f"- NER: {r['sentences_identical']} / {r['sentences']} sentences with identical entities "
                     f"({r['entities_pipeline']} pipeline vs {r['entities_fsllm']} fsllm entities; "
                     f"{r['sentences_longer_than_max_length']} sentences longer than max_length); "
                     f"largest score difference {r['max_score_diff_where_identical']:.2e}, "
                     f"{r['max_score_diff_without_lone_space']:.2e} for the entities without a lone space token; "
                     f"{r['entities_with_score_diff_over_1e-3']} entities differ by more than 1e-3")
    else:
        r = result["sequence"]
        lines.append(f"- {r['labels_identical']} / {r['texts']} identical labels; largest score difference "
                     f"{r['max_score_diff']:.2e} ({r['texts_longer_than_max_length']} texts longer than max_length)")
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
