"""The released mask: causal / bidirectional / decay semantics, padding, fs_layers.

Each test runs for every supported family and for the backbone's eager and sdpa
attention, on tiny random models built from configs.

Hardening of the same mask: caches and generation through a wrapped backbone, backbones that are
bidirectional by config, layers that never get the FS state, mask caching, bidirectional windows, flex
recompiles.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import transformers
from conftest import VOCAB, _config, tiny_backbone
from transformers import AttentionInterface, DynamicCache

from fsllm import FSConfig, FSForSequenceClassification, FSForTokenClassification
from fsllm.backbones import decoder_layers
from fsllm.errors import FSLLMError

L = 12  # longer than the sliding windows (5) of the mistral and gemma3 tiny configs


def token_model(family, impl, layers=2, **cfg):
    cfg.setdefault("use_lora", False)
    cfg.setdefault("head_dropout", 0.0)
    return FSForTokenClassification.from_backbone(tiny_backbone(family, impl, layers), num_labels=3, fs_config=FSConfig(**cfg)).eval()


def ids(n=L, seed=1, batch=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, n), generator=g)


def perturb_at(x, j):
    y = x.clone()
    y[:, j] = 3 + (y[:, j] - 3 + 17) % (VOCAB - 3)
    return y


@torch.no_grad()
def test_causal_ignores_future_bidirectional_sees_it(family, impl):
    x = ids()
    j = L - 2
    causal = token_model(family, impl, attention="causal")
    a, b = causal(x).logits, causal(perturb_at(x, j)).logits
    torch.testing.assert_close(a[:, :j], b[:, :j], atol=1e-6, rtol=0)

    bidir = token_model(family, impl, attention="bidirectional")
    a, b = bidir(x).logits, bidir(perturb_at(x, j)).logits
    # the token right before j sees it in every family (also through a sliding window)
    assert (a[:, j - 1] - b[:, j - 1]).abs().max() > 1e-4


@torch.no_grad()
def test_causal_mode_equals_unchanged_backbone(family, impl):
    """FS causal reproduces the model's own (transformers) causal attention, sliding windows included."""
    bb = tiny_backbone(family, impl)
    reference = copy.deepcopy(bb)
    x = ids(batch=2)
    mask = torch.ones_like(x)
    mask[1, -3:] = 0  # right padding keeps positions, so the stock model is a fair reference
    expected = reference(input_ids=x, attention_mask=mask).last_hidden_state
    fs = FSForTokenClassification.from_backbone(bb, num_labels=3, fs_config=FSConfig(attention="causal", use_lora=False)).eval()
    got = fs.encode(x, mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_decay_limits(family, impl):
    x = ids(batch=2)
    mask = torch.ones_like(x)
    mask[0, :4] = 0  # left padding in one row
    real = mask.bool()
    bidir = token_model(family, impl, attention="bidirectional")(x, mask).logits
    decay0 = token_model(family, impl, attention="decay", decay_lambda=0.0)(x, mask).logits
    torch.testing.assert_close(decay0[real], bidir[real], atol=1e-5, rtol=0)

    causal = token_model(family, impl, attention="causal")(x, mask).logits
    decay30 = token_model(family, impl, attention="decay", decay_lambda=30.0)(x, mask).logits
    torch.testing.assert_close(decay30[real], causal[real], atol=1e-4, rtol=0)

    decay1 = token_model(family, impl, attention="decay", decay_lambda=1.0)(x, mask).logits
    assert (decay1[real] - causal[real]).abs().max() > 1e-4
    assert (decay1[real] - bidir[real]).abs().max() > 1e-4


def _repeat_kv(t, n):
    return t if n == 1 else t.repeat_interleave(n, dim=1)


@pytest.mark.parametrize("lam", [0.0, 0.7])
@torch.no_grad()
def test_decay_matches_reference_attention(family, impl, lam, monkeypatch):
    """One layer: the attention output equals softmax(q k^T * s - lam * max(0, j - i) + pad) v written out here."""
    model = token_model(family, impl, layers=1, attention="decay", decay_lambda=lam)
    name = model.config.decoder_config._attn_implementation
    inner = AttentionInterface._global_mapping[name]
    seen = {}

    def capture(module, query, key, value, attention_mask, **kwargs):
        out, w = inner(module, query, key, value, attention_mask, **kwargs)
        seen.update(q=query, k=key, v=value, scaling=kwargs["scaling"], out=out, module=module, kw=kwargs)
        return out, w

    monkeypatch.setitem(AttentionInterface._global_mapping, name, capture)
    x = ids(batch=2)
    mask = torch.ones_like(x)
    mask[1, :3] = 0  # left padding
    model(x, mask)

    q, k, v = seen["q"], seen["k"], seen["v"]
    groups = q.shape[1] // k.shape[1]
    k, v = _repeat_kv(k, groups), _repeat_kv(v, groups)
    scores = (q @ k.transpose(-1, -2)) * seen["scaling"]
    i = torch.arange(L)[:, None]
    j = torch.arange(L)[None, :]
    bias = -lam * (j - i).clamp(min=0).float()
    window = getattr(seen["module"], "sliding_window", None) or seen["kw"].get("sliding_window")
    allowed = torch.ones(L, L, dtype=torch.bool)
    if window:
        allowed = (j - i).abs() < window
    allowed = allowed[None, None] & mask.bool()[:, None, None, :]
    scores = scores + bias
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    expected = (probs @ v).transpose(1, 2)  # [B, L, H, D] like the kernels' output
    real = mask.bool()
    torch.testing.assert_close(seen["out"][real], expected[real], atol=2e-5, rtol=1e-4)


MODES = [
    dict(attention="causal"),
    dict(attention="bidirectional"),
    dict(attention="decay", decay_lambda=0.5),
]


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m["attention"])
@pytest.mark.parametrize("pooling", ["mean", "max", "last", "first"])
@torch.no_grad()
def test_sequence_logits_do_not_depend_on_padding(family, impl, mode, pooling):
    model = FSForSequenceClassification.from_backbone(tiny_backbone(family, impl), num_labels=3, fs_config=FSConfig(pooling=pooling, use_lora=False, head_dropout=0.0, **mode)).eval()
    short = ids(7, seed=2)
    alone = model(short).logits
    longer = ids(L, seed=3, batch=2)
    for side in ("left", "right"):
        batch = torch.zeros(3, L, dtype=torch.long)
        mask = torch.zeros(3, L, dtype=torch.long)
        batch[:2], mask[:2] = longer, 1
        if side == "left":
            batch[2, -7:], mask[2, -7:] = short[0], 1
        else:
            batch[2, :7], mask[2, :7] = short[0], 1
        got = model(batch, mask).logits[2:3]
        torch.testing.assert_close(got, alone, atol=1e-5, rtol=0, msg=f"{side} padding")


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m["attention"])
@torch.no_grad()
def test_token_logits_do_not_depend_on_padding(family, impl, mode):
    model = token_model(family, impl, **mode)
    short = ids(7, seed=2)
    alone = model(short).logits
    for side in ("left", "right"):
        batch = torch.full((2, L), 0, dtype=torch.long)
        mask = torch.zeros(2, L, dtype=torch.long)
        batch[0], mask[0] = ids(L, seed=4)[0], 1
        sl = slice(L - 7, L) if side == "left" else slice(0, 7)
        batch[1, sl], mask[1, sl] = short[0], 1
        got = model(batch, mask).logits[1, sl]
        torch.testing.assert_close(got, alone[0], atol=1e-5, rtol=0, msg=f"{side} padding")


def _layer_outputs(model, x):
    outs = []
    hooks = [
        layer.register_forward_hook(lambda m, i, o: outs.append(o[0] if isinstance(o, tuple) else o))
        for layer in decoder_layers(model.backbone)
    ]
    try:
        model.encode(x)
    finally:
        for h in hooks:
            h.remove()
    return outs


@pytest.mark.parametrize("spec,expected", [("last:1", [2]), ([0], [0]), ("first:2", [0, 1])])
@torch.no_grad()
def test_fs_layers_only_chosen_layers_see_the_future(family, impl, spec, expected):
    model = token_model(family, impl, layers=3, attention="bidirectional", fs_layers=spec)
    assert model.fs_layer_ids == expected
    x = ids()
    j = L - 2
    a, b = _layer_outputs(model, x), _layer_outputs(model, perturb_at(x, j))
    first_fs = expected[0]
    for layer in range(3):
        changed = (a[layer][:, j - 1] - b[layer][:, j - 1]).abs().max().item() > 1e-5
        # a layer's output at j-1 depends on token j once any layer up to it is FS
        assert changed == (layer >= first_fs), (layer, changed)


def test_left_padding_does_not_shift_positions():
    """RoPE positions count real tokens only: the first real token is position 0 whatever the padding."""
    model = token_model("llama", "sdpa")
    seen = {}
    hook = model.backbone.register_forward_pre_hook(
        lambda m, args, kwargs: seen.update(pos=kwargs["position_ids"].clone()), with_kwargs=True
    )
    x = ids(5, batch=2)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    with torch.no_grad():
        model(x, mask)
    hook.remove()
    assert seen["pos"][0, 2:].tolist() == [0, 1, 2]
    assert seen["pos"][1, :4].tolist() == [0, 1, 2, 3]


# lambda = 1 over 64 tokens with 4-key horizon blocks: keys more than 52 positions ahead are skipped,
# while the nearer ones (weights e^-1 .. e^-52) must all be kept
FLEX_MODES = [*MODES, dict(attention="decay", decay_lambda=1.0, horizon_block=4, seq_len=64)]


@pytest.mark.slow
@pytest.mark.parametrize("mode", FLEX_MODES, ids=lambda m: f"{m['attention']}{'-horizon' if 'horizon_block' in m else ''}")
@pytest.mark.parametrize("fam", ["llama", "gemma3"])
@torch.no_grad()
def test_flex_attention_matches_sdpa(fam, mode, monkeypatch):
    """flex_attention (block mask + score_mod, compiled: slow on CPU) gives the sdpa logits, padding included."""
    mode = dict(mode)
    if "horizon_block" in mode:  # a horizon shorter than the test sequence, so keys are really skipped
        monkeypatch.setattr("fsllm.attention.DECAY_HORIZON_BLOCK", mode.pop("horizon_block"))
    x = ids(mode.pop("seq_len", L), batch=2)
    mask = torch.ones_like(x)
    mask[0, :4] = 0
    real = mask.bool()
    want = token_model(fam, "sdpa", **mode)(x, mask).logits
    got = token_model(fam, "flex_attention", **mode)(x, mask).logits
    torch.testing.assert_close(got[real], want[real], atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_flex_attention_matches_sdpa_on_a_tiny_model():
    """The default suite's check of the kernel advertised for long inputs (the full grid above is slow):
    a 2-layer Llama on CPU, left padding in the batch, every FS mode in one model each (~15 s, most of it
    flex's first call)."""
    x = ids(L, batch=2)
    mask = torch.ones_like(x)
    mask[0, :4] = 0
    real = mask.bool()
    for mode in (dict(attention="bidirectional"), dict(attention="decay", decay_lambda=0.5), dict(attention="causal")):
        want = token_model("llama", "sdpa", **mode)(x, mask).logits
        flex = token_model("llama", "flex_attention", **mode)
        assert flex.base_attn_implementation == "flex_attention"
        torch.testing.assert_close(flex(x, mask).logits[real], want[real], atol=1e-4, rtol=1e-4, msg=str(mode))


@pytest.mark.slow
@torch.no_grad()
def test_flex_decay_skips_exactly_the_keys_beyond_the_horizon(monkeypatch):
    """With a small horizon bias (6) the skipped keys matter, so flex must equal a softmax reference
    that drops exactly the keys more than ``decay_horizon`` positions ahead (here 8) and no others."""
    from types import SimpleNamespace

    import fsllm.attention as fa

    monkeypatch.setattr(fa, "DECAY_HORIZON_BIAS", 6.0)
    monkeypatch.setattr(fa, "DECAY_HORIZON_BLOCK", 4)
    lam, n = 1.0, 40
    horizon = fa.decay_horizon(lam, n)
    assert horizon == 8
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, 8, generator=g) for _ in range(3))
    state = fa.FSAttentionState(["decay"], torch.tensor([lam]))
    got, _ = fa._flex_forward(SimpleNamespace(training=False), q, k, v, None, state, 0, None, scaling=0.5)
    d = (torch.arange(n)[None, :] - torch.arange(n)[:, None]).float()
    scores = q @ k.transpose(-1, -2) * 0.5 - lam * d.clamp(min=0)
    scores = scores.masked_fill(d > horizon, float("-inf"))
    want = (scores.softmax(-1) @ v).transpose(1, 2)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_decay_horizon():
    """Flex skips future keys whose bias is below -DECAY_HORIZON_BIAS; no horizon when nothing is skipped."""
    from fsllm.attention import DECAY_HORIZON_BIAS, DECAY_HORIZON_BLOCK, decay_horizon

    assert decay_horizon(0.0, 8192) is None  # bidirectional: every key counts
    assert decay_horizon(0.5, 8192) == 128  # 50 / 0.5 = 100 keys, rounded up to a 128-key block
    assert decay_horizon(0.1, 8192) == 512  # 500 keys -> 4 blocks
    assert decay_horizon(0.5, 128) is None  # the horizon reaches the last key: nothing to skip
    for lam in (0.05, 0.3, 1.0, 2.0, 7.0):
        h = decay_horizon(lam, 1 << 20)
        assert h % DECAY_HORIZON_BLOCK == 0
        assert lam * h >= DECAY_HORIZON_BIAS > lam * (h - DECAY_HORIZON_BLOCK)  # keeps every key above -50
    assert math.exp(-DECAY_HORIZON_BIAS) < 1e-20  # negligible next to any kept key at fp32


def test_decay_masks_shared_between_layers_with_the_same_lambda():
    """Fixed, equal lambdas give one float mask per forward; different lambdas their own bias."""
    from fsllm.attention import FSAttentionState, layer_mask

    padding = torch.tensor([[True, True, True, False]])[:, None, None, :]
    state = FSAttentionState(["decay"] * 3, torch.tensor([0.5, 0.5, 2.0]))
    args = (padding, 4, 4, None, torch.float32, torch.device("cpu"), True)
    m0, _ = layer_mask(state, 0, *args)
    m1, _ = layer_mask(state, 1, *args)
    m2, _ = layer_mask(state, 2, *args)
    assert m0 is m1
    d = (torch.arange(4)[None, :] - torch.arange(4)[:, None]).clamp(min=0).float()
    real = torch.tensor([True, True, True, False])
    for m, lam in ((m0, 0.5), (m2, 2.0)):
        assert m.shape == (1, 1, 4, 4)
        # real keys: -lambda * (j - i) for future keys, 0 for past ones; the padding key masked
        assert torch.allclose(m[0, 0][:, real], (-lam * d)[:, real])
        assert (m[0, 0, :3, 3] < -1e30).all()

    learn = torch.tensor([0.5, 0.5, 2.0], requires_grad=True)
    state = FSAttentionState(["decay"] * 3, learn)
    m0, _ = layer_mask(state, 0, *args)
    m0[0, 0, 0, 1].backward()
    assert learn.grad is not None and learn.grad[0].item() == -1.0


def test_decay_horizon_bias_is_a_parameter_of_the_call_and_of_the_state():
    """The horizon threshold travels with the call (``bias``) or the forward's state, not a module global."""
    from fsllm.attention import DECAY_HORIZON_BIAS, FSAttentionState, decay_horizon

    assert decay_horizon(0.5, 8192, DECAY_HORIZON_BIAS) == decay_horizon(0.5, 8192) == 128
    assert decay_horizon(0.5, 8192, 200.0) == 512  # 400 keys -> 4 blocks
    assert decay_horizon(0.5, 8192, math.inf) is None  # no threshold: every future key is computed
    assert FSAttentionState(["decay"]).decay_horizon_bias is None  # None: the library's default


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@torch.no_grad()
def test_mask_observer_sees_every_layer_mask(impl):
    """The observer is called once per layer with the mask that layer attends with."""
    from fsllm.attention import FSAttentionState

    model = token_model("llama", impl, layers=3, attention="decay", decay_lambda=0.5, fs_layers="last:2")
    seen = []
    state = FSAttentionState(model.layer_modes, model.fs_lambdas, mask_observer=lambda i, m: seen.append((i, m)))
    x = ids(batch=2)
    pad = torch.ones_like(x)
    pad[1, -3:] = 0
    model.backbone(input_ids=x, attention_mask=pad, fs_attention=state)
    assert [i for i, _ in seen] == [0, 1, 2]
    causal, decay1, decay2 = (m for _, m in seen)
    assert decay1 is decay2  # one lambda: one float mask shared by the two decay layers
    assert decay1.dtype == torch.float32 and decay1.shape == (2, 1, L, L)
    assert causal is not None and causal is not decay1


def causal_lm(impl: str = "sdpa", family: str = "llama", layers: int = 2, seed: int = 0):
    """A tiny random causal LM (``LlamaForCausalLM`` and friends) from a config."""
    torch.manual_seed(seed)
    cfg = _config(family, layers)
    return transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation=impl, dtype=torch.float32).eval()


def wrapped_and_reference(impl: str, family: str = "llama"):
    """``(lm, reference)``: an LM whose decoder an FS model wraps (LoRA included), and a copy never wrapped."""
    lm = causal_lm(impl, family)
    reference = copy.deepcopy(lm)
    fs = FSForSequenceClassification.from_backbone(lm, num_labels=2)
    fs.eval()
    assert lm.config._attn_implementation == f"fsllm_{impl}"
    return lm, reference


def prompts(padded: bool):
    g = torch.Generator().manual_seed(5)
    x = torch.randint(3, VOCAB, (2, 6), generator=g)
    mask = torch.ones_like(x)
    if padded:  # left padding, as generate wants for decoder-only models
        x[1, :2] = 0
        mask[1, :2] = 0
    return x, mask


# ------------------------------------------------------------------ hardening: static-cache generation


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("family", ["llama", "mistral", "gemma3"])  # full, sliding, and mixed layers
@torch.no_grad()
def test_static_cache_generation_through_wrapped_backbone_equals_unwrapped(family, impl, padded):
    """``generate(cache_implementation="static")`` on the LM an FS model wraps: the same tokens and logits as
    the LM never wrapped (the static cache's keys run past the queries: free slots must stay masked)."""
    lm, reference = wrapped_and_reference(impl, family)
    x, mask = prompts(padded)
    kw = dict(
        max_new_tokens=6, do_sample=False, cache_implementation="static", return_dict_in_generate=True,
        output_logits=True, pad_token_id=0,
    )
    want = reference.generate(input_ids=x, attention_mask=mask, **kw)
    got = lm.generate(input_ids=x, attention_mask=mask, **kw)
    torch.testing.assert_close(torch.stack(got.logits), torch.stack(want.logits), atol=1e-5, rtol=1e-5)
    assert torch.equal(got.sequences, want.sequences)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@torch.no_grad()
def test_dynamic_cache_generation_through_wrapped_backbone_equals_unwrapped(impl):
    lm, reference = wrapped_and_reference(impl, family="mistral")  # sliding window 5 < 12 tokens
    x, mask = prompts(True)
    kw = dict(max_new_tokens=6, do_sample=False, return_dict_in_generate=True, output_logits=True, pad_token_id=0)
    want = reference.generate(input_ids=x, attention_mask=mask, **kw)
    got = lm.generate(input_ids=x, attention_mask=mask, **kw)
    torch.testing.assert_close(torch.stack(got.logits), torch.stack(want.logits), atol=1e-5, rtol=1e-5)
    assert torch.equal(got.sequences, want.sequences)


# ------------------------------------------------------------------ is_causal only when exact


@pytest.mark.parametrize("family", ["llama", "mistral"])
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@torch.no_grad()
def test_multi_token_continuation_from_a_cache_equals_unwrapped(impl, family):
    """Several new tokens in one forward after a DynamicCache prefix (no padding): queries are the last keys,
    so SDPA's top-left-aligned ``is_causal`` would let them see too little; logits must equal the unwrapped LM."""
    lm, reference = wrapped_and_reference(impl, family)
    g = torch.Generator().manual_seed(7)
    prefix, more = torch.randint(3, VOCAB, (2, 5), generator=g), torch.randint(3, VOCAB, (2, 4), generator=g)
    outs = []
    for model in (reference, lm):
        cache = DynamicCache(config=model.config)
        model(input_ids=prefix, past_key_values=cache, use_cache=True)
        outs.append(model(input_ids=more, past_key_values=cache, use_cache=True).logits)
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)


def test_is_causal_fast_path_only_for_a_square_block_from_key_zero():
    from fsllm.attention import FSAttentionState, layer_mask

    state = FSAttentionState(["causal"])
    cpu = torch.device("cpu")
    assert layer_mask(state, 0, None, 4, 4, None, torch.float32, cpu, False) == (None, True)
    assert layer_mask(state, 0, None, 1, 9, None, torch.float32, cpu, False) == (None, False)  # decoding
    mask, is_causal = layer_mask(state, 0, None, 3, 7, None, torch.float32, cpu, False)
    assert not is_causal
    i, j = torch.arange(4, 7)[:, None], torch.arange(7)[None, :]
    assert torch.equal(mask.reshape(3, 7), j <= i)


# ------------------------------------------------------------------ the mask cache and padding


@torch.no_grad()
def test_reused_state_follows_the_padding_of_each_batch():
    """One FSAttentionState for two batches of the same shape and different padding: each gets its own mask."""
    from fsllm.attention import FSAttentionState, layer_mask

    cpu = torch.device("cpu")
    state = FSAttentionState(["bidirectional"])
    a = torch.tensor([[True, True, True, False]])[:, None, None, :]
    b = torch.tensor([[True, False, False, False]])[:, None, None, :]
    args = (4, 4, 3, torch.float32, cpu, True)  # window 3: a real [Q, K] pattern
    ma, _ = layer_mask(state, 0, a, *args)
    mb, _ = layer_mask(state, 0, b, *args)
    want_b, _ = layer_mask(FSAttentionState(["bidirectional"]), 0, b, *args)
    assert torch.equal(mb, want_b)
    assert not torch.equal(ma, mb)

    bb = tiny_backbone("llama", "sdpa")
    fs = FSForTokenClassification.from_backbone(bb, num_labels=2, fs_config=FSConfig(use_lora=False)).eval()
    x = torch.randint(3, VOCAB, (2, 8), generator=torch.Generator().manual_seed(3))
    masks = [torch.ones_like(x), torch.ones_like(x)]
    masks[0][0, -2:] = 0
    masks[1][1, -5:] = 0
    shared = FSAttentionState(fs._layer_modes)
    for m in masks:
        got = bb(input_ids=x, attention_mask=m, fs_attention=shared).last_hidden_state
        want = bb(input_ids=x, attention_mask=m, fs_attention=FSAttentionState(fs._layer_modes)).last_hidden_state
        torch.testing.assert_close(got, want, atol=0, rtol=0)


# ------------------------------------------------------------------ a layer that never gets the state


class DropsKwargs(torch.nn.Module):
    """A decoder-layer wrapper that passes the documented arguments on and drops ``**kwargs``."""

    def __init__(self, layer: torch.nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None, position_ids=None, **_):
        return self.layer(
            hidden_states, attention_mask=attention_mask, position_embeddings=position_embeddings,
            position_ids=position_ids,
        )


class OwnAttention(torch.nn.Module):
    """An attention module that computes causal SDPA itself instead of calling transformers' attention interface."""

    def __init__(self, attn: torch.nn.Module):
        super().__init__()
        self.attn = attn

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
        a = self.attn
        shape = (*hidden_states.shape[:-1], -1, a.head_dim)
        q, k, v = (p(hidden_states).view(shape).transpose(1, 2) for p in (a.q_proj, a.k_proj, a.v_proj))
        k, v = (t.repeat_interleave(a.num_key_value_groups, dim=1) for t in (k, v))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return a.o_proj(out.transpose(1, 2).reshape(*hidden_states.shape[:-1], -1)), None


@torch.no_grad()
def test_a_layer_that_drops_kwargs_still_gets_the_state():
    """The state reaches attention through a context variable, not through the layers' **kwargs."""
    bb = tiny_backbone("llama", "sdpa", layers=3)
    fs = FSForTokenClassification.from_backbone(bb, num_labels=2, fs_config=FSConfig(use_lora=False)).eval()
    x = torch.randint(3, VOCAB, (1, 8), generator=torch.Generator().manual_seed(3))
    want = fs.encode(x)
    bb.layers[1] = DropsKwargs(bb.layers[1])
    torch.testing.assert_close(fs.encode(x), want, atol=0, rtol=0)


@torch.no_grad()
def test_a_layer_that_never_receives_the_state_is_an_error():
    bb = tiny_backbone("llama", "sdpa", layers=3)
    fs = FSForTokenClassification.from_backbone(bb, num_labels=2, fs_config=FSConfig(use_lora=False)).eval()
    x = torch.randint(3, VOCAB, (1, 8), generator=torch.Generator().manual_seed(3))
    fs(x)  # every layer receives it
    bb.layers[1].self_attn = OwnAttention(bb.layers[1].self_attn)
    with pytest.raises(FSLLMError, match=r"LlamaModel: decoder layer\(s\) \[1\] \(LlamaDecoderLayer\) never received"):
        fs(x)


def test_check_complete_counts_the_layers_that_consulted_the_state():
    from fsllm.attention import FSAttentionState

    state = FSAttentionState(["bidirectional"] * 3)
    for i in (0, 2):
        state.consult(i)
    with pytest.raises(FSLLMError, match=r"Arch: decoder layer\(s\) \[1\] never received"):
        state.check_complete(3, "Arch")
    for i in range(3):
        state.consult(i)
    state.check_complete(3, "Arch")


# ------------------------------------------------------------------ backbones bidirectional by config


def bidirectional_backbone(kind: str, impl: str):
    torch.manual_seed(0)
    if kind == "gemma3-bidirectional":
        cfg = _config("gemma3", 2)
        # the config halves the window it is given (w // 2 + 1), as it is saved: rebuild it from the dict
        cfg = transformers.Gemma3TextConfig(**{**cfg.to_dict(), "sliding_window": 8, "use_bidirectional_attention": True})
    else:
        cfg = _config(kind.split("-")[0], 2)
        cfg.is_causal = False
    return transformers.AutoModel.from_config(cfg, attn_implementation=impl, dtype=torch.float32).eval()


BIDIRECTIONAL_BY_CONFIG = ["gemma3-bidirectional", "llama-is_causal_false", "mistral-is_causal_false"]


@pytest.mark.parametrize("kind", BIDIRECTIONAL_BY_CONFIG)
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@torch.no_grad()
def test_backbone_bidirectional_by_config_stays_bidirectional(kind, impl):
    """For a backbone bidirectional by its own config, fsllm's ``causal`` mode and calls without FS state are
    that backbone unchanged (windows included), not a causal model."""
    bb = bidirectional_backbone(kind, impl)
    reference = copy.deepcopy(bb)
    x = torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(x)
    mask[1, -3:] = 0  # right padding: the positions of the real tokens are the same for every caller
    real = mask.bool()
    want = reference(input_ids=x, attention_mask=mask).last_hidden_state
    fs = FSForTokenClassification.from_backbone(bb, num_labels=2, fs_config=FSConfig(attention="causal", use_lora=False)).eval()
    torch.testing.assert_close(fs.encode(x, mask)[real], want[real], atol=1e-5, rtol=1e-5)
    no_state = bb(input_ids=x, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(no_state[real], want[real], atol=1e-5, rtol=1e-5)


def test_mask_overlays_fs_attention_cannot_reproduce_are_refused():
    import inspect

    from transformers.masking_utils import create_causal_mask

    bb = tiny_backbone("llama", "sdpa")
    FSForTokenClassification.from_backbone(bb, num_labels=2, fs_config=FSConfig(use_lora=False))
    embeds = torch.zeros(1, 6, 32)
    # transformers 5.24 renamed the argument past_key_values -> cache
    no_cache = {"cache" if "cache" in inspect.signature(create_causal_mask).parameters else "past_key_values": None}
    with pytest.raises(FSLLMError, match="or_mask_function"):
        create_causal_mask(
            config=bb.config, inputs_embeds=embeds, attention_mask=torch.ones(1, 6, dtype=torch.long), **no_cache,
            or_mask_function=lambda b, h, q, kv: kv < 2,
        )
    # packed sequences: position ids that restart, no attention mask
    packed = torch.tensor([[0, 1, 2, 0, 1, 2]])
    with pytest.raises(FSLLMError, match="packed sequences"):
        bb(input_ids=torch.full((1, 6), 5), position_ids=packed, use_cache=False)


def test_check_backbone_refuses_what_fs_attention_cannot_express():
    from fsllm.attention import check_backbone

    assert check_backbone(tiny_backbone("gemma3").config) == "causal"
    for kind in BIDIRECTIONAL_BY_CONFIG:
        assert check_backbone(bidirectional_backbone(kind, "sdpa").config) == "bidirectional"
    cfg = _config("llama", 2)
    cfg.layer_types = ["full_attention", "linear_attention"]
    with pytest.raises(FSLLMError, match="linear_attention.*use a pure-attention decoder"):
        check_backbone(cfg)


# ------------------------------------------------------------------ bidirectional sliding windows


def window_reference(q, k, v, window: int, padding: torch.Tensor, scaling: float):
    """softmax attention written out: key j is seen from query i iff |i - j| < window and j is real."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    n = q.shape[2]
    d = torch.arange(n)[None, :] - torch.arange(n)[:, None]
    allowed = (d.abs() < window)[None, None] & padding[:, None, None, :]
    scores = (q @ k.transpose(-1, -2) * scaling).masked_fill(~allowed, float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@torch.no_grad()
def test_bidirectional_window_keeps_the_trained_past_and_as_many_future_keys(impl, monkeypatch):
    """A causal window w (w - 1 past keys) becomes |i - j| < w: 2w - 1 keys, the trained past left whole."""
    from transformers import AttentionInterface

    model = FSForTokenClassification.from_backbone(tiny_backbone("mistral", impl, layers=1), num_labels=3, fs_config=FSConfig(attention="bidirectional", use_lora=False)).eval()
    name = model.config.decoder_config._attn_implementation
    inner = AttentionInterface._global_mapping[name]
    seen = {}

    def capture(module, query, key, value, attention_mask, **kwargs):
        out, w = inner(module, query, key, value, attention_mask, **kwargs)
        seen.update(q=query, k=key, v=value, scaling=kwargs["scaling"], out=out)
        return out, w

    monkeypatch.setitem(AttentionInterface._global_mapping, name, capture)
    x = torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(x)
    mask[1, :3] = 0
    model(x, mask)
    window = model.config.decoder_config.sliding_window
    assert window == 5
    want = window_reference(seen["q"], seen["k"], seen["v"], window, mask.bool(), seen["scaling"])
    real = mask.bool()
    torch.testing.assert_close(seen["out"][real], want[real], atol=2e-5, rtol=1e-4)

    from fsllm.attention import FSAttentionState, layer_mask

    pattern, _ = layer_mask(FSAttentionState(["bidirectional"]), 0, real[:1, None, None, :], 12, 12, window,
                            torch.float32, torch.device("cpu"), False)
    assert pattern[0, 0].sum(-1).max().item() == 2 * window - 1


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["bidirectional", "decay"])
@torch.no_grad()
def test_flex_bidirectional_window_matches_the_reference(mode):
    """The flex path keeps the same |i - j| < w window as eager/sdpa (lambda 0: decay is bidirectional)."""
    from types import SimpleNamespace

    from fsllm.attention import FSAttentionState, _flex_forward

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 24, 8, generator=g) for _ in range(3))
    padding = torch.ones(2, 24, dtype=torch.bool)
    padding[1, :5] = False
    state = FSAttentionState([mode], torch.tensor([0.0]) if mode == "decay" else None)
    got, _ = _flex_forward(SimpleNamespace(training=False), q, k, v, padding[:, None, None, :], state, 0, 5, scaling=0.5)
    want = window_reference(q, k, v, 5, padding, 0.5)
    torch.testing.assert_close(got[padding], want[padding], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ attention implementations a backbone loads with


def test_load_backbone_refuses_bad_attention_implementations_with_one_line(tiny_model_dir, monkeypatch):
    from fsllm import load_backbone

    with pytest.raises(FSLLMError, match="'flash_attention_9': FS attention wraps sdpa, eager, flex_attention"):
        load_backbone(str(tiny_model_dir), attn_implementation="flash_attention_9")
    monkeypatch.setattr(transformers.LlamaPreTrainedModel, "_supports_flex_attn", False)
    with pytest.raises(FSLLMError, match="attn_implementation='flex_attention'") as e:
        load_backbone(str(tiny_model_dir), attn_implementation="flex_attention")
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ flex_attention recompiles


@pytest.mark.slow
@torch.no_grad()
def test_flex_variants_reuse_compiled_kernels():
    """Modes, windows, lambdas, query offsets and lengths change tensors captured by the flex closures, not
    the compiled code: a handful of graphs in all (first call, the unmasked full-attention call, the switch to
    dynamic shapes), where capturing Python numbers compiled one per variant (8 here: torch's recompile limit)."""
    from types import SimpleNamespace

    import torch._dynamo
    from torch._dynamo.utils import counters

    from fsllm.attention import FSAttentionState, _flex_forward

    torch._dynamo.reset()
    counters.clear()
    g = torch.Generator().manual_seed(0)
    variants = [  # mode, keys, window, lambda, queries (fewer: the last ones, as when continuing from a cache)
        ("causal", 32, None, None, 32), ("causal", 32, 5, None, 32), ("causal", 32, 7, None, 32),
        ("bidirectional", 32, 5, None, 32), ("decay", 32, None, 0.5, 32), ("decay", 32, None, 1.0, 32),
        ("causal", 48, 5, None, 48), ("bidirectional", 48, 9, None, 48), ("decay", 48, 5, 0.3, 48),
        ("causal", 40, 6, None, 40), ("causal", 40, None, None, 24), ("decay", 40, 3, 2.0, 17),
    ]
    for mode, n, window, lam, q_len in variants:
        q = torch.randn(1, 2, q_len, 8, generator=g)
        k, v = torch.randn(1, 2, n, 8, generator=g), torch.randn(1, 2, n, 8, generator=g)
        state = FSAttentionState([mode], torch.tensor([lam]) if lam is not None else None)
        _flex_forward(SimpleNamespace(training=False), q, k, v, None, state, 0, window, scaling=0.5)
    assert counters["stats"]["unique_graphs"] <= 3, dict(counters["stats"])
