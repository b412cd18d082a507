"""Tests of fsllm.data.readers: CoNLL (tag schemes, errors), tables, splits, load_hf.

All expected values are written by hand from the small inputs built here.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import datasets
import pytest
from conftest import write_file as write

from fsllm.data import (
    convert_to_iob2,
    load_hf,
    read_conll,
    read_table,
    split_deterministic,
)
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
    assert out == [
        {"tokens": ["EU", "rejects", "German"], "tags": ["B-ORG", "O", "B-MISC"]},
        {"tokens": ["Peter", "Blackburn"], "tags": ["B-PER", "I-PER"]},
        {"tokens": ["Bonn"], "tags": ["B-LOC"]},
    ]
    assert stats == {"scheme": "iob2", "repairs": 0, "sentences": 3, "tokens": 6}


def test_conll_no_final_blank_crlf_and_tabs(tmp_path):
    # tab-separated: the token may contain a space; CRLF line ends; no blank line at the end
    p = write(tmp_path, "b.txt", "New York\tB-LOC\r\nis\tO\r\n\r\nhi\tO")
    assert read_conll(p) == [
        {"tokens": ["New York", "is"], "tags": ["B-LOC", "O"]},
        {"tokens": ["hi"], "tags": ["O"]},
    ]


def test_conll_whitespace_only_line_separates(tmp_path):
    p = write(tmp_path, "c.txt", "a\tO\n\t\nb\tB-X\n")
    assert [s["tokens"] for s in read_conll(p)] == [["a"], ["b"]]


def test_conll_token_and_tag_columns(tmp_path):
    p = write(tmp_path, "d.txt", "1 Obama NNP B-PER x\n2 spoke VBD O x\n")
    out = read_conll(p, token_col=1, tag_col=3)
    assert out == [{"tokens": ["Obama", "spoke"], "tags": ["B-PER", "O"]}]


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
