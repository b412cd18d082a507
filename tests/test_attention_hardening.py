"""Hardening of the released mask: caches and generation through a wrapped backbone, backbones that are
bidirectional by config, layers that never get the FS state, mask caching, bidirectional windows, flex
recompiles. Tiny random models built from configs, as in ``test_attention.py``.
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers
from conftest import VOCAB, _config, tiny_backbone
from transformers import DynamicCache

from fsllm import FSConfig, FSForSequenceClassification, FSForTokenClassification
from fsllm.errors import FSLLMError


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


# ------------------------------------------------------------------ 1. static-cache generation


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


# ------------------------------------------------------------------ 2. is_causal only when exact


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


# ------------------------------------------------------------------ 6. the mask cache and padding


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


# ------------------------------------------------------------------ 5. a layer that never gets the state


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


@torch.no_grad()
def test_a_layer_that_never_receives_the_state_is_an_error():
    bb = tiny_backbone("llama", "sdpa", layers=3)
    fs = FSForTokenClassification.from_backbone(bb, num_labels=2, fs_config=FSConfig(use_lora=False)).eval()
    x = torch.randint(3, VOCAB, (1, 8), generator=torch.Generator().manual_seed(3))
    fs(x)  # every layer receives it
    bb.layers[1] = DropsKwargs(bb.layers[1])
    with pytest.raises(FSLLMError, match=r"LlamaModel: decoder layer\(s\) \[1\] \(DropsKwargs\) never received"):
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


# ------------------------------------------------------------------ 4. backbones bidirectional by config


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
    from transformers.masking_utils import create_causal_mask

    bb = tiny_backbone("llama", "sdpa")
    FSForTokenClassification.from_backbone(bb, num_labels=2, fs_config=FSConfig(use_lora=False))
    embeds = torch.zeros(1, 6, 32)
    with pytest.raises(FSLLMError, match="or_mask_function"):
        create_causal_mask(
            config=bb.config, inputs_embeds=embeds, attention_mask=torch.ones(1, 6, dtype=torch.long), cache=None,
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
    with pytest.raises(FSLLMError, match="linear_attention"):
        check_backbone(cfg)


# ------------------------------------------------------------------ 7. bidirectional sliding windows


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


# ------------------------------------------------------------------ 8. validation: one clear line


def test_fs_config_refuses_values_that_break_the_forward():
    from fsllm import ConfigError

    for lam in (float("inf"), float("nan"), -1.0):
        with pytest.raises(ConfigError, match="decay_lambda must be a finite number"):
            FSConfig(attention="decay", decay_lambda=lam)
    for field_name in ("lora_r", "lora_alpha"):
        for value in (0, -8):
            with pytest.raises(ValueError, match=f"{field_name} must be > 0"):
                FSConfig(**{field_name: value})
    with pytest.raises(ValueError, match=r"duplicate layer \[0\]"):
        FSConfig(fs_layers=[0, -2]).resolve_layers(2)
    with pytest.raises(ValueError, match="out of range"):
        FSConfig(fs_layers=[0, 2]).resolve_layers(2)
    assert FSConfig(fs_layers=[-1, 0]).resolve_layers(2) == [0, 1]


def test_train_config_validates_before_anything_runs():
    from fsllm import ConfigError
    from fsllm.training import TrainConfig

    bad = [
        dict(epochs=-1), dict(epochs=0), dict(epochs=float("nan")), dict(batch_size=0), dict(eval_batch_size=-2),
        dict(learning_rate=0), dict(learning_rate=-1e-3), dict(precision="fp8"), dict(max_steps=0),
        dict(max_length=0), dict(train_subset=0), dict(eval_steps=0), dict(warmup_ratio=1.5),
        dict(attn_implementation="flash_attention_9"),
    ]
    for kw in bad:
        with pytest.raises(ConfigError, match=next(iter(kw))):
            TrainConfig(**kw)
    TrainConfig(epochs=-1, max_steps=5)  # max_steps decides: epochs are ignored


def test_load_backbone_refuses_bad_attention_implementations_with_one_line(tiny_model_dir, monkeypatch):
    from fsllm import load_backbone

    with pytest.raises(FSLLMError, match="'flash_attention_9': FS attention wraps sdpa, eager, flex_attention"):
        load_backbone(str(tiny_model_dir), attn_implementation="flash_attention_9")
    monkeypatch.setattr(transformers.LlamaPreTrainedModel, "_supports_flex_attn", False)
    with pytest.raises(FSLLMError, match="attn_implementation='flex_attention'") as e:
        load_backbone(str(tiny_model_dir), attn_implementation="flex_attention")
    assert "\n" not in str(e.value)


def write_tiny_csv(folder):
    folder.mkdir()
    rows = "text,label\n" + "".join(f"{t},{lab}\n" for t, lab in [("good film", "pos"), ("bad plot", "neg")] * 4)
    for split in ("train", "dev", "test"):
        (folder / f"{split}.csv").write_text(rows)
    return folder


@pytest.mark.parametrize(
    "args,message",
    [
        (["--epochs", "-1"], "epochs must be > 0"),
        (["--batch-size", "0"], "batch_size must be a positive integer"),
        (["--lr", "0"], "learning_rate must be > 0"),
        (["--max-steps", "0"], "max_steps must be > 0"),
        (["--attention", "decay", "--decay-lambda", "inf"], "decay_lambda must be a finite number"),
        (["--lora-r", "0"], "lora_r must be > 0"),
        (["--lora-alpha", "-4"], "lora_alpha must be > 0"),
        (["--fs-layers", "0,-2"], "duplicate layer"),
    ],
)
def test_cli_train_refuses_bad_options_before_writing_anything(tmp_path, tiny_model_dir, capsys, args, message):
    from fsllm.cli import main

    data = write_tiny_csv(tmp_path / "data")
    run = tmp_path / "run"
    default_runs = tmp_path / "cwd"
    default_runs.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(default_runs)  # a run without --output would land in ./runs
        rc = main(["train", "--data", str(data), "--model", str(tiny_model_dir), "--output", str(run), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("fsllm: error: ") and message in err[0], err
    assert not run.exists()
    assert not any(default_runs.iterdir())


# ------------------------------------------------------------------ 9. flex_attention recompiles


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
