"""Dropout whose CPU masks are cheap to draw, for the LoRA adapters.

PEFT draws a fresh dropout mask on the input of every adapted projection (7 per decoder
layer with fsllm's default targets: 210 masks per training step on SmolLM2-135M). On a CPU,
``torch.nn.functional.dropout`` draws its mask with ``bernoulli_``, one call to the Mersenne
Twister per element, which made LoRA dropout a large share of a training step (the speed
benchmark's profile, ``benchmarks/results/speed.md``). ``FastDropout`` draws one 64-bit random
word per *four* elements and compares each 16-bit quarter with a threshold, then applies the
mask with one multiply: the same inverted dropout, with a quarter of the generator calls.

The only difference from ``nn.Dropout(p)``: the drop probability is rounded to a multiple of
1/65536 (p = 0.1 becomes 0.1000061), and the kept values are scaled by ``1 / (1 - p_rounded)``,
so the expected output still equals the input exactly. Masks come from torch's default CPU
generator, so ``torch.manual_seed`` and the Trainer's saved RNG state make runs reproducible
and resumable. On other devices it is plain ``F.dropout`` (fast there already).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

_LEVELS = 65536  # 16-bit quarters of a 64-bit random word


class _MaskedScale(torch.autograd.Function):
    """``x * keep * scale`` with ``keep`` drawn here; the bool mask (1 byte/element) is saved for backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:  # type: ignore[override]
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
        keep = (words.view(torch.int16)[:n] >= threshold).view(x.shape)
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x.mul(keep).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (keep,) = ctx.saved_tensors
        return grad.mul(keep).mul_(ctx.scale), None, None


class FastDropout(nn.Module):
    """Inverted dropout, statistically the same as ``nn.Dropout(p)`` (see the module docstring)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        dropped = round(p * _LEVELS)
        # an int16 quarter is uniform on [-32768, 32767]: keep it when >= threshold
        self.threshold = dropped - _LEVELS // 2
        self.scale = _LEVELS / (_LEVELS - dropped)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.numel() == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        return _MaskedScale.apply(x, self.threshold, self.scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def replace_lora_dropout(model: nn.Module, make: Callable[[nn.Module], nn.Module | None]) -> int:
    """Replace each dropout of every PEFT LoRA layer in ``model`` by ``make(dropout)`` (``None``
    keeps it); returns how many were replaced."""
    replaced = 0
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if not isinstance(drops, nn.ModuleDict):
            continue
        for name, drop in list(drops.items()):
            new = make(drop)
            if new is not None:
                drops[name] = new
                replaced += 1
    return replaced


def use_fast_lora_dropout(model: nn.Module) -> int:
    """Replace the ``nn.Dropout`` of every PEFT LoRA layer in ``model`` by ``FastDropout``; returns how many."""
    return replace_lora_dropout(
        model, lambda d: FastDropout(d.p) if isinstance(d, nn.Dropout) and d.p > 0 else None
    )
