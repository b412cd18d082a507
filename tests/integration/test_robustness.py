"""Bad and unusual input files through the CLI: one-line errors, nothing written, predictions for every word."""

from __future__ import annotations

import json

import pytest
from conftest import CONLL_OK, CONLL_ROWS, LONG
from conftest import write_file as write

from fsllm.cli import main

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
