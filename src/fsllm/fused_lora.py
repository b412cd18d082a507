"""LoRA's update in one fused multiply-add, for the adapted projections of an FS model.

PEFT computes ``base(x) + lora_B(lora_A(dropout(x))) * scaling``: two elementwise passes over the
``tokens x out_features`` output (the scaling multiply, then the add) on top of the matmuls. Here
the scaling goes into ``lora_B``'s weight (``out_features x r`` values, a few thousand, instead of
one per output element) and the add into the last matmul (``torch.addmm``), so the update costs
two matmuls and nothing else. The result is the same function with the same gradients (equal up
to rounding order; exactly equal when the scaling is a power of two, as fsllm's default 32 / 8 is).
The saved adapter, merging and every PEFT feature are untouched: only the forward of a plain,
unmerged, single-adapter layer takes the fused path; anything else runs PEFT's own forward.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lora import Linear as LoraLinear
from torch import nn


class FusedLoraLinear(LoraLinear):
    """PEFT's ``lora.Linear`` with the update fused (see the module doc); swapped in by class."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        active = self.active_adapters
        if (args or kwargs or self.disable_adapters or self.merged or len(active) != 1
                or active[0] in self.lora_variant or active[0] not in self.lora_A):
            return super().forward(x, *args, **kwargs)
        name = active[0]
        result = self.base_layer(x)
        lora_a = self.lora_A[name]
        h = lora_a(self.lora_dropout[name](x.to(lora_a.weight.dtype)))
        w = self.lora_B[name].weight * self.scaling[name]
        out = torch.addmm(result.reshape(-1, result.shape[-1]), h.reshape(-1, h.shape[-1]).to(result.dtype),
                          w.t().to(result.dtype))
        return out.view(result.shape)


def use_fused_lora(model: nn.Module) -> int:
    """Give every plain PEFT ``lora.Linear`` of ``model`` the fused forward; returns how many.

    Subclasses of ``lora.Linear`` (other layer kinds, 4-bit bases) keep their own forward.
    """
    swapped = 0
    for module in model.modules():
        if type(module) is LoraLinear:
            module.__class__ = FusedLoraLinear
            swapped += 1
    return swapped
