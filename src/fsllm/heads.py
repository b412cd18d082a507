"""Pooling and the classification head (RMSNorm -> SwiGLU FFN -> linear)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """Pool ``hidden [B, L, H]`` over the real tokens of ``attention_mask [B, L]``.

    ``last`` and ``first`` find the last/first *real* token from the mask, so they are
    right for left padding, right padding and no padding alike (LS-LLaMA's
    ``[:, -1]`` reads a pad token under right padding).
    """
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)  # [B, L, 1]
    if how == "mean":
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    if how == "max":
        neg = torch.finfo(hidden.dtype).min
        return hidden.masked_fill(mask == 0, neg).max(dim=1).values
    positions = torch.arange(hidden.shape[1], device=hidden.device).expand(hidden.shape[0], -1)
    real = attention_mask.bool()
    if how == "last":
        idx = torch.where(real, positions, -1).max(dim=1).values.clamp(min=0)
    elif how == "first":
        idx = torch.where(real, positions, hidden.shape[1]).min(dim=1).values.clamp(max=hidden.shape[1] - 1)
    else:
        raise ValueError(f"unknown pooling {how!r}")
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]


class RMSNorm(nn.Module):
    """Root-mean-square normalisation with a learned scale (Zhang & Sennrich 2019)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * x).to(dtype)


class SwiGLU(nn.Module):
    """``FFN(x) = (Swish(x W) * (x V)) W2`` (Shazeer 2020), as in the paper's eq. (11)-(13)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w = nn.Linear(dim, hidden, bias=False)
        self.v = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w(x)) * self.v(x))


class ClassificationHead(nn.Module):
    """RMSNorm, then (for ``kind="swiglu"``) a SwiGLU FFN, then dropout and a linear map to the labels.

    ``kind="verbalizer"``: dropout and the linear map alone. The backbone's final hidden state is already
    normalised by its own final norm, and the map's rows are the label words' output embeddings
    (:meth:`start_from_rows`), so the untrained head gives the language model's own next-word scores of
    the label words; a second norm would change them. The rows stay fixed and only the bias trains (LoRA
    learns to read the rows, as prompt-based fine-tuning keeps the LM head): Adam moves each weight by
    about the learning rate a step, and against a final hidden state of norm ~40 (SmolLM2) that moves a
    row's score by about a unit a step at LoRA's rates; trained rows lost the prior and collapsed
    (docs/levers.md).
    """

    def __init__(self, dim: int, num_labels: int, kind: str = "swiglu", hidden: int | None = None, dropout: float = 0.1):
        super().__init__()
        self.norm: nn.Module = nn.Identity() if kind == "verbalizer" else RMSNorm(dim)
        self.ffn = SwiGLU(dim, hidden or dim) if kind == "swiglu" else None
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(dim, num_labels)
        if kind == "verbalizer":
            self.out.weight.requires_grad_(False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Unit RMSNorm scale, PyTorch's default for the FFN, a small output map (logits start near 0)."""
        if isinstance(self.norm, RMSNorm):
            nn.init.ones_(self.norm.weight)
        if self.ffn is not None:
            for lin in (self.ffn.w, self.ffn.v, self.ffn.w2):
                lin.reset_parameters()
        nn.init.normal_(self.out.weight, std=0.02)
        nn.init.zeros_(self.out.bias)

    @torch.no_grad()
    def start_from_rows(self, rows: torch.Tensor) -> None:
        """Set the output map's rows to ``rows [num_labels, dim]`` (the label words' output embeddings), bias 0."""
        if rows.shape != self.out.weight.shape:
            raise ValueError(f"rows of shape {tuple(rows.shape)} for an output map of {tuple(self.out.weight.shape)}")
        self.out.weight.copy_(rows)
        self.out.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x.to(self.out.weight.dtype))  # a 4-bit backbone's bf16 compute meets an fp32 head
        if self.ffn is not None:
            x = self.ffn(x)
        return self.out(self.dropout(x))
