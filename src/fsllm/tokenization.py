"""From words and texts to model inputs, and from token predictions back to words.

NER: the words of a sentence are joined with single spaces and tokenised once
with character offsets; each sub-token is mapped to the word that contains it.
The first sub-token of a word carries the word's label, the others ``-100``.
Sentences longer than ``max_length`` are split into overlapping windows so no
word loses its prediction; at prediction time a word takes its label from the
window where it sits farthest from an edge (the most context on both sides).

Document context (``TrainConfig.document_context``): a sentence may be read with
the words around it in its document, up to a number of sub-tokens on each side
within ``max_length``. Those sub-tokens belong to no word of the sentence: they are
read, never labelled or predicted, so the model sees what a reader of the whole
article sees ("Jordan" after "Michael Jordan scored ...") and is scored on the
sentence alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from .errors import DataError
from .segmentation import split_words  # noqa: F401  (re-exported: raw text -> words lives there)


def join_words(words: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """Join words with single spaces; return the text and each word's character span."""
    spans, pos = [], 0
    for w in words:
        spans.append((pos, pos + len(w)))
        pos += len(w) + 1
    return " ".join(words), spans


def _bos_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The BOS id if this tokenizer adds one by default (Llama-2 does, SmolLM2 does not)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    ids = tokenizer("a")["input_ids"]
    return [bos] if ids and ids[0] == bos else []


def whitespace_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids of the tokens that decode to whitespace alone (special tokens aside).

    Byte-level BPE tokenizers that split digits (SmolLM2, Llama-3) write the space before a number
    as such a token. ``encode_words`` gives it to no word; ``FSForTokenClassification`` labels it
    from its neighbour (see ``FSLLMConfig.whitespace_token_ids``)."""
    special = set(tokenizer.all_special_ids)
    ids = []
    for i in range(len(tokenizer)):
        if i in special:
            continue
        text = tokenizer.decode([i])
        if text and not text.strip():
            ids.append(i)
    return ids


@dataclass
class TokenFeatures:
    """Sub-token encoding of one sentence: ids, the word of each sub-token (or -1), and window starts."""

    input_ids: list[int]
    word_ids: list[int]  # -1 for special tokens
    first_subtoken: list[bool]


def encode_words(
    words: list[str], tokenizer: PreTrainedTokenizerBase, spans: list[tuple[int, int]] | None = None, text: str | None = None
) -> TokenFeatures:
    """Tokenise a list of words once, mapping each sub-token to its word by character offsets."""
    if text is None or spans is None:
        text, spans = join_words(words)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    owner = [-1] * (len(text) + 1)
    for w, (s, e) in enumerate(spans):
        for c in range(s, e):
            owner[c] = w
    word_ids, first = [], []
    seen: set[int] = set()
    for s, e in enc["offset_mapping"]:
        w = -1
        for c in range(s, e):  # skip a leading space that byte-level BPE folds into the token
            if owner[c] >= 0:
                w = owner[c]
                break
        word_ids.append(w)
        first.append(w >= 0 and w not in seen)
        if w >= 0:
            seen.add(w)
    missing = set(range(len(words))) - seen
    if missing:
        raise DataError(f"the tokenizer produced no sub-token for word(s) {sorted(missing)[:5]} of {words[:10]}")
    return TokenFeatures(list(enc["input_ids"]), word_ids, first)


def windows(n: int, max_len: int, stride: int) -> list[tuple[int, int]]:
    """Token windows ``[start, end)`` covering ``n`` tokens, consecutive ones overlapping by ``stride``."""
    if n <= max_len:
        return [(0, n)]
    if stride >= max_len:
        raise ValueError("stride must be smaller than max_length")
    out, start = [], 0
    while True:
        end = min(start + max_len, n)
        out.append((start, end))
        if end == n:
            return out
        start = end - stride


#: the keys of an example's document context (:func:`with_document_context`): the words before and after it
CONTEXT_KEYS = ("context_left", "context_right")

Context = tuple[Sequence[str], Sequence[str]]


def with_document_context(examples: Sequence[dict], words: int) -> list[dict]:
    """The examples, each with up to ``words`` words of the sentences before and after it in its document
    (``context_left`` / ``context_right``, nearest words kept).

    ``examples`` are in document order; ``document`` (:func:`fsllm.data.read_conll` numbers CoNLL's
    ``-DOCSTART-`` documents) says which one each is in. An example without it has no known neighbours
    and gets no context. Attach the context before drawing a subset, so a sampled sentence keeps its real
    neighbours. ``words`` bounds the words kept, which is enough for as many sub-tokens (a word has at
    least one): :func:`token_classification_features` cuts them to its ``context_tokens``.
    """
    out = [dict(ex) for ex in examples]
    if words <= 0:
        return out
    for i, ex in enumerate(out):
        doc = ex.get("document")
        left: list[str] = []
        right: list[str] = []
        if doc is not None:
            j = i - 1
            while j >= 0 and len(left) < words and examples[j].get("document") == doc:
                left = list(examples[j]["tokens"]) + left
                j -= 1
            j = i + 1
            while j < len(examples) and len(right) < words and examples[j].get("document") == doc:
                right += list(examples[j]["tokens"])
                j += 1
        ex[CONTEXT_KEYS[0]], ex[CONTEXT_KEYS[1]] = left[-words:], right[:words]
    return out


def context_of(example: dict) -> Context | None:
    """An example's document context (:func:`with_document_context`), or ``None`` when it has none."""
    left, right = (example.get(k) or [] for k in CONTEXT_KEYS)
    return (left, right) if left or right else None


def context_window(start: int, end: int, n: int, budget: int, context_tokens: int) -> tuple[int, int] | None:
    """The tokens ``[s, e)`` of a passage of ``n`` tokens read for the sentence at ``[start, end)``: the
    sentence and up to ``context_tokens`` tokens on each side, at most ``budget`` in all, the room one side
    cannot fill given to the other; ``None`` when the sentence alone exceeds ``budget``. The one rule of
    fsllm's features and the baselines' (an encoder's word pieces), so every row reads the same context."""
    room = budget - (end - start)
    if room < 0:
        return None
    n_left, n_right = min(start, context_tokens), min(n - end, context_tokens)
    take_left = min(n_left, max(room // 2, room - n_right))
    return start - take_left, end + min(n_right, room - take_left)


def _features_in_context(
    words: list[str], tags: list[str] | None, tokenizer: PreTrainedTokenizerBase, label2id: dict[str, int] | None,
    prefix: list[int], budget: int, context: Context, context_tokens: int,
) -> dict | None:
    """One input: the sentence with up to ``context_tokens`` sub-tokens of its context on each side, the
    whole within ``budget``; the room one side cannot fill goes to the other. ``None`` when the sentence
    alone does not fit (it is then cut into windows without context)."""
    left, right = list(context[0]), list(context[1])
    lo, hi = len(left), len(left) + len(words)
    # one tokenisation of the whole passage, so the sentence's words are split as they are inside a text
    feats = encode_words(left + list(words) + right, tokenizer)
    inside = [k for k, w in enumerate(feats.word_ids) if lo <= w < hi]
    span = context_window(inside[0], inside[-1] + 1, len(feats.input_ids), budget, context_tokens)
    if span is None:
        return None
    s, e = span
    wids = [w - lo if lo <= w < hi else -1 for w in feats.word_ids[s:e]]
    first = [f and w >= 0 for f, w in zip(feats.first_subtoken[s:e], wids)]
    ids = prefix + feats.input_ids[s:e]
    item = {"input_ids": ids, "attention_mask": [1] * len(ids), "word_ids": [-1] * len(prefix) + wids,
            "first": [False] * len(prefix) + first, "window": (s, e)}
    if tags is not None:
        item["labels"] = [-100] * len(prefix) + [label2id[tags[w]] if f else -100 for w, f in zip(wids, first)]
    return item


def token_classification_features(
    words: list[str],
    tags: list[str] | None,
    tokenizer: PreTrainedTokenizerBase,
    label2id: dict[str, int] | None,
    max_length: int,
    stride: int | None = None,
    context: Context | None = None,
    context_tokens: int = 0,
) -> list[dict]:
    """Model inputs for one sentence: one dict per window with ``input_ids``, ``attention_mask``,
    ``labels`` (when tags are given) and ``word_ids`` (kept for mapping predictions back).

    ``context`` (the words before and after the sentence in its document, :func:`with_document_context`)
    and ``context_tokens`` > 0: one input holding the sentence and up to that many sub-tokens of context
    on each side, which get no word (``word_ids`` -1) and no label; a sentence that does not fit
    ``max_length`` alone is cut into windows without context as before."""
    prefix = _bos_prefix(tokenizer)
    budget = max_length - len(prefix)
    if context is not None and context_tokens > 0 and (context[0] or context[1]):
        item = _features_in_context(words, tags, tokenizer, label2id, prefix, budget, context, context_tokens)
        if item is not None:
            return [item]
    feats = encode_words(words, tokenizer)
    stride = stride if stride is not None else budget // 4
    out = []
    for s, e in windows(len(feats.input_ids), budget, stride):
        ids = prefix + feats.input_ids[s:e]
        wids = [-1] * len(prefix) + feats.word_ids[s:e]
        item = {"input_ids": ids, "attention_mask": [1] * len(ids), "word_ids": wids, "window": (s, e)}
        if tags is not None:
            labels = [-100] * len(prefix)
            for k in range(s, e):
                labels.append(label2id[tags[feats.word_ids[k]]] if feats.first_subtoken[k] else -100)
            item["labels"] = labels
        item["first"] = [False] * len(prefix) + feats.first_subtoken[s:e]
        out.append(item)
    return out


def merge_window_predictions(n_words: int, windows_preds: list[tuple[list[int], list[bool], list]]) -> list:
    """Pick each word's prediction from the window where its first sub-token is farthest from an edge.

    ``windows_preds`` holds, per window, ``(word_ids, first_subtoken_flags, per_token_prediction)``.
    """
    best: list = [None] * n_words
    best_margin = [-1] * n_words
    for word_ids, first, preds in windows_preds:
        n = len(word_ids)
        for k, (w, f) in enumerate(zip(word_ids, first)):
            if w < 0 or not f:
                continue
            margin = min(k, n - 1 - k)
            if margin > best_margin[w]:
                best_margin[w], best[w] = margin, preds[k]
    # A word whose first sub-token fell in a window only as a continuation still has its
    # first sub-token in another window (windows cover every token), so no None remains.
    return best


def _special_parts(full: list[int], plain: list[int]) -> tuple[list[int], list[int]] | None:
    """The special tokens a tokenizer put before and after a text's own tokens (``plain``) in its
    encoding ``full`` (a BOS; an EOS for tokenizers that add one), or ``None`` when ``plain`` does not
    occur whole in ``full`` (a tokenizer that merged a special token into the text)."""
    head = next((k for k in range(len(full) - len(plain) + 1) if full[k : k + len(plain)] == plain), None)
    return None if head is None else (full[:head], full[head + len(plain) :])


def sequence_ids(
    text: str, tokenizer: PreTrainedTokenizerBase, max_length: int | None = None, direction: str = "right"
) -> tuple[list[int], bool]:
    """Input ids of one text with the tokenizer's special tokens, and whether it was truncated.

    The one truncation rule of training, evaluation, ``fsllm predict`` and ``fsllm serve``: over
    ``max_length`` the text's own tokens are cut (at the end, or at the start with ``direction="left"``)
    and the special tokens stay where the tokenizer puts them, so a model trained with a final EOS
    (Qwen-style tokenizers, or pooling on the last token) sees it on a long input too.
    """
    ids = list(tokenizer(text)["input_ids"])
    if max_length is None or len(ids) <= max_length:
        return ids, False
    left = direction.lower() == "left"
    plain = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    parts = _special_parts(ids, plain)
    if parts is None:  # the specials are not separable from the text: cut the whole sequence
        return (ids[-max_length:] if left else ids[:max_length]), True
    prefix, suffix = parts
    budget = max(1, max_length - len(prefix) - len(suffix))
    return prefix + (plain[-budget:] if left else plain[:budget]) + suffix, True


def sequence_features(
    text: str, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> tuple[dict, bool]:
    """Model inputs of one text (see :func:`sequence_ids`: special tokens kept, the text cut at
    ``max_length``) and whether it was truncated."""
    ids, truncated = sequence_ids(text, tokenizer, max_length)
    return {"input_ids": ids, "attention_mask": [1] * len(ids)}, truncated


def pair_separator_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token put between the two texts of a pair: the tokenizer's EOS (else its SEP).

    Why not the tokenizer's own pair template: decoder tokenizers mostly have none that separates
    (SmolLM2's, Qwen's, GPT-2's simply concatenate the two texts, so "a film" + "it is good" would
    read as one sentence), and those that have one differ per family (Llama repeats BOS). EOS is the
    one boundary every decoder was trained on ("a text ends here"), so ``text + EOS + text_pair``
    is the same rule for every backbone, at training, ``fsllm predict`` and ``fsllm serve``.
    """
    for tid in (tokenizer.eos_token_id, tokenizer.sep_token_id):
        if tid is not None:
            return int(tid)
    raise DataError("text pairs need a tokenizer with an EOS (or SEP) token to separate the two texts")


def pair_ids(
    text: str, text_pair: str, tokenizer: PreTrainedTokenizerBase, max_length: int | None = None
) -> tuple[list[int], bool]:
    """Input ids of a text pair, ``text`` (with the tokenizer's usual special tokens, e.g. a BOS)
    ``+ EOS +`` ``text_pair`` (none), and whether it was truncated.

    Over ``max_length``, tokens are cut from the end of the longer of the two texts, one at a time
    (``truncation="longest_first"``), so neither side is lost whole and the separator stays.
    """
    first = list(tokenizer(text)["input_ids"])
    plain = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    # the specials around ``text`` (a BOS; an EOS for tokenizers that add one) stay where they are
    parts = _special_parts(first, plain)
    prefix, suffix = parts if parts is not None else ([], [])
    if parts is None:
        plain = first
    sep = [] if suffix and suffix[-1] == pair_separator_id(tokenizer) else [pair_separator_id(tokenizer)]
    second = list(tokenizer(text_pair, add_special_tokens=False)["input_ids"])
    fixed = len(prefix) + len(suffix) + len(sep)
    truncated = False
    if max_length is not None and fixed + len(plain) + len(second) > max_length:
        truncated = True
        budget = max(2, max_length - fixed)
        while len(plain) + len(second) > budget:
            if len(plain) >= len(second) and len(plain) > 1:
                plain.pop()
            elif len(second) > 1:
                second.pop()
            else:
                break
    return prefix + plain + suffix + sep + second, truncated


def pair_features(
    text: str, text_pair: str, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> tuple[dict, bool]:
    """Model inputs of one text pair (see :func:`pair_ids`) and whether it was truncated."""
    ids, truncated = pair_ids(text, text_pair, tokenizer, max_length)
    return {"input_ids": ids, "attention_mask": [1] * len(ids)}, truncated
