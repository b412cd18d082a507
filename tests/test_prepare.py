"""Features and collators: fixed-length padding against dynamic padding."""

from __future__ import annotations

import pytest
import torch
from conftest import SENTIMENT_ROWS, word_llama

from fsllm import FSConfig, FSForSequenceClassification, FSForTokenClassification
from fsllm.training import make_collator, make_features


@pytest.mark.parametrize("task", ["token", "sequence"])
def test_fixed_length_padding_gives_the_same_loss_and_gradients_as_dynamic_padding(task):
    """The LS-LLaMA/BiLLM recipe pads every batch to 64 tokens; fsllm pads to the longest example.
    With padding keys masked and padded positions out of the loss, the two recipes are the same
    estimator (only cheaper), so the speed benchmark's dev-F1 differences between them are noise."""
    tok, backbone = word_llama()
    fs = FSConfig(lora_dropout=0.0, head_dropout=0.0)
    if task == "token":
        examples = [
            {"tokens": "John Smith visited Paris .".split(), "tags": ["B-PER", "I-PER", "O", "B-LOC", "O"]},
            {"tokens": "Mary works for Google in London today".split(), "tags": ["B-PER", "O", "O", "B-ORG", "O", "B-LOC", "O"]},
            {"tokens": "the EU".split(), "tags": ["O", "B-ORG"]},
        ]
        label2id = {t: i for i, t in enumerate(["O", "B-PER", "I-PER", "B-LOC", "B-ORG"])}
        model = FSForTokenClassification.from_backbone(backbone, num_labels=len(label2id), fs_config=fs)
    else:
        examples = [{"text": t, "label": y} for t, y in SENTIMENT_ROWS[:4]]
        label2id = {"negative": 0, "positive": 1}
        model = FSForSequenceClassification.from_backbone(backbone, num_labels=2, fs_config=fs)
    feats, _ = make_features(task, examples, tok, label2id, max_length=64)
    model.train()

    def loss_and_grads(pad_to_length):
        batch = make_collator(task, tok, pad_to_length)([dict(f) for f in feats])
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return batch["input_ids"].shape[1], loss.detach(), grads

    dyn_len, dyn_loss, dyn_grads = loss_and_grads(None)
    fix_len, fix_loss, fix_grads = loss_and_grads(64)
    assert (dyn_len, fix_len) == (max(len(f["input_ids"]) for f in feats), 64)
    torch.testing.assert_close(fix_loss, dyn_loss, rtol=1e-5, atol=1e-6)
    assert dyn_grads.keys() == fix_grads.keys() and len(dyn_grads) > 0
    for n in dyn_grads:
        torch.testing.assert_close(fix_grads[n], dyn_grads[n], rtol=1e-4, atol=1e-6, msg=n)
    assert any(g.abs().sum() > 0 for g in dyn_grads.values())
