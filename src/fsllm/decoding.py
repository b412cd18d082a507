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

import base64
import contextlib
import contextvars
import dataclasses
import zlib
from collections.abc import Sequence

import numpy as np
import torch

from .errors import ConfigError

#: ``FSConfig.ner_decoding``: each word's best label, or the best sequence that is valid IOB2
NER_DECODINGS = ("greedy", "viterbi")
#: ``FSConfig.word_scores``: a word's scores from its first sub-token, or the mean of its sub-tokens' log-probabilities
WORD_SCORES = ("first", "mean")

#: how a model that does not say reads (a baseline's ``AutoModelForTokenClassification``, a folder saved before
#: the fields existed: it was selected on dev under this reading); ``FSConfig``'s defaults are Viterbi / mean
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


# --------------------------------------------------------------------------- pipeline()

#: how a tokenizer marks the space before a word on the token itself: byte-level BPE (GPT-2, Llama-3,
#: SmolLM2, Qwen) and SentencePiece (Llama-2, Gemma)
SPACE_MARKERS = ("\u0120", "\u2581", " ")


def word_start_table(tokenizer) -> dict:
    """What ``forward`` needs to find the words ``pipeline()`` finds, from token ids alone (saved as
    ``FSLLMConfig.word_starts`` with a token model's tokenizer).

    transformers' token-classification pipeline takes a token for the start of a word when a space
    is at or just before it in the text (its fallback heuristic for tokenizers without a
    continuing-subword prefix, which every decoder tokenizer is). A token whose text starts with a
    space marker is such a token; so is the first one and one after a whitespace-only token. A
    tokenizer with no marked token (one that splits words at whitespace) makes every token a word.
    Returns ``{"special": [ids]}`` plus ``{"every_token": True}`` or ``{"space_marked": <base64 of the
    zlib-compressed bitmap over the vocabulary>, "size": <vocabulary size>}``.
    """
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    marked = np.array([bool(t) and t[0] in SPACE_MARKERS for t in tokens], dtype=bool)
    out: dict = {"special": sorted(int(i) for i in set(tokenizer.all_special_ids))}
    if not marked.any():
        return {**out, "every_token": True}
    packed = zlib.compress(np.packbits(marked).tobytes(), 9)
    return {**out, "space_marked": base64.b64encode(packed).decode("ascii"), "size": len(tokens)}


def _space_marked(table: dict, device) -> torch.Tensor:
    """The bitmap of :func:`word_start_table` as a bool tensor over the vocabulary."""
    bits = np.unpackbits(np.frombuffer(zlib.decompress(base64.b64decode(table["space_marked"])), dtype=np.uint8))
    return torch.from_numpy(bits[: int(table["size"])].astype(bool)).to(device)


def word_starts(config, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                cache: dict | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``([B, L], [B, L])``: the positions where ``pipeline()`` starts a word, and those of every token of a
    word (real tokens, special and whitespace-only ones aside: fsllm's words leave those out, and
    ``label_whitespace`` labels the latter); ``None`` without ``config.word_starts``."""
    table = getattr(config, "word_starts", None)
    if not table:
        return None
    dev = input_ids.device
    real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    real = real & ~torch.isin(input_ids, torch.tensor(table.get("special", []), dtype=input_ids.dtype, device=dev))
    space_only = torch.isin(input_ids, torch.tensor(config.whitespace_token_ids or [], dtype=input_ids.dtype,
                                                    device=dev))
    if table.get("every_token"):
        marked = real
    else:
        key = ("space_marked", str(dev))
        lut = cache.get(key) if cache is not None else None
        if lut is None:
            lut = _space_marked(table, dev)
            if cache is not None:
                cache[key] = lut
        marked = lut[input_ids.clamp(0, len(lut) - 1)] & (input_ids < len(lut))
    after_space = torch.zeros_like(real)
    after_space[:, 1:] = space_only[:, :-1]
    first = real & (real.long().cumsum(1) == 1)
    return real & ~space_only & (marked | after_space | first), real & ~space_only


#: the models (by ``id``) within :func:`raw_logits` in this thread (and asyncio task): one caller's raw reading
#: never leaks into another's forward, as a flag on the shared model would when threads share a Predictor
_RAW: contextvars.ContextVar[frozenset[int]] = contextvars.ContextVar("fsllm_raw_logits", default=frozenset())


@contextlib.contextmanager
def raw_logits(model):
    """Within it, an FS token model's ``forward`` returns its head's logits as they are: what fsllm's own
    readers (:func:`fsllm.evaluation.predict_word_tags`) decode, pool and score the loss with. Outside,
    in eval mode, ``forward`` orders them for ``pipeline()`` (:func:`pipeline_logits`). The switch is the
    calling thread's own and ``model``'s, so other threads using the same model meanwhile, and other models,
    still get ordered logits."""
    token = _RAW.set(_RAW.get() | {id(model)})
    try:
        yield
    finally:
        _RAW.reset(token)


def reads_raw(model) -> bool:
    """Whether an FS token model's eval-mode ``forward`` returns its head's logits as they are here: within
    :func:`raw_logits` in this thread, or with the model's ``pipeline_decoding`` switched off."""
    return id(model) in _RAW.get() or not getattr(model, "pipeline_decoding", False)


def pipeline_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                    logits: torch.Tensor) -> torch.Tensor:
    """The logits ``forward`` returns in eval mode: at the first token of each word, the label the model's
    decoding (``FSConfig.ner_decoding`` / ``word_scores``) gives the word swaps places with the top one.

    transformers' token-classification pipeline takes each token's (``aggregation_strategy="first"``:
    each word's first token's) argmax and starts an entity at any ``I-X``. With this, its argmax is the
    tag fsllm decodes (the Viterbi path, or greedy tags read as strict IOB2, a stray ``I-X`` becoming
    ``O``), so ``pipeline()`` finds fsllm's entities; the set of values at each token is kept, so the
    score ``pipeline()`` reports for such a word is the word's top probability rather than that of its
    tag. Words are those of :func:`word_starts`; without ``config.word_starts`` (a folder saved without
    its tokenizer), without BIO labels, in training and within :func:`raw_logits`, the logits are
    returned as they are.
    """
    if model.training or reads_raw(model):
        return logits
    bio = model._bio_labels()
    cache = model.__dict__.setdefault("_word_start_cache", {})
    found = word_starts(model.config, input_ids, attention_mask, cache) if bio is not None else None
    if found is None or not bool(found[0].any()):
        return logits
    starts, in_word = found
    decoding, pooling = decoding_of(model)
    labels = [model.id2label[i] for i in range(logits.shape[-1])]
    logp = torch.log_softmax(logits.detach().float(), -1).cpu().numpy()
    out = logits.clone()
    for b in range(logits.shape[0]):
        pos = starts[b].nonzero().squeeze(-1).cpu().numpy()
        if pos.size == 0:
            continue
        if pooling == "mean":  # a word's tokens: from its start to the next one, whitespace-only tokens aside
            word = (starts[b].long().cumsum(0) - 1).cpu().numpy()
            keep = in_word[b].cpu().numpy() & (word >= 0)
            lp = np.stack([log_softmax(logp[b][keep & (word == w)].mean(0)) for w in range(len(pos))])
        else:
            lp = logp[b][pos]
        tags, _ = decode_words(lp, labels, decoding)
        inside = np.zeros(len(tags), dtype=bool)
        for _, s, e in iob2_spans(tags):
            inside[s:e] = True
        target = [model.label2id[t] if inside[w] else model.label2id["O"] for w, t in enumerate(tags)]
        for p, tgt in zip(pos.tolist(), target):
            top = int(logits[b, p].argmax())
            if top != tgt:
                out[b, p, top], out[b, p, tgt] = logits[b, p, tgt], logits[b, p, top]
    return out
