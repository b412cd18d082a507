"""Word alignment, windows over long sentences and text pairs: the features the models are fed."""

from __future__ import annotations

import pytest
from conftest import build_word_tokenizer

from fsllm.tokenization import (
    merge_window_predictions,
    pair_ids,
    sequence_features,
    sequence_ids,
    token_classification_features,
    windows,
)

# ------------------------------------------------------------------ alignment and windows


def test_windows_overlap_and_cover():
    assert windows(3, 4, 1) == [(0, 3)]
    assert windows(10, 4, 1) == [(0, 4), (3, 7), (6, 10)]
    assert windows(8, 4, 2) == [(0, 4), (2, 6), (4, 8)]
    with pytest.raises(ValueError):
        windows(10, 4, 4)


def test_first_subtoken_carries_the_label_real_bpe_tokenizer():
    """With SmolLM2's byte-level BPE: one label per word, on its first sub-token; sub-tokens rebuild each word."""
    from fsllm import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    words = ["Nadim", "Ladki", "visited", "Zaragoza", "'s", "U.N.", "office", "."]
    tags = ["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG", "O", "O"]
    label2id = {"O": 0, "B-PER": 1, "I-PER": 2, "B-LOC": 3, "B-ORG": 4}
    (feat,) = token_classification_features(words, tags, tok, label2id, max_length=64)
    labelled = [(k, lab) for k, lab in enumerate(feat["labels"]) if lab != -100]
    assert [lab for _, lab in labelled] == [label2id[t] for t in tags]
    # the sub-tokens of each word decode back to that word
    for w, word in enumerate(words):
        pieces = [feat["input_ids"][k] for k, wid in enumerate(feat["word_ids"]) if wid == w]
        assert tok.decode(pieces).strip() == word
        first = next(k for k, wid in enumerate(feat["word_ids"]) if wid == w)
        assert feat["labels"][first] == label2id[tags[w]]
    assert sum(1 for wid in feat["word_ids"] if wid >= 0) > len(words)  # some words really are split


def test_long_sentence_becomes_windows_and_every_word_keeps_a_prediction():
    tok = build_word_tokenizer()
    words = ("John visited Paris and London with Mary today . " * 4).split()
    tags = ["B-PER" if w in ("John", "Mary") else "B-LOC" if w in ("Paris", "London") else "O" for w in words]
    label2id = {"O": 0, "B-PER": 1, "B-LOC": 2}
    feats = token_classification_features(words, tags, tok, label2id, max_length=10, stride=3)
    assert len(feats) > 1 and all(len(f["input_ids"]) <= 10 for f in feats)
    # every word is labelled in at least one window
    covered = {w for f in feats for w, lab in zip(f["word_ids"], f["labels"]) if lab != -100}
    assert covered == set(range(len(words)))
    # a "prediction" equal to the word index shows which window each word was taken from
    merged = merge_window_predictions(len(words), [(f["word_ids"], f["first"], f["word_ids"]) for f in feats])
    assert merged == list(range(len(words)))


def test_merge_prefers_the_window_with_more_context():
    # word 2 is at the edge (position 2 of 3) of window A and in the middle of window B
    a = ([0, 1, 2], [True, True, True], ["a0", "a1", "a2"])
    b = ([1, 2, 3, 4], [True, True, True, True], ["b1", "b2", "b3", "b4"])
    assert merge_window_predictions(5, [a, b]) == ["a0", "a1", "b2", "b3", "b4"]


# ------------------------------------------------------------------ pair encoding


def test_pair_ids_put_eos_between_the_texts_and_truncate_longest_first():
    tok = build_word_tokenizer()
    a, b = "John visited Paris", "Mary lives in London"
    ids, cut = pair_ids(a, b, tok)
    assert not cut
    assert ids == tok(a)["input_ids"] + [tok.eos_token_id] + tok(b, add_special_tokens=False)["input_ids"]
    long_a = "the film was good and the actors were great and the plot moving"
    ids, cut = pair_ids(long_a, b, tok, max_length=9)
    assert cut and len(ids) == 9
    sep = ids.index(tok.eos_token_id)
    assert ids[sep + 1 :] == tok(b, add_special_tokens=False)["input_ids"]  # the short side keeps every token
    assert ids[:sep] == tok(long_a)["input_ids"][:sep]  # the long side lost its end

    # a tokenizer that adds a BOS (Llama-style): the BOS stays first, once
    from tokenizers import processors

    bos_tok = build_word_tokenizer()
    bos_tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    ids, _ = pair_ids(a, b, bos_tok, max_length=6)
    # 4 text tokens fit beside BOS and EOS: longest-first takes the last of b, of a, then of b again
    plain = lambda t: bos_tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert ids == [1, *plain("John visited"), 2, *plain("Mary lives")]


def test_whitespace_token_ids_of_a_real_bpe_tokenizer():
    """SmolLM2 writes the space before a digit as a token of its own: it is found, words and specials are not."""
    from fsllm import load_tokenizer
    from fsllm.tokenization import whitespace_token_ids

    tok = load_tokenizer("smollm2-135m")
    ids = set(whitespace_token_ids(tok))
    ids_of = tok("won 3", add_special_tokens=False)["input_ids"]
    assert [i in ids for i in ids_of] == [False, True, False]  # "won", " ", "3"
    assert tok.convert_tokens_to_ids("Ġthe") not in ids
    assert not ids & set(tok.all_special_ids)
    assert all(not tok.decode([i]).strip() for i in ids)


# ------------------------------------------------------------------ one truncation rule


def _bos_eos_tokenizer():
    """The word-level tokenizer with a Llama/Qwen-style template that wraps each text in BOS ... EOS."""
    from tokenizers import processors

    tok = build_word_tokenizer()
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    return tok


def test_a_long_text_keeps_its_special_tokens_in_training_as_in_serving():
    """Training cut the raw ids at max_length, so a long text lost its final EOS while the server kept it:
    the model was served inputs unlike those it was trained on. One rule now: the specials stay, the text
    is cut (from the end, or the start with direction="left")."""
    from fsllm.serve import encode_sequence

    tok = _bos_eos_tokenizer()
    text = "the film was good and the actors were great and the plot moving"
    words = tok(text, add_special_tokens=False)["input_ids"]
    assert tok(text)["input_ids"] == [1, *words, 2]  # the template is in force
    feats, cut = sequence_features(text, tok, 6)
    assert cut and feats["input_ids"] == [1, *words[:4], 2] and feats["attention_mask"] == [1] * 6
    assert sequence_ids(text, tok, 6, "left") == ([1, *words[-4:], 2], True)
    assert sequence_ids("good film", tok, 6) == ([1, *tok("good film", add_special_tokens=False)["input_ids"], 2], False)
    # the server's encoding of the same text is the training one
    assert encode_sequence(tok, text, 6, truncate=True) == feats["input_ids"]
    assert encode_sequence(tok, text, 6, truncate=True, direction="Left") == [1, *words[-4:], 2]
