"""Global feature release: the attention mask of an FS model.

For a query at position i and a key at position j the FS attention adds

    -lambda * max(0, j - i)

to the attention logit before the softmax (a weight ``exp(-lambda d)`` on future
keys at distance ``d``); past and current keys are untouched and padding keys are
always masked. ``bidirectional`` is lambda = 0, ``causal`` is the unchanged model.

How it plugs into transformers (5.x) without touching a modeling file:

* ``AttentionMaskInterface``: the mask builder registered under ``fsllm_<impl>``
  returns only the *key padding* ``[B, 1, 1, K]`` (or ``None``). The model calls it
  once per forward, as it does for its own masks.
* ``AttentionInterface``: the attention function registered under ``fsllm_<impl>``
  receives that padding mask, builds the mask of its own layer (causal,
  bidirectional or decayed, with the layer's sliding window) and calls the
  backbone's own kernel: transformers' ``sdpa``, the modeling file's
  ``eager_attention_forward``, or ``flex_attention`` with a block mask and a
  ``score_mod`` for the decay (the block mask also skips future keys beyond the decay
  horizon, where the weight is below e^-50: see ``decay_horizon``).
* Which layer gets which mode, and the (possibly learnable) lambdas, travel with
  the forward call as the keyword argument ``fs_attention`` (an ``FSAttentionState``),
  which every current decoder passes down to its attention function. Calling the
  backbone without it gives the plain causal model, so the same weights still
  generate text.

Why not zero out the mask (LS-LLaMA, BiLLM): an all-zero mask lets real tokens
attend to padding, so a prediction depends on what else is in the batch.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .errors import FSLLMError

PREFIX = "fsllm_"
#: backbone attention implementations that FS attention can wrap
SUPPORTED_IMPLEMENTATIONS = ("sdpa", "eager", "flex_attention")


@dataclass
class FSAttentionState:
    """Per-forward description of the released mask, passed as ``fs_attention=``.

    ``layer_modes[i]`` is ``"causal"``, ``"bidirectional"`` or ``"decay"`` for layer i;
    ``lambdas[i]`` (a tensor, possibly requiring grad) is layer i's decay rate.
    Masks are built once per forward and shared by all layers that need the same one.
    """

    layer_modes: list[str]
    lambdas: torch.Tensor | None = None
    _cache: dict = field(default_factory=dict, repr=False)
    _lambda_values: list[float] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # Fixed lambdas are read once, so layers with the same rate share one mask
        # (the usual case: one float mask per forward instead of one per layer).
        if self.lambdas is not None and not self.lambdas.requires_grad:
            self._lambda_values = [float(v) for v in self.lambdas.detach().reshape(-1).tolist()]

    def mode(self, layer_idx: int | None) -> str:
        if layer_idx is None:
            return self.layer_modes[0]
        return self.layer_modes[layer_idx]


def _structure(q_len: int, k_len: int, mode: str, window: int | None, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Allowed pattern ``[Q, K]`` (bool) ignoring padding, and the distance ``j - i`` (long)."""
    i = torch.arange(k_len - q_len, k_len, device=device)[:, None]  # queries are the last q_len positions
    j = torch.arange(k_len, device=device)[None, :]
    d = j - i
    if mode == "causal":
        allowed = d <= 0
        if window:
            allowed = allowed & (-d < window)
    else:
        allowed = torch.ones_like(d, dtype=torch.bool)
        if window:
            allowed = d.abs() < window
    return allowed, d


def layer_mask(
    state: FSAttentionState,
    layer_idx: int | None,
    key_padding: torch.Tensor | None,
    q_len: int,
    k_len: int,
    window: int | None,
    dtype: torch.dtype,
    device: torch.device,
    want_float: bool,
) -> tuple[torch.Tensor | None, bool]:
    """The mask of one layer and whether SDPA may use its ``is_causal`` fast path.

    Returns a bool mask (True = attend) when ``want_float`` is False and the mode
    has no bias, else an additive float mask (0 = attend, dtype min = masked).
    ``None`` means "no mask": full attention, or causal with ``is_causal=True``.
    """
    mode = state.mode(layer_idx)
    has_padding = key_padding is not None
    if not has_padding and not window and mode in ("bidirectional", "causal") and not want_float:
        return None, mode == "causal"
    if mode == "decay" and state.lambdas is None:
        raise FSLLMError("decay attention needs lambdas in FSAttentionState")

    index = layer_idx if layer_idx is not None else 0
    fixed = mode != "decay" or state._lambda_values is not None
    key = (mode, window, q_len, k_len, want_float or mode == "decay")
    if mode == "decay" and fixed:
        key = key + (state._lambda_values[index],)
    if fixed:
        cached = state._cache.get(key)
        if cached is not None:
            return cached, False

    if mode == "decay":
        # The additive pattern mask and the distance bias do not depend on lambda:
        # build them once per forward, then each layer costs one fused multiply-add.
        base_key = ("decay-base", window, q_len, k_len)
        base = state._cache.get(base_key)
        if base is None:
            base = _pattern_mask(mode, key_padding, q_len, k_len, window, dtype, device, True)
            _, d = _structure(q_len, k_len, mode, window, device)
            base = (base, d.clamp(min=0).to(dtype)[None, None])
            state._cache[base_key] = base
        if fixed:
            mask = torch.add(base[0], base[1], alpha=-state._lambda_values[index])
        else:  # learnable: keep the graph to lambda
            mask = base[0] - state.lambdas[index].to(dtype) * base[1]
    else:
        mask = _pattern_mask(mode, key_padding, q_len, k_len, window, dtype, device, want_float)
    if fixed:
        state._cache[key] = mask
    return mask, False


def _pattern_mask(mode, key_padding, q_len, k_len, window, dtype, device, want_float) -> torch.Tensor:
    """Which keys each query may see: bool (True = attend) or additive float (0 / dtype min)."""
    allowed, d = _structure(q_len, k_len, mode, window, device)
    allowed = allowed[None, None]  # [1, 1, Q, K]
    if key_padding is not None and mode == "bidirectional" and not window:
        allowed = key_padding  # [B, 1, 1, K]: every row keeps its sequence's real keys
    elif key_padding is not None:
        # A padding query that would see no key at all attends to itself, so no row
        # of the softmax is empty (an empty row gives NaN, and NaN * 0 still leaks
        # into real rows through the value matmul of the next layer).
        eye = (d == 0)[None, None]
        allowed = allowed & (key_padding | eye)
    if not want_float:
        return allowed
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


def _eager_of(module: torch.nn.Module) -> Callable:
    """The backbone's own eager attention, from its modeling module."""
    fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if fn is None:
        raise FSLLMError(
            f"{type(module).__module__} has no eager_attention_forward; use attn_implementation='sdpa'"
        )
    return fn


#: Future keys whose decay bias ``-lambda * d`` is below ``-DECAY_HORIZON_BIAS`` are skipped by
#: the flex kernel (whole blocks of them are never computed). Their weight is at most
#: ``exp(-50) ~ 2e-22`` times that of a key with the same logit, far below fp32 resolution
#: unless such a key's logit beats every kept key's by more than ~34 nats. This turns decay
#: attention into "causal plus a band of 50 / lambda future keys": for lambda > 0 its cost
#: approaches the causal kernel's at long sequence lengths instead of full attention's.
DECAY_HORIZON_BIAS = 50.0
#: the horizon is rounded up to whole blocks of flex's default block size: the kernel skips whole
#: blocks anyway, and a learnable lambda then changes the block mask (and what it compiles) only
#: when its horizon crosses a block boundary, not at every step
DECAY_HORIZON_BLOCK = 128


def decay_horizon(lam: float, k_len: int) -> int | None:
    """Largest future distance the flex path computes for decay rate ``lam`` (``None``: all).

    At least ``DECAY_HORIZON_BIAS / lam`` (every key with a bias of -50 or more is kept), rounded
    up to a multiple of ``DECAY_HORIZON_BLOCK``.
    """
    if lam <= 0:
        return None
    blocks = math.ceil(DECAY_HORIZON_BIAS / lam / DECAY_HORIZON_BLOCK)
    horizon = blocks * DECAY_HORIZON_BLOCK
    return horizon if horizon < k_len else None


def _flex_forward(module, query, key, value, key_padding, state, layer_idx, window, scaling=None, softcap=None, **_):
    """FS attention with ``flex_attention``: the pattern is a block mask and the decay a ``score_mod``,
    so no ``[L, L]`` tensor is ever built (memory linear in L; the kernel skips masked blocks,
    and for decay the blocks beyond ``decay_horizon``)."""
    from torch.nn.attention.flex_attention import create_block_mask
    from transformers.integrations.flex_attention import compile_friendly_flex_attention, repeat_kv

    mode = state.mode(layer_idx)
    batch, heads, q_len, _ = query.shape
    k_len = key.shape[2]
    offset = k_len - q_len
    pad = key_padding[:, 0, 0, :] if key_padding is not None else None
    index = layer_idx if layer_idx is not None else 0
    lam = state.lambdas[index] if mode == "decay" else None
    horizon = None
    if lam is not None:
        # Fixed rates were read to the host once per forward; a learnable one costs one sync per layer.
        value_now = state._lambda_values[index] if state._lambda_values is not None else float(lam.detach())
        horizon = decay_horizon(value_now, k_len)
    cache_key = ("flex", mode, window, q_len, k_len, horizon)
    if cache_key in state._cache:
        block_mask = state._cache[cache_key]
    elif pad is None and mode != "causal" and not window and horizon is None:
        block_mask = state._cache[cache_key] = None  # full attention: no mask at all
    else:

        def mask_mod(b, h, q_idx, kv_idx):
            qi = q_idx + offset
            ok = kv_idx <= qi if mode == "causal" else kv_idx >= 0
            if window:
                ok = ok & ((qi - kv_idx < window) if mode == "causal" else ((kv_idx - qi).abs() < window))
            if horizon is not None:
                ok = ok & (kv_idx - qi <= horizon)
            if pad is not None:
                ok = ok & pad[b, kv_idx]
            return ok

        block_mask = create_block_mask(
            mask_mod,
            batch if pad is not None else None,
            None,
            q_len,
            k_len,
            device=query.device,
            # compiled on GPU so the mask is built block by block, never as a dense [Q, K] tensor
            _compile=query.is_cuda,
        )
        state._cache[cache_key] = block_mask

    def score_mod(score, b, h, q_idx, kv_idx):
        if softcap is not None:
            score = softcap * torch.tanh(score / softcap)
        if lam is not None:
            score = score - lam * torch.clamp(kv_idx - (q_idx + offset), min=0)
        return score

    gqa = heads & (heads - 1) == 0  # flex's GQA needs a power-of-two head count
    if not gqa:
        key = repeat_kv(key, heads // key.shape[1])
        value = repeat_kv(value, heads // value.shape[1])
    out = compile_friendly_flex_attention(
        query, key, value, score_mod=score_mod, block_mask=block_mask, enable_gqa=gqa, scale=scaling,
        training=module.training,
    )
    return out.transpose(1, 2).contiguous(), None


def _make_attention(base: str) -> Callable:
    def fs_attention_forward(module, query, key, value, attention_mask, **kwargs):
        state: FSAttentionState | None = kwargs.pop("fs_attention", None)
        if state is None:  # called without FS state: behave as the unchanged causal model
            state = FSAttentionState(layer_modes=["causal"])
            layer_idx = None
        else:
            layer_idx = getattr(module, "layer_idx", None)
        window = kwargs.get("sliding_window")
        if window is None:
            window = getattr(module, "sliding_window", None)
        q_len, k_len = query.shape[2], key.shape[2]
        if window is not None and window >= max(q_len, k_len):
            window = None  # the window covers the whole sequence
        if base == "flex_attention":
            return _flex_forward(module, query, key, value, attention_mask, state, layer_idx, window, **kwargs)
        mask, use_is_causal = layer_mask(
            state,
            layer_idx,
            attention_mask,
            q_len,
            k_len,
            window,
            query.dtype,
            query.device,
            want_float=(base == "eager"),
        )
        if base == "eager":
            return _eager_of(module)(module, query, key, value, mask, **kwargs)
        kwargs["is_causal"] = use_is_causal
        return ALL_ATTENTION_FUNCTIONS[base](module, query, key, value, mask, **kwargs)

    fs_attention_forward.__name__ = f"fsllm_{base}_attention_forward"
    return fs_attention_forward


def key_padding_mask(
    batch_size: int,
    q_length: int | None = None,
    kv_length: int | None = None,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function: Callable | None = None,
    attention_mask: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor | None:
    """Mask builder registered with ``AttentionMaskInterface``: key padding only.

    Returns ``[B, 1, 1, K]`` bool (True = real token) or ``None`` without padding;
    the per-layer pattern is added by the attention function, which knows its layer.
    Sequences that are entirely padding are treated as all-real so no softmax row
    is empty.
    """
    if attention_mask is None:
        return None
    pad = attention_mask.to(torch.bool)
    if pad.shape[-1] != kv_length:
        pad = pad[:, kv_offset : kv_offset + kv_length]
    if bool(pad.all()):
        return None
    empty = ~pad.any(dim=-1, keepdim=True)
    pad = pad | empty
    return pad[:, None, None, :]


def register() -> None:
    """Register ``fsllm_sdpa`` and ``fsllm_eager`` with transformers (idempotent)."""
    for base in SUPPORTED_IMPLEMENTATIONS:
        name = PREFIX + base
        if name not in AttentionInterface._global_mapping:
            AttentionInterface.register(name, _make_attention(base))
            AttentionMaskInterface.register(name, key_padding_mask)


def fs_implementation_name(current: str | None) -> str:
    """The registered FS name wrapping the backbone's current attention implementation."""
    current = current or "sdpa"
    if current.startswith(PREFIX):
        return current
    if current not in SUPPORTED_IMPLEMENTATIONS:
        raise FSLLMError(
            f"FS attention wraps {', '.join(SUPPORTED_IMPLEMENTATIONS)}; the backbone uses {current!r}. "
            "Load it with attn_implementation='sdpa'."
        )
    return PREFIX + current


def base_implementation_name(current: str) -> str:
    """Inverse of ``fs_implementation_name``."""
    return current[len(PREFIX) :] if current.startswith(PREFIX) else current


register()
