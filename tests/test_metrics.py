"""Metrics: hand-computed expectations, plus cross-checks against seqeval / scikit-learn."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from seqeval.metrics import classification_report as seqeval_report
from seqeval.metrics import f1_score as seqeval_f1
from seqeval.metrics import precision_score as seqeval_precision
from seqeval.scheme import IOB2
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from fsllm.metrics import (
    METRIC_NAMES,
    classification_metrics,
    multilabel_metrics,
    ner_metrics,
    primary_metric,
    regression_metrics,
)

approx = pytest.approx


def _all_plain(obj) -> bool:
    """Only built-in JSON types (no numpy scalars) anywhere in ``obj``."""
    if isinstance(obj, dict):
        return all(type(k) is str and _all_plain(v) for k, v in obj.items())
    if isinstance(obj, list):
        return all(_all_plain(v) for v in obj)
    return type(obj) in (str, int, float, bool) or obj is None


# --------------------------------------------------------------------------- classification

# 6 examples, 3 labels.
#   true: a a a b b c
#   pred: a a b b c c        correct at 0, 1, 3, 5 -> accuracy 4/6
# confusion (rows true a,b,c; cols pred a,b,c): [[2,1,0],[0,1,1],[0,0,1]]
# a: TP 2, predicted 2, gold 3 -> P 1,   R 2/3, F1 2*(2/3)/(5/3) = 0.8
# b: TP 1, predicted 2, gold 2 -> P 1/2, R 1/2, F1 1/2
# c: TP 1, predicted 2, gold 1 -> P 1/2, R 1,   F1 2*(1/2)/(3/2) = 2/3
# macro P = (1 + 1/2 + 1/2)/3 = 2/3; macro R = (2/3 + 1/2 + 1)/3 = 13/18
# macro F1 = (0.8 + 0.5 + 2/3)/3 = 59/90; micro P = R = F1 = accuracy = 2/3
Y_TRUE = ["a", "a", "a", "b", "b", "c"]
Y_PRED = ["a", "a", "b", "b", "c", "c"]


def test_classification_hand_computed():
    m = classification_metrics(Y_TRUE, Y_PRED, ["a", "b", "c"])
    assert m["accuracy"] == approx(2 / 3)
    assert m["macro_precision"] == approx(2 / 3)
    assert m["macro_recall"] == approx(13 / 18)
    assert m["macro_f1"] == approx(59 / 90)
    assert m["micro_precision"] == approx(2 / 3)
    assert m["micro_recall"] == approx(2 / 3)
    assert m["micro_f1"] == approx(2 / 3)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["labels"] == ["a", "b", "c"]
    assert m["n_examples"] == 6
    assert m["per_label"]["a"] == approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert m["per_label"]["b"] == approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert m["per_label"]["c"] == approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert list(m["per_label"]) == ["a", "b", "c"]
    assert _all_plain(m)
    json.dumps(m)


def test_classification_label_order_and_unused_label():
    # label order drives the confusion matrix; an unused label "d" scores 0 (zero_division=0)
    # and counts in the macro averages: macro F1 = (0.8 + 0.5 + 2/3 + 0)/4 = 59/120
    m = classification_metrics(Y_TRUE, Y_PRED, ["c", "d", "b", "a"])
    assert m["confusion_matrix"] == [[1, 0, 0, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 1, 2]]
    assert m["per_label"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["macro_f1"] == approx(59 / 120)
    assert m["accuracy"] == approx(2 / 3)
    assert m["micro_f1"] == approx(2 / 3)


@pytest.mark.parametrize(
    "y_true, y_pred, labels, match",
    [
        (["a"], ["a", "b"], ["a", "b"], "1 labels but y_pred has 2"),
        ([], [], ["a"], "no examples"),
        (["a", "z"], ["a", "a"], ["a", "b"], r"y_true\[1\] = 'z'"),
        (["a"], ["q"], ["a", "b"], r"y_pred\[0\] = 'q'"),
        (["a"], ["a"], ["a", "a"], "duplicate"),
        (["a"], ["a"], [], "empty"),
    ],
)
def test_classification_bad_input(y_true, y_pred, labels, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(y_true, y_pred, labels)


def test_classification_agrees_with_sklearn():
    rng = random.Random(1234)
    labels = ["neg", "neu", "pos", "mixed", "other"]
    y_true = [rng.choice(labels) for _ in range(200)]
    y_pred = [t if rng.random() < 0.55 else rng.choice(labels) for t in y_true]
    m = classification_metrics(y_true, y_pred, labels)
    assert m["accuracy"] == approx(accuracy_score(y_true, y_pred))
    for avg in ("macro", "micro"):
        kw = dict(labels=labels, average=avg, zero_division=0)
        assert m[f"{avg}_f1"] == approx(f1_score(y_true, y_pred, **kw))
        assert m[f"{avg}_precision"] == approx(precision_score(y_true, y_pred, **kw))
        assert m[f"{avg}_recall"] == approx(recall_score(y_true, y_pred, **kw))
    per = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    assert [m["per_label"][lab]["f1"] for lab in labels] == approx(list(per))
    assert sum(map(sum, m["confusion_matrix"])) == 200
    assert sum(m["confusion_matrix"][i][i] for i in range(5)) == sum(t == p for t, p in zip(y_true, y_pred))


# --------------------------------------------------------------------------- NER


def test_ner_wrong_type_half_right():
    # gold entities: PER(0..1), LOC(3); predicted: PER(0..1), ORG(3) -> 1 of 2 right both ways
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"]]
    m = ner_metrics(gold, pred)
    assert (m["precision"], m["recall"], m["f1"]) == approx((0.5, 0.5, 0.5))
    assert m["per_type"] == {
        "LOC": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1},
        "ORG": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0},
        "PER": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1},
    }
    assert m["macro_f1"] == approx(1 / 3)  # mean of LOC 0, ORG 0, PER 1
    assert m["token_accuracy"] == approx(3 / 4)
    assert m["confusion_labels"] == ["O", "LOC", "ORG", "PER"]
    #                           pred:  O  LOC ORG PER
    assert m["confusion_matrix"] == [[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 2]]
    assert (m["n_true_entities"], m["n_pred_entities"], m["n_correct_entities"]) == (2, 2, 1)
    assert (m["n_sentences"], m["n_tokens"]) == (1, 4)
    assert _all_plain(m)
    json.dumps(m)


def test_ner_strict_stray_inside_tag_is_not_an_entity():
    gold = [["B-PER", "I-PER", "O"]]
    pred = [["I-PER", "I-PER", "O"]]
    # strict IOB2: the prediction has no entity at all -> P = 0 (0/0 -> 0), R = 0/1, F1 = 0
    m = ner_metrics(gold, pred)
    assert (m["precision"], m["recall"], m["f1"]) == (0.0, 0.0, 0.0)
    assert m["n_pred_entities"] == 0
    assert m["per_type"]["PER"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["token_accuracy"] == approx(2 / 3)
    # seqeval's default (conlleval-like) mode reads I-PER I-PER as PER(0..1): a perfect match
    assert seqeval_f1(gold, pred) == approx(1.0)


def test_ner_strict_broken_span():
    gold = [["B-PER", "I-PER", "O", "B-LOC", "I-LOC"]]
    pred = [["B-PER", "I-LOC", "O", "B-LOC", "I-LOC"]]
    # strict: predicted entities PER(0) and LOC(3..4) (the stray I-LOC starts nothing);
    # gold PER(0..1), LOC(3..4) -> 1 correct of 2 predicted, 2 gold: P = R = F1 = 1/2
    m = ner_metrics(gold, pred)
    assert (m["precision"], m["recall"], m["f1"]) == approx((0.5, 0.5, 0.5))
    assert m["per_type"]["PER"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["per_type"]["LOC"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert (m["n_true_entities"], m["n_pred_entities"], m["n_correct_entities"]) == (2, 2, 1)
    # default mode also counts LOC(1) -> 3 predicted: P = 1/3, R = 1/2, F1 = 2*(1/6)/(5/6) = 0.4
    assert seqeval_precision(gold, pred) == approx(1 / 3)
    assert seqeval_f1(gold, pred) == approx(0.4)
    # token level: I-LOC at position 1 is gold PER, predicted LOC
    labels = m["confusion_labels"]
    assert labels == ["O", "LOC", "PER"]
    assert m["confusion_matrix"][labels.index("PER")][labels.index("LOC")] == 1


def test_ner_stray_type_only_in_token_confusion():
    # "MISC" appears only as a stray I- tag: no entity type, but a confusion-matrix label
    m = ner_metrics([["B-PER", "O"]], [["B-PER", "I-MISC"]])
    assert list(m["per_type"]) == ["PER"]
    assert (m["precision"], m["recall"], m["f1"]) == (1.0, 1.0, 1.0)
    assert m["confusion_labels"] == ["O", "MISC", "PER"]
    assert m["confusion_matrix"] == [[0, 1, 0], [0, 0, 0], [0, 0, 1]]
    assert m["token_accuracy"] == 0.5


def test_ner_entities_are_per_sentence():
    # same positions in different sentences do not match
    m = ner_metrics([["B-PER", "O"], ["O", "O"]], [["O", "O"], ["B-PER", "O"]])
    assert (m["precision"], m["recall"], m["f1"]) == (0.0, 0.0, 0.0)
    # 2 gold, 1 predicted and right: P = 1, R = 1/2, F1 = 2/3
    m = ner_metrics([["B-PER"], ["B-PER"]], [["B-PER"], ["O"]])
    assert (m["precision"], m["recall"], m["f1"]) == approx((1.0, 0.5, 2 / 3))
    # an I- at the start of the next sentence does not continue the previous entity
    m = ner_metrics([["B-PER"], ["I-PER"]], [["B-PER"], ["I-PER"]])
    assert m["n_true_entities"] == 1 and m["f1"] == 1.0


def test_ner_no_entities_anywhere():
    m = ner_metrics([["O", "O"], []], [["O", "O"], []])
    assert (m["precision"], m["recall"], m["f1"]) == (0.0, 0.0, 0.0)
    assert (m["macro_precision"], m["macro_recall"], m["macro_f1"]) == (0.0, 0.0, 0.0)
    assert m["per_type"] == {}
    assert m["token_accuracy"] == 1.0
    assert m["confusion_labels"] == ["O"] and m["confusion_matrix"] == [[2]]


def test_ner_length_mismatch_names_sentence():
    gold = [["O"], ["B-PER", "O"], ["O"]]
    pred = [["O"], ["B-PER"], ["O"]]
    with pytest.raises(ValueError, match="sentence 1: 2 gold tags but 1 predicted"):
        ner_metrics(gold, pred)
    with pytest.raises(ValueError, match="3 sentences but y_pred has 2"):
        ner_metrics(gold, pred[:2])
    with pytest.raises(ValueError, match="no sentences"):
        ner_metrics([], [])


@pytest.mark.parametrize("bad", ["PER", "E-PER", "B-", "b-per", "X"])
def test_ner_rejects_non_iob2_tags(bad):
    with pytest.raises(ValueError, match="sentence 0, token 1"):
        ner_metrics([["O", "O"]], [["O", bad]])


def _random_tags(rng: random.Random, n: int) -> list[str]:
    tags = []
    for _ in range(n):
        r = rng.random()
        if r < 0.55:
            tags.append("O")
        else:
            tags.append(("B-" if r < 0.8 else "I-") + rng.choice(["PER", "LOC", "ORG", "MISC"]))
    return tags


def test_ner_agrees_with_seqeval_strict_report():
    rng = random.Random(7)
    gold, pred = [], []
    for _ in range(60):
        n = rng.randint(0, 12)
        g = _random_tags(rng, n)
        # mostly copy gold, sometimes corrupt a tag
        p = [t if rng.random() < 0.7 else _random_tags(rng, 1)[0] for t in g]
        gold.append(g)
        pred.append(p)
    m = ner_metrics(gold, pred)
    ref = seqeval_report(gold, pred, mode="strict", scheme=IOB2, output_dict=True, zero_division=0)
    assert m["precision"] == approx(float(ref["micro avg"]["precision"]))
    assert m["recall"] == approx(float(ref["micro avg"]["recall"]))
    assert m["f1"] == approx(float(ref["micro avg"]["f1-score"]))
    assert m["macro_f1"] == approx(float(ref["macro avg"]["f1-score"]))
    types = {k for k in ref if not k.endswith(" avg")}
    assert set(m["per_type"]) == types
    for t in types:
        got = m["per_type"][t]
        assert got["f1"] == approx(float(ref[t]["f1-score"]))
        assert got["precision"] == approx(float(ref[t]["precision"]))
        assert got["recall"] == approx(float(ref[t]["recall"]))
        assert got["support"] == int(ref[t]["support"])
    flat_g = [t for s in gold for t in s]
    flat_p = [t for s in pred for t in s]
    assert m["token_accuracy"] == approx(accuracy_score(flat_g, flat_p))
    assert sum(map(sum, m["confusion_matrix"])) == len(flat_g)
    assert 0.2 < m["f1"] < 0.95  # the case is neither trivial nor hopeless


# --------------------------------------------------------------------------- names


def test_primary_metric_and_names():
    assert primary_metric("sequence") == "accuracy"
    assert primary_metric("token") == "f1"
    with pytest.raises(ValueError, match="unknown task"):
        primary_metric("span")
    cls = classification_metrics(["a", "b"], ["a", "a"], ["a", "b"])
    ner = ner_metrics([["B-X", "O"]], [["B-X", "O"]])
    for task, result in (("sequence", cls), ("token", ner)):
        assert primary_metric(task) in METRIC_NAMES[task]
        for name in METRIC_NAMES[task]:
            assert type(result[name]) is float


# --------------------------------------------------------------------------- multi-label and regression


def test_multilabel_metrics_by_hand():
    gold = [["a", "b"], ["a"], [], ["c"]]
    pred = [["a"], ["a", "c"], [], ["c"]]
    m = multilabel_metrics(gold, pred, ["a", "b", "c"])
    # decisions: tp a=2, c=1; fp c=1; fn b=1 -> micro P 3/4, R 3/4
    assert m["micro_precision"] == pytest.approx(0.75) and m["micro_recall"] == pytest.approx(0.75)
    assert m["micro_f1"] == pytest.approx(0.75)
    # per label: a (1, 1, 1), b (0, 0, 0), c (P 1/2, R 1, F 2/3)
    assert m["per_label"]["c"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}
    assert m["macro_f1"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    # samples: F1 2/3, 2/3, 1 (nothing gold, nothing predicted), 1
    assert m["samples_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1 + 1) / 4)
    assert m["subset_accuracy"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="not one of the labels"):
        multilabel_metrics([["a"]], [["z"]], ["a"])


def test_regression_metrics_and_primary_metrics():
    m = regression_metrics([1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 6.0])
    assert m["rmse"] == pytest.approx(np.sqrt((0 + 1 + 1 + 4) / 4))
    assert m["mae"] == pytest.approx(1.0)
    assert m["spearman"] == pytest.approx(0.8)
    assert m["pearson"] == pytest.approx(np.corrcoef([1, 2, 3, 4], [1, 3, 2, 6])[0, 1])
    assert regression_metrics([1.0, 2.0], [5.0, 5.0])["spearman"] == 0.0  # constant prediction: no rank signal
    assert primary_metric("sequence", "regression") == "spearman"
    assert primary_metric("sequence", "multi_label_classification") == "micro_f1"
    assert primary_metric("sequence") == "accuracy"
