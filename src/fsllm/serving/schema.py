"""Text Embeddings Inference's wire format: the request body, the error body, the answers and ``/info``.

TEI's schema is the one of ``docs/openapi.json`` in huggingface/text-embeddings-inference (``PredictRequest``,
``ErrorResponse``, ``Prediction``, ``Info``); clients written against TEI parse what this module builds.
Also here: how a request's texts become model inputs (token ids; NER: windows) and how the outputs
become answers, since both follow TEI's rules (413 over the max input length, labels best first).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import DataError
from ..evaluation import predict_word_tags
from ..inference import entities_from_tags, labels_over_threshold, scores_of, words_result
from ..segmentation import segment
from ..tokenization import (
    Context,
    context_of,
    join_words,
    sequence_ids,
    token_classification_features,
    with_document_context,
)


class ServeError(Exception):
    """An error answered as TEI does: ``{"error": message, "error_type": kind}`` with an HTTP status."""

    def __init__(self, status: int, message: str, error_type: str = "validation", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.headers = headers


def error_response(status: int, message: str, error_type: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """TEI's ``ErrorResponse`` body."""
    return JSONResponse({"error": message, "error_type": error_type}, status_code=status, headers=headers)


class Sentence(BaseModel):
    """fsllm's extension of TEI's inputs, for NER models: a sentence already split into words, as
    ``fsllm predict --pre-split`` and ``Predictor.predict(words=..., documents=...)`` take it."""

    model_config = ConfigDict(extra="forbid")  # a misspelt key would otherwise be a sentence read without it

    tokens: list[str] = Field(description="the sentence's words, each read as one word", min_length=1)
    document: str | int | None = Field(
        None, description="any id of the sentence's document: consecutive sentences of a request with the same one form "
        "a document, in order, and a model trained with document context reads each with its neighbours")


class PredictRequest(BaseModel):
    """TEI's ``PredictRequest``. Unknown fields (``parameters`` from ``huggingface_hub``) are ignored, as TEI does."""

    model_config = ConfigDict(extra="ignore")

    inputs: str | list[str | list[str] | Sentence] = Field(
        description="A text, a batch of texts ``[text, ...]``, or TEI's batch form ``[[text], [text_a, text_b], ...]`` "
        "(two-element rows are text pairs, for models trained on pairs; they must then send pairs only). NER models "
        "also take a batch of sentences already split into words, ``[{\"tokens\": [...], \"document\": id}, ...]``.",
        examples=["John lives in Paris.", [["a great film"], ["a boring plot"]],
                  [{"tokens": ["John", "lives", "in", "Paris", "."], "document": "d1"}]],
    )
    raw_scores: bool = Field(False, description="return the logits instead of softmax probabilities")
    truncate: bool | None = Field(False, description="cut over-long inputs instead of answering 413 (sequence tasks)")
    truncation_direction: Literal["Left", "Right"] = Field("Right", description="which end `truncate` cuts")

    @field_validator("truncation_direction", mode="before")
    @classmethod
    def _direction_any_case(cls, v: Any) -> Any:
        return v.capitalize() if isinstance(v, str) else v


def parse_inputs(
    inputs: str | list[str | list[str]], pairs: bool = False
) -> tuple[list[str | tuple[str, str]], bool]:
    """The texts of a request and whether it was a batch.

    TEI's batch rows are ``[text]`` or ``[text_a, text_b]`` (a pair). With ``pairs`` (a model trained on
    text pairs) every input must be a pair and comes back as a ``(text, text_pair)`` tuple; otherwise a
    pair is a 422 that says why, since a model that never saw pairs would answer one without meaning.
    """
    if isinstance(inputs, str):
        rows: list[str | list[str]] = [inputs]
        batch = False
    else:
        rows, batch = list(inputs), True
        if any(isinstance(r, Sentence) for r in rows):
            raise ServeError(422, "pre-split sentences ({\"tokens\": [...]}) go alone: send texts or sentences, not both")
        if pairs and len(rows) == 2 and all(isinstance(r, str) for r in rows):
            # TEI's single pair: ``"inputs": ["text_a", "text_b"]``
            rows, batch = [list(rows)], False
    if not rows:
        raise ServeError(422, "`inputs` cannot be empty")
    texts: list[str | tuple[str, str]] = []
    for n, row in enumerate(rows):
        if isinstance(row, list):
            if len(row) == 2:
                if not pairs:
                    raise ServeError(422, f"input {n}: this model was not trained on text pairs; send single texts "
                                          "([text] rows), or serve a model trained with --text-pair-column")
                a, b = row
                if not a.strip() or not b.strip():
                    raise ServeError(422, f"input {n}: empty text in the pair")
                texts.append((a, b))
                continue
            if len(row) != 1:
                raise ServeError(422, f"input {n}: a batch row must be [text] or [text_a, text_b] (got {len(row)} strings)")
            row = row[0]
        if pairs:
            raise ServeError(422, f"input {n}: this model reads text pairs; send [text_a, text_b] rows")
        if not row.strip():
            raise ServeError(422, f"input {n}: empty text")
        texts.append(row)
    return texts, batch


def encode_pair(tokenizer, pair: tuple[str, str], max_length: int, truncate: bool, index: int = 0) -> list[int]:
    """Input ids of a text pair as the model was trained on them (``fsllm.tokenization.pair_ids``);
    over ``max_length`` is a 413 unless ``truncate`` (then cut longest-first, as in training)."""
    from ..tokenization import pair_ids

    ids, _ = pair_ids(pair[0], pair[1], tokenizer)
    if len(ids) <= max_length:
        return ids
    if not truncate:
        raise ServeError(413, f"input {index}: {len(ids)} tokens, more than the model's max input length "
                              f"{max_length}; send truncate=true to cut it")
    return pair_ids(pair[0], pair[1], tokenizer, max_length)[0]


def encode_sequence(
    tokenizer, text: str, max_length: int, truncate: bool, direction: str = "Right", index: int = 0
) -> list[int]:
    """Input ids of one text with the tokenizer's special tokens; over ``max_length`` is a 413 unless ``truncate``.

    Truncation is ``fsllm.tokenization.sequence_ids``' (as in training): the special tokens stay,
    the text is cut from ``direction``'s end.
    """
    ids = list(tokenizer(text)["input_ids"])
    if len(ids) <= max_length:
        return ids
    if not truncate:
        raise ServeError(413, f"input {index}: {len(ids)} tokens, more than the model's max input length "
                              f"{max_length}; send truncate=true to cut it")
    return sequence_ids(text, tokenizer, max_length, direction)[0]


def label_scores(logits: np.ndarray, id2label: dict[int, str], raw_scores: bool, config: Any = None) -> list[dict]:
    """Every label with its score, best first (TEI's order): softmax probabilities, or the logits.

    With the model's ``config``: a regression model answers ``[{"label", "score": value}]`` (the value
    in the data's units, as TEI answers a one-output model); a multi-label model answers every label
    whose sigmoid reaches its threshold (the config's, chosen on dev), best first, or, with
    ``raw_scores``, every label's logit.
    """
    x = np.asarray(logits, dtype=np.float64)
    if not np.isfinite(x).all():  # TEI answers this as a backend error too; NaN is not valid JSON
        raise ServeError(500, "the model returned a non-finite score", "backend")
    problem = getattr(config, "problem_type", None)
    if problem == "regression":
        return [{"label": id2label[0], "score": float(x[0])}]
    if problem == "multi_label_classification" and not raw_scores:
        return labels_over_threshold(config, scores_of(config, x))
    if not raw_scores:
        x = scores_of(config, x)  # softmax: what fsllm predict and pipeline() report
    order = np.argsort(-x, kind="stable")
    return [{"label": id2label[int(i)], "score": float(x[i])} for i in order]




# -------------------------------------------------------------------------------------------- NER inputs


class NerInput:
    """An NER text ready for the batcher: its word spans and the model inputs of its windows."""

    __slots__ = ("text", "spans", "windows", "n_tokens", "pre_split")

    def __init__(self, text: str, spans: list[tuple[int, int]], windows: list[dict], n_tokens: int,
                 pre_split: bool = False):
        self.text = text
        self.spans = spans
        self.windows = windows
        self.n_tokens = n_tokens
        # a sentence sent as words (:func:`encode_ner_words`): ``text`` is them joined by spaces, ``spans`` theirs
        self.pre_split = pre_split


def encode_ner(tokenizer, text: str, max_length: int, max_input_tokens: int, index: int = 0) -> NerInput:
    """Words (``fsllm.segmentation.segment``, as ``fsllm predict`` splits them) and the overlapping windows of
    at most ``max_length`` tokens the model reads; more than ``max_input_tokens`` sub-tokens is a 413.

    A text's words all have at least one sub-token, so a text with more words than the limit is refused
    before the tokenizer runs on it.
    """
    words = segment(text)
    if not words:
        raise ServeError(422, f"input {index}: no words in {text[:40]!r} (only invisible or control characters)")
    windows, n_tokens = _ner_windows(tokenizer, [w.form for w in words], max_length, max_input_tokens, index)
    return NerInput(text, [(w.start, w.end) for w in words], windows, n_tokens)


def _ner_windows(tokenizer, words: list[str], max_length: int, max_input_tokens: int, index: int,
                 context: Context | None = None, context_tokens: int = 0) -> tuple[list[dict], int]:
    """The windows the model reads for one input's words (``fsllm.tokenization.token_classification_features``,
    with its document ``context`` where given) and the input's own sub-tokens; more words or sub-tokens than
    ``max_input_tokens`` is a 413, words the tokenizer cannot read a 422."""
    if len(words) > max_input_tokens:
        raise _too_long(index, f"{len(words)} words", max_input_tokens)
    try:
        windows = token_classification_features(words, None, tokenizer, None, max_length, context=context,
                                                context_tokens=context_tokens)
    except DataError as e:
        raise ServeError(422, f"input {index}: {e}") from None
    if context is not None and len(windows) == 1:  # read in context: the window holds its neighbours' too
        n_tokens = sum(w >= 0 for w in windows[0]["word_ids"])
    else:
        n_tokens = windows[-1]["window"][1]
    if n_tokens > max_input_tokens:
        raise _too_long(index, f"{n_tokens} tokens", max_input_tokens)
    return windows, n_tokens


def pre_split_sentences(inputs: Any) -> list[Sentence] | None:
    """A request's pre-split sentences (:class:`Sentence`), or ``None`` when it sends texts; a batch that
    mixes the two is a 422 (from :func:`parse_inputs`), as is a sentence with an empty word."""
    if not isinstance(inputs, list) or not inputs or not all(isinstance(r, Sentence) for r in inputs):
        return None
    for n, sentence in enumerate(inputs):
        for k, w in enumerate(sentence.tokens):
            if not w.strip():
                raise ServeError(422, f"input {n}: word {k + 1} is {w!r}; words must be non-empty strings")
    return inputs


def encode_ner_words(tokenizer, sentences: list[Sentence], max_length: int, max_input_tokens: int,
                     document_context: int = 0) -> list[NerInput]:
    """The model inputs of pre-split sentences: windows as :func:`encode_ner` cuts them, or, for a model
    trained with document context (``document_context`` sub-tokens a side) and sentences that name their
    document, each sentence with its neighbours in the request, as ``Predictor.predict(words=...,
    documents=...)`` reads them; more than ``max_input_tokens`` sub-tokens in a sentence is a 413."""
    words = [list(s.tokens) for s in sentences]
    contexts: list = [None] * len(words)
    if document_context and any(s.document is not None for s in sentences):
        contexts = [context_of(ex) for ex in with_document_context(
            [{"tokens": ws, "document": s.document} for ws, s in zip(words, sentences)], document_context)]
    out = []
    for n, (ws, context) in enumerate(zip(words, contexts)):
        windows, n_tokens = _ner_windows(tokenizer, ws, max_length, max_input_tokens, n, context, document_context)
        out.append(NerInput(*join_words(ws), windows, n_tokens, pre_split=True))
    return out


def _too_long(index: int, what: str, limit: int) -> ServeError:
    return ServeError(413, f"input {index}: {what}, more than the server's max input length {limit} tokens "
                           "(--max-input-tokens); split the text")


def ner_entities(inp: NerInput, window_logits: list[np.ndarray], model: Any, tokenizer: Any) -> list[dict] | dict:
    """Entities of one text from its windows' logits, read as ``Predictor.predict`` reads them (the tests
    compare the two): ``fsllm.evaluation.predict_word_tags`` with the model's decoding (``ner_decoding``,
    ``word_scores``) on the logits the batcher computed, then strict IOB2 spans. A pre-split sentence answers
    as ``Predictor.predict(words=...)`` does: ``{"tokens", "tags", "scores", "entities"}``."""
    words = [inp.text[s:e] for s, e in inp.spans]
    tags, scores, _ = predict_word_tags(model, tokenizer, [words], features=(inp.windows, [0] * len(inp.windows)),
                                        logits=window_logits)
    if inp.pre_split:
        return words_result(words, tags[0], scores[0])
    return entities_from_tags(tags[0], scores[0], inp.spans, inp.text)
