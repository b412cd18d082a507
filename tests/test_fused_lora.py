"""The fused LoRA forward (fsllm.fused_lora) is PEFT's function, faster."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import word_llama
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import Linear as LoraLinear

from fsllm import FSConfig, FSForTokenClassification
from fsllm.fused_lora import FusedLoraLinear, use_fused_lora


def _pair(alpha: int, r: int):
    _, backbone = word_llama()
    peft_model = get_peft_model(backbone, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0,
                                                     target_modules=["q_proj", "v_proj", "down_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():  # B away from its zero init, so the update matters
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    fused = copy.deepcopy(peft_model)
    assert use_fused_lora(fused) == 6 and use_fused_lora(fused) == 0  # 3 targets x 2 layers, once
    return peft_model, fused


@pytest.mark.parametrize(("alpha", "r", "tol"), [(32, 8, 0.0), (3, 2, 1e-5)])  # scaling 4 (exact), 1.5
def test_fused_forward_and_gradients_equal_pefts(alpha, r, tol):
    ref, fused = _pair(alpha, r)
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    outs = []
    for m in (ref, fused):
        m.train()
        h = m(input_ids=ids, attention_mask=mask).last_hidden_state
        (h.float() ** 2).mean().backward()
        outs.append((h.detach(), {n: p.grad for n, p in m.named_parameters() if p.requires_grad}))
    assert (outs[0][0] - outs[1][0]).abs().max() <= tol * outs[0][0].abs().max()
    for n, g in outs[0][1].items():
        assert (g - outs[1][1][n]).abs().max() <= max(tol, 1e-7) * (g.abs().max() + 1), n


def test_fused_layers_fall_back_to_peft_when_merged_or_disabled():
    ref, fused = _pair(32, 8)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        want = ref(input_ids=ids).last_hidden_state
        with fused.disable_adapter():
            plain = fused(input_ids=ids).last_hidden_state
        assert not torch.allclose(plain, want)  # adapters off: the backbone alone
        merged = fused.merge_and_unload()  # PEFT's merge works on the swapped class
        assert not any(isinstance(m, LoraLinear) for m in merged.modules())
        assert torch.allclose(merged(input_ids=ids).last_hidden_state, want, atol=1e-5)


def test_fs_models_use_the_fused_forward_and_keep_their_adapter_format(tmp_path, tiny_model_dir):
    model = FSForTokenClassification.from_backbone(str(tiny_model_dir), fs_config=FSConfig(),
                                                   id2label={0: "O", 1: "B-PER"})
    lora = [m for m in model.modules() if isinstance(m, LoraLinear)]
    assert lora and all(type(m) is FusedLoraLinear for m in lora)
    model.save_pretrained(tmp_path / "m")
    again = FSForTokenClassification.from_pretrained(tmp_path / "m")
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        assert torch.equal(model.eval()(input_ids=ids).logits, again(input_ids=ids).logits)
