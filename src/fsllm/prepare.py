"""Data preparation for training and evaluation: load, split, subset, label maps, checks, features.

Its own stage so that ``train()``, ``fsllm eval`` and the benchmarks draw the same seeded subsets
and build the same label maps and model inputs from the same options, and so that every check of
the data against the options fails here, before a model is loaded or a run folder written.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import datasets
from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

from .config import TrainConfig
from .data import load_any, load_eval_split
from .errors import ConfigError, DataError
from .metrics import METRIC_NAMES, primary_metric
from .tokenization import (
    context_of,
    pair_features,
    sequence_features,
    token_classification_features,
    with_document_context,
)

logger = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """The examples of a run and what was derived from them and the options."""

    task: str
    problem_type: str | None
    source: str
    train: list[dict]
    dev: list[dict]
    test: list[dict]
    id2label: dict[int, str]
    #: the dev metric that picks the best checkpoint
    metric: str
    label2id: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.label2id = {v: k for k, v in self.id2label.items()}


@dataclass
class Features:
    """Model inputs of the training and dev splits, and the collator that batches them."""

    train: datasets.Dataset
    dev: datasets.Dataset | None
    collator: object
    #: training examples truncated (sequence) or split into windows (token)
    altered: int
    #: labelled tokens in an average training batch, for a length-balanced token loss (else None)
    tokens_per_batch: float | None


def prepare_data(cfg: TrainConfig) -> PreparedData:
    """Load ``cfg.data``, draw the seeded subsets, build the label maps and check dev/test against them.

    Options that only make sense for some data (a per-label threshold, the selection metric) are
    checked here too, as they need the task the data turns out to be.
    """
    data = load_any(cfg.data, task=cfg.task, text_column=cfg.text_column, label_column=cfg.label_column, repair=cfg.repair_tags,
                    problem_type=cfg.problem_type, text_pair_column=cfg.text_pair_column, label_separator=cfg.label_separator)
    task = data.task
    problem_type = data.problem_type if cfg.problem_type in (None, "single_label_classification") else cfg.problem_type
    if cfg.threshold_per_label and problem_type != "multi_label_classification":
        raise ConfigError("threshold_per_label applies to multi-label classification only")
    metric = cfg.selection_metric or primary_metric(task, problem_type)
    kind = "multi_label" if problem_type == "multi_label_classification" else problem_type or task
    # evaluation reports a loss for (multi-label) classification, not for regression or NER
    allowed = METRIC_NAMES[kind] + (("loss",) if kind in ("sequence", "multi_label") else ())
    if metric not in allowed:
        raise ConfigError(f"selection_metric {metric!r}: a {kind} model reports {', '.join(allowed)}")
    splits = {name: list(ds) for name, ds in data.splits.items()}
    if "train" not in splits or not splits["train"]:
        raise DataError(f"{cfg.data}: no training examples")
    if cfg.document_context:
        if task != "token":
            raise ConfigError("document_context applies to token (NER) tasks: a sequence example is read whole")
        # before the subsets are drawn, so a sampled sentence keeps its real neighbours
        splits = {name: attach_document_context(exs, cfg.document_context, f"{cfg.data} {name}")
                  for name, exs in splits.items()}
    train_ex = seeded_subset(splits["train"], cfg.train_subset, cfg.seed)
    dev_ex = seeded_subset(splits.get("validation", []), cfg.dev_subset, cfg.seed)
    test_ex = seeded_subset(splits.get("test", []), cfg.test_subset, cfg.seed)
    id2label = build_label_maps(task, train_ex, data.label_names, problem_type)
    prepared = PreparedData(task, problem_type, data.source, train_ex, dev_ex, test_ex, id2label, metric)
    for split, exs in (("dev", dev_ex), ("test", test_ex)):
        check_labels(task, split, exs, prepared.label2id)
    logger.info("data: %s train / %s dev / %s test (%s)", len(train_ex), len(dev_ex), len(test_ex), data.source)
    return prepared


def attach_document_context(examples: list[dict], tokens: int, where: str = "data") -> list[dict]:
    """:func:`fsllm.tokenization.with_document_context` with a warning when the data marks no documents
    (a hub dataset without a ``document`` column): every sentence is then read alone."""
    if examples and not any("document" in ex for ex in examples):
        logger.warning("document_context: %s marks no documents (CoNLL -DOCSTART- lines or a 'document' column); "
                       "each sentence is read alone", where)
    return with_document_context(examples, tokens)


def prepare_features(cfg: TrainConfig, data: PreparedData, tokenizer) -> Features:
    """Tokenise the training and dev splits (the test split is scored from raw examples in the report)."""
    task, problem_type = data.task, data.problem_type
    feats, altered = make_features(task, data.train, tokenizer, data.label2id, cfg.max_length, problem_type,
                                   cfg.document_context)
    if altered:
        what = "split into overlapping windows" if task == "token" else "truncated"
        logger.warning("%d of %d training examples longer than %d tokens were %s", altered, len(data.train), cfg.max_length, what)
    train_ds = datasets.Dataset.from_list(feats)
    dev_ds = (datasets.Dataset.from_list(make_features(task, data.dev, tokenizer, data.label2id, cfg.max_length, problem_type,
                                                       cfg.document_context)[0])
              if data.dev else None)
    balanced = cfg.length_balanced_loss and task == "token"
    if cfg.length_balanced_loss and not balanced:
        logger.warning("length_balanced_loss weighs the tokens of token tasks; a %s task has one label per example, ignored", task)
    return Features(train_ds, dev_ds, make_collator(task, tokenizer, cfg.pad_to_length), altered,
                    tokens_per_batch(feats, cfg.batch_size) if balanced else None)


def eval_examples(data: str, split: str, subset: int | None, *, seed: int = 42, document_context: int = 0,
                  **options) -> list[dict]:
    """The labelled examples ``fsllm eval`` scores: a split (or a whole file), read against the model's
    options (``options`` go to :func:`fsllm.data.load_eval_split`), seeded subset as in training;
    ``document_context`` (the model's): each sentence with its neighbours, attached before the subset."""
    rows, _source = load_eval_split(data, split, **options)
    if document_context:
        rows = attach_document_context(rows, document_context, f"{data} {split}")
    return seeded_subset(rows, subset, seed)


# ---------------------------------------------------------------------------------- labels


def build_label_maps(
    task: str, train: Sequence[dict], label_names: list[str] | None, problem_type: str | None = None
) -> dict[int, str]:
    """Label map from the training split (and the data set's canonical order when it has one).

    For NER every entity type seen in training gets both its B- and I- tag, so a small
    training subset that happens to lack, say, ``I-MISC`` still covers the dev split.
    Multi-label: every label of any training example; regression: one output, ``"score"``.
    """
    if problem_type == "regression":
        return {0: "score"}
    if problem_type == "multi_label_classification":
        seen_multi = {lab for ex in train for lab in ex["label"]}
        names = [n for n in (label_names or []) if n in seen_multi] + sorted(seen_multi - set(label_names or []))
        return dict(enumerate(names))
    if task == "token":
        types = sorted({t.split("-", 1)[1] for ex in train for t in ex["tags"] if t != "O"})
        tags = ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]
        if label_names:
            tags = [t for t in label_names if t in tags] + [t for t in tags if t not in label_names]
        return dict(enumerate(tags))
    seen = {ex["label"] for ex in train}
    names = [n for n in (label_names or []) if n in seen] + sorted(seen - set(label_names or []))
    return dict(enumerate(names))


def check_labels(task: str, split: str, examples: Sequence[dict], label2id: dict[str, int]) -> None:
    """An unknown label outside training is an error, with the split, example and known labels."""
    for n, ex in enumerate(examples):
        if isinstance(ex.get("label"), float):
            continue  # a regression target: any number goes
        values = ex["tags"] if task == "token" else ex["label"] if isinstance(ex["label"], list) else [ex["label"]]
        for v in values:
            if v not in label2id:
                raise DataError(
                    f"{split} example {n}: label {v!r} never occurs in the training split "
                    f"(training labels: {sorted(label2id)})"
                )


# ---------------------------------------------------------------------------------- features


def make_features(
    task: str, examples: Sequence[dict], tokenizer, label2id: dict[str, int], max_length: int,
    problem_type: str | None = None, document_context: int = 0,
) -> tuple[list[dict], int]:
    """Model inputs for training; returns the features and the number of truncated/windowed examples.

    ``labels`` is the label id (single label), a multi-hot float vector (multi-label) or the raw
    target (regression: the model standardises it). An example with ``text_pair`` is a pair.
    ``document_context``: the sub-tokens of context read on each side of a sentence that carries it
    (:func:`attach_document_context`).
    """
    feats: list[dict] = []
    altered = 0
    for ex in examples:
        if task == "token":
            windows = token_classification_features(ex["tokens"], ex["tags"], tokenizer, label2id, max_length,
                                                    context=context_of(ex), context_tokens=document_context)
            altered += len(windows) > 1
            feats.extend({k: w[k] for k in ("input_ids", "attention_mask", "labels")} for w in windows)
        else:
            if ex.get("text_pair") is not None:
                f, truncated = pair_features(ex["text"], ex["text_pair"], tokenizer, max_length)
            else:
                f, truncated = sequence_features(ex["text"], tokenizer, max_length)
            altered += truncated
            if problem_type == "regression":
                f["labels"] = float(ex["label"])
            elif problem_type == "multi_label_classification":
                hot = [0.0] * len(label2id)
                for lab in ex["label"]:
                    hot[label2id[lab]] = 1.0
                f["labels"] = hot
            else:
                f["labels"] = label2id[ex["label"]]
            feats.append(f)
    return feats, altered


def make_collator(task: str, tokenizer, pad_to_length: int | None = None):
    """Batch collator: pads each batch to its longest example, or every batch to ``pad_to_length``.

    Fixed-length padding is the LS-LLaMA/BiLLM recipe, kept for the speed benchmark. Since FS
    attention masks padding keys and the loss ignores padded positions, both give the same loss
    and gradients; dynamic padding only computes less.
    """
    kw = dict(padding="max_length", max_length=pad_to_length) if pad_to_length else {}
    if task == "token":
        return DataCollatorForTokenClassification(tokenizer, **kw)
    return DataCollatorWithPadding(tokenizer, **kw)


def tokens_per_batch(features: Sequence[dict], batch_size: int) -> float:
    """Labelled tokens (labels other than -100) in an average batch of ``batch_size`` features."""
    labelled = sum(sum(1 for y in f["labels"] if y != -100) for f in features)
    return batch_size * labelled / max(1, len(features))


def seeded_subset(examples: list[dict], n: int | None, seed: int) -> list[dict]:
    """``n`` examples drawn with ``seed``, kept in file order (the same draw for every method compared)."""
    if n is None or n >= len(examples):
        return examples
    idx = list(range(len(examples)))
    random.Random(seed).shuffle(idx)
    return [examples[i] for i in sorted(idx[:n])]
