"""Sequence repetition (``FSConfig.repeat``): the text fed ``k`` times inside the model's forward.

With the input repeated, every token of the last copy has the whole text before it, so even a
causal layer (the regime the backbone was pre-trained in) sees the full text: Kukić, Čuljak, Dukić
et al.'s sequence repetition for sequence labelling (TakeLab/repetition-sl) and Springer et al.'s
echo embeddings. It combines with any attention mode (causal over the repeated sequence is the
published variant). The cost is ``k`` times the tokens per forward (more for attention).

What is repeated is the row's real tokens exactly as the tokenizer gave them, special tokens
included (a BOS starts every copy), as the published code does (it concatenates the whole input
``k`` times). Padding is handled so that a text alone and the same text in a padded batch compute
the same thing: each row's real tokens are gathered, repeated, and put at the start of a new
right-padded row, so positions count the real tokens over the whole repeated sequence
(``0 .. k*n - 1``) whatever the input's padding side. The backbone's hidden states of the last
copy are then mapped back to the input's ``[B, L, H]`` layout, so pooling, the token head, the
losses and every caller (Trainer, ``pipeline()``, the server) see an ordinary model; the
hidden states at padding positions are those of some real token and are masked later, as usual.
Concatenating the padded rows as they are (the published code) would put padding between the
copies: positions would still count real tokens, but decay distances and sliding windows count
places, padding included, so a padded text would no longer compute what it computes alone.

``k`` here counts copies (``k = 2``: the text twice); the published code's ``k_repeat = r`` feeds
``r + 1`` copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Repeated:
    """The repeated batch: ``input_ids`` and ``attention_mask`` ``[B, k * n_max]`` for the backbone,
    and ``source`` ``[B, L]``: the index in the repeated row of each input position's token in the
    last copy (for padding positions: some valid index, its value is masked later)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    source: torch.Tensor


def repeat_sequence(input_ids: torch.Tensor, attention_mask: torch.Tensor, k: int) -> Repeated:
    """Each row's real tokens (``attention_mask`` 1, in order) repeated ``k`` times, right-padded.

    Vectorised: copy ``c`` of the real token of rank ``r`` (its index among the row's real tokens)
    goes to column ``c * n + r``; padding positions are written to a spare last column, dropped.
    """
    mask = attention_mask.bool()
    batch = input_ids.shape[0]
    n = mask.sum(-1)  # real tokens per row
    rank = mask.long().cumsum(-1) - 1  # a real token's index among its row's real tokens
    width = max(k * int(n.max()), 1) if batch else 1
    spare = torch.full_like(rank, width)
    ids = input_ids.new_zeros(batch, width + 1)
    for copy in range(k):
        ids.scatter_(1, torch.where(mask, copy * n[:, None] + rank, spare), input_ids)
    ids = ids[:, :width]
    columns = torch.arange(width, device=input_ids.device)
    rep_mask = (columns[None, :] < (k * n)[:, None]).to(attention_mask.dtype)
    source = ((k - 1) * n[:, None] + rank).clamp(min=0, max=width - 1)
    return Repeated(ids, rep_mask, source)


def last_copy(hidden: torch.Tensor, repeated: Repeated) -> torch.Tensor:
    """The hidden states ``[B, k * n_max, H]`` of the repeated rows -> ``[B, L, H]``: each input
    position gets its token's state in the last copy."""
    index = repeated.source.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
    return hidden.gather(1, index)
