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
from ..inference import entities_from_tags, labels_over_threshold, scores_of
from ..segmentation import segment
from ..tokenization import sequence_ids, token_classification_features


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


class PredictRequest(BaseModel):
    """TEI's ``PredictRequest``. Unknown fields (``parameters`` from ``huggingface_hub``) are ignored, as TEI does."""

    model_config = ConfigDict(extra="ignore")

    inputs: str | list[str | list[str]] = Field(
        description="A text, a batch of texts ``[text, ...]``, or TEI's batch form ``[[text], [text_a, text_b], ...]`` "
        "(two-element rows are text pairs, for models trained on pairs; they must then send pairs only).",
        examples=["John lives in Paris.", [["a great film"], ["a boring plot"]]],
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

    __slots__ = ("text", "spans", "windows", "n_tokens")

    def __init__(self, text: str, spans: list[tuple[int, int]], windows: list[dict], n_tokens: int):
        self.text = text
        self.spans = spans
        self.windows = windows
        self.n_tokens = n_tokens


def encode_ner(tokenizer, text: str, max_length: int, max_input_tokens: int, index: int = 0) -> NerInput:
    """Words (``fsllm.segmentation.segment``, as ``fsllm predict`` splits them) and the overlapping windows of
    at most ``max_length`` tokens the model reads; more than ``max_input_tokens`` sub-tokens is a 413.

    A text's words all have at least one sub-token, so a text with more words than the limit is refused
    before the tokenizer runs on it.
    """
    words = segment(text)
    if not words:
        raise ServeError(422, f"input {index}: no words in {text[:40]!r} (only invisible or control characters)")
    if len(words) > max_input_tokens:
        raise _too_long(index, f"{len(words)} words", max_input_tokens)
    try:
        windows = token_classification_features([w.form for w in words], None, tokenizer, None, max_length)
    except DataError as e:
        raise ServeError(422, f"input {index}: {e}") from None
    n_tokens = windows[-1]["window"][1]
    if n_tokens > max_input_tokens:
        raise _too_long(index, f"{n_tokens} tokens", max_input_tokens)
    return NerInput(text, [(w.start, w.end) for w in words], windows, n_tokens)


def _too_long(index: int, what: str, limit: int) -> ServeError:
    return ServeError(413, f"input {index}: {what}, more than the server's max input length {limit} tokens "
                           "(--max-input-tokens); split the text")


def ner_entities(inp: NerInput, window_logits: list[np.ndarray], model: Any, tokenizer: Any) -> list[dict]:
    """Entities of one text from its windows' logits, read as ``Predictor.predict`` reads them (the tests
    compare the two): ``fsllm.evaluation.predict_word_tags`` with the model's decoding (``ner_decoding``,
    ``word_scores``) on the logits the batcher computed, then strict IOB2 spans."""
    words = [inp.text[s:e] for s, e in inp.spans]
    tags, scores, _ = predict_word_tags(model, tokenizer, [words], features=(inp.windows, [0] * len(inp.windows)),
                                        logits=window_logits)
    return entities_from_tags(tags[0], scores[0], inp.spans, inp.text)
