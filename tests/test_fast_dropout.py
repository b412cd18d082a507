"""FastDropout: the statistics of nn.Dropout, the right gradient, reproducible, and used by the FS models' LoRA."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_backbone
from torch import nn

from fsllm import FSConfig, FSForTokenClassification
from fsllm.fast_dropout import FastDropout, use_fast_lora_dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.05])
def test_drop_rate_scale_and_mean(p):
    torch.manual_seed(0)
    x = torch.full((1000, 1003), 2.0)  # an odd element count: the last 64-bit word is used in part
    out = FastDropout(p).train()(x)
    dropped = (out == 0).double().mean().item()
    n = x.numel()
    assert abs(dropped - p) < 5 * math.sqrt(p * (1 - p) / n)
    kept = out[out != 0]
    p_rounded = round(p * 65536) / 65536
    torch.testing.assert_close(kept, torch.full_like(kept, 2.0 / (1 - p_rounded)))
    # inverted dropout: the mean is kept
    assert abs(out.double().mean().item() - 2.0) < 5 * 2.0 * math.sqrt(p / (1 - p) / n)


def test_masks_of_neighbouring_elements_are_independent():
    """Four elements share one 64-bit word; their keep decisions must still be uncorrelated."""
    torch.manual_seed(1)
    keep = FastDropout(0.5).train()(torch.ones(400_000)).ne(0).double().view(-1, 4)
    c = torch.corrcoef(keep.T)
    off_diagonal = c[~torch.eye(4, dtype=torch.bool)]
    assert off_diagonal.abs().max().item() < 5 / math.sqrt(keep.shape[0])


def test_gradient_is_mask_times_scale():
    torch.manual_seed(2)
    x = torch.randn(7, 33, requires_grad=True)
    drop = FastDropout(0.3).train()
    out = drop(x)
    g = torch.randn_like(out)
    out.backward(g)
    keep = out.detach() != 0
    torch.testing.assert_close(x.grad, g * keep * drop.scale)
    torch.testing.assert_close(out.detach(), x.detach() * keep * drop.scale)


def test_eval_zero_p_and_seed():
    x = torch.randn(5, 9)
    assert FastDropout(0.1).eval()(x) is x
    assert FastDropout(0.0).train()(x) is x
    with pytest.raises(ValueError):
        FastDropout(1.0)
    torch.manual_seed(3)
    a = FastDropout(0.2).train()(x)
    torch.manual_seed(3)
    b = FastDropout(0.2).train()(x)
    c = FastDropout(0.2).train()(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_fs_models_use_it_in_every_lora_layer_and_nothing_else_changes():
    model = FSForTokenClassification.from_backbone(tiny_backbone("llama"), num_labels=3, fs_config=FSConfig(lora_dropout=0.1))
    drops = [d for m in model.modules() if isinstance(getattr(m, "lora_dropout", None), nn.ModuleDict)
             for d in m.lora_dropout.values()]
    assert drops and all(isinstance(d, FastDropout) and d.p == 0.1 for d in drops)
    assert use_fast_lora_dropout(model) == 0  # idempotent
    # eval mode is deterministic and trainable parameters are unchanged by the swap
    x = torch.randint(3, 90, (2, 6))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, model(x).logits)
    no_drop = FSForTokenClassification.from_backbone(tiny_backbone("llama"), num_labels=3, fs_config=FSConfig(lora_dropout=0.0))
    assert model.trainable_parameters() == no_drop.trainable_parameters()
