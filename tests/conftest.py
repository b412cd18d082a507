"""Shared fixtures: tiny random decoder models of every supported family, built from configs."""

from __future__ import annotations

import os

import pytest
import torch
import transformers

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

VOCAB = 101

_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=48,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def _config(family: str, layers: int):
    c = dict(_COMMON, num_hidden_layers=layers)
    if family == "llama":
        return transformers.LlamaConfig(**c)
    if family == "qwen2":
        return transformers.Qwen2Config(**c)
    if family == "qwen3":
        return transformers.Qwen3Config(**c, head_dim=8)
    if family == "mistral":
        # window smaller than the test sequences so the sliding-window path is exercised
        return transformers.MistralConfig(**c, sliding_window=5)
    if family == "gemma3":
        types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
        return transformers.Gemma3TextConfig(
            **c, head_dim=8, sliding_window=5, layer_types=types, query_pre_attn_scalar=8
        )
    if family == "phi3":
        return transformers.Phi3Config(**c)
    if family == "glm":
        return transformers.GlmConfig(**c, head_dim=8)
    raise ValueError(family)


FAMILIES = ["llama", "qwen2", "qwen3", "mistral", "gemma3", "phi3", "glm"]
IMPLEMENTATIONS = ["sdpa", "eager"]


def tiny_backbone(family: str = "llama", impl: str = "sdpa", layers: int = 2, seed: int = 0):
    """A randomly initialised base model (no LM head) of ``family`` in fp32."""
    torch.manual_seed(seed)
    cfg = _config(family, layers)
    cfg._attn_implementation = impl
    model = transformers.AutoModel.from_config(cfg, attn_implementation=impl, dtype=torch.float32)
    return model.eval()


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request):
    return request.param
