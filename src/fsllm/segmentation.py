"""Raw text to words for NER prediction, the way CoNLL-style training data was tokenised.

A model trained on CoNLL-2003 saw Penn Treebank-style tokens: ``Suisse 's``, ``do n't``, ``U.S.``,
``3.5``, ``1,000``, ``Smith-Jones`` and every other punctuation mark on its own. It gives one
label per word, so a raw text has to be cut into the same kind of words before it is labelled,
and each word has to point back at the exact characters it came from.

Design (:func:`segment`):

1. The text is cut into grapheme clusters with the ``regex`` module's ``\\X`` (Unicode UAX #29,
   kept up to date with each Unicode release by that module) rather than per code point, so a
   base letter with its combining marks (``café`` in NFD), a Devanagari syllable with its vowel
   signs and viramas, a ZWJ emoji sequence, a flag (two regional indicators) and a skin-tone
   modifier sequence are never cut.
2. Each cluster gets a class from Unicode properties, again through ``regex`` rather than
   hand-written code point tables:

   * white space (``\\s``: Unicode White_Space) and control characters (``\\p{Cc}``) separate words;
   * clusters made only of default-ignorable code points (``\\p{Default_Ignorable_Code_Point}``:
     zero-width space, ZWNJ/ZWJ outside an emoji, soft hyphen, word joiner, BOM, bidi marks,
     variation selectors) are *transparent*: they are no word and do not separate words. Inside
     a word they stay in its span (``"co\\u00adop"`` is one word ``text[0:5]``); at a word's edges
     they are left out, so a span never starts or ends with an invisible character;
   * clusters of a script written without spaces -- Han, Hiragana, Katakana (Script_Extensions, so
     ``ー`` and ``々`` count), Bopomofo, Thai, Lao, Khmer, Myanmar -- are one word each. Without a
     dictionary a word boundary cannot be found in these scripts; one word per character (per
     grapheme cluster for the Southeast Asian scripts) lets every character take its own tag, and
     ``B-``/``I-`` tags join them back into entity spans. A real segmenter (jieba, MeCab,
     PyThaiNLP) can be used through the pre-split input (``Predictor.predict(words=...)``);
   * emoji clusters (``\\p{Extended_Pictographic}``, regional indicators, keycaps) are one word each;
   * everything else is a letter/digit cluster or a punctuation/symbol cluster.
3. The Penn Treebank rules then run on a *shadow* string with one character per non-transparent
   cluster (its base character, or a placeholder for the two one-cluster-per-word classes), so
   plain ``regex`` patterns apply and every match maps back to exact character offsets:

   * clitics are split off: ``'s 're 'll 'd 'm 've`` and ``n't`` (``don't`` -> ``do n't``,
     ``can't`` -> ``ca n't`` as in the Treebank); ``’`` counts as an apostrophe;
   * kept whole: initialisms (``U.S.``, ``e.g.``, ``U.S.-based``), single capital initials (``J.``),
     a short list of title and company abbreviations (``Mr.``, ``Inc.``; :data:`ABBREVIATIONS`;
     ``No.`` only before a number, :data:`NUMBER_ABBREVIATIONS`), numbers with
     separators (``3.5``, ``1,000``, ``10:30``, ``1996-08-22``), hyphenated words and scores
     (``Smith-Jones``, ``1-0``), ``AT&T``, ``and/or``, ``O'Neill``, and runs ``...`` / ``--``;
   * a list item's number at the start of a line keeps its period (``1. Smith``), as do ``.496``
     and currencies such as ``C$``, ``US$``, and ``+`` stays on a number (``+44``), as in
     CoNLL-2003's tables and results;
   * any other punctuation or symbol is a word of its own; a sentence-final period is split off.

Every word satisfies ``text[start:end] == word.text``. The model, however, is fed
``word.form``: the word without its transparent characters and in NFC, because training data
(CoNLL is ASCII; most corpora are NFC) never contains a soft hyphen inside a name or ``e`` +
U+0301 for ``é``, and a BPE tokenizer would cut such input into unseen pieces. Transparent
characters inside an emoji cluster (ZWJ, VS16) are part of the emoji and are kept.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import regex

__all__ = ["Word", "segment", "split_words", "ABBREVIATIONS", "NUMBER_ABBREVIATIONS"]

#: Abbreviations whose period belongs to the word (compared without the period, case-insensitive).
#: Only the frequent titles, company suffixes and months of news text: a period after any other
#: word is split off, which is what a model trained on CoNLL needs at a sentence end.
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr gen col lt sgt capt gov sen rep rev hon mt ft inc ltd corp co bros "
    "plc vs etc jan feb mar apr jun jul aug sep sept oct nov dec approx est".split()
)
#: Abbreviations only before a number (``No. 1``, ``Vol. 2``): ``no.`` at a sentence end is a word.
NUMBER_ABBREVIATIONS = frozenset("no nos vol pp fig".split())

_GRAPHEME = regex.compile(r"\X")
_SPACE = regex.compile(r"[\s\p{Cc}]")
_LINE_BREAK = regex.compile(r"[\n\r\v\f\x85\u2028\u2029]")
_INVISIBLE = regex.compile(r"\p{Default_Ignorable_Code_Point}")
_ALL_INVISIBLE = regex.compile(r"\p{Default_Ignorable_Code_Point}+")
_NO_SPACE_SCRIPT = regex.compile(
    r"[\p{scx=Han}\p{scx=Hiragana}\p{scx=Katakana}\p{scx=Bopomofo}\p{scx=Thai}\p{scx=Lao}\p{scx=Khmer}\p{scx=Myanmar}]"
)
_EMOJI = regex.compile(r"[\p{Extended_Pictographic}\p{Regional_Indicator}\u20e3]")
_WORD_CHAR = regex.compile(r"[\p{L}\p{M}\p{N}_]")

_ONE = "\x01"  # shadow placeholder: a no-space-script cluster (one word each)
_EMO = "\x02"  # shadow placeholder: an emoji cluster (one word each)
_W = r"[\p{L}\p{M}\p{N}_]"
_APOS = "['’]"
_SHADOW_TOKEN = regex.compile(
    rf"""
      [{_ONE}{_EMO}]
    | (?:\p{{L}}\.){{2,}}(?:-{_W}+)*                          # initialisms: U.S. e.g. a.m. U.S.-based
    | (?<![^\n])\d{{1,3}}\.(?=[ ])                            # a list item's number at a line start: 1. Smith
    | \.\d+                                                # .496 (a batting average)
    | \p{{Lu}}{{1,2}}\$                                       # currencies: C$ US$ HK$
    | (?P<abbr>\p{{L}}+)\.(?!{_W}|\.)                       # Mr. Inc. J. (checked below)
    | {_APOS}(?i:s|re|ll|d|m|ve)(?!{_W})                    # a clitic written apart: Suisse 's
    | (?:(?<![^ \n])\+(?=\d))?                                # +44, +0.5: a plus sign before a number stays
      {_W}+(?:(?:[-'’/&.]|(?<=\d)[,:](?=\d)){_W}+)*        # words, numbers, hyphenated words
    | \.{{2,}} | -{{2,}}                                    # ... and --
    | [^ \n]                                                # any other mark: a word of its own
    """,
    regex.VERBOSE,
)
_NUMBER_AHEAD = regex.compile(r"[ \n]*\d")
_CLITIC = regex.compile(rf"(?i)^(.+?)(n{_APOS}t|{_APOS}(?:s|re|ll|d|m|ve))$")


@dataclass(frozen=True)
class Word:
    """One word of a raw text: ``text[start:end] == word.text``; ``form`` is what the model reads."""

    text: str
    start: int
    end: int
    form: str


@functools.lru_cache(maxsize=8192)  # a text repeats few distinct clusters: classify each once
def _cluster_class(cluster: str) -> str:
    """``" "``/``"\\n"`` separator, ``""`` transparent, a placeholder, or the cluster's base character."""
    base = cluster[0]
    if _SPACE.match(base):
        return "\n" if _LINE_BREAK.search(cluster) else " "
    if _ALL_INVISIBLE.fullmatch(cluster):
        return ""
    if _EMOJI.search(cluster):
        return _EMO
    if _NO_SPACE_SCRIPT.match(base):
        return _ONE
    return base


def _form(piece: str, emoji: bool) -> str:
    if piece.isascii():  # no combining marks, nothing invisible: the common case, kept cheap
        return piece
    return unicodedata.normalize("NFC", piece if emoji else _INVISIBLE.sub("", piece))


# ASCII text: every character is its own cluster and none is invisible, an emoji or of a script
# without spaces, so the shadow is a translation (the same result as the cluster loop, faster).
_ASCII_SHADOW = {
    c: ("\n" if chr(c) in "\n\r\v\f" else " ") for c in range(128) if chr(c).isspace() or c < 32 or c == 127
}


def _shadow(text: str, ascii_fast: bool = True) -> tuple[str, Sequence[int], Sequence[int], Sequence[bool]]:
    """The shadow string and, per shadow character, its cluster's start, end and emoji flag."""
    if ascii_fast and text.isascii():
        n = len(text)
        return text.translate(_ASCII_SHADOW), range(n), range(1, n + 1), bytes(n)
    shadow: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    emoji: list[bool] = []
    for m in _GRAPHEME.finditer(text):
        cls = _cluster_class(m.group())
        if cls == "":
            continue  # transparent: left out of the shadow, so it neither splits nor forms a word
        shadow.append(cls)
        starts.append(m.start())
        ends.append(m.end())
        emoji.append(cls == _EMO)
    return "".join(shadow), starts, ends, emoji


def segment(text: str) -> list[Word]:
    """Words of ``text`` with exact character offsets (module docstring: the rules and why)."""
    sh, starts, ends, emoji = _shadow(text)
    words: list[Word] = []

    def add(i: int, j: int) -> None:  # shadow characters [i, j)
        s, e = starts[i], ends[j - 1]
        if not emoji[j - 1]:  # a ZWJ/ZWNJ attached to the last letter is not part of the word
            while e > s + 1 and _INVISIBLE.match(text, e - 1):
                e -= 1
        while e > s + 1 and _INVISIBLE.match(text, s):
            s += 1
        piece = text[s:e]
        words.append(Word(piece, s, e, _form(piece, any(emoji[i:j]))))

    for m in _SHADOW_TOKEN.finditer(sh):
        i, j = m.span()
        if sh[i] in " \n":
            continue
        if m.group("abbr") is not None:
            ab = m.group("abbr")
            before_number = _NUMBER_AHEAD.match(sh, j) is not None
            known = ab.lower() in ABBREVIATIONS or (ab.lower() in NUMBER_ABBREVIATIONS and before_number)
            if not (known or (len(ab) == 1 and ab.isupper())):
                add(i, j - 1)  # an ordinary word: the period after it is its own word
                add(j - 1, j)
                continue
        c = _CLITIC.match(m.group()) if _WORD_CHAR.match(sh[i]) else None
        if c is not None:
            k = i + len(c.group(1))
            add(i, k)
            add(k, j)
            continue
        add(i, j)
    return words


def split_words(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Words of ``text`` (exact slices) and their character spans, for callers that want two lists."""
    ws = segment(text)
    return [w.text for w in ws], [(w.start, w.end) for w in ws]
