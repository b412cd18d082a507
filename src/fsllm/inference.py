"""Batched inference, evaluation of a split, and the ``Predictor`` used by ``fsllm predict``.

Inference sorts inputs by length so each batch pads little, runs under
``torch.inference_mode``, and (in ``Predictor``) merges LoRA into the backbone
weights so a forward costs what the plain backbone costs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel
from tqdm.auto import tqdm

from .backbones import load_tokenizer
from .errors import DataError, FSLLMError, ModelFolderError
from .metrics import classification_metrics, multilabel_metrics, ner_metrics, regression_metrics
from .modeling import FSModel, load_model
from .run import MODEL_DIR, RunFolder
from .segmentation import segment
from .tokenization import (
    join_words,
    merge_window_predictions,
    pair_features,
    sequence_features,
    token_classification_features,
)

#: the best model's folder inside a training run folder (kept here for code that imports it from here)
RUN_MODEL_DIR = MODEL_DIR


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
    out: list[np.ndarray | None] = [None] * len(features)
    device = next(model.parameters()).device
    # Module.train()/eval() walk every submodule (~2,500 with LoRA on a 30-layer model, ~25 ms):
    # switch only when needed, since a served or predicting model is already in eval mode.
    was_training = model.training
    if was_training:
        model.eval()
    starts = range(0, len(order), batch_size)
    if progress:
        starts = tqdm(starts, desc=progress if isinstance(progress, str) else "predict", unit="batch", leave=False)
    with torch.inference_mode():
        for s in starts:
            idx = order[s : s + batch_size]
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


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def entities_from_tags(
    tags: Sequence[str], scores: Sequence[float], spans: Sequence[tuple[int, int]], text: str
) -> list[dict]:
    """Entity spans from word-level IOB2 tags, in the field names of transformers'
    token-classification pipeline (``aggregation_strategy="simple"``): ``entity_group``,
    ``score`` (mean over the entity's words), ``word``, ``start``, ``end``."""
    out: list[dict] = []
    cur: dict | None = None
    for tag, score, (s, e) in zip(tags, scores, spans):
        kind, _, typ = tag.partition("-")
        if kind in ("B", "I") and cur is not None and kind == "I" and cur["entity_group"] == typ:
            cur["end"] = e
            cur["_scores"].append(score)
            continue
        if cur is not None:
            out.append(cur)
            cur = None
        if kind in ("B", "I"):
            cur = {"entity_group": typ, "start": s, "end": e, "_scores": [score]}
    if cur is not None:
        out.append(cur)
    for ent in out:
        ent["score"] = float(np.mean(ent.pop("_scores")))
        ent["word"] = text[ent["start"] : ent["end"]]
    return [{k: ent[k] for k in ("entity_group", "score", "word", "start", "end")} for ent in out]


def predict_word_tags(
    model: FSModel,
    tokenizer,
    sentences: Sequence[Sequence[str]],
    max_length: int = 128,
    batch_size: int = 64,
    progress: bool | str = False,
) -> tuple[list[list[str]], list[list[float]], list[np.ndarray]]:
    """Word-level tags and scores for tokenised sentences (windows merged), plus per-feature logits."""
    feats, owner = [], []
    for n, words in enumerate(sentences):
        for f in token_classification_features(list(words), None, tokenizer, None, max_length):
            feats.append(f)
            owner.append(n)
    logits = batched_logits(model, feats, batch_size, tokenizer.pad_token_id or 0, progress)
    per_sentence: list[list] = [[] for _ in sentences]
    for f, lg, n in zip(feats, logits, owner):
        probs = _softmax(lg)
        preds = [(int(p.argmax()), float(p.max())) for p in probs]
        per_sentence[n].append((f["word_ids"], f["first"], preds))
    tags, scores = [], []
    for n, words in enumerate(sentences):
        merged = merge_window_predictions(len(words), per_sentence[n])
        tags.append([model.id2label[p[0]] for p in merged])
        scores.append([p[1] for p in merged])
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


def evaluate_examples(
    model: FSModel,
    tokenizer,
    examples: Sequence[dict],
    max_length: int,
    batch_size: int = 64,
    progress: bool | str = False,
) -> tuple[dict, list[dict]]:
    """Metrics and per-example predictions of ``model`` on labelled examples.

    Token examples are ``{"tokens", "tags"}`` and are scored at the word level with
    strict IOB2 span F1; sequence examples are ``{"text", "label"}``. A gold label
    the model does not know is an error (it would silently count as wrong).
    """
    if model.task == "token":
        for n, ex in enumerate(examples):
            for t in ex["tags"]:
                if t not in model.label2id:
                    raise DataError(f"example {n}: unknown label {t!r} (model labels: {sorted(model.label2id)})")
        sentences = [ex["tokens"] for ex in examples]
        tags, scores, _ = predict_word_tags(model, tokenizer, sentences, max_length, batch_size, progress)
        metrics = ner_metrics([list(ex["tags"]) for ex in examples], tags)
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


def _record(ex: dict, pred: dict) -> dict:
    """A per-example prediction record: the input (text, pair), the gold label, and what was predicted."""
    out = {"text": ex["text"]}
    if ex.get("text_pair") is not None:
        out["text_pair"] = ex["text_pair"]
    out["label"] = list(ex["label"]) if isinstance(ex["label"], list) else ex["label"]
    return {**out, **pred}


class Predictor:
    """Load a trained model (a run folder or a saved model folder) and predict raw texts.

    >>> p = Predictor.from_pretrained("runs/conll2003")        # doctest: +SKIP
    >>> p.predict(["John lives in Paris."])                      # doctest: +SKIP
    [[{'entity_group': 'PER', 'score': 0.98, 'word': 'John', 'start': 0, 'end': 4}, ...]]
    """

    def __init__(self, model: FSModel, tokenizer, max_length: int = 256, batch_size: int = 64, merge: bool = True):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        if merge and isinstance(model.backbone, PeftModel):
            # Inference only: fold LoRA into the weights so a forward is one matmul per projection.
            model.backbone.merge_adapter()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs: Any) -> Predictor:
        path = Path(path)
        run = RunFolder(path)
        model_dir = run.model_dir if run.has_model() else path
        model = load_model(model_dir)
        try:
            tokenizer = load_tokenizer(str(model_dir)) if (model_dir / "tokenizer_config.json").is_file() else load_tokenizer(model.backbone_ref)
        except OSError as e:
            raise ModelFolderError(f"{model_dir}: cannot load the tokenizer: {e}".splitlines()[0]) from e
        # a run folder's config.json is its TrainConfig (the model folder's own holds no max_length)
        saved = run.load_config().max_length if model_dir != path and run.config_path.is_file() else None
        max_length = kwargs.pop("max_length", None) or saved or 256
        return cls(model, tokenizer, max_length=max_length, **kwargs)

    @property
    def task(self) -> str:
        return self.model.task

    def predict(
        self,
        texts: Iterable[str] | None = None,
        progress: bool | str = False,
        *,
        words: Iterable[Sequence[str]] | None = None,
        text_pairs: Iterable[str] | None = None,
    ) -> list:
        """Sequence tasks: ``{"label", "score"}`` per text (multi-label: ``{"labels": [...]}``, regression:
        ``{"value"}``, see :meth:`result_of`). Token tasks: a list of entity spans per text.

        Pair models take ``text_pairs=`` (one second text per text) or ``texts`` as ``(text, text_pair)``
        tuples.

        Raw texts are cut into words by :func:`fsllm.segmentation.segment` (Penn Treebank-style,
        Unicode-aware; the model reads each word's normalised ``form``, the spans point into the
        original text). ``words=`` (token tasks only, instead of ``texts``) takes sentences that are
        already split, e.g. by a dictionary segmenter or from a CoNLL file; each result is then
        ``{"tokens", "tags", "scores", "entities"}`` with the entities' offsets into
        ``" ".join(tokens)``, the text the model reads.
        """
        if words is not None:
            if texts is not None or text_pairs is not None:
                raise FSLLMError("give either texts or words=, not both")
            return self._predict_words(words, progress)
        if texts is None:
            raise FSLLMError("no texts given")
        texts = list(texts)
        if text_pairs is not None:
            text_pairs = list(text_pairs)
            if len(text_pairs) != len(texts):
                raise DataError(f"{len(texts)} texts but {len(text_pairs)} text_pairs")
        elif texts and all(isinstance(t, (tuple, list)) for t in texts):
            bad = next((n for n, t in enumerate(texts) if len(t) != 2), None)
            if bad is not None:
                raise DataError(f"input {bad + 1}: a pair is (text, text_pair), got {len(texts[bad])} items")
            texts, text_pairs = [t[0] for t in texts], [t[1] for t in texts]
        for n, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise DataError(f"input {n + 1}: empty text")
        for n, t in enumerate(text_pairs or []):
            if not isinstance(t, str) or not t.strip():
                raise DataError(f"input {n + 1}: empty text_pair")
        if text_pairs is not None and self.task == "token":
            raise FSLLMError("text pairs apply to sequence models; this is a token-classification (NER) model")
        if self.task == "token":
            split = [segment(t) for t in texts]
            for n, (t, ws) in enumerate(zip(texts, split)):
                if not ws:
                    raise DataError(f"input {n + 1}: no words in {t[:40]!r} (only invisible or control characters)")
            tags, scores, _ = predict_word_tags(
                self.model, self.tokenizer, [[w.form for w in ws] for ws in split], self.max_length, self.batch_size,
                progress,
            )
            return [
                entities_from_tags(tg, sc, [(w.start, w.end) for w in ws], t)
                for tg, sc, ws, t in zip(tags, scores, split, texts)
            ]
        examples = [{"text": t} if text_pairs is None else {"text": t, "text_pair": b}
                    for t, b in zip(texts, text_pairs or texts)]
        probs = sequence_probabilities(self.model, self.tokenizer, examples, self.max_length, self.batch_size, progress)
        return [self.result_of(p) for p in probs]

    def result_of(self, scores: np.ndarray) -> dict:
        """One sequence prediction from :func:`scores_of`: ``{"label", "score"}`` (single label),
        ``{"labels": [{"label", "score"}, ...]}`` (multi-label: every label over its threshold, best
        first, possibly none) or ``{"value"}`` (regression, in the data's units)."""
        config = self.model.config
        if config.problem_type == "regression":
            return {"value": float(scores[0])}
        if config.problem_type == "multi_label_classification":
            return {"labels": labels_over_threshold(config, scores)}
        return {"label": self.model.id2label[int(scores.argmax())], "score": float(scores.max())}


    def _predict_words(self, words: Iterable[Sequence[str]], progress: bool | str) -> list[dict]:
        """Tags for pre-split sentences (see :meth:`predict`); bad input is a DataError naming the sentence."""
        if self.task != "token":
            raise FSLLMError("words= (pre-split input) applies to token-classification (NER) models only")
        sentences = [list(ws) if not isinstance(ws, str) else None for ws in words]
        for n, ws in enumerate(sentences):
            if not ws:
                raise DataError(f"input {n + 1}: expected a non-empty list of words")
            for k, w in enumerate(ws):
                if not isinstance(w, str) or not w.strip():
                    raise DataError(f"input {n + 1}: word {k + 1} is {w!r}; words must be non-empty strings")
        tags, scores, _ = predict_word_tags(
            self.model, self.tokenizer, sentences, self.max_length, self.batch_size, progress
        )
        out = []
        for ws, tg, sc in zip(sentences, tags, scores):
            text, spans = join_words(ws)
            out.append({"tokens": ws, "tags": tg, "scores": [round(x, 4) for x in sc],
                        "entities": entities_from_tags(tg, sc, spans, text)})
        return out

