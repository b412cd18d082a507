"""Global feature release: the attention mask of an FS model.

For a query at position i and a key at position j the FS attention adds

    -lambda * max(0, j - i)

to the attention logit before the softmax (a weight ``exp(-lambda d)`` on future
keys at distance ``d``); past and current keys are untouched and padding keys are
always masked. ``bidirectional`` is lambda = 0, ``causal`` is the unchanged model.

``causal`` means *the backbone's own attention*: for a backbone that is bidirectional by
its config (``is_causal=False``, or Gemma 3's ``use_bidirectional_attention=True``) it is
that bidirectional attention with the backbone's own window, as is a call without FS
state; ``decay`` still adds the decay to its future keys (so a large lambda gives a
causal model, not that backbone). ``check_backbone`` tells which one a config is, and
refuses what this file cannot express (linear attention and other non-softmax layers); mask
overlays transformers asks for at run time that it cannot reproduce (packed sequences,
``or_mask_function`` / ``and_mask_function``) are refused with an ``FSLLMError`` instead
of being dropped.

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
* Which layer gets which mode, and the (possibly learnable) lambdas, reach the attention
  function as an ``FSAttentionState`` set for the duration of one forward (``active_state``,
  a context variable), so they do not depend on a family passing ``**kwargs`` down its
  decoder layers (StableLM, Nemotron and others drop them); the keyword argument
  ``fs_attention=`` of a backbone call still works and wins. A gradient-checkpointing
  recomputation runs in the backward, outside that forward: ``carry_state_into_checkpointing``
  makes the backbone's checkpoint function restore the state there. A layer whose attention
  never consulted the state is caught by ``FSAttentionState.check_complete``. Calling the
  backbone without a state gives the unchanged model, so the same weights still generate
  text, with any cache: queries are placed by the cache's offsets (``key_padding_mask``),
  not assumed to be the last keys.

Sliding windows: a layer trained with the causal window ``w`` (``w - 1`` past keys) keeps
``|i - j| < w`` in the released modes, i.e. its whole trained past plus as many future keys
(why not transformers' halved bidirectional window: see ``_structure``).

Why not zero out the mask (LS-LLaMA, BiLLM): an all-zero mask lets real tokens
attend to padding, so a prediction depends on what else is in the batch.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import sys
from collections.abc import Callable, Iterator, Sequence
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

    The mask cache is keyed by the shapes, the query offset *and the identity of the key
    padding tensor* (the mask builder makes a new one per forward, and the cache keeps a
    reference to it, so an id is never reused while its entry lives). Reusing one state for
    several forwards is therefore correct, only without sharing masks between them.

    Every layer that consults the state is recorded, so ``check_complete`` can tell, after
    the backbone's forward, whether some layer never received it (and silently computed the
    backbone's own attention).

    ``decay_horizon_bias`` is the flex path's decay horizon for this forward (see
    ``decay_horizon``): ``None`` is the library's ``DECAY_HORIZON_BIAS``, ``math.inf`` computes
    every future key. It travels with the forward, like the modes, so comparing horizons needs
    no change to module state.

    ``mask_observer``, when set, is called as ``mask_observer(layer_idx, mask)`` with the dense
    mask each layer of the SDPA and eager paths attends with (``None``: no mask, e.g. causal
    SDPA through ``is_causal``; shared masks come again, the same tensor). It lets a caller see
    what masks a forward builds (their number, shapes and bytes) without wrapping this module's
    functions; the flex path builds block masks and does not call it.
    """

    layer_modes: list[str]
    lambdas: torch.Tensor | None = None
    decay_horizon_bias: float | None = None
    mask_observer: Callable[[int | None, torch.Tensor | None], None] | None = None
    _cache: dict = field(default_factory=dict, repr=False)
    _lambda_values: list[float] | None = field(default=None, repr=False)
    _served: set = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        # Fixed lambdas are read once, so layers with the same rate share one mask
        # (the usual case: one float mask per forward instead of one per layer).
        if self.lambdas is not None and not self.lambdas.requires_grad:
            self._lambda_values = [float(v) for v in self.lambdas.detach().reshape(-1).tolist()]

    def mode(self, layer_idx: int | None) -> str:
        if layer_idx is None:
            if len(set(self.layer_modes)) > 1:
                raise FSLLMError("an attention module without layer_idx cannot get a per-layer FS mode (fs_layers)")
            return self.layer_modes[0]
        return self.layer_modes[layer_idx]

    def consult(self, layer_idx: int | None) -> str:
        """The mode of a layer, recording that the layer received the state."""
        self._served.add(layer_idx)
        return self.mode(layer_idx)

    def check_complete(
        self,
        layers: int | Sequence[torch.nn.Module],
        arch: str,
        layer_list: Callable[[], Sequence[torch.nn.Module]] | None = None,
    ) -> None:
        """Raise ``FSLLMError`` if some decoder layer never consulted this state during the forward.

        ``layers`` is the number of decoder layers or the layers themselves (then the error names
        their class; ``layer_list`` gives them only when an error is raised, which keeps the check
        free on every forward). Such a layer was called through a module that drops ``**kwargs`` (a wrapper,
        a custom decoder layer), so it computed the backbone's own (causal) attention while the
        FS model believes it is released. Clears the record, so the state can be checked again
        after another forward.
        """
        n = layers if isinstance(layers, int) else len(layers)
        served, self._served = self._served, set()
        if None in served:  # attention modules without layer_idx: nothing to check per layer
            return
        missing = [i for i in range(n) if i not in served]
        if missing:
            if layer_list is not None:
                layers = layer_list()
            known = [] if isinstance(layers, int) else [i for i in missing if i < len(layers)]
            names = f" ({', '.join(sorted({type(layers[i]).__name__ for i in known}))})" if known else ""
            raise FSLLMError(
                f"{arch}: decoder layer(s) {missing}{names} never received the FS attention state, so they "
                "computed the backbone's own causal attention: their attention does not call transformers' "
                "attention interface (ALL_ATTENTION_FUNCTIONS), so FS attention cannot release it; use a "
                "backbone whose attention does (docs/backbones.md lists them)"
            )

    def cached(self, key: tuple, padding: torch.Tensor | None):
        """The cached value for ``key`` if it was built for this very padding tensor, else ``None``."""
        entry = self._cache.get(key)
        if entry is not None and entry[0] is padding:
            return entry[1]
        return None

    def store(self, key: tuple, padding: torch.Tensor | None, value):
        self._cache[key] = (padding, value)
        return value


def attention_layer_count(model: torch.nn.Module, decoder_layers: int) -> int:
    """How many per-layer FS modes ``model`` needs: one per attention ``layer_idx``.

    That is the number of decoder layers, except in families with several attention modules per decoder layer,
    each with its own index (LongCat-Flash: two), where the modes follow the attention modules.
    """
    indices = [m.layer_idx for m in model.modules() if isinstance(getattr(m, "layer_idx", None), int)]
    return max([decoder_layers, *(i + 1 for i in indices)])


_ACTIVE: contextvars.ContextVar[FSAttentionState | None] = contextvars.ContextVar("fsllm_fs_attention", default=None)


@contextlib.contextmanager
def active_state(state: FSAttentionState | None) -> Iterator[FSAttentionState | None]:
    """Within the block, every FS attention call without an ``fs_attention=`` keyword uses ``state``.

    A context variable rather than a keyword argument: decoder layers that do not pass ``**kwargs``
    on to their attention (StableLM, Nemotron, ...) are covered, and concurrent forwards in other
    threads or tasks each see their own state.
    """
    token = _ACTIVE.set(state)
    try:
        yield state
    finally:
        _ACTIVE.reset(token)


def current_state() -> FSAttentionState | None:
    """The state of the forward in progress (``active_state``), or ``None``."""
    return _ACTIVE.get()


def carry_state_into_checkpointing(model: torch.nn.Module) -> None:
    """Make every gradient-checkpointed layer of ``model`` restore the forward's FS state when it recomputes.

    The recomputation runs in the backward, outside ``active_state``; without this it would compute the
    backbone's own causal attention and give gradients of another model. Wraps the checkpoint function
    transformers sets on each layer (``_gradient_checkpointing_func``) once; idempotent and cheap, so it
    is called on every training forward (checkpointing may be switched on after the model is built).
    """
    for module in model.modules():
        func = getattr(module, "_gradient_checkpointing_func", None)
        if func is None or getattr(func, "_fsllm_carries_state", False):
            continue

        def checkpoint(function, *args, _func=func, **kwargs):
            state = _ACTIVE.get()
            if state is None:
                return _func(function, *args, **kwargs)

            @functools.wraps(function)
            def with_state(*a, **k):
                with active_state(state):
                    return function(*a, **k)

            return _func(with_state, *args, **kwargs)

        checkpoint._fsllm_carries_state = True
        module._gradient_checkpointing_func = checkpoint


def _structure(
    q_len: int, k_len: int, mode: str, window: int | None, device, q_start: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Allowed pattern ``[Q, K]`` (bool) ignoring padding, and the distance ``j - i`` (long).

    Query ``n`` sits at key index ``q_start + n``; by default the queries are the last ``q_len``
    keys (no cache, or a dynamic cache), but with a static cache the keys run on past the
    queries (free slots), so the offset must come from the cache (see ``key_padding_mask``).
    """
    if q_start is None:
        q_start = k_len - q_len
    i = torch.arange(q_start, q_start + q_len, device=device)[:, None]
    j = torch.arange(k_len, device=device)[None, :]
    d = j - i
    if mode == "causal":
        allowed = d <= 0
        if window:
            allowed = allowed & (-d < window)
    else:
        # Bidirectional window: |i - j| < w, i.e. the w - 1 past keys the backbone was trained
        # with plus as many future keys (2w - 1 in all). Transformers' own bidirectional Gemma 3
        # halves the window instead (w // 2 + 1 each side, about w keys in all), which keeps
        # the cost of the causal window but takes away half of the past context a causally
        # trained layer relies on. Keeping the trained past intact is what makes decay mode
        # interpolate between the two: lambda -> infinity gives back exactly the causal window.
        # A backbone trained bidirectionally carries its own (already halved) window in its
        # config, which is used as is.
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
    mode: str | None = None,
    q_start: int | None = None,
) -> tuple[torch.Tensor | None, bool]:
    """The mask of one layer and whether SDPA may use its ``is_causal`` fast path.

    Returns a bool mask (True = attend) when ``want_float`` is False and the mode
    has no bias, else an additive float mask (0 = attend, dtype min = masked).
    ``None`` means "no mask": full attention, or causal with ``is_causal=True``.
    ``mode`` overrides the state's mode of the layer; ``q_start`` is the key index of the
    first query (default: the queries are the last ``q_len`` keys).
    """
    mode = mode or state.mode(layer_idx)
    if q_start is None:
        q_start = k_len - q_len
    has_padding = key_padding is not None
    if not has_padding and not window and mode in ("bidirectional", "causal") and not want_float:
        if mode == "bidirectional":
            return None, False
        # SDPA aligns is_causal to the top-left corner: exact only for a square block from key 0.
        if q_start == 0 and q_len == k_len:
            return None, True
        if q_len == 1 and q_start == k_len - 1:  # one decoding query at the end sees every key
            return None, False
    if mode == "decay" and state.lambdas is None:
        raise FSLLMError("decay attention needs lambdas in FSAttentionState")

    index = layer_idx if layer_idx is not None else 0
    fixed = mode != "decay" or state._lambda_values is not None
    key = (mode, window, q_len, k_len, q_start, want_float or mode == "decay")
    if mode == "decay" and fixed:
        key = key + (state._lambda_values[index],)
    if fixed:
        cached = state.cached(key, key_padding)
        if cached is not None:
            return cached, False

    if mode == "decay":
        # The additive pattern mask and the distance bias do not depend on lambda:
        # build them once per forward, then each layer costs one fused multiply-add.
        base_key = ("decay-base", window, q_len, k_len, q_start)
        base = state.cached(base_key, key_padding)
        if base is None:
            pattern = _pattern_mask(mode, key_padding, q_len, k_len, window, dtype, device, True, q_start)
            _, d = _structure(q_len, k_len, mode, window, device, q_start)
            base = state.store(base_key, key_padding, (pattern, d.clamp(min=0).to(dtype)[None, None]))
        if fixed:
            mask = torch.add(base[0], base[1], alpha=-state._lambda_values[index])
        else:  # learnable: keep the graph to lambda
            mask = base[0] - state.lambdas[index].to(dtype) * base[1]
    else:
        mask = _pattern_mask(mode, key_padding, q_len, k_len, window, dtype, device, want_float, q_start)
    if fixed:
        state.store(key, key_padding, mask)
    return mask, False


def _pattern_mask(mode, key_padding, q_len, k_len, window, dtype, device, want_float, q_start=None) -> torch.Tensor:
    """Which keys each query may see: bool (True = attend) or additive float (0 / dtype min)."""
    allowed, d = _structure(q_len, k_len, mode, window, device, q_start)
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


def decay_horizon(lam: float, k_len: int, bias: float | None = None) -> int | None:
    """Largest future distance the flex path computes for decay rate ``lam`` (``None``: all).

    At least ``bias / lam`` (every key with a decay bias of ``-bias`` or more is kept), rounded
    up to a multiple of ``DECAY_HORIZON_BLOCK``. ``bias`` defaults to ``DECAY_HORIZON_BIAS`` (read
    at the call, not at import); ``math.inf`` keeps every key.
    """
    if bias is None:
        bias = DECAY_HORIZON_BIAS
    if lam <= 0 or math.isinf(bias):
        return None
    blocks = math.ceil(bias / lam / DECAY_HORIZON_BLOCK)
    horizon = blocks * DECAY_HORIZON_BLOCK
    return horizon if horizon < k_len else None


def _flex_forward(
    module, query, key, value, key_padding, state, layer_idx, window, scaling=None, softcap=None, mode=None,
    q_start=None, **_,
):
    """FS attention with ``flex_attention``: the pattern is a block mask and the decay a ``score_mod``,
    so no ``[L, L]`` tensor is ever built (memory linear in L; the kernel skips masked blocks,
    and for decay the blocks beyond ``decay_horizon``).

    The closures capture tensors only (offset, causality, window, horizon, lambda), never Python
    numbers: dynamo guards on a captured number's value, so each mode, window, offset or horizon
    would compile its own kernel (and a few runs hit torch's recompile limit); a captured tensor
    is guarded by its shape and dtype only, so every variant reuses the same compiled kernels.
    """
    from torch.nn.attention.flex_attention import create_block_mask
    from transformers.integrations.flex_attention import compile_friendly_flex_attention, repeat_kv

    mode = mode or state.mode(layer_idx)
    batch, heads, q_len, _ = query.shape
    k_len = key.shape[2]
    offset = k_len - q_len if q_start is None else q_start
    pad = key_padding[:, 0, 0, :] if key_padding is not None else None
    index = layer_idx if layer_idx is not None else 0
    lam = state.lambdas[index] if mode == "decay" else None
    horizon = None
    if lam is not None:
        # Fixed rates were read to the host once per forward; a learnable one costs one sync per layer.
        value_now = state._lambda_values[index] if state._lambda_values is not None else float(lam.detach())
        horizon = decay_horizon(value_now, k_len, state.decay_horizon_bias)
    beyond = q_len + k_len + 1  # farther than any two positions: "no limit"
    # offset of the first query, causal flag, window, horizon
    params = torch.tensor(
        [offset, mode == "causal", window or beyond, beyond if horizon is None else horizon],
        dtype=torch.long,
        device=query.device,
    )
    cache_key = ("flex", mode, window, q_len, k_len, offset, horizon)
    cached = state.cached(cache_key, key_padding)
    if cached is not None:
        block_mask = cached[0]
    elif pad is None and mode != "causal" and not window and horizon is None:
        block_mask = state.store(cache_key, key_padding, (None,))[0]  # full attention: no mask at all
    else:

        def mask_mod(b, h, q_idx, kv_idx):
            d = kv_idx - (q_idx + params[0])
            ok = ((d <= 0) | (params[1] == 0)) & (d.abs() < params[2]) & (d <= params[3])
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
        state.store(cache_key, key_padding, (block_mask,))

    # one score_mod for every mode (a zero rate without decay: same kernel, one multiply-add more)
    rate = lam if lam is not None else torch.zeros((), dtype=torch.float32, device=query.device)

    def score_mod(score, b, h, q_idx, kv_idx):
        if softcap is not None:
            score = softcap * torch.tanh(score / softcap)
        return score - rate * torch.clamp(kv_idx - (q_idx + params[0]), min=0)

    gqa = heads & (heads - 1) == 0  # flex's GQA needs a power-of-two head count
    if not gqa:
        key = repeat_kv(key, heads // key.shape[1])
        value = repeat_kv(value, heads // value.shape[1])
    out = compile_friendly_flex_attention(
        query, key, value, score_mod=score_mod, block_mask=block_mask, enable_gqa=gqa, scale=scaling,
        training=module.training,
    )
    return out.transpose(1, 2).contiguous(), None


def _config_of(module: torch.nn.Module):
    return getattr(module, "config", None)


def backbone_is_bidirectional(config) -> bool:
    """Whether the backbone attends bidirectionally by its own config.

    Transformers has two switches: ``is_causal=False`` on any config (``create_causal_mask`` then
    builds a bidirectional mask) and Gemma 3's ``use_bidirectional_attention=True`` (or ``"all"``). Gemma 4's
    ``"vision"`` releases image tokens only: its text attention is causal.
    """
    return getattr(config, "is_causal", True) is False or _bidirectional_flag(config)


def _bidirectional_flag(config) -> bool:
    return getattr(config, "use_bidirectional_attention", False) in (True, "all")


def _native_mode(module: torch.nn.Module) -> str:
    """The attention the unchanged backbone computes in this layer: ``"causal"`` or ``"bidirectional"``."""
    if backbone_is_bidirectional(_config_of(module)) or getattr(module, "is_causal", True) is False:
        return "bidirectional"
    return "causal"


def _layer_window(module: torch.nn.Module, kwargs: dict) -> int | None:
    """The layer's sliding window in this file's convention: ``|i - j| < window`` is kept."""
    config = _config_of(module)
    types, layer_idx = getattr(config, "layer_types", None), getattr(module, "layer_idx", None)
    if types and layer_idx is not None and types[layer_idx] == "full_attention":
        return None  # a full layer of a model whose attention modules all keep the window size (EXAONE 4)
    window = kwargs.get("sliding_window")
    if window is None and "sliding_window" not in kwargs:  # passed as None: the model says no window
        window = getattr(module, "sliding_window", None)
    if window and getattr(config, "is_causal", True) is False and not _bidirectional_flag(config):
        # transformers' ``sliding_window_bidirectional_overlay`` keeps |i - j| <= window (inclusive),
        # Gemma 3's bidirectional overlay |i - j| < window: keep each backbone's own
        window = window + 1
    return window


def _layer_chunk(module: torch.nn.Module) -> int | None:
    """The chunk size of a chunked attention layer (Llama 4: ``layer_types[i] == "chunked_attention"``), else ``None``."""
    config = _config_of(module)
    layer_idx = getattr(module, "layer_idx", None)
    types = getattr(config, "layer_types", None)
    if layer_idx is None or not types or types[layer_idx] != "chunked_attention":
        return None
    return getattr(config, "attention_chunk_size", None)


def _chunk_allowed(chunk: int, key_padding: torch.Tensor | None, q_len: int, k_len: int, q_start: int, device
                   ) -> torch.Tensor:
    """``[B|1, 1, Q, K]`` bool: query and key in the same chunk of ``chunk`` positions (transformers' ``chunked_overlay``:
    chunks start at the first real token, so a left-padded sentence is chunked as it is alone). FS modes release
    attention inside a chunk; chunks never see each other, as in the backbone."""
    i = torch.arange(q_start, q_start + q_len, device=device)
    j = torch.arange(k_len, device=device)
    if key_padding is None:
        left = torch.zeros(1, dtype=torch.long, device=device)
    else:
        left = (~key_padding[:, 0, 0, :]).long().cumprod(-1).sum(-1)
    left = left[:, None, None, None]
    return torch.div(i[None, None, :, None] - left, chunk, rounding_mode="floor") == torch.div(
        j[None, None, None, :] - left, chunk, rounding_mode="floor"
    )


def _is_score_bias(attention_mask: torch.Tensor | None, query: torch.Tensor) -> bool:
    """Whether the attention function got a float mask with one row per query head and query: an additive score
    bias a modeling file built on top of FS's key padding (Doge's dynamic mask), not a prepared causal mask
    passed by the caller (those are ``[B, 1, Q, K]`` and stay refused)."""
    return (
        attention_mask is not None
        and attention_mask.is_floating_point()
        and attention_mask.dim() == 4
        and attention_mask.shape[1] == query.shape[1] > 1
        and attention_mask.shape[2] == query.shape[2]
    )


#: the query offset the mask builder attaches to the key padding it returns (see ``key_padding_mask``)
_Q_START = "fsllm_q_start"


def _make_attention(base: str) -> Callable:
    def fs_attention_forward(module, query, key, value, attention_mask, **kwargs):
        state: FSAttentionState | None = kwargs.pop("fs_attention", None) or _ACTIVE.get()
        native = _native_mode(module)
        if state is None:  # called without FS state: behave as the unchanged model
            state = FSAttentionState(layer_modes=[native])
            layer_idx = None
            mode = native
        else:
            layer_idx = getattr(module, "layer_idx", None)
            mode = state.consult(layer_idx)
            if mode == "causal":  # "causal" is the backbone unchanged (bidirectional if it is by config)
                mode = native
        score_bias = None
        if _is_score_bias(attention_mask, query):
            # a per-head additive mask the modeling file computed from FS's key padding (Doge's dynamic mask):
            # padding is in it already, the layer's pattern is added below
            if base == "flex_attention":
                raise FSLLMError(f"{type(module).__name__}: a per-head score mask needs attn_implementation sdpa or eager")
            score_bias, attention_mask = attention_mask, None
        if attention_mask is not None and (
            attention_mask.dtype != torch.bool or attention_mask.dim() != 4 or attention_mask.shape[2] != 1
        ):
            raise FSLLMError(
                f"FS attention takes the 2D padding attention_mask, got a prepared mask of shape "
                f"{tuple(attention_mask.shape)} ({attention_mask.dtype})"
            )
        window = _layer_window(module, kwargs)
        chunk = _layer_chunk(module)
        if chunk is not None and base == "flex_attention":
            raise FSLLMError(f"{type(module).__name__}: chunked attention layers need attn_implementation sdpa or eager")
        q_len, k_len = query.shape[2], key.shape[2]
        q_start = getattr(attention_mask, _Q_START, k_len - q_len) if attention_mask is not None else k_len - q_len
        if window is not None and window >= max(q_len, k_len):
            window = None  # the window covers the whole sequence
        if base == "flex_attention":
            return _flex_forward(
                module, query, key, value, attention_mask, state, layer_idx, window, mode=mode, q_start=q_start, **kwargs
            )
        mask, use_is_causal = layer_mask(
            state,
            layer_idx,
            attention_mask,
            q_len,
            k_len,
            window,
            query.dtype,
            query.device,
            want_float=(base == "eager" or score_bias is not None or chunk is not None),
            mode=mode,
            q_start=q_start,
        )
        if chunk is not None:
            mask = mask.masked_fill(~_chunk_allowed(chunk, attention_mask, q_len, k_len, q_start, query.device),
                                    torch.finfo(mask.dtype).min)
            use_is_causal = False
        if score_bias is not None:
            floor = torch.finfo(score_bias.dtype).min
            mask = (score_bias + mask.to(score_bias.dtype)).clamp(min=floor)
            use_is_causal = False
        if state.mask_observer is not None:
            state.mask_observer(layer_idx, mask)
        if base == "eager":
            return _eager_of(module)(module, query, key, value, mask, **kwargs)
        kwargs["is_causal"] = use_is_causal
        return ALL_ATTENTION_FUNCTIONS[base](module, query, key, value, mask, **kwargs)

    fs_attention_forward.__name__ = f"fsllm_{base}_attention_forward"
    return fs_attention_forward


#: the building blocks of transformers' own mask functions that FS attention reproduces
#: (causal or bidirectional, with or without a sliding window, padding)
_STANDARD_MASK_PARTS = frozenset(
    {
        "causal_mask_function",
        "bidirectional_mask_function",
        "sliding_window_overlay.<locals>.inner_mask",
        "sliding_window_bidirectional_overlay.<locals>.inner_mask",
        "padding_mask_function.<locals>.inner_mask",
        "and_masks.<locals>.and_mask",
        "or_masks.<locals>.or_mask",
        "add_offsets_to_mask_function.<locals>.inner_mask",
        "chunked_overlay.<locals>.inner_mask",  # reproduced per layer from the config (``_layer_chunk``)
    }
)


def _mask_function_parts(fn: Callable, out: set[str] | None = None) -> set[str]:
    """Qualified names of the functions a transformers mask function is composed of (walks closures)."""
    out = set() if out is None else out
    out.add(getattr(fn, "__qualname__", type(fn).__name__))
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            content = cell.cell_contents
        except ValueError:  # empty cell
            continue
        items = content if isinstance(content, (tuple, list)) else (content,)
        for item in items:
            if callable(item) and not isinstance(item, (torch.Tensor, type)):
                _mask_function_parts(item, out)
    return out


def _check_mask_function(mask_function: Callable, config) -> None:
    """Refuse mask overlays FS attention cannot reproduce (they would be silently dropped)."""
    if backbone_is_bidirectional(config):
        return  # the backbone's own bidirectional overlays (Gemma 3): reproduced by the bidirectional mode
    unknown = _mask_function_parts(mask_function) - _STANDARD_MASK_PARTS
    if unknown:
        raise FSLLMError(
            "FS attention builds causal, bidirectional and sliding-window masks with key padding only; this "
            f"forward asks for other mask overlays ({', '.join(sorted(unknown))}: packed sequences, "
            "or_mask_function / and_mask_function or chunked attention), which it cannot reproduce. "
            "Pass an attention_mask and one sequence per row."
        )


def key_padding_mask(
    batch_size: int,
    q_length: int | None = None,
    kv_length: int | None = None,
    q_offset: int | torch.Tensor = 0,
    kv_offset: int | torch.Tensor = 0,
    mask_function: Callable | None = None,
    attention_mask: torch.Tensor | None = None,
    config=None,
    **kwargs,
) -> torch.Tensor | None:
    """Mask builder registered with ``AttentionMaskInterface``: key padding only.

    Returns ``[B, 1, 1, K]`` bool (True = real key) or ``None``: no padding and the queries
    are the last ``q_length`` keys (no cache, or a dynamic cache). The per-layer pattern is
    added by the attention function, which knows its layer. Key ``k`` is position
    ``kv_offset + k``; the queries start at position ``q_offset``. The returned tensor carries
    the key index of the first query (``q_offset - kv_offset``) as the attribute
    ``fsllm_q_start``, because with a static cache the keys run on past the queries: keys
    after the last query are free cache slots and are masked here, and the 2D attention mask
    then covers fewer than ``kv_length`` keys (it is extended with padding, as transformers'
    ``prepare_padding_mask`` does). Sequences that are entirely padding are treated as
    all-real so no softmax row is empty.
    """
    if mask_function is not None:
        _check_mask_function(mask_function, config)
    q_length = q_length if q_length is not None else kv_length
    kv_length = kv_length if kv_length is not None else q_length
    # One host read per forward (a static cache keeps its offsets as tensors)
    kv_offset = int(kv_offset)
    q_start = int(q_offset) - kv_offset
    device = attention_mask.device if attention_mask is not None else kwargs.get("device")
    pad = None
    if attention_mask is not None:
        pad = attention_mask.to(torch.bool)
        if (missing := kv_offset + kv_length - pad.shape[-1]) > 0:
            pad = torch.nn.functional.pad(pad, (0, missing), value=False)
        pad = pad[:, kv_offset : kv_offset + kv_length]
    if q_start + q_length < kv_length:  # keys after the last query: not written yet
        written = torch.arange(kv_length, device=device) < q_start + q_length
        pad = written[None].expand(batch_size, -1) if pad is None else pad & written
    if pad is None:
        return None
    if q_start == kv_length - q_length and bool(pad.all()):
        return None
    empty = ~pad.any(dim=-1, keepdim=True)
    pad = (pad | empty)[:, None, None, :]
    setattr(pad, _Q_START, q_start)
    return pad


def check_backbone(config) -> str:
    """Check at wrap time that FS attention can express the backbone's attention; return its own pattern.

    Returns ``"bidirectional"`` for a backbone that is bidirectional by its config (``is_causal=False``,
    Gemma 3's ``use_bidirectional_attention=True``; for it fsllm's ``causal`` mode is that bidirectional
    attention), else ``"causal"``. Raises ``FSLLMError`` for encoder-decoders, masked-LM encoders,
    chunked attention without ``layer_types``, and layer types other than full, sliding-window and chunked
    attention (linear attention, state-space and convolution layers stay causal: see docs/backbones.md).
    """
    arch = (getattr(config, "architectures", None) or [getattr(config, "model_type", type(config).__name__)])[0]
    if getattr(config, "is_encoder_decoder", False):
        raise FSLLMError(f"{arch}: an encoder-decoder; FS attention wraps decoder-only backbones")
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if getattr(config, "model_type", None) in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        raise FSLLMError(f"{arch}: a bidirectional encoder (masked-LM family), not a decoder-only LLM; fine-tune it "
                         "with transformers' AutoModelForSequenceClassification instead")
    layer_types = set(getattr(config, "layer_types", None) or ())
    if getattr(config, "attention_chunk_size", None) and "chunked_attention" not in layer_types:
        raise FSLLMError(f"{arch}: chunked attention (attention_chunk_size) without layer_types naming its chunked "
                         "layers is not supported by FS attention")
    unknown = layer_types - {"full_attention", "sliding_attention", "chunked_attention"}
    if unknown:
        raise FSLLMError(
            f"{arch}: layer types {sorted(unknown)} are not softmax attention (linear attention, state-space, "
            "convolution or compressed layers stay causal), so FS attention cannot release the model; use a "
            "pure-attention decoder (docs/backbones.md lists the exact ones)"
        )
    return "bidirectional" if backbone_is_bidirectional(config) else "causal"


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
