"""Scoring a model: batched logits, what they mean per problem type, and metrics on labelled examples.

One module shared by training (dev evaluation during training and the run's report), ``fsllm eval``
and prediction (``fsllm.inference``), so a number in ``metrics.json`` is computed by the code that
``fsllm eval`` runs: word-level for NER (windows merged, strict span F1), never a token-level
approximation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .decoding import NER_DECODINGS, WORD_SCORES, check_decoding, decode_words, decoding_of, raw_logits, word_log_probs
from .errors import DataError
from .metrics import classification_metrics, multilabel_metrics, ner_metrics, regression_metrics
from .modeling import FSModel
from .tokenization import (
    Context,
    context_of,
    merge_window_predictions,
    pair_features,
    sequence_features,
    token_classification_features,
)


def batched_logits(
    model: torch.nn.Module,
    features: Sequence[dict],
    batch_size: int = 64,
    pad_id: int = 0,
    progress: bool | str = False,
) -> list[np.ndarray]:
    """Logits for each feature (``[num_labels]`` or ``[len, num_labels]``), in the input order.

    ``model`` is an FS model or any classifier called as ``model(input_ids=..., attention_mask=...)``
    whose output has ``.logits`` (e.g. an ``AutoModelFor*Classification``), so baselines are scored
    by this same loop (right padding, batches sorted by length).
    """
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    chunks = length_chunks([len(features[i]["input_ids"]) for i in order], batch_size)
    out: list[np.ndarray | None] = [None] * len(features)
    device = next(model.parameters()).device
    # Module.train()/eval() walk every submodule (thousands with LoRA on a 30-layer model):
    # switch only when needed, since a served or predicting model is already in eval mode.
    was_training = model.training
    if was_training:
        model.eval()
    if progress:
        chunks = tqdm(chunks, desc=progress if isinstance(progress, str) else "predict", unit="batch", leave=False)
    with torch.inference_mode():
        for s, e in chunks:
            idx = order[s:e]
            width = max(len(features[i]["input_ids"]) for i in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                n = len(features[i]["input_ids"])
                ids[r, :n] = torch.tensor(features[i]["input_ids"])
                mask[r, :n] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu().numpy()
            for r, i in enumerate(idx):
                n = len(features[i]["input_ids"])
                out[i] = logits[r] if logits.ndim == 2 else logits[r, :n]
    if was_training:
        model.train()
    return out  # type: ignore[return-value]


#: the fixed cost of one forward call, in padded tokens' worth of work (``length_chunks``): at small
#: batches a forward streams every weight from memory whatever the number of tokens
FORWARD_OVERHEAD_TOKENS = 32


def length_chunks(lengths: Sequence[int], batch_size: int, overhead: int = FORWARD_OVERHEAD_TOKENS) -> list[tuple[int, int]]:
    """Split inputs sorted by length into batches ``[start, end)`` of least total padded work.

    A batch costs about ``overhead + size * longest`` token-steps, since every row is padded to the
    longest. One batch of mixed lengths (a server's few concurrent requests, say) mostly computes
    padding; one batch per input repeats the overhead. The split is exact (dynamic programming over
    the sorted lengths), at most ``batch_size`` per batch, and FS models are padding-invariant, so
    it changes no answer. Runs of similar lengths (a sorted data set) still fill whole batches."""
    n = len(lengths)
    best = [0.0] + [math.inf] * n  # best[j]: least cost of the first j inputs
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(max(0, j - batch_size), j):
            c = best[i] + overhead + (j - i) * lengths[j - 1]
            if c < best[j]:
                best[j], cut[j] = c, i
    out, j = [], n
    while j > 0:
        out.append((cut[j], j))
        j = cut[j]
    return out[::-1]


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def word_features(
    sentences: Sequence[Sequence[str]], tokenizer, max_length: int = 128,
    contexts: Sequence[Context | None] | None = None, context_tokens: int = 0,
) -> tuple[list[dict], list[int]]:
    """The model inputs of tokenised sentences (windows of at most ``max_length``) and, for each,
    the index of the sentence it belongs to. ``contexts``: each sentence's document context (or
    ``None``), read with up to ``context_tokens`` sub-tokens a side (see ``token_classification_features``)."""
    if contexts is not None and len(contexts) != len(sentences):
        raise ValueError(f"{len(sentences)} sentences but {len(contexts)} contexts")
    feats, owner = [], []
    for n, words in enumerate(sentences):
        context = contexts[n] if contexts is not None else None
        for f in token_classification_features(list(words), None, tokenizer, None, max_length, context=context,
                                               context_tokens=context_tokens):
            feats.append(f)
            owner.append(n)
    return feats, owner


def document_context_of(model) -> int:
    """The sub-tokens of document context a side the model was trained to read (``FSLLMConfig.document_context``;
    0 for a model without it, a baseline's included)."""
    return int(getattr(model.config, "document_context", 0) or 0)


def example_contexts(examples: Sequence[dict]) -> list[Context | None] | None:
    """Each example's document context (``fsllm.tokenization.with_document_context``), or ``None`` when none has any."""
    contexts = [context_of(ex) for ex in examples]
    return contexts if any(c is not None for c in contexts) else None


def predict_word_tags(
    model: FSModel,
    tokenizer,
    sentences: Sequence[Sequence[str]],
    max_length: int = 128,
    batch_size: int = 64,
    progress: bool | str = False,
    features: tuple[list[dict], list[int]] | None = None,
    ner_decoding: str | None = None,
    word_scores: str | None = None,
    logits: Sequence[np.ndarray] | None = None,
    contexts: Sequence[Context | None] | None = None,
) -> tuple[list[list[str]], list[list[float]], list[np.ndarray]]:
    """Word-level tags and scores for tokenised sentences (windows merged), plus per-feature logits.

    ``model`` is an FS token model or any token classifier with ``config.id2label`` (e.g. an
    ``AutoModelForTokenClassification``, PEFT-wrapped or not), so baselines are read the same way.
    ``features``: the sentences' ``word_features``, when the caller has them already; ``logits``: the
    model's logits of those features, likewise (to read the same forward under several decodings).
    ``ner_decoding`` / ``word_scores``: see ``fsllm.decoding``; ``None`` takes the model's own
    (``FSConfig.ner_decoding`` / ``FSConfig.word_scores``; greedy / first for a model without them).
    A word's score is its probability of the tag it got. ``contexts``: each sentence's document context,
    read as far as the model was trained to (:func:`document_context_of`); ``None``: each sentence alone.
    """
    check_decoding(ner_decoding, word_scores)
    own_decoding, own_scores = decoding_of(model)
    ner_decoding, word_scores = ner_decoding or own_decoding, word_scores or own_scores
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    labels = [id2label[i] for i in range(len(id2label))]
    feats, owner = (features if features is not None
                    else word_features(sentences, tokenizer, max_length, contexts, document_context_of(model)))
    if logits is None:
        with raw_logits(model):  # the head's own logits, not those ordered for pipeline()
            logits = batched_logits(model, feats, batch_size, tokenizer.pad_token_id or 0, progress)
    logits = list(logits)
    per_sentence: list[list] = [[] for _ in sentences]
    for f, lg, n in zip(feats, logits, owner):
        per_sentence[n].append((f["word_ids"], f["first"], word_log_probs(lg, f["word_ids"], f["first"], word_scores)))
    tags, scores = [], []
    for n, words in enumerate(sentences):
        merged = merge_window_predictions(len(words), per_sentence[n])
        tg, sc = decode_words(np.stack(merged) if merged else np.zeros((0, len(labels))), labels, ner_decoding)
        tags.append(tg)
        scores.append(sc)
    return tags, scores, logits


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def example_features(model: FSModel, tokenizer, examples: Sequence[dict], max_length: int) -> list[dict]:
    """Inputs of sequence examples (``{"text"}``, or ``{"text", "text_pair"}`` for a pair model).

    A pair model given single texts, or a single-text model given pairs, is an error: it would
    read inputs shaped unlike anything it was trained on and answer without a complaint.
    """
    paired = bool(getattr(model.config, "text_pair", False))
    feats = []
    for n, ex in enumerate(examples):
        second = ex.get("text_pair")
        if paired and second is None:
            raise DataError(f"input {n + 1}: this model was trained on text pairs; give text and text_pair")
        if not paired and second is not None:
            raise DataError(f"input {n + 1}: this model reads single texts, not pairs (it was not trained on pairs)")
        if paired:
            feats.append(pair_features(ex["text"], second, tokenizer, max_length)[0])
        else:
            feats.append(sequence_features(ex["text"], tokenizer, max_length)[0])
    return feats


def sequence_probabilities(model: FSModel, tokenizer, examples: Sequence[dict], max_length: int,
                           batch_size: int = 64, progress: bool | str = False) -> list[np.ndarray]:
    """Per example: softmax probabilities (single label), sigmoids (multi-label) or the value (regression)."""
    feats = example_features(model, tokenizer, examples, max_length)
    logits = batched_logits(model, feats, batch_size, tokenizer.pad_token_id or 0, progress)
    return [scores_of(model.config, lg) for lg in logits]


def scores_of(config, logits: np.ndarray) -> np.ndarray:
    """What a sequence model's logits mean for its ``problem_type``: softmax, sigmoid, or the value itself."""
    problem = getattr(config, "problem_type", None)
    if problem == "multi_label_classification":
        return _sigmoid(np.asarray(logits, dtype=np.float64))
    if problem == "regression":
        return np.asarray(logits, dtype=np.float64)
    return _softmax(np.asarray(logits, dtype=np.float64))


def labels_over_threshold(config, probs: np.ndarray) -> list[dict]:
    """A multi-label prediction: every label whose sigmoid reaches its threshold, with its score, best first."""
    out = []
    for k in np.argsort(-probs, kind="stable"):
        name = config.id2label[int(k)]
        if probs[k] >= config.threshold_of(name):
            out.append({"label": name, "score": float(probs[k])})
    return out


def token_loss(examples: Sequence[dict], features: tuple[list[dict], list[int]], logits: Sequence[np.ndarray],
               label2id: dict[str, int]) -> float:
    """The training loss on labelled sentences: cross-entropy at each word's first sub-token, averaged
    over those tokens (windows counted as training counts them), from the ``word_features`` of the
    sentences and the logits ``predict_word_tags`` returned for them."""
    total, count = 0.0, 0
    feats, owner = features
    for f, n, lg in zip(feats, owner, logits, strict=True):
        tags = examples[n]["tags"]
        keep = np.array(f["first"], dtype=bool)  # a word's first sub-token carries its label, as in training
        if not keep.any():
            continue
        gold = np.array([label2id[tags[w]] for w, first in zip(f["word_ids"], f["first"]) if first])
        z = np.asarray(lg, dtype=np.float64)[keep]
        logp = z - z.max(-1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
        total -= float(logp[np.arange(len(z)), gold].sum())
        count += int(keep.sum())
    return total / count if count else 0.0


def decoding_readings(
    model: FSModel,
    tokenizer,
    sentences: Sequence[Sequence[str]],
    max_length: int,
    features: tuple[list[dict], list[int]],
    logits: Sequence[np.ndarray],
) -> Iterator[tuple[str, list[list[str]]]]:
    """Each NER reading of one forward's logits: ``("{ner_decoding}/{word_scores}", word tags)`` for
    greedy and Viterbi over first and mean sub-token scores, without another forward."""
    for decoding in NER_DECODINGS:
        for scores in WORD_SCORES:
            tags, _, _ = predict_word_tags(model, tokenizer, sentences, max_length, features=features, logits=logits,
                                           ner_decoding=decoding, word_scores=scores)
            yield f"{decoding}/{scores}", tags


def decoding_scores(
    model: FSModel,
    tokenizer,
    sentences: Sequence[Sequence[str]],
    gold: Sequence[Sequence[str]],
    max_length: int,
    features: tuple[list[dict], list[int]],
    logits: Sequence[np.ndarray],
) -> dict[str, dict]:
    """Strict span precision / recall / F1 of one forward's logits under every NER decoding.

    Keys are ``"{ner_decoding}/{word_scores}"`` (greedy or viterbi, first or mean): the readings a user
    chooses between on dev (``FSConfig.ner_decoding`` / ``word_scores``), scored without another forward
    (:func:`decoding_readings`).
    """
    out = {}
    for key, tags in decoding_readings(model, tokenizer, sentences, max_length, features, logits):
        m = ner_metrics(gold, tags)
        out[key] = {k: m[k] for k in ("precision", "recall", "f1")}
    return out


def evaluate_examples(
    model: FSModel,
    tokenizer,
    examples: Sequence[dict],
    max_length: int,
    batch_size: int = 64,
    progress: bool | str = False,
    ner_decoding: str | None = None,
    word_scores: str | None = None,
    all_decodings: bool = False,
) -> tuple[dict, list[dict]]:
    """Metrics and per-example predictions of ``model`` on labelled examples.

    Token examples are ``{"tokens", "tags"}`` (with ``context_left`` / ``context_right``, their document
    context, read as far as the model was trained to) and are scored at the word level with
    strict IOB2 span F1 (the entities of ``fsllm.decoding.iob2_spans``), their tags decoded as
    ``ner_decoding`` / ``word_scores`` say (``None``: the model's own, see :func:`predict_word_tags`);
    ``all_decodings``: also ``metrics["decodings"]``, the scores under every decoding
    (:func:`decoding_scores`, from the same forward), and the seconds that took (``decodings_seconds``).
    Sequence examples are ``{"text", "label"}``. A gold label the model does not know is an error (it
    would silently count as wrong).
    """
    if model.task == "token":
        for n, ex in enumerate(examples):
            for t in ex["tags"]:
                if t not in model.label2id:
                    raise DataError(f"example {n}: unknown label {t!r} (model labels: {sorted(model.label2id)})")
        sentences = [ex["tokens"] for ex in examples]
        # examples that carry their document context are read with it (prepare.attach_document_context)
        features = word_features(sentences, tokenizer, max_length, example_contexts(examples), document_context_of(model))
        tags, scores, logits = predict_word_tags(model, tokenizer, sentences, max_length, batch_size, progress, features,
                                                 ner_decoding, word_scores)
        gold = [list(ex["tags"]) for ex in examples]
        metrics = ner_metrics(gold, tags)
        metrics["loss"] = token_loss(examples, features, logits, model.label2id)
        if all_decodings:
            t0 = time.time()
            metrics["decodings"] = decoding_scores(model, tokenizer, sentences, gold, max_length, features, logits)
            metrics["decodings_seconds"] = round(time.time() - t0, 2)  # not inference: a caller timing that subtracts it
        records = [
            {"tokens": list(ex["tokens"]), "tags": list(ex["tags"]), "pred": p, "score": [round(x, 4) for x in s]}
            for ex, p, s in zip(examples, tags, scores)
        ]
        return metrics, records

    labels = [model.id2label[i] for i in range(model.num_labels)]
    problem = model.config.problem_type
    if problem == "regression":
        values = [float(v[0]) for v in sequence_probabilities(model, tokenizer, examples, max_length, batch_size, progress)]
        metrics = regression_metrics([float(ex["label"]) for ex in examples], values)
        # the training loss: MSE on standardised targets, so dev and train losses share a scale
        std = float(getattr(model.config, "target_std", 1.0) or 1.0)
        metrics["loss"] = float(np.mean([((v - float(ex["label"])) / std) ** 2 for ex, v in zip(examples, values)])) \
            if values else 0.0
        records = [_record(ex, {"pred": round(v, 4)}) for ex, v in zip(examples, values)]
        return metrics, records
    if problem == "multi_label_classification":
        for n, ex in enumerate(examples):
            unknown = [lab for lab in ex["label"] if lab not in model.label2id]
            if unknown:
                raise DataError(f"example {n}: unknown label {unknown[0]!r} (model labels: {labels})")
        probs = sequence_probabilities(model, tokenizer, examples, max_length, batch_size, progress)
        preds = [labels_over_threshold(model.config, p) for p in probs]
        metrics = multilabel_metrics([list(ex["label"]) for ex in examples], [[x["label"] for x in p] for p in preds],
                                     labels)
        gold = np.array([[float(lab in ex["label"]) for lab in labels] for ex in examples])
        pr = np.clip(np.stack(probs), 1e-12, 1 - 1e-12)
        metrics["loss"] = float(-(gold * np.log(pr) + (1 - gold) * np.log(1 - pr)).mean())
        records = [
            _record(ex, {"pred": [x["label"] for x in p], "score": [round(x["score"], 4) for x in p]})
            for ex, p in zip(examples, preds)
        ]
        return metrics, records
    for n, ex in enumerate(examples):
        if ex["label"] not in model.label2id:
            raise DataError(f"example {n}: unknown label {ex['label']!r} (model labels: {labels})")
    probs = sequence_probabilities(model, tokenizer, examples, max_length, batch_size, progress)
    preds = [labels[int(p.argmax())] for p in probs]
    metrics = classification_metrics([ex["label"] for ex in examples], preds, labels)
    gold_ids = np.array([model.label2id[ex["label"]] for ex in examples])
    p = np.stack(probs) if probs else np.zeros((0, len(labels)))
    metrics["loss"] = float(-np.log(np.clip(p[np.arange(len(gold_ids)), gold_ids], 1e-12, None)).mean()) if len(p) else 0.0
    records = [_record(ex, {"pred": pr, "score": round(float(pp.max()), 4)}) for ex, pr, pp in zip(examples, preds, probs)]
    return metrics, records


def collapse_message(records: Sequence[dict]) -> str | None:
    """What to tell a user whose model answers the same on every dev example, or ``None``.

    A learning rate at the top of its useful range sometimes sends a run to the majority class (or, for
    NER, to no entity at all) in its first few dozen steps, and a dev score such as 55.8 does not say so;
    checkpoint selection then keeps the least bad collapsed state. Single-label sequence and token
    records only (:func:`evaluate_examples`); one example, or gold labels that are all one class, say nothing.
    """
    if len(records) < 2:
        return None
    if "tags" in records[0]:  # token records: no entity predicted while the gold has some
        if any(t != "O" for r in records for t in r["pred"]) or not any(t != "O" for r in records for t in r["tags"]):
            return None
        return "no entity predicted on any dev sentence"
    if not isinstance(records[0].get("label"), str) or not isinstance(records[0].get("pred"), str):
        return None  # regression and multi-label records
    preds = {r["pred"] for r in records}
    if len(preds) > 1 or len({r["label"] for r in records}) < 2:
        return None
    return f"every dev prediction is {next(iter(preds))!r}"


def _record(ex: dict, pred: dict) -> dict:
    """A per-example prediction record: the input (text, pair), the gold label, and what was predicted."""
    out = {"text": ex["text"]}
    if ex.get("text_pair") is not None:
        out["text_pair"] = ex["text_pair"]
    out["label"] = list(ex["label"]) if isinstance(ex["label"], list) else ex["label"]
    return {**out, **pred}
