"""Evaluation metrics for sequence classification and NER (token classification).

Both functions are pure: they take label *strings* and return a dict of plain Python
``float``/``int``/``str``/``list``/``dict`` values, ready for ``json.dump``.

* :func:`classification_metrics` -- accuracy, macro and micro P/R/F1, per-label scores
  and a confusion matrix (scikit-learn, ``zero_division=0``).
* :func:`ner_metrics` -- entity-level (span) P/R/F1 with seqeval in strict IOB2 mode
  (an entity counts only if its span *and* type match exactly, and a span must open with
  ``B-``: a stray ``I-PER`` is not an entity), per-type scores, token accuracy and a
  token-level confusion matrix over entity types.

:func:`primary_metric` names the number used for model selection and reporting
(``"accuracy"`` for sequence tasks, ``"f1"`` for token tasks); :data:`METRIC_NAMES` lists the
scalar keys each function returns.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

__all__ = [
    "METRIC_NAMES",
    "LOWER_IS_BETTER",
    "classification_metrics",
    "multilabel_metrics",
    "ner_metrics",
    "primary_metric",
    "regression_metrics",
]

#: Scalar (float) keys of the dicts returned for each task; the non-scalar keys
#: (``per_label``/``per_type``, ``confusion_matrix``, ...) are not listed.
METRIC_NAMES: dict[str, tuple[str, ...]] = {
    "sequence": (
        "accuracy",
        "macro_precision",
        "macro_recall",
        "macro_f1",
        "micro_precision",
        "micro_recall",
        "micro_f1",
    ),
    "token": (
        "precision",
        "recall",
        "f1",
        "macro_precision",
        "macro_recall",
        "macro_f1",
        "token_accuracy",
    ),
}

METRIC_NAMES["multi_label"] = (
    "micro_precision", "micro_recall", "micro_f1", "macro_precision", "macro_recall", "macro_f1",
    "samples_precision", "samples_recall", "samples_f1", "subset_accuracy",
)  # fmt: skip
METRIC_NAMES["regression"] = ("pearson", "spearman", "rmse", "mae")

_PRIMARY = {"sequence": "accuracy", "token": "f1"}
_PRIMARY_OF_PROBLEM = {"multi_label_classification": "micro_f1", "regression": "spearman"}
#: metrics for which a smaller value is better (checkpoint selection must know)
LOWER_IS_BETTER = frozenset({"rmse", "mae", "loss"})


def primary_metric(task: str, problem_type: str | None = None) -> str:
    """The headline metric of a task: ``"accuracy"`` for ``"sequence"``, ``"f1"`` (entity-level
    micro F1) for ``"token"``; for sequence models with a ``problem_type``, ``"micro_f1"``
    (multi-label) or ``"spearman"`` (regression: rank agreement does not depend on the scale the
    model happens to predict in). Raises ``ValueError`` for any other task name."""
    if task == "sequence" and problem_type in _PRIMARY_OF_PROBLEM:
        return _PRIMARY_OF_PROBLEM[problem_type]
    try:
        return _PRIMARY[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}: expected one of {sorted(_PRIMARY)}") from None


# --------------------------------------------------------------------------- multi-label


def multilabel_metrics(y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]], labels: Sequence[str]) -> dict:
    """Metrics of multi-label classification: each example has a *set* of gold and predicted labels.

    Returns ``micro_*`` (over every (example, label) decision), ``macro_*`` (the unweighted mean over
    ``labels``), ``samples_*`` (per example, then averaged; an example with no gold and no predicted
    label counts as perfect, as scikit-learn's ``zero_division=1`` there would not for the others, so
    that choice is made here explicitly), ``subset_accuracy`` (the predicted set equals the gold set),
    ``per_label`` (``{label: {"precision", "recall", "f1", "support"}}``), ``labels`` and
    ``n_examples``. Labels outside ``labels`` are a ``ValueError``.
    """
    labels = [str(x) for x in labels]
    index = {lab: k for k, lab in enumerate(labels)}
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} examples but y_pred has {len(y_pred)}")
    if not y_true:
        raise ValueError("no examples to evaluate")
    for name, ys in (("y_true", y_true), ("y_pred", y_pred)):
        for i, y in enumerate(ys):
            bad = [v for v in y if str(v) not in index]
            if bad:
                raise ValueError(f"{name}[{i}] has {bad[0]!r}, not one of the labels {labels}")
    sets = [({str(v) for v in t}, {str(v) for v in p}) for t, p in zip(y_true, y_pred)]
    tp = [0] * len(labels)
    fp = [0] * len(labels)
    fn = [0] * len(labels)
    for t, p in sets:
        for lab in t & p:
            tp[index[lab]] += 1
        for lab in p - t:
            fp[index[lab]] += 1
        for lab in t - p:
            fn[index[lab]] += 1

    def prf(a: int, b: int, c: int) -> tuple[float, float, float]:
        pr = a / (a + b) if a + b else 0.0
        rc = a / (a + c) if a + c else 0.0
        return pr, rc, (2 * pr * rc / (pr + rc) if pr + rc else 0.0)

    out: dict = {}
    out["micro_precision"], out["micro_recall"], out["micro_f1"] = prf(sum(tp), sum(fp), sum(fn))
    per = {lab: prf(tp[k], fp[k], fn[k]) for k, lab in enumerate(labels)}
    for j, key in enumerate(("precision", "recall", "f1")):
        out[f"macro_{key}"] = sum(v[j] for v in per.values()) / len(labels) if labels else 0.0
    samples = []
    for t, p in sets:
        samples.append((1.0, 1.0, 1.0) if not t and not p else prf(len(t & p), len(p - t), len(t - p)))
    for j, key in enumerate(("precision", "recall", "f1")):
        out[f"samples_{key}"] = sum(v[j] for v in samples) / len(samples)
    out["subset_accuracy"] = sum(t == p for t, p in sets) / len(sets)
    out["per_label"] = {
        lab: {"precision": per[lab][0], "recall": per[lab][1], "f1": per[lab][2], "support": tp[k] + fn[k]}
        for k, lab in enumerate(labels)
    }
    out["labels"] = labels
    out["n_examples"] = len(sets)
    return out


# --------------------------------------------------------------------------- regression


def regression_metrics(y_true: Sequence[float], y_pred: Sequence[float]) -> dict:
    """``pearson``, ``spearman`` (0.0 when either side is constant: undefined, and no signal),
    ``rmse``, ``mae`` and ``n_examples`` of numeric predictions."""
    import numpy as np
    from scipy.stats import pearsonr, spearmanr

    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} values but y_pred has {p.size}")
    if not t.size:
        raise ValueError("no examples to evaluate")
    if not (np.isfinite(t).all() and np.isfinite(p).all()):
        raise ValueError("non-finite value among the targets or predictions")
    varied = t.size > 1 and np.ptp(t) > 0 and np.ptp(p) > 0
    return {
        "pearson": float(pearsonr(t, p)[0]) if varied else 0.0,
        "spearman": float(spearmanr(t, p)[0]) if varied else 0.0,
        "rmse": float(np.sqrt(np.mean((t - p) ** 2))),
        "mae": float(np.mean(np.abs(t - p))),
        "n_examples": int(t.size),
    }


# --------------------------------------------------------------------------- classification


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> dict:
    """Metrics of single-label classification.

    ``labels`` fixes the label set and the order of ``per_label`` and of the confusion matrix;
    every gold and predicted label must be one of them (``ValueError`` otherwise, also for
    different lengths, no examples or duplicate labels).

    Returns a dict with
      ``accuracy``; ``macro_precision``/``macro_recall``/``macro_f1`` (unweighted means of the
      per-label scores over all of ``labels``, as scikit-learn's ``average="macro"``: macro F1 is
      the mean of the per-label F1s); ``micro_precision``/``micro_recall``/``micro_f1`` (equal to
      the accuracy since every prediction is one of ``labels``); ``per_label``:
      ``{label: {"precision", "recall", "f1", "support"}}``; ``confusion_matrix``: list of
      lists of ints, row = true label, column = predicted label, both in ``labels`` order;
      ``labels``: the label list; ``n_examples``.
    Undefined ratios (a label never predicted / never gold) are 0.
    """
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
    )

    y_true = [str(y) for y in y_true]
    y_pred = [str(y) for y in y_pred]
    labels = [str(label) for label in labels]
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} labels but y_pred has {len(y_pred)}")
    if not y_true:
        raise ValueError("no examples to evaluate")
    if not labels:
        raise ValueError("labels is empty")
    if len(set(labels)) != len(labels):
        dup = sorted({x for x in labels if labels.count(x) > 1})
        raise ValueError(f"duplicate labels: {dup}")
    known = set(labels)
    for name, ys in (("y_true", y_true), ("y_pred", y_pred)):
        for i, y in enumerate(ys):
            if y not in known:
                raise ValueError(f"{name}[{i}] = {y!r} is not one of the labels {labels}")

    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None, zero_division=0)
    out: dict = {"accuracy": float(accuracy_score(y_true, y_pred))}
    for avg in ("macro", "micro"):
        ap, ar, af, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=avg, zero_division=0)
        out[f"{avg}_precision"] = float(ap)
        out[f"{avg}_recall"] = float(ar)
        out[f"{avg}_f1"] = float(af)
    out["per_label"] = {
        label: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, label in enumerate(labels)
    }
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    out["confusion_matrix"] = [[int(v) for v in row] for row in cm]
    out["labels"] = list(labels)
    out["n_examples"] = len(y_true)
    return out


# --------------------------------------------------------------------------- NER


def _check_tags(seqs: list[list[str]], name: str) -> None:
    """Every tag must be ``O``, ``B-<type>`` or ``I-<type>`` (IOB2); seqeval would otherwise fail
    with a bare ``KeyError``."""
    for i, seq in enumerate(seqs):
        for j, tag in enumerate(seq):
            if tag == "O":
                continue
            if len(tag) > 2 and tag[:2] in ("B-", "I-"):
                continue
            raise ValueError(
                f"{name} sentence {i}, token {j}: tag {tag!r} is not IOB2 (expected 'O', 'B-<type>' or 'I-<type>')"
            )


def _tag_type(tag: str) -> str:
    return "O" if tag == "O" else tag[2:]


def ner_metrics(y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]]) -> dict:
    """Entity-level NER metrics (seqeval, ``mode="strict"``, ``scheme=IOB2``).

    ``y_true``/``y_pred`` are lists of sentences, each a list of IOB2 tags (``O``, ``B-X``,
    ``I-X``). Raises ``ValueError`` if the numbers of sentences differ, if a sentence's gold and
    predicted lengths differ (the message names the sentence index), if a tag is not IOB2, or if
    there are no sentences.

    In strict mode an entity is a maximal ``B-X I-X*`` run; an ``I-X`` not preceded by ``B-X``/
    ``I-X`` starts nothing, and ``B-PER I-LOC`` yields the entity ``PER`` over the first token
    only. A predicted entity is correct only if its type and exact span match a gold entity.

    Returns a dict with
      ``precision``/``recall``/``f1``: micro averages over entities (the usual CoNLL numbers);
      ``macro_precision``/``macro_recall``/``macro_f1``: unweighted means over entity types;
      ``per_type``: ``{type: {"precision", "recall", "f1", "support"}}`` over every type seen in
      gold or predictions (support = number of gold entities; a type only predicted has support
      0); ``token_accuracy``: fraction of tokens whose predicted tag equals the gold tag (0.0 if
      there are no tokens); ``confusion_matrix``/``confusion_labels``: token-level confusion over
      entity types with the ``B-``/``I-`` prefixes dropped (labels ``["O", *sorted types]``, the
      types being those in any tag, stray ``I-`` ones included; row = gold, column = predicted);
      ``n_sentences``, ``n_tokens``, ``n_true_entities``, ``n_pred_entities``,
      ``n_correct_entities``.
    Undefined ratios (no gold or no predicted entities) are 0.
    """
    from seqeval.metrics.v1 import precision_recall_fscore_support
    from seqeval.scheme import IOB2, Entities

    y_true = [[str(t) for t in seq] for seq in y_true]
    y_pred = [[str(t) for t in seq] for seq in y_pred]
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} sentences but y_pred has {len(y_pred)}")
    if not y_true:
        raise ValueError("no sentences to evaluate")
    for i, (t, p) in enumerate(zip(y_true, y_pred)):
        if len(t) != len(p):
            raise ValueError(f"sentence {i}: {len(t)} gold tags but {len(p)} predicted tags")
    _check_tags(y_true, "y_true")
    _check_tags(y_pred, "y_pred")

    ent_true = Entities(y_true, IOB2)
    ent_pred = Entities(y_pred, IOB2)
    types = sorted(ent_true.unique_tags | ent_pred.unique_tags)
    set_true = {e.to_tuple() for sent in ent_true.entities for e in sent}
    set_pred = {e.to_tuple() for sent in ent_pred.entities for e in sent}

    out: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kw = dict(zero_division=0, scheme=IOB2, entities_true=ent_true, entities_pred=ent_pred)
        mp, mr, mf, _ = precision_recall_fscore_support(y_true, y_pred, average="micro", **kw)
        if types:
            p, r, f, s = precision_recall_fscore_support(y_true, y_pred, average=None, **kw)
        else:
            p = r = f = s = []
    out["precision"] = float(mp)
    out["recall"] = float(mr)
    out["f1"] = float(mf)
    per_type = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, name in enumerate(types)
    }
    n = len(types)
    out["macro_precision"] = sum(v["precision"] for v in per_type.values()) / n if n else 0.0
    out["macro_recall"] = sum(v["recall"] for v in per_type.values()) / n if n else 0.0
    out["macro_f1"] = sum(v["f1"] for v in per_type.values()) / n if n else 0.0
    out["per_type"] = per_type

    n_tokens = sum(len(seq) for seq in y_true)
    n_equal = sum(a == b for t, pr in zip(y_true, y_pred) for a, b in zip(t, pr))
    out["token_accuracy"] = n_equal / n_tokens if n_tokens else 0.0

    # token-level types include those seen only in stray I- tags (not entities in strict mode)
    token_types = {_tag_type(tag) for seqs in (y_true, y_pred) for seq in seqs for tag in seq} - {"O"}
    cm_labels = ["O", *sorted(token_types)]
    index = {name: k for k, name in enumerate(cm_labels)}
    cm = [[0] * len(cm_labels) for _ in cm_labels]
    for t, pr in zip(y_true, y_pred):
        for a, b in zip(t, pr):
            cm[index[_tag_type(a)]][index[_tag_type(b)]] += 1
    out["confusion_matrix"] = cm
    out["confusion_labels"] = cm_labels

    out["n_sentences"] = len(y_true)
    out["n_tokens"] = n_tokens
    out["n_true_entities"] = len(set_true)
    out["n_pred_entities"] = len(set_pred)
    out["n_correct_entities"] = len(set_true & set_pred)
    return out
