"""From a token model's scores to word tags and entities: one rule for every reader.

``fsllm predict``, ``fsllm serve``, the ``Predictor``, ``fsllm eval`` and the dev scores of
``fsllm train`` all read a sentence through the functions here, so the same scores give the same
tags, and the same tags the same entities, everywhere:

* :func:`word_log_probs` -- a word's log-probabilities over the labels, from its first sub-token
  (``word_scores="first"``, what training labels) or the mean over its sub-tokens (``"mean"``).
* :func:`decode_words` -- tags from those: each word's best label (``ner_decoding="greedy"``) or the
  best IOB2-valid sequence (``"viterbi"``, :func:`viterbi`: no ``I-X`` after anything but ``B-X`` /
  ``I-X``).
* :func:`iob2_spans` / :func:`entities_from_tags` -- entities from tags by the strict IOB2 rule that
  seqeval's ``mode="strict"`` scores with: an entity is a maximal ``B-X I-X*`` run; an ``I-X`` that
  follows neither ``B-X`` nor ``I-X`` (a *stray* ``I-``, which greedy decoding can produce) starts
  nothing, and ``B-PER I-LOC`` is the entity ``PER`` over its first word only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from .errors import ConfigError

#: ``FSConfig.ner_decoding``: each word's best label, or the best sequence that is valid IOB2
NER_DECODINGS = ("greedy", "viterbi")
#: ``FSConfig.word_scores``: a word's scores from its first sub-token, or the mean of its sub-tokens' log-probabilities
WORD_SCORES = ("first", "mean")

DEFAULT_DECODING = "greedy"
DEFAULT_WORD_SCORES = "first"


def check_decoding(ner_decoding: str | None = None, word_scores: str | None = None) -> None:
    """A clear error for a decoding option that does not exist (``None`` is "not given")."""
    if ner_decoding is not None and ner_decoding not in NER_DECODINGS:
        raise ConfigError(f"ner_decoding must be one of {', '.join(NER_DECODINGS)}, got {ner_decoding!r}")
    if word_scores is not None and word_scores not in WORD_SCORES:
        raise ConfigError(f"word_scores must be one of {', '.join(WORD_SCORES)}, got {word_scores!r}")


def decoding_of(model) -> tuple[str, str]:
    """``(ner_decoding, word_scores)`` of a model: its config's ``fs`` fields (an FS model), else the
    defaults (a baseline such as an ``AutoModelForTokenClassification``, or a folder saved before the
    fields existed)."""
    fs = getattr(getattr(model, "config", None), "fs", None) or {}
    return fs.get("ner_decoding", DEFAULT_DECODING), fs.get("word_scores", DEFAULT_WORD_SCORES)


def set_decoding(model, ner_decoding: str | None = None, word_scores: str | None = None) -> None:
    """Make an FS token model read its word tags as given (``None`` leaves a setting as it is).

    Both places a model keeps its ``FSConfig`` change: ``config.fs`` (what ``save_pretrained`` writes
    and every reader consults, ``forward`` for ``pipeline()`` included) and ``fs_config``.
    """
    check_decoding(ner_decoding, word_scores)
    given = {k: v for k, v in (("ner_decoding", ner_decoding), ("word_scores", word_scores)) if v is not None}
    if not given:
        return
    if getattr(model, "task", None) != "token":
        raise ConfigError("ner_decoding and word_scores apply to token-classification (NER) models; "
                          "this is a sequence classifier")
    model.config.fs = {**(model.config.fs or {}), **given}
    if getattr(model, "fs_config", None) is not None:
        model.fs_config = dataclasses.replace(model.fs_config, **given)


# --------------------------------------------------------------------------- tags -> entities


def _split(tag: str) -> tuple[str, str]:
    """``("B", "PER")`` for ``B-PER``; ``("O", "")`` for ``O`` and any label that is not ``B-``/``I-``."""
    if len(tag) > 2 and tag[1] == "-" and tag[0] in "BI":
        return tag[0], tag[2:]
    return "O", ""


def iob2_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """The entities of word-level tags as ``(type, first word, end word exclusive)``, strict IOB2.

    An entity starts at ``B-X`` and takes every ``I-X`` right after it; anything else ends it. A stray
    ``I-X`` (after ``O``, after another type, or first) is no entity: seqeval's strict IOB2 mode, which
    scores ``fsllm eval`` and the dev/test numbers of a run, reads it the same way.
    """
    out: list[tuple[str, int, int]] = []
    typ, start = "", -1
    for k, tag in enumerate(tags):
        kind, t = _split(tag)
        if kind == "I" and start >= 0 and t == typ:
            continue
        if start >= 0:
            out.append((typ, start, k))
            start = -1
        if kind == "B":
            typ, start = t, k
    if start >= 0:
        out.append((typ, start, len(tags)))
    return out


def entities_from_tags(
    tags: Sequence[str], scores: Sequence[float], spans: Sequence[tuple[int, int]], text: str
) -> list[dict]:
    """Entity spans from word-level IOB2 tags (:func:`iob2_spans`), in the field names of transformers'
    token-classification pipeline (``aggregation_strategy="simple"``): ``entity_group``, ``score``
    (mean over the entity's words), ``word``, ``start``, ``end`` (character offsets into ``text``,
    from each word's ``spans``)."""
    out = []
    for typ, a, b in iob2_spans(tags):
        start, end = spans[a][0], spans[b - 1][1]
        out.append({"entity_group": typ, "score": float(np.mean(scores[a:b])), "word": text[start:end],
                    "start": start, "end": end})
    return out


# --------------------------------------------------------------------------- scores -> tags


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Log-probabilities over the last axis, in float64."""
    z = np.asarray(x, dtype=np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def word_log_probs(logits: np.ndarray, word_ids: Sequence[int], first: Sequence[bool], word_scores: str) -> list:
    """Per token of one window: the log-probabilities of its word at the word's first sub-token, else ``None``.

    ``"first"``: the first sub-token's own (the position training labels). ``"mean"``: the mean of the
    log-probabilities of the word's sub-tokens in this window, renormalised (a normalised geometric
    mean of their distributions), so every sub-token has a say, e.g. on a word the tokenizer cuts into
    pieces whose first one says little. Tokens of no word (a BOS, a whitespace-only token) count for none.
    """
    check_decoding(word_scores=word_scores)
    logp = log_softmax(logits)
    out: list = [None] * len(word_ids)
    if word_scores == "first":
        for k, f in enumerate(first):
            if f:
                out[k] = logp[k]
        return out
    ids = np.asarray(word_ids)
    for k, f in enumerate(first):
        if f:
            out[k] = log_softmax(logp[ids == ids[k]].mean(0))
    return out


def allowed_transitions(labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """IOB2's constraints over ``labels`` (in id order): ``(start[K], follow[K, K])``, booleans.

    ``follow[i, j]``: label ``j`` may come right after label ``i``. ``I-X`` may follow only ``B-X`` or
    ``I-X`` and may not start a sentence; ``O``, ``B-X`` (and any label that is not ``B-``/``I-``) may
    come anywhere.
    """
    parts = [_split(t) for t in labels]
    k = len(labels)
    follow = np.ones((k, k), dtype=bool)
    start = np.ones(k, dtype=bool)
    for j, (kind, typ) in enumerate(parts):
        if kind == "I":
            start[j] = False
            follow[:, j] = [p_kind in ("B", "I") and p_typ == typ for p_kind, p_typ in parts]
    return start, follow


def viterbi(logp: np.ndarray, start: np.ndarray, follow: np.ndarray) -> np.ndarray:
    """The label sequence of highest total log-probability among those ``start``/``follow`` allow.

    ``logp`` is ``[n_words, K]``; the result is ``n_words`` label ids. Exact (dynamic programming,
    each step vectorised over the ``K x K`` transitions); among equal scores the lowest label id wins. A sentence
    has such a sequence whenever some label may start it and follow itself (``O`` does).
    """
    logp = np.asarray(logp, dtype=np.float64)
    n, k = logp.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    penalty = np.where(follow, 0.0, -np.inf)
    score = np.where(start, logp[0], -np.inf)
    back = np.zeros((n, k), dtype=np.int64)
    for t in range(1, n):
        cand = score[:, None] + penalty  # [from, to]
        back[t] = cand.argmax(0)
        score = cand[back[t], np.arange(k)] + logp[t]
    path = np.empty(n, dtype=np.int64)
    path[-1] = int(score.argmax())
    for t in range(n - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


def decode_words(logp: np.ndarray, labels: Sequence[str], ner_decoding: str) -> tuple[list[str], list[float]]:
    """Tags and scores of one sentence's words from their log-probabilities ``[n_words, K]``.

    ``"greedy"``: each word's best label. ``"viterbi"``: the best IOB2-valid sequence (:func:`viterbi`),
    which never holds a stray ``I-``. A word's score is its probability of the tag it got.
    """
    check_decoding(ner_decoding=ner_decoding)
    logp = np.asarray(logp, dtype=np.float64).reshape(-1, len(labels))
    if ner_decoding == "viterbi":
        path = viterbi(logp, *allowed_transitions(labels))
    else:
        path = logp.argmax(-1)
    scores = np.exp(logp[np.arange(len(path)), path])
    return [labels[int(i)] for i in path], [float(s) for s in scores]
