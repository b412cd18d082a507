"""Every causal-LM family transformers registers: exact under fsllm, refused in one line, or not buildable.

The whole sweep (``backbone_sweep.py``, a few minutes) is a slow test; one representative of each class of
family that needed work runs in the default suite, in process, against the same expectation table.
"""

from __future__ import annotations

import pytest
import torch
from backbone_sweep import check_family, differences, load_expected, model_types, render_doc, sweep

#: one family per class of docs/backbones.md: MoE experts as parameters, GPT-2 Conv1D, layers dropping **kwargs,
#: a multimodal wrapper, a hybrid (refused), chunked attention, a per-head score mask, a Linear-subclass router,
#: full layers whose modules keep the window size
REPRESENTATIVES = ["glm4_moe", "gpt2", "stablelm", "gemma3", "olmo_hybrid", "llama4_text", "doge", "phimoe", "exaone4"]


@pytest.mark.parametrize("model_type", REPRESENTATIVES)
def test_representative_family_has_its_expected_outcome(model_type):
    expected = load_expected()[model_type]
    assert check_family(model_type) == expected


def test_popular_families_are_exact():
    """The families users ask for by name: exact in the committed table (the slow sweep keeps the table true)."""
    expected = load_expected()
    for model_type in ["llama", "mistral", "qwen2", "qwen3", "gemma3", "gemma3_text", "glm4_moe", "gpt2", "stablelm",
                       "llama4_text", "llama4", "phi3", "mixtral", "qwen3_moe", "deepseek_v3"]:
        assert expected[model_type]["status"] == "exact", model_type


def test_every_family_is_exact_refused_or_not_buildable():
    """Nothing fails: a family fsllm wraps is exact, or fsllm refuses it in one line."""
    expected = load_expected()
    assert not [t for t, o in expected.items() if o["status"] == "fails"]
    assert all("\n" not in o["reason"] for o in expected.values())


def test_the_doc_is_the_table_the_sweep_produces():
    from backbone_sweep import DOC

    assert DOC.read_text() == render_doc(load_expected())


def test_differences_name_new_changed_and_removed_families():
    expected = {"a": {"status": "exact", "reason": ""}, "b": {"status": "refused", "reason": "x"}}
    got = {"a": {"status": "refused", "reason": "y"}, "c": {"status": "exact", "reason": ""}}
    lines = differences(got, expected)
    assert lines[0].startswith("a: expected exact") and lines[1].startswith("b: no longer registered")
    assert lines[2] == "c: new family, exact"


@pytest.mark.slow
def test_sweep_of_every_registered_causal_lm_family():
    got = sweep(model_types())
    changes = differences(got, load_expected())
    assert not changes, "\n".join(["outcomes changed (python tests/backbone_sweep.py --update):", *changes])


# ------------------------------------------------------------------ the FS state under gradient checkpointing


def _stablelm(seed: int = 0):
    from backbone_sweep import tiny_config
    from transformers import AutoModel

    torch.manual_seed(seed)
    return AutoModel.from_config(tiny_config("stablelm"), attn_implementation="sdpa", dtype=torch.float32)


def test_gradient_checkpointing_recomputes_with_the_fs_state():
    """StableLM's layers drop **kwargs, so the state reaches attention only through the context variable; the
    checkpointed recomputation runs in the backward, outside it, and must still see it: same loss, same gradients."""
    from fsllm import FSConfig, FSForTokenClassification

    x = torch.randint(3, 100, (2, 8), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(x)
    mask[1, -3:] = 0
    labels = torch.where(mask.bool(), 1, -100)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = FSForTokenClassification.from_backbone(_stablelm(), num_labels=2, fs_config=FSConfig(lora_dropout=0.0))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
        if checkpointing:
            model.gradient_checkpointing_enable()
        model.train()
        loss = model(input_ids=x, attention_mask=mask, labels=labels).loss
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (loss0, g0), (loss1, g1) = grads
    torch.testing.assert_close(loss1, loss0)
    assert g0.keys() == g1.keys() and any("lora_A" in n for n in g0)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], atol=1e-6, rtol=1e-5, msg=n)


@pytest.mark.parametrize("model_type", ["llama4_text", "doge"])
@pytest.mark.parametrize("mode", ["bidirectional", "causal"])
@torch.no_grad()
def test_chunked_and_score_mask_families_are_exact_under_left_padding(model_type, mode):
    """Llama 4's chunks start at the first real token and Doge's score mask carries the padding: a left-padded
    sentence equals it alone, in the released mode and in the causal one."""
    from backbone_sweep import tiny_config
    from transformers import AutoModel

    from fsllm import FSConfig, FSForTokenClassification

    torch.manual_seed(0)
    backbone = AutoModel.from_config(tiny_config(model_type), attn_implementation="sdpa", dtype=torch.float32)
    model = FSForTokenClassification.from_backbone(backbone, num_labels=2, fs_config=FSConfig(attention=mode)).eval()
    x = torch.randint(3, 100, (2, 11), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(x)
    mask[0, :3] = 0  # 8 real tokens after 3 pads: chunks of 4 by key index would split them 1 + 4 + 3
    alone = model.encode(x[:1, 3:])
    padded = model.encode(x, mask)[:1, 3:]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)
