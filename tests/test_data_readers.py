"""Tests of fsllm.data.readers: CoNLL (tag schemes, errors), tables, splits, load_hf.

All expected values are written by hand from the small inputs built here. Legal variants of each
format (encodings, line ends, BOMs, quoting) read the same; bad files give one error naming the line.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import datasets
import pytest
from conftest import CONLL_OK, CONLL_ROWS, LONG, _jsonl
from conftest import write_file as write

from fsllm.data import convert_to_iob2, load_hf, read_conll, read_table, split_deterministic
from fsllm.errors import DataError, FSLLMError

datasets.disable_progress_bars()

def conll(*sentences: list[tuple[str, str]], docstart: bool = False, final_blank: bool = True) -> str:
    """Build a CoNLL text (token POS tag) from [(token, tag), ...] sentences."""
    parts = []
    if docstart:
        parts.append("-DOCSTART- -X- -X- O\n\n")
    for i, s in enumerate(sentences):
        parts.append("".join(f"{t} NN {g}\n" for t, g in s))
        if i < len(sentences) - 1 or final_blank:
            parts.append("\n")
    return "".join(parts)


def expect_error(fn, path: Path, line: int | None, *words: str) -> DataError:
    with pytest.raises(DataError) as ei:
        fn()
    msg = str(ei.value)
    prefix = f"{path}:{line}: " if line is not None else f"{path}: "
    assert msg.startswith(prefix), msg
    assert ei.value.line == line
    for w in words:
        assert w in msg, msg
    return ei.value


# ------------------------------------------------------------------------------ CoNLL basics


def test_conll_iob2_kept_docstart_and_trailing_blanks(tmp_path):
    text = (
        "-DOCSTART- -X- -X- O\n"
        "\n"
        "EU NNP B-NP B-ORG\n"
        "rejects VBZ B-VP O\n"
        "German JJ B-NP B-MISC\n"
        "\n"
        "Peter NNP B-NP B-PER\n"
        "Blackburn NNP I-NP I-PER\n"
        "\n"
        "-DOCSTART- -X- -X- O\n"
        "\n"
        "Bonn NNP B-NP B-LOC\n"
        "\n\n\n"
    )
    p = write(tmp_path, "a.conll", text)
    stats = {}
    out = read_conll(p, stats=stats)
    # -DOCSTART- lines separate documents: the first opens document 0, the second document 1
    assert out == [
        {"tokens": ["EU", "rejects", "German"], "tags": ["B-ORG", "O", "B-MISC"], "document": 0},
        {"tokens": ["Peter", "Blackburn"], "tags": ["B-PER", "I-PER"], "document": 0},
        {"tokens": ["Bonn"], "tags": ["B-LOC"], "document": 1},
    ]
    assert stats == {"scheme": "iob2", "repairs": 0, "sentences": 3, "tokens": 6}


def test_conll_no_final_blank_crlf_and_tabs(tmp_path):
    # tab-separated: the token may contain a space; CRLF line ends; no blank line at the end
    p = write(tmp_path, "b.txt", "New York\tB-LOC\r\nis\tO\r\n\r\nhi\tO")
    assert read_conll(p) == [  # no -DOCSTART-: one document
        {"tokens": ["New York", "is"], "tags": ["B-LOC", "O"], "document": 0},
        {"tokens": ["hi"], "tags": ["O"], "document": 0},
    ]


def test_conll_whitespace_only_line_separates(tmp_path):
    p = write(tmp_path, "c.txt", "a\tO\n\t\nb\tB-X\n")
    assert [s["tokens"] for s in read_conll(p)] == [["a"], ["b"]]


def test_conll_token_and_tag_columns(tmp_path):
    p = write(tmp_path, "d.txt", "1 Obama NNP B-PER x\n2 spoke VBD O x\n")
    out = read_conll(p, token_col=1, tag_col=3)
    assert out == [{"tokens": ["Obama", "spoke"], "tags": ["B-PER", "O"], "document": 0}]


def test_conll_hyphenated_type(tmp_path):
    p = write(tmp_path, "e.txt", "Paris\tB-geo-loc\nFrance\tB-geo-loc\nsoon\tO\n")
    assert read_conll(p)[0]["tags"] == ["B-geo-loc", "B-geo-loc", "O"]


# ------------------------------------------------------------------------------ schemes


def test_iob1_auto_detected_and_converted(tmp_path):
    s1 = [("Peter", "I-PER"), ("Blackburn", "I-PER"), ("in", "O"), ("Bonn", "I-LOC"), ("Paris", "B-LOC")]
    s2 = [("Acme", "I-ORG"), ("Corp", "I-ORG"), ("Berlin", "I-LOC")]
    p = write(tmp_path, "iob1.txt", conll(s1, s2))
    stats = {}
    out = read_conll(p, stats=stats)
    assert out[0]["tags"] == ["B-PER", "I-PER", "O", "B-LOC", "B-LOC"]
    assert out[1]["tags"] == ["B-ORG", "I-ORG", "B-LOC"]
    assert stats["scheme"] == "iob1" and stats["repairs"] == 0
    # explicit scheme gives the same result
    assert read_conll(p, scheme="iob1") == out


def test_bioes_auto_detected_and_converted(tmp_path):
    s1 = [("Peter", "S-PER"), ("met", "O"), ("Acme", "B-ORG"), ("Big", "I-ORG"), ("Corp", "E-ORG")]
    s2 = [("Bonn", "S-LOC"), ("Paris", "S-LOC")]
    p = write(tmp_path, "bioes.txt", conll(s1, s2))
    stats = {}
    out = read_conll(p, stats=stats)
    assert out[0]["tags"] == ["B-PER", "O", "B-ORG", "I-ORG", "I-ORG"]
    assert out[1]["tags"] == ["B-LOC", "B-LOC"]
    assert stats["scheme"] == "bioes"
    assert read_conll(p, scheme="iobes") == out


def test_bilou_converted(tmp_path):
    p = write(tmp_path, "bilou.txt", conll([("Peter", "U-PER"), ("New", "B-LOC"), ("York", "L-LOC")]))
    stats = {}
    assert read_conll(p, stats=stats)[0]["tags"] == ["B-PER", "B-LOC", "I-LOC"]
    assert stats["scheme"] == "bilou"


def test_only_o_is_iob2(tmp_path):
    p = write(tmp_path, "o.txt", conll([("a", "O"), ("b", "O")]))
    stats = {}
    assert read_conll(p, stats=stats)[0]["tags"] == ["O", "O"]
    assert stats["scheme"] == "iob2"


def test_explicit_iob2_invalid_strict_then_repair(tmp_path, caplog):
    # line 1 O, line 2 I-PER after O -> invalid in IOB2
    p = write(tmp_path, "bad.txt", "the O\nPeter I-PER\nsaid O\n\nx B-LOC\ny I-ORG\n")
    expect_error(lambda: read_conll(p, scheme="iob2"), p, 2, "I-PER follows O", "repair=True")
    stats = {}
    with caplog.at_level(logging.WARNING, logger="fsllm.data"):
        out = read_conll(p, scheme="iob2", repair=True, stats=stats)
    assert out[0]["tags"] == ["O", "B-PER", "O"]
    assert out[1]["tags"] == ["B-LOC", "B-ORG"]
    assert stats["repairs"] == 2
    assert "repaired 2" in caplog.text


def test_auto_mixed_evidence_is_iob2_with_errors(tmp_path):
    # B-LOC after O (IOB2 evidence) and I-PER at a sentence start (line 4): read as IOB2 -> error
    p = write(tmp_path, "mixed.txt", "in O\nBonn B-LOC\n\nPeter I-PER\n")
    expect_error(lambda: read_conll(p), p, 4, "I-PER follows the sentence start")
    stats = {}
    assert read_conll(p, repair=True, stats=stats)[1]["tags"] == ["B-PER"]
    assert stats == {"scheme": "iob2", "repairs": 1, "sentences": 2, "tokens": 3}


def test_bioes_end_without_start(tmp_path):
    p = write(tmp_path, "e.txt", "a O\nb O\nc E-PER\n")
    expect_error(lambda: read_conll(p), p, 3, "E-PER follows O")
    stats = {}
    assert read_conll(p, repair=True, stats=stats)[0]["tags"] == ["O", "O", "B-PER"]
    assert stats["repairs"] == 1


def test_bioes_begin_without_end(tmp_path):
    p = write(tmp_path, "b.txt", "a S-LOC\nb B-PER\nc O\n")
    expect_error(lambda: read_conll(p, scheme="bioes"), p, 2, "B-PER is followed by O")
    assert read_conll(p, scheme="bioes", repair=True)[0]["tags"] == ["B-LOC", "B-PER", "O"]


def test_explicit_iob1_b_after_o_is_invalid(tmp_path):
    p = write(tmp_path, "x.txt", "a O\nb B-PER\n")
    expect_error(lambda: read_conll(p, scheme="iob1"), p, 2, "B-PER follows O")


def test_explicit_iob2_rejects_bioes_prefix(tmp_path):
    p = write(tmp_path, "s.txt", "a O\nb S-PER\n")
    expect_error(lambda: read_conll(p, scheme="iob2"), p, 2, "S-PER is not valid in scheme iob2")


def test_unknown_scheme(tmp_path):
    p = write(tmp_path, "s.txt", "a O\n")
    with pytest.raises(FSLLMError, match="unknown tag scheme 'bilu'"):
        read_conll(p, scheme="bilu")


# ------------------------------------------------------------------------------ CoNLL errors


def test_one_column_line(tmp_path):
    p = write(tmp_path, "one.txt", "a O\nb O\n\nlonely\n")
    expect_error(lambda: read_conll(p), p, 4, "found 1", "'lonely'")


@pytest.mark.parametrize("bad", ["PER", "B_PER", "X-PER", "B-", "b-PER"])
def test_bad_tag(tmp_path, bad):
    p = write(tmp_path, "tag.txt", f"a O\n\nb {bad}\n")
    expect_error(lambda: read_conll(p), p, 3, repr(bad))


def test_conll_non_utf8(tmp_path):
    p = write(tmp_path, "lat.txt", b"a O\nb O\ncaf\xe9 O\nd O\n")
    expect_error(lambda: read_conll(p), p, 3, "not valid UTF-8", "0xe9")


@pytest.mark.parametrize("content", ["", "\n\n  \n", "-DOCSTART- -X- -X- O\n\n"])
def test_conll_empty(tmp_path, content):
    p = write(tmp_path, "empty.txt", content)
    expect_error(lambda: read_conll(p), p, None, "no sentences")


def test_conll_missing_file(tmp_path):
    p = tmp_path / "nope.txt"
    expect_error(lambda: read_conll(p), p, None, "not found")


def test_convert_to_iob2_sequences():
    assert convert_to_iob2([["I-A", "I-A", "B-A"], ["O", "I-B"]]) == [["B-A", "I-A", "B-A"], ["O", "B-B"]]
    assert convert_to_iob2([["S-A", "B-B", "E-B"]]) == [["B-A", "B-B", "I-B"]]
    with pytest.raises(DataError, match="sequence 1, token 1: invalid IOB2"):
        convert_to_iob2([["B-A"], ["O", "I-B"]], scheme="iob2", where="x")


# ------------------------------------------------------------------------------ tables


def test_csv_basic_multiline_and_int_labels(tmp_path):
    p = write(tmp_path, "t.csv", 'id,text,label\n1,"hello, world",1\n2,"two\nlines",0\n3, spaced ,pos\n')
    assert read_table(p) == [
        {"text": "hello, world", "label": "1"},
        {"text": "two\nlines", "label": "0"},
        {"text": " spaced ", "label": "pos"},
    ]


def test_csv_custom_columns(tmp_path):
    p = write(tmp_path, "t.csv", "sentence,y\nabc,neg\n")
    assert read_table(p, text_column="sentence", label_column="y") == [{"text": "abc", "label": "neg"}]
    assert read_table(p, text_column="sentence", label_column=None) == [{"text": "abc"}]


def test_csv_empty_text_line_after_multiline_row(tmp_path):
    # row 1 starts on line 2 and spans lines 2-3; the empty-text row starts on line 4
    p = write(tmp_path, "t.csv", 'text,label\n"a\nb",x\n"  ",y\n')
    expect_error(lambda: read_table(p), p, 4, "empty text", "'text'")


def test_csv_missing_column(tmp_path):
    p = write(tmp_path, "t.csv", "sentence,label\nabc,1\n")
    err = expect_error(lambda: read_table(p), p, 1, "column 'text' not found", "'sentence', 'label'")
    assert err.path == str(p)


def test_csv_field_count_mismatch(tmp_path):
    p = write(tmp_path, "t.csv", "text,label\nok,1\nnot, ok,1\n")
    expect_error(lambda: read_table(p), p, 3, "3 fields", "header has 2")


def test_csv_empty_label(tmp_path):
    p = write(tmp_path, "t.csv", "text,label\nok,1\nfine,\n")
    expect_error(lambda: read_table(p), p, 3, "empty label")


def test_csv_header_only_and_empty(tmp_path):
    p = write(tmp_path, "h.csv", "text,label\n")
    expect_error(lambda: read_table(p), p, None, "no rows")
    p2 = write(tmp_path, "e.csv", "")
    expect_error(lambda: read_table(p2), p2, None, "empty file")


def test_csv_non_utf8(tmp_path):
    p = write(tmp_path, "t.csv", b"text,label\nok,1\nna\xefve,0\n")
    expect_error(lambda: read_table(p), p, 3, "not valid UTF-8")


def test_csv_bom_dropped(tmp_path):
    p = write(tmp_path, "t.csv", "\ufefftext,label\nx,1\n".encode("utf-8"))
    assert read_table(p) == [{"text": "x", "label": "1"}]


def test_tsv_keeps_quotes(tmp_path):
    p = write(tmp_path, "t.tsv", 'text\tlabel\nsaid "hi" there\tpos\n"quoted, text\tneg\n')
    assert read_table(p) == [
        {"text": 'said "hi" there', "label": "pos"},
        {"text": '"quoted, text', "label": "neg"},
    ]


def test_tsv_empty_text_and_missing_column(tmp_path):
    p = write(tmp_path, "t.tsv", "text\tlabel\na\t1\n \t2\n")
    expect_error(lambda: read_table(p), p, 3, "empty text")
    expect_error(lambda: read_table(p, label_column="y"), p, 1, "column 'y' not found", "'text', 'label'")


def test_jsonl_basic(tmp_path):
    rows = [{"text": "a", "label": 1}, {"text": "b", "label": "neg"}, {"text": "c", "label": 2.5}]
    p = write(tmp_path, "t.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert read_table(p) == [
        {"text": "a", "label": "1"},
        {"text": "b", "label": "neg"},
        {"text": "c", "label": "2.5"},
    ]


def test_jsonl_missing_column_line(tmp_path):
    p = write(tmp_path, "t.jsonl", '{"text": "a", "label": 1}\n\n{"sentence": "b", "label": 0}\n')
    expect_error(lambda: read_table(p), p, 3, "column 'text' not found", "'sentence', 'label'")


def test_jsonl_empty_text_null_label_bad_json(tmp_path):
    p = write(tmp_path, "t.jsonl", '{"text": "a", "label": 1}\n{"text": "   ", "label": 1}\n')
    expect_error(lambda: read_table(p), p, 2, "empty text")
    p = write(tmp_path, "u.jsonl", '{"text": "a", "label": null}\n')
    expect_error(lambda: read_table(p), p, 1, "empty label")
    p = write(tmp_path, "v.jsonl", '{"text": "a", "label": 1}\n{"text": "b", \n')
    expect_error(lambda: read_table(p), p, 2, "invalid JSON")
    p = write(tmp_path, "w.jsonl", '["a", 1]\n')
    expect_error(lambda: read_table(p), p, 1, "expected a JSON object")


def test_jsonl_non_utf8_and_empty(tmp_path):
    p = write(tmp_path, "t.jsonl", b'{"text": "a", "label": 1}\n{"text": "\xff", "label": 1}\n')
    expect_error(lambda: read_table(p), p, 2, "not valid UTF-8")
    p = write(tmp_path, "e.jsonl", "  \n")
    expect_error(lambda: read_table(p), p, None, "empty file")


def test_json_array_and_json_lines(tmp_path):
    p = write(tmp_path, "a.json", '[{"text": "x", "label": "a"}, {"text": "y", "label": "b"}]')
    assert read_table(p) == [{"text": "x", "label": "a"}, {"text": "y", "label": "b"}]
    p = write(tmp_path, "l.json", '{"text": "x", "label": "a"}\n')
    assert read_table(p) == [{"text": "x", "label": "a"}]
    p = write(tmp_path, "m.json", '[{"text": "x", "label": "a"}, {"label": "b"}]')
    expect_error(lambda: read_table(p), p, None, "record 1: column 'text' not found")


def test_table_format_from_fmt_or_error(tmp_path):
    p = write(tmp_path, "data.txt", "text,label\nx,1\n")
    expect_error(lambda: read_table(p), p, None, "cannot tell the table format")
    assert read_table(p, fmt="csv") == [{"text": "x", "label": "1"}]


# ------------------------------------------------------------------------------ split


def test_split_stratified_counts_and_determinism():
    ex = [{"id": i, "label": "a"} for i in range(20)] + [{"id": 100 + i, "label": "b"} for i in range(10)]
    s1 = split_deterministic(ex, 0.1, 0.1, seed=0, stratify_key="label")
    s2 = split_deterministic(ex, 0.1, 0.1, seed=0, stratify_key="label")
    assert s1 == s2
    # 20 a: 2 test, 2 dev, 16 train; 10 b: 1 test, 1 dev, 8 train
    for split, (na, nb) in {"test": (2, 1), "validation": (2, 1), "train": (16, 8)}.items():
        labels = [e["label"] for e in s1[split]]
        assert (labels.count("a"), labels.count("b")) == (na, nb), split
    ids = [e["id"] for k in ("train", "validation", "test") for e in s1[k]]
    assert sorted(ids) == sorted(e["id"] for e in ex)  # disjoint and complete
    for k in s1:  # original order kept inside each split
        assert [e["id"] for e in s1[k]] == sorted(e["id"] for e in s1[k])
    s3 = split_deterministic(ex, 0.1, 0.1, seed=1, stratify_key="label")
    assert s3["test"] != s1["test"] or s3["validation"] != s1["validation"]


def test_split_unstratified_and_callable_key():
    ex = list(range(10))
    s = split_deterministic(ex, 0.2, 0.3)
    assert (len(s["train"]), len(s["validation"]), len(s["test"])) == (5, 2, 3)
    s = split_deterministic(ex, 0.0, 0.5, stratify_key=lambda x: x % 2)
    assert sorted(x % 2 for x in s["test"]) == [0, 0, 0, 1, 1, 1]  # 2.5 -> 3 per parity
    with pytest.raises(FSLLMError):
        split_deterministic(ex, 0.5, 0.5)


# ------------------------------------------------------------------------------ load_hf


def test_load_hf_saved_dict_classlabel_and_dev_rename(tmp_path):
    feats = datasets.Features({"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    dd = datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"sentence": ["a", "b", "c"], "label": [0, 1, 1]}, features=feats),
        dev=datasets.Dataset.from_dict({"sentence": ["d"], "label": [1]}, features=feats),
        unsupervised=datasets.Dataset.from_dict({"sentence": ["e"], "label": [0]}, features=feats),
    )
    dd.save_to_disk(str(tmp_path / "saved"))
    td = load_hf(tmp_path / "saved")
    assert td.task == "sequence"
    assert list(td.splits) == ["train", "validation"]
    assert td.splits["train"]["text"] == ["a", "b", "c"]
    assert td.splits["train"]["label"] == ["neg", "pos", "pos"]
    assert td.splits["validation"]["label"] == ["pos"]
    assert td.label_names == ["neg", "pos"]
    assert "'dev' used as 'validation'" in td.source and "'unsupervised' ignored" in td.source


def test_load_hf_carves_validation_and_drops_unlabelled(tmp_path):
    n = 20
    feats = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["x", "y"])})
    dd = datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(n)], "label": [i % 2 for i in range(n)]}, features=feats),
        test=datasets.Dataset.from_dict({"text": ["u", "v"], "label": [-1, -1]}, features=feats),
    )
    dd.save_to_disk(str(tmp_path / "s"))
    td = load_hf(str(tmp_path / "s"), task="sequence")
    assert {k: len(v) for k, v in td.splits.items()} == {"train": 18, "validation": 2}
    assert sorted(td.splits["validation"]["label"]) == ["x", "y"]
    assert "validation = deterministic 10% of train (seed 0" in td.source
    assert "'test' dropped (unlabelled)" in td.source
    assert not set(td.splits["validation"]["text"]) & set(td.splits["train"]["text"])


def test_load_hf_token_classlabel_iob1_and_single_dataset(tmp_path):
    feats = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "I-PER", "B-PER"])),
        }
    )
    ds = datasets.Dataset.from_dict({"tokens": [["Ann", "Bob", "ran"]] * 10, "ner_tags": [[1, 2, 0]] * 10}, features=feats)
    ds.save_to_disk(str(tmp_path / "one"))  # a single Dataset (state.json)
    td = load_hf(tmp_path / "one")
    assert td.task == "token"
    assert {k: len(v) for k, v in td.splits.items()} == {"train": 9, "validation": 1}
    assert td.splits["train"][0] == {"tokens": ["Ann", "Bob", "ran"], "tags": ["B-PER", "B-PER", "O"]}
    assert td.label_names == ["O", "I-PER", "B-PER"]


def test_load_hf_errors(tmp_path):
    feats = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")), "tags": datasets.Sequence(datasets.Value("int32"))})
    datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"tokens": [["a"]], "tags": [[1]]}, features=feats)
    ).save_to_disk(str(tmp_path / "ints"))
    with pytest.raises(DataError, match="integers without names"):
        load_hf(tmp_path / "ints", task="token", tags_column="tags")
    td = load_hf(tmp_path / "ints", task="token", tags_column="tags", label_names=["O", "B-X"])
    assert td.splits["train"][0]["tags"] == ["B-X"]
    with pytest.raises(DataError, match="column 'ner_tags' not found; columns found: tokens, tags"):
        load_hf(tmp_path / "ints", task="token")
    with pytest.raises(DataError, match="column 'txt' not found"):
        load_hf(tmp_path / "ints", task="sequence", text_column="txt", label_column="tags")


# ------------------------------------------------------------------------------ legal variants of CoNLL


def read(path: Path):
    return read_conll(path) if path.suffix == ".conll" else read_table(path)


def expect_one_line(path: Path, line: int | None, *words: str) -> str:
    with pytest.raises(DataError) as ei:
        read(path)
    msg = str(ei.value)
    assert msg.startswith(f"{path}:{line}: " if line is not None else f"{path}: "), msg
    assert ei.value.line == line
    assert "\n" not in msg and len(msg) < 400, msg[:500]
    for w in words:
        assert w in msg, msg
    return msg


@pytest.mark.parametrize(
    "name, data",
    [
        ("lf.conll", CONLL_OK),
        ("crlf.conll", CONLL_OK.replace("\n", "\r\n")),
        ("cr.conll", CONLL_OK.replace("\n", "\r")),  # old Mac line ends: was read as one line
        ("utf16.conll", CONLL_OK.encode("utf-16")),  # with a BOM: unambiguous, so read
        ("utf16be.conll", b"\xfe\xff" + CONLL_OK.encode("utf-16-be")),
        ("utf32.conll", CONLL_OK.encode("utf-32")),
        ("utf8bom.conll", b"\xef\xbb\xbf" + CONLL_OK.encode()),
        ("blanks.conll", "\n\n  \n" + CONLL_OK.replace("\n\n", "\n\n\t\n \n") + "\n\n\n"),
        ("docstart.conll", "-DOCSTART- -X- O\n\n" + CONLL_OK.replace("\n\n", "\n-DOCSTART- -X- O\n")),
    ],
)
def test_conll_legal_variants_read_the_same(tmp_path, name, data):
    rows = read_conll(write(tmp_path, name, data))
    assert [{k: r[k] for k in ("tokens", "tags")} for r in rows] == CONLL_ROWS
    # one document, but for the variant whose -DOCSTART- lines put each sentence in its own
    assert [r["document"] for r in rows] == ([0, 1] if name == "docstart.conll" else [0, 0])


def test_conll_long_token_and_long_bad_line(tmp_path):
    assert read_conll(write(tmp_path, "long.conll", f"{LONG} B-PER\n"))[0]["tokens"] == [LONG]
    msg = expect_one_line(write(tmp_path, "long1.conll", f"John B-PER\n{LONG}\n"), 2, "found 1", "100,000 characters")
    assert LONG not in msg  # the line is cut in the message
    expect_one_line(write(tmp_path, "longtag.conll", f"John {LONG}\n"), 1, "does not match")


@pytest.mark.parametrize(
    "data, line",
    [
        ("", None),
        ("\n\n \t \n", None),
        ("-DOCSTART- -X- O\n", None),
        ("-DOCSTART- -X- O\n\n-DOCSTART- -X- O\n\n", None),
    ],
)
def test_conll_without_sentences(tmp_path, data, line):
    expect_one_line(write(tmp_path, "e.conll", data), line, "no sentences")


@pytest.mark.parametrize("ctrl, col", [("\x00", 3), ("\x07", 3), ("\x1b", 3), ("\x0b", 3), ("\x7f", 3)])
def test_conll_control_characters(tmp_path, ctrl, col):
    # \x0b and \x1c.. are white space to str.split(): they would silently split a token
    expect_one_line(
        write(tmp_path, "c.conll", f"John B-PER\nPa{ctrl}ris B-LOC\n"), 2, f"U+{ord(ctrl):04X}", f"column {col}"
    )


def test_utf16_without_bom_is_named(tmp_path):
    expect_one_line(write(tmp_path, "u.conll", CONLL_OK.encode("utf-16-le")), 1, "U+0000", "UTF-16")


def test_utf16_bad_bytes_give_their_line(tmp_path):
    data = "John B-PER\nlives O\n".encode("utf-16") + b"\x00\xd8\x41\x00"  # a lone high surrogate
    expect_one_line(write(tmp_path, "s.conll", data), 3, "not valid UTF-16")


# ------------------------------------------------------------------------------ legal variants of tables

TABLES = {
    "csv": ("text,label\n", "{t},{y}\n"),
    "tsv": ("text\tlabel\n", "{t}\t{y}\n"),
    "jsonl": ("", '{{"text": "{t}", "label": "{y}"}}\n'),
}
TABLE_ROWS = [{"text": "good film", "label": "positive"}, {"text": "bad plot", "label": "negative"}]


def table(fmt: str, rows=TABLE_ROWS) -> str:
    head, row = TABLES[fmt]
    return head + "".join(row.format(t=r["text"], y=r["label"]) for r in rows)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
@pytest.mark.parametrize(
    "variant",
    ["lf", "crlf", "cr", "utf16", "utf8bom", "blank lines"],
)
def test_tables_legal_variants_read_the_same(tmp_path, fmt, variant):
    text = table(fmt)
    data: str | bytes = {
        "lf": text,
        "crlf": text.replace("\n", "\r\n"),
        "cr": text.replace("\n", "\r"),
        "utf16": text.encode("utf-16"),
        "utf8bom": b"\xef\xbb\xbf" + text.encode(),
        "blank lines": text.replace("\n", "\n\n"),
    }[variant]
    assert read_table(write(tmp_path, f"t.{fmt}", data)) == TABLE_ROWS


def test_json_array_in_utf16(tmp_path):
    p = write(tmp_path, "a.json", json.dumps(TABLE_ROWS).encode("utf-16"))
    assert read_table(p) == TABLE_ROWS


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_tables_long_text(tmp_path, fmt):
    limit = csv.field_size_limit()
    for n in (100_000, 300_000):  # csv's own field limit is 131,072 characters
        rows = [{"text": "y" * n, "label": "positive"}]
        assert read_table(write(tmp_path, f"t.{fmt}", table(fmt, rows))) == rows
        assert csv.field_size_limit() == limit  # the process-wide limit is restored


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_tables_empty_and_header_only(tmp_path, fmt):
    expect_one_line(write(tmp_path, f"e.{fmt}", "\n\n \n"), None, "empty")
    if fmt != "jsonl":
        expect_one_line(write(tmp_path, f"h.{fmt}", TABLES[fmt][0] + "\n"), None, "only a header")
    expect_one_line(write(tmp_path, f"d.{fmt}", "-DOCSTART-\n"), 1 if fmt == "jsonl" else None)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_tables_control_characters(tmp_path, fmt):
    text = table(fmt).replace("bad plot", "bad\x07plot")
    expect_one_line(write(tmp_path, f"c.{fmt}", text), 3 if fmt != "jsonl" else 2, "U+0007")


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_tables_empty_label_value(tmp_path, fmt):
    rows = [TABLE_ROWS[0], {"text": "meh", "label": ""}]
    expect_one_line(write(tmp_path, f"l.{fmt}", table(fmt, rows)), 3 if fmt != "jsonl" else 2, "empty label")


def test_csv_quoted_newline_is_one_row_and_later_lines_count_physically(tmp_path):
    p = write(tmp_path, "q.csv", 'text,label\n"line one\nline two, still",positive\r\n"a\r\nb",negative\n')
    assert read_table(p) == [
        {"text": "line one\nline two, still", "label": "positive"},
        {"text": "a\r\nb", "label": "negative"},
    ]
    p = write(tmp_path, "q2.csv", 'text,label\n"line one\nline two",positive\n"x",\n')
    expect_one_line(p, 4, "empty label")


def test_csv_broken_quotes(tmp_path):
    expect_one_line(
        write(tmp_path, "u.csv", 'text,label\ngood,positive\n"never closed,negative\nmore,x\n'), 3, "never closed"
    )
    # a quote in the middle of a quoted field would silently glue text together
    expect_one_line(write(tmp_path, "s.csv", 'text,label\n"ab"cd,positive\n'), 2, "malformed CSV")
    # quotes inside an unquoted field are text
    assert read_table(write(tmp_path, "ok.csv", 'text,label\nsay "hi",positive\n'))[0]["text"] == 'say "hi"'


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_duplicate_column_names(tmp_path, fmt):
    sep = "," if fmt == "csv" else "\t"
    expect_one_line(
        write(tmp_path, f"d.{fmt}", sep.join(["text", "label", "label"]) + "\n" + sep.join(["a", "x", "y"]) + "\n"),
        1,
        "'label' occurs more than once",
    )
    expect_one_line(
        write(tmp_path, f"t.{fmt}", sep.join(["text", "text", "label"]) + "\n" + sep.join(["a", "b", "y"]) + "\n"),
        1,
        "'text' occurs more than once",
    )
    # a repeated column that is not read is harmless
    p = write(
        tmp_path, f"n.{fmt}", sep.join(["note", "text", "note", "label"]) + "\n" + sep.join(["1", "a", "2", "y"]) + "\n"
    )
    assert read_table(p) == [{"text": "a", "label": "y"}]


def test_json_duplicate_keys_and_non_scalar_values(tmp_path):
    expect_one_line(
        write(tmp_path, "d.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": "x", "label": "y"}\n'),
        2,
        "'label' occurs more than once",
    )
    expect_one_line(
        write(tmp_path, "d.json", '[{"text": "a", "label": "x", "label": "y"}]'),
        None,
        "record 0: column 'label' occurs more than once",
    )
    expect_one_line(write(tmp_path, "l.jsonl", '{"text": "a", "label": ["x"]}\n'), 1, "JSON array")
    expect_one_line(write(tmp_path, "o.jsonl", '{"text": {"t": 1}, "label": "x"}\n'), 1, "JSON object")
    expect_one_line(
        write(tmp_path, "n.jsonl", '{"text": "a", "label": NaN}\n'), 1, "empty label"
    )  # pandas' missing value


# ------------------------------------------------------------------------------ saved Hugging Face data sets


def test_saved_dataset_empty_tokens_and_labels(tmp_path):
    import datasets

    from fsllm.data import load_hf

    datasets.disable_progress_bars()
    tok = datasets.Dataset.from_dict(
        {"tokens": [["John", "lives"], ["Mary", " "]], "ner_tags": [["B-PER", "O"], ["B-PER", "O"]]}
    )
    tok.save_to_disk(str(tmp_path / "tok"))
    with pytest.raises(DataError, match=r"split 'train' example 1: token 1 is empty") as ei:
        load_hf(tmp_path / "tok")
    assert str(ei.value).startswith(f"{tmp_path / 'tok'}: ")
    seq = datasets.Dataset.from_dict({"text": ["good", "bad"], "label": ["positive", ""]})
    seq.save_to_disk(str(tmp_path / "seq"))
    with pytest.raises(DataError, match=r"split 'train' example 1: empty label"):
        load_hf(tmp_path / "seq")


# ------------------------------------------------------------------------------ multi-label, numbers, pairs


def test_read_table_multi_label_numbers_and_pairs(tmp_path):
    rows = read_table(_jsonl(tmp_path / "a.jsonl", [{"text": "x", "label": ["b", "a", "b"]}, {"text": "y", "label": []}]),
                      label_kind="multi")
    assert [r["label"] for r in rows] == [["b", "a"], []]
    (tmp_path / "b.csv").write_text('text,label\n"x","b|a"\n"y",\n"z",c\n')
    assert [r["label"] for r in read_table(tmp_path / "b.csv", label_kind="multi")] == [["b", "a"], [], ["c"]]
    (tmp_path / "c.tsv").write_text("text\tlabel\nx\tb;a\n")
    assert read_table(tmp_path / "c.tsv", label_kind="multi", label_separator=";")[0]["label"] == ["b", "a"]
    (tmp_path / "d.csv").write_text('text,label\n"x","b||a"\n')
    with pytest.raises(DataError, match=r"d.csv:2: .*empty label between separators"):
        read_table(tmp_path / "d.csv", label_kind="multi")
    # a list is still refused where one label is expected
    with pytest.raises(DataError, match="JSON array"):
        read_table(tmp_path / "a.jsonl")

    (tmp_path / "e.csv").write_text("text,score\nx,1.5\ny,-2\nz,high\n")
    with pytest.raises(DataError, match=r"e.csv:4: .*'high' is not a finite number"):
        read_table(tmp_path / "e.csv", label_column="score", label_kind="number")
    (tmp_path / "f.csv").write_text("text,score\nx,1.5\ny,-2\n")
    assert [r["label"] for r in read_table(tmp_path / "f.csv", label_column="score", label_kind="number")] == [1.5, -2.0]

    pairs = _jsonl(tmp_path / "p.jsonl", [{"premise": "a", "hypothesis": "b", "label": "yes"}])
    assert read_table(pairs, text_column="premise", text_pair_column="hypothesis") == [
        {"text": "a", "text_pair": "b", "label": "yes"}
    ]
    with pytest.raises(DataError, match="column 'hyp' not found"):
        read_table(pairs, text_column="premise", text_pair_column="hyp")
