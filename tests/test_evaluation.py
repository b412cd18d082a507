"""Scoring (fsllm.evaluation): the dev loss every evaluation reports is the loss training minimises."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch
from conftest import NER_LABELS, build_word_tokenizer, tiny_backbone, word_llama

from fsllm import FSConfig, FSForSequenceClassification, FSForTokenClassification
from fsllm.evaluation import batched_logits, collapse_message, evaluate_examples, length_chunks
from fsllm.tokenization import token_classification_features

SENTENCES = [
    (["John", "visited", "Paris"], ["B-PER", "O", "B-LOC"]),
    (["Mary", "Smith", "lives", "in", "London"], ["B-PER", "I-PER", "O", "O", "B-LOC"]),
    (["the", "company"], ["O", "O"]),
]


def _perturbed(model):
    torch.manual_seed(1)
    with torch.no_grad():  # an untrained head gives near-uniform logits; move away from them
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def _subword_tokenizer():
    """A WordPiece tokenizer built here that cuts some words into several sub-tokens (John -> Jo ##hn)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces = ["<pad>", "<s>", "</s>", "[UNK]", "Jo", "##hn", "visited", "Par", "##is", "Mary", "Sm", "##ith", "lives",
              "in", "Lon", "##don", "the", "com", "##pany"]
    tok = Tokenizer(models.WordPiece(vocab={w: i for i, w in enumerate(pieces)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="[UNK]")


@pytest.mark.parametrize("max_length", [64, 4])  # 4: sentences windowed, words counted once per window
@pytest.mark.parametrize("subwords", [False, True])  # True: only a word's first sub-token carries its label
def test_token_dev_loss_is_the_training_loss_on_the_same_features(max_length, subwords):
    tok, backbone = word_llama()
    if subwords:
        tok, backbone = _subword_tokenizer(), tiny_backbone("llama")
    model = _perturbed(FSForTokenClassification.from_backbone(backbone, fs_config=FSConfig(),
                                                              id2label=dict(enumerate(NER_LABELS))))
    examples = [{"tokens": w, "tags": t} for w, t in SENTENCES]
    metrics, _ = evaluate_examples(model, tok, examples, max_length)
    total, count = 0.0, 0
    with torch.no_grad():
        for ex in examples:
            for f in token_classification_features(ex["tokens"], ex["tags"], tok, model.label2id, max_length):
                out = model(input_ids=torch.tensor([f["input_ids"]]), labels=torch.tensor([f["labels"]]))
                n = sum(y != -100 for y in f["labels"])
                total += float(out.loss) * n
                count += n
    assert metrics["loss"] == pytest.approx(total / count, rel=1e-5)
    assert metrics["loss"] > 0.1
    if subwords:
        assert len(tok("John visited Paris")["input_ids"]) > 3  # words really were cut


def test_regression_dev_loss_is_mse_in_standardised_units():
    tok = build_word_tokenizer()
    _, backbone = word_llama()
    model = _perturbed(FSForSequenceClassification.from_backbone(
        backbone, num_labels=1, id2label={0: "score"}, problem_type="regression"))
    model.config.target_mean, model.config.target_std = 0.5, 2.0
    examples = [{"text": "John visited Paris", "label": 3.0}, {"text": "the company", "label": -1.0}]
    metrics, _ = evaluate_examples(model, tok, examples, 64)
    # expected values from the model's own forward, one example at a time, not from evaluate's output:
    # the training loss (MSE in standardised units) and the error of the value in the data's units
    losses, errors = [], []
    with torch.no_grad():
        for ex in examples:
            ids = torch.tensor([tok(ex["text"])["input_ids"]])
            out = model(input_ids=ids, labels=torch.tensor([ex["label"]]))
            losses.append(float(out.loss))
            errors.append(float(out.logits[0, 0]) - ex["label"])
    assert metrics["loss"] == pytest.approx(sum(losses) / 2, rel=1e-5)
    assert metrics["rmse"] == pytest.approx(math.sqrt(sum(e * e for e in errors) / 2), rel=1e-5)
    assert metrics["loss"] > 0.01  # the perturbed model is wrong by a margin: a loss of 0 would prove little


def _cost(lengths, chunks, overhead):
    return sum(overhead + (e - s) * lengths[e - 1] for s, e in chunks)


@pytest.mark.parametrize("seed", range(20))
def test_length_chunks_is_the_least_padded_work_split(seed):
    """Against every contiguous split of the sorted lengths (brute force), at most batch_size per batch."""
    rng = random.Random(seed)
    lengths = sorted(rng.randint(1, 60) for _ in range(rng.randint(1, 9)))
    batch_size, overhead = rng.randint(1, 5), rng.choice([0, 8, 32, 200])
    chunks = length_chunks(lengths, batch_size, overhead)
    assert chunks[0][0] == 0 and chunks[-1][1] == len(lengths)
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:])) and all(0 < e - s <= batch_size for s, e in chunks)
    best = math.inf
    n = len(lengths)
    for cuts in itertools.product([False, True], repeat=n - 1):
        bounds = [0, *[i + 1 for i, c in enumerate(cuts) if c], n]
        split = list(zip(bounds, bounds[1:]))
        if all(e - s <= batch_size for s, e in split):
            best = min(best, _cost(lengths, split, overhead))
    assert _cost(lengths, chunks, overhead) == best


def test_length_chunks_keeps_equal_lengths_together_and_splits_mixed_ones():
    assert length_chunks([20] * 10, 64) == [(0, 10)]
    assert sorted(e - s for s, e in length_chunks([20] * 10, 4)) == [2, 4, 4]
    assert length_chunks([5] * 15 + [120], 64, overhead=32) == [(0, 15), (15, 16)]


def test_batched_logits_of_mixed_lengths_equal_each_input_alone():
    model = FSForSequenceClassification.from_backbone(tiny_backbone("llama"), num_labels=3).eval()
    torch.manual_seed(0)
    feats = [{"input_ids": torch.randint(4, 100, (n,)).tolist()} for n in (3, 40, 5, 41, 4, 90)]
    together = batched_logits(model, feats, batch_size=64)
    for f, got in zip(feats, together):
        (alone,) = batched_logits(model, [f], batch_size=1)
        assert got == pytest.approx(alone, abs=1e-5)


def test_collapse_message_names_a_model_that_answers_the_same_everywhere():
    """A dev score of 55.8 does not say the model answers 'positive' to everything; this does, and
    only then: varied predictions, one-class gold, one example, regression and multi-label say nothing."""
    seq = [{"text": "a", "label": "positive", "pred": "positive"}, {"text": "b", "label": "negative", "pred": "positive"}]
    assert collapse_message(seq) == "every dev prediction is 'positive'"
    assert collapse_message([seq[0], {**seq[1], "pred": "negative"}]) is None
    assert collapse_message([seq[0], {**seq[0], "text": "c"}]) is None  # gold all one class: agreeing is right
    assert collapse_message(seq[:1]) is None
    assert collapse_message([{**r, "label": 0.5, "pred": 0.1} for r in seq]) is None
    assert collapse_message([{**r, "label": [r["label"]], "pred": []} for r in seq]) is None
    ner = [{"tokens": ["John", "ran"], "tags": ["B-PER", "O"], "pred": ["O", "O"]},
           {"tokens": ["it", "rained"], "tags": ["O", "O"], "pred": ["O", "O"]}]
    assert collapse_message(ner) == "no entity predicted on any dev sentence"
    assert collapse_message([{**ner[0], "pred": ["B-PER", "O"]}, ner[1]]) is None
    assert collapse_message([{**r, "tags": ["O", "O"]} for r in ner]) is None
