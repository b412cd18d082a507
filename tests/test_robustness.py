"""Malformed and unusual input to every file reader and to ``predict``.

Each input either is legal and gives the right result, or gives one clear line: a DataError
starting ``path:line:`` where a line can be named, and through the CLI exit status 2, a single
``fsllm: error:`` line on stderr, nothing on stdout and no output file.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import write_file as write

from fsllm.cli import main
from fsllm.data import read_conll, read_table
from fsllm.errors import DataError

LONG = "x" * 100_000


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


# ------------------------------------------------------------------ CoNLL

CONLL_OK = "John B-PER\nlives O\n\nMary B-PER\n"
CONLL_ROWS = [{"tokens": ["John", "lives"], "tags": ["B-PER", "O"]}, {"tokens": ["Mary"], "tags": ["B-PER"]}]


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
    assert read_conll(write(tmp_path, name, data)) == CONLL_ROWS


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


# ------------------------------------------------------------------ tables

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


# ------------------------------------------------------------------ through the CLI


def one_error(args, capsys) -> str:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.startswith("fsllm: error:")]
    assert rc == 2 and len(lines) == 1 and out == "", (rc, out, err)
    return lines[0]


@pytest.mark.parametrize(
    "name, data, where",
    [
        ("e.conll", "\n\n", ":"),
        ("d.conll", "-DOCSTART- -X- O\n", ":"),
        ("c.conll", "John B-PER\nPa\x00ris B-LOC\n", ":2:"),
        ("l.conll", f"{LONG}\n", ":1:"),
        ("u.conll", CONLL_OK.encode("utf-16-le"), ":1:"),
    ],
)
def test_eval_on_bad_files_one_line_and_nothing_written(tmp_path, tiny_ner_model_dir, capsys, name, data, where):
    f = write(tmp_path, name, data)
    out = tmp_path / "preds.jsonl"
    msg = one_error(["eval", tiny_ner_model_dir, "--data", f, "-o", out], capsys)
    assert msg.startswith(f"fsllm: error: {f}{where}") and len(msg) < 400, msg[:500]
    assert not out.exists()


@pytest.mark.parametrize(
    "data",
    [
        "text,label,label\na,positive,negative\n",
        "text,label\ngood,positive\nbad,\n",
        'text,label\n"open,positive\n',
    ],
)
def test_eval_on_bad_tables_one_line(tmp_path, tiny_seq_model_dir, capsys, data):
    f = write(tmp_path, "t.csv", data)
    assert one_error(["eval", tiny_seq_model_dir, "--data", f], capsys).startswith(f"fsllm: error: {f}:")


def test_eval_on_a_utf16_crlf_file(tmp_path, tiny_ner_model_dir, capsys):
    f = write(tmp_path, "t.conll", CONLL_OK.replace("\n", "\r\n").encode("utf-16"))
    out = tmp_path / "p.jsonl"
    assert main(["eval", str(tiny_ner_model_dir), "--data", str(f), "-o", str(out)]) == 0
    capsys.readouterr()
    assert [json.loads(x)["tokens"] for x in out.read_text().splitlines()] == [r["tokens"] for r in CONLL_ROWS]


def predict(args, capsys) -> list[dict]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return [json.loads(x) for x in out.splitlines()]


def check_entities(rows):
    for r in rows:
        for e in r["entities"]:
            assert r["text"][e["start"] : e["end"]] == e["word"]


def test_predict_file_encodings_line_ends_and_blank_lines(tmp_path, tiny_ner_model_dir, capsys):
    texts = ["John visited Paris .", "-DOCSTART-", "Mary works for Google"]
    base = predict(["predict", tiny_ner_model_dir, "--", *texts], capsys)
    assert [r["text"] for r in base] == texts
    for data in (
        "\n\n".join(texts) + "\n",
        "\r\n".join(texts) + "\r\n",
        "\r".join(texts),
        ("\n".join(texts)).encode("utf-16"),
        b"\xef\xbb\xbf" + "\n \n".join(texts).encode(),
    ):
        f = write(tmp_path, "in.txt", data)
        assert predict(["predict", tiny_ner_model_dir, "--file", f], capsys) == base


def test_predict_long_text_and_control_characters(tmp_path, tiny_ner_model_dir, tiny_seq_model_dir, capsys):
    long = ("John visited Paris . " * 5000)[:100_000]
    (row,) = predict(["predict", tiny_ner_model_dir, long], capsys)
    assert row["text"] == long
    check_entities([row])
    (row,) = predict(["predict", tiny_seq_model_dir, long], capsys)
    assert row["label"] in ("negative", "positive")
    # control characters in a text given as an argument separate words; the spans stay exact
    text = "John\x07visited\x00Paris"
    rows = predict(["predict", tiny_ner_model_dir, text], capsys)
    check_entities(rows)


def test_predict_bad_inputs_one_line(tmp_path, tiny_ner_model_dir, capsys):
    f = write(tmp_path, "c.txt", "John visited Paris\nMary\x00 works\n")
    assert one_error(["predict", tiny_ner_model_dir, "--file", f], capsys).startswith(f"fsllm: error: {f}:2: control")
    f = write(tmp_path, "z.txt", "John\n\n\u200b\u200b\n")
    assert one_error(["predict", tiny_ner_model_dir, "--file", f], capsys).startswith(f"fsllm: error: {f}:3: no words")
    f = write(tmp_path, "b.txt", "\n \n\r\n")
    assert "no input texts" in one_error(["predict", tiny_ner_model_dir, "--file", f], capsys)
    f = write(tmp_path, "x.txt", b"ok\n\xff\xfeok\n")
    assert one_error(["predict", tiny_ner_model_dir, "--file", f], capsys).startswith(
        f"fsllm: error: {f}:2: not valid UTF-8"
    )
    assert "argument 2: empty text" in one_error(["predict", tiny_ner_model_dir, "John", "  "], capsys)


# ------------------------------------------------------------------ saved Hugging Face data sets


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


@pytest.mark.parametrize(
    "name, data, where",
    [
        ("train.conll", "John B-PER\nPa\x07ris B-LOC\n", ":2:"),
        ("train.conll", "-DOCSTART- -X- O\n", ":"),
        ("train.csv", "text,label,label\na,x,y\n", ":1:"),
        ("train.csv", CONLL_OK.encode("utf-16-le"), ":1:"),
    ],
)
def test_train_on_bad_files_leaves_no_run_folder(tmp_path, tiny_model_dir, capsys, name, data, where):
    f = write(tmp_path, name, data)
    run = tmp_path / "run"
    msg = one_error(["train", "--data", f, "--model", tiny_model_dir, "--output", run, "--max-steps", 1], capsys)
    assert msg.startswith(f"fsllm: error: {f}{where}"), msg
    assert not run.exists()  # so the corrected command can be rerun as is
