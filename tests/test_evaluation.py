"""Scoring (fsllm.evaluation): the dev loss every evaluation reports is the loss training minimises."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import NER_LABELS, build_word_tokenizer, tiny_backbone, word_llama

from fsllm import FSConfig, FSForSequenceClassification, FSForTokenClassification
from fsllm.evaluation import evaluate_examples
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
    metrics, records = evaluate_examples(model, tok, examples, 64)
    want = sum(((r["pred"] - ex["label"]) / 2.0) ** 2 for r, ex in zip(records, examples)) / 2
    assert metrics["loss"] == pytest.approx(want, rel=1e-3)  # records round predictions to 4 digits
    assert math.isclose(metrics["rmse"] ** 2 / 4.0, metrics["loss"], rel_tol=1e-9)
