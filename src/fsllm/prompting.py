"""A task prompt (``FSConfig.prompt``) appended to every input inside the model's forward, and the
label words a verbalizer head (``FSConfig.head = "verbalizer"``) starts from.

Why inside the forward, not in the tokenizer: ``pipeline()``, ``fsllm predict``, the server and the
``Trainer`` all tokenize the bare text; the model adds the prompt itself, so every caller reads the
model the way it was trained. The prompt's token ids are fixed when the model is built (with the
backbone's tokenizer) and saved in its config (``FSLLMConfig.prompt_ids``).

Padding is handled as sequence repetition handles it (:mod:`fsllm.repetition`): each row's real
tokens are gathered, the prompt follows its last real token, and the row is right-padded, so a text
alone and the same text in a left- or right-padded batch compute the same thing.

With a prompt that ends where the answer would start (``"\\nSentiment:"``), last-token pooling reads
the backbone's prediction of the next word, and a verbalizer head, whose output rows start as the
backbone's output embeddings of the label words, starts from the backbone's own zero-shot scores:
prompt-based fine-tuning (PET, LM-BFF), here under FS's released mask.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from .errors import ConfigError
from .repetition import repeat_sequence

logger = logging.getLogger(__name__)


def append_prompt(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  prompt_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's real tokens (``attention_mask`` 1, in order), then ``prompt_ids``, right-padded with 0.

    Returns the new ``input_ids`` and ``attention_mask``, ``[B, n_max + len(prompt_ids)]``: the real tokens
    are packed as sequence repetition packs one copy (:func:`fsllm.repetition.repeat_sequence`).
    """
    prompt = torch.as_tensor(list(prompt_ids), dtype=input_ids.dtype, device=input_ids.device)
    packed = repeat_sequence(input_ids, attention_mask, 1)  # one copy: each row's real tokens, right-padded
    n = packed.attention_mask.sum(-1)  # real tokens per row
    ids = F.pad(packed.input_ids, (0, len(prompt)))
    where = n[:, None] + torch.arange(len(prompt), device=input_ids.device)
    ids.scatter_(1, where, prompt.expand(ids.shape[0], -1))
    columns = torch.arange(ids.shape[1], device=input_ids.device)
    new_mask = (columns[None, :] < (n + len(prompt))[:, None]).to(attention_mask.dtype)
    return ids, new_mask


def prompt_token_ids(tokenizer, prompt: str) -> list[int]:
    """The prompt's token ids, no special tokens (it continues the text)."""
    ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if not ids:
        raise ConfigError(f"the prompt {prompt!r} has no tokens")
    return ids


def label_word_ids(tokenizer, id2label: Mapping[int, str], label_words: Mapping[str, str] | None = None) -> list[int]:
    """For each label (in id order), the first token of its word as it would follow the prompt.

    The word is ``label_words[label]`` where given, else the label name with ``_`` read as a space; it is
    tokenized with a leading space, as a word after ``"Sentiment:"`` is written. Two labels whose words
    begin with the same token would start with the same scores: refused. A word of several tokens is
    read by its first alone (one forward scores one next token): logged, so that a user can pick a word
    the tokenizer keeps whole.
    """
    words = dict(label_words or {})
    unknown = sorted(set(words) - set(id2label.values()))
    if unknown:
        raise ConfigError(f"label_words names labels the data does not have: {unknown} (labels: {sorted(id2label.values())})")
    ids, owner = [], {}
    for i in sorted(id2label):
        label = id2label[i]
        word = str(words.get(label, label)).replace("_", " ").strip()
        tokens = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        if not word or not tokens:
            raise ConfigError(f"label {label!r}: its word {word!r} has no tokens")
        if tokens[0] in owner:
            raise ConfigError(f"labels {owner[tokens[0]]!r} and {label!r} begin with the same token "
                              f"({tokenizer.decode([tokens[0]])!r}): give them distinct words with label_words")
        owner[tokens[0]] = label
        if len(tokens) > 1:
            logger.warning("label %r: its word %r is %d tokens; the verbalizer reads its first, %r",
                           label, word, len(tokens), tokenizer.decode([tokens[0]]))
        ids.append(int(tokens[0]))
    return ids
