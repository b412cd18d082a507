"""End to end: train, evaluate, predict and serve through the CLI (and train from Python), on tiny models."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from conftest import _config, _jsonl, _trained_word_models, write_conll_dir, write_csv_dir
from transformers import pipeline

from fsllm import FSForSequenceClassification, FSForTokenClassification
from fsllm.cli import main
from fsllm.errors import DataError, FSLLMError
from fsllm.inference import Predictor, batched_logits

# ------------------------------------------------------------------ the CLI end to end


def run_cli(args, capsys):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_token_task_end_to_end(tmp_path, tiny_model_dir, capsys, monkeypatch):
    data = write_conll_dir(tmp_path)
    run = tmp_path / "run"
    rc, out, err = run_cli(
        ["train", "--data", data, "--model", tiny_model_dir, "--output", run, "--max-steps", 5, "--batch-size", 4,
         "--eval-steps", 2, "--lr", "5e-3"], capsys)
    assert rc == 0, err
    assert "test f1:" in out and f"run folder: {run}" in out
    for name in ("config.json", "metrics.json", "train_log.jsonl", "predictions_test.jsonl", "predictions_dev.jsonl",
                 "model/config.json", "model/adapter/adapter_model.safetensors", "model/README.md", "plots/loss.png", "plots/dev_f1.png"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task"] == "token" and 0 <= metrics["test"]["f1"] <= 1
    card = (run / "model" / "README.md").read_text()
    assert "pipeline_tag: token-classification" in card and f"value: {metrics['test']['f1']}" in card
    assert set(metrics["test"]["per_type"]) <= {"PER", "LOC", "ORG"}
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in log)
    # dev is evaluated every 2 steps and at the last step, which then competes for "best"
    assert [r["step"] for r in log if "eval_f1" in r] == [2, 4, 5]
    preds = [json.loads(line) for line in (run / "predictions_test.jsonl").read_text().splitlines()]
    assert preds[0]["tokens"] == ["Jones", "lives", "in", "Berlin"] and len(preds[0]["pred"]) == 4

    rc, out, err = run_cli(["eval", run, "--data", data, "--split", "test"], capsys)
    assert rc == 0, err
    assert json.loads(out)["f1"] == pytest.approx(metrics["test"]["f1"])

    rc, out, err = run_cli(["predict", run, "John visited Paris .", "Mary works for Google"], capsys)
    assert rc == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["text"] for r in rows] == ["John visited Paris .", "Mary works for Google"]
    for r in rows:
        for e in r["entities"]:
            assert set(e) == {"entity_group", "score", "word", "start", "end"}
            assert r["text"][e["start"]:e["end"]] == e["word"]

    texts = tmp_path / "in.txt"
    texts.write_text("John visited Paris .\n\nMary works for Google\n")
    rc, out_file, err = run_cli(["predict", run, "--file", texts], capsys)
    assert rc == 0 and out_file == out

    monkeypatch.setattr(sys, "stdin", type("S", (), {"buffer": type("B", (), {"read": lambda self: texts.read_bytes()})()})())
    rc, out_stdin, err = run_cli(["predict", run], capsys)
    assert rc == 0 and out_stdin == out


def test_cli_sequence_task_end_to_end(tmp_path, tiny_model_dir, capsys):
    data = write_csv_dir(tmp_path)
    run = tmp_path / "run"
    rc, out, err = run_cli(
        ["train", "--data", data, "--model", tiny_model_dir, "--output", run, "--epochs", 2, "--batch-size", 4,
         "--pooling", "last", "--attention", "decay", "--decay-lambda", "0.5"], capsys)
    assert rc == 0, err
    assert "test accuracy:" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["labels"] == ["negative", "positive"]
    assert (run / "plots" / "confusion_test.png").is_file()
    saved = json.loads((run / "model" / "config.json").read_text())
    assert saved["model_type"] == "fsllm" and saved["architectures"] == ["FSForSequenceClassification"]
    assert saved["fs"]["attention"] == "decay" and saved["fs"]["pooling"] == "last"
    rc, out, err = run_cli(["predict", run, "a great film", "boring plot"], capsys)
    assert rc == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert all(r["label"] in ("negative", "positive") and 0.5 <= r["score"] <= 1 for r in rows)


# ------------------------------------------------------------------ bad input: one line, exit 2


def one_line_error(args, capsys):
    rc, out, err = run_cli(args, capsys)
    lines = [ln for ln in err.splitlines() if ln.startswith("fsllm: error:")]
    assert rc == 2, (rc, err)
    assert len(lines) == 1, err
    return lines[0]


def test_bad_inputs_give_one_line_errors(tmp_path, tiny_model_dir, capsys):
    base = ["train", "--model", tiny_model_dir, "--max-steps", 1, "--batch-size", 2]

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.txt").write_text("John B-PER\nSmith\n")
    msg = one_line_error(base + ["--data", bad, "--output", tmp_path / "r1"], capsys)
    assert "train.txt:2" in msg

    cols = tmp_path / "cols"
    cols.mkdir()
    (cols / "train.csv").write_text("sentence,label\nhello,positive\n")
    msg = one_line_error(base + ["--data", cols, "--output", tmp_path / "r2"], capsys)
    assert "train.csv" in msg and "text" in msg

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "train.csv").write_text("")
    msg = one_line_error(base + ["--data", empty, "--output", tmp_path / "r3"], capsys)
    assert "train.csv" in msg and "empty" in msg.lower()

    blank = tmp_path / "blank"
    blank.mkdir()
    (blank / "train.csv").write_text('text,label\nfine,positive\n"  ",negative\n')
    msg = one_line_error(base + ["--data", blank, "--output", tmp_path / "r4"], capsys)
    assert "train.csv:3" in msg

    binary = tmp_path / "binary"
    binary.mkdir()
    (binary / "train.csv").write_bytes(b"text,label\ngood,positive\nbad \xff\xfe,negative\n")
    msg = one_line_error(base + ["--data", binary, "--output", tmp_path / "r5"], capsys)
    assert "train.csv:3" in msg and "UTF-8" in msg

    unknown = write_csv_dir(tmp_path)
    (unknown / "dev.csv").write_text("text,label\nso so,neutral\n")
    msg = one_line_error(base + ["--data", unknown, "--output", tmp_path / "r6"], capsys)
    assert "'neutral'" in msg and "dev" in msg

    msg = one_line_error(["predict", tmp_path / "no-such-run", "hello"], capsys)
    assert "no such model folder" in msg
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{oops")
    msg = one_line_error(["predict", corrupt, "hello"], capsys)
    assert "corrupt" in msg

    msg = one_line_error(["train", "--data", "no-such-dataset", "--output", tmp_path / "r7"], capsys)
    assert "conll2003" in msg  # lists the catalogue


def test_existing_run_folder_is_not_overwritten(tmp_path, tiny_model_dir, capsys):
    data = write_csv_dir(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("{}")
    msg = one_line_error(["train", "--data", data, "--model", tiny_model_dir, "--output", run], capsys)
    assert "--resume" in msg
    assert (run / "metrics.json").read_text() == "{}"


MULTI_ROWS = [
    ("John visited Paris", ["person", "place"]),
    ("a great film", ["film"]),
    ("Mary loved the movie", ["person", "film"]),
    ("London city river", ["place"]),
    ("the company", []),
    ("Smith hated the film in Berlin", ["person", "film", "place"]),
]
SCORE_ROWS = [
    ("a great moving film", 3.0), ("boring plot and awful actors", -3.0), ("loved the movie", 2.0),
    ("hated the film", -2.5), ("good actors , great plot", 2.5), ("bad movie , boring", -2.0),
]  # fmt: skip
PAIR_ROWS = [
    ("John lives in Paris", "John lives in a city", "yes"),
    ("John lives in Paris", "Mary lives in Berlin", "no"),
    ("the film was great", "the film was good", "yes"),
    ("the film was great", "the film was awful", "no"),
    ("Mary works for Google", "Mary works for a company", "yes"),
    ("Mary works for Google", "Mary works for Apple", "no"),
]


# ------------------------------------------------------------------ end to end: multi-label


def _write_multi(root: Path) -> Path:
    d = root / "multi"
    d.mkdir()
    _jsonl(d / "train.jsonl", [{"text": t, "label": y} for t, y in MULTI_ROWS * 3])
    (d / "dev.csv").write_text("text,label\n" + "".join(f'"{t}",{"|".join(y)}\n' for t, y in MULTI_ROWS[:4]))
    (d / "test.tsv").write_text("text\tlabel\n" + "".join(f"{t}\t{'|'.join(y)}\n" for t, y in MULTI_ROWS[2:]))
    return d


def test_cli_multi_label_end_to_end(tmp_path, tiny_model_dir, capsys):
    from transformers import pipeline

    from fsllm.training import THRESHOLD_GRID

    data = _write_multi(tmp_path)
    run = tmp_path / "run"
    rc, out, err = run_cli(["train", "--data", data, "--model", tiny_model_dir, "-o", run, "--epochs", 3,
                            "--batch-size", 4, "--lr", "5e-3", "--multi-label", "--threshold-per-label"], capsys)
    assert rc == 0, err
    assert "test micro_f1:" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["problem_type"] == "multi_label_classification"
    for key in ("micro_f1", "macro_f1", "samples_f1", "subset_accuracy", "per_label"):
        assert key in metrics["test"]
    assert set(metrics["test"]["per_label"]) == {"film", "person", "place"}
    saved = json.loads((run / "model" / "config.json").read_text())
    assert saved["problem_type"] == "multi_label_classification"
    assert saved["multi_label_threshold"] in THRESHOLD_GRID
    assert saved["label_thresholds"] == metrics["thresholds"]["per_label"]
    assert set(saved["label_thresholds"]) == {"film", "person", "place"}

    texts = [t for t, _ in MULTI_ROWS]
    pred = Predictor.from_pretrained(run)
    feats = [{"input_ids": pred.tokenizer(t)["input_ids"], "attention_mask": [1] * len(pred.tokenizer(t)["input_ids"])}
             for t in texts]
    sig = [1 / (1 + np.exp(-lg)) for lg in batched_logits(pred.model, feats)]

    def check_predict(thresholds: dict[str, float]) -> None:
        rc, out, err = run_cli(["predict", run, *texts], capsys)
        assert rc == 0, err
        rows = [json.loads(line) for line in out.splitlines()]
        for row, s in zip(rows, sig):
            expected = {lab for lab, k in pred.model.label2id.items() if s[k] >= thresholds[lab]}
            assert {x["label"] for x in row["labels"]} == expected  # every label over its threshold, no other
            for x in row["labels"]:
                assert x["score"] == pytest.approx(float(s[pred.model.label2id[x["label"]]]), abs=1e-6)

    check_predict(saved["label_thresholds"])
    # thresholds between the scores (some texts over, some under): predict must follow the folder's config
    between = {lab: float(np.median([s[k] for s in sig])) for lab, k in pred.model.label2id.items()}
    (run / "model" / "config.json").write_text(json.dumps({**saved, "label_thresholds": between}))
    check_predict(between)
    (run / "model" / "config.json").write_text(json.dumps(saved))
    cfg = pred.model.config

    # pipeline() applies the sigmoid by itself for a multi-label config: the same scores
    clf = pipeline("text-classification", model=str(run / "model"), top_k=None)
    for theirs, s in zip(clf(texts), sig):
        assert {d["label"]: d["score"] for d in theirs} == pytest.approx(
            {cfg.id2label[k]: float(s[k]) for k in range(3)}, abs=1e-5)

    rc, out, err = run_cli(["eval", run, "--data", data / "test.tsv"], capsys)
    assert rc == 0, err
    assert json.loads(out)["micro_f1"] == pytest.approx(metrics["test"]["micro_f1"])

    # save -> load: the same predictions, thresholds included (both folder kinds)
    for merged in (False, True):
        again = tmp_path / f"again-{merged}"
        pred.model.save_pretrained(again, tokenizer=pred.tokenizer, merged=merged)
        assert Predictor.from_pretrained(again).predict(texts) == pytest.approx(pred.predict(texts))


# ------------------------------------------------------------------ end to end: regression


def test_cli_regression_end_to_end(tmp_path, tiny_model_dir, capsys):
    from transformers import pipeline

    d = tmp_path / "reg"
    d.mkdir()
    for split, rows in (("train", SCORE_ROWS * 3), ("dev", SCORE_ROWS[:3]), ("test", SCORE_ROWS[3:])):
        (d / f"{split}.csv").write_text("text,rating\n" + "".join(f'"{t}",{y}\n' for t, y in rows))
    run = tmp_path / "run"
    rc, out, err = run_cli(["train", "--data", d, "--model", tiny_model_dir, "-o", run, "--epochs", 2,
                            "--batch-size", 4, "--regression", "--label-column", "rating",
                            "--selection-metric", "rmse"], capsys)
    assert rc == 0, err
    assert "test rmse:" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"pearson", "spearman", "rmse", "mae"} <= set(metrics["test"])
    targets = np.array([y for _, y in SCORE_ROWS * 3])
    saved = json.loads((run / "model" / "config.json").read_text())
    assert saved["problem_type"] == "regression" and saved["id2label"] == {"0": "score"}  # num_labels = 1
    assert saved["target_mean"] == pytest.approx(targets.mean())
    assert saved["target_std"] == pytest.approx(targets.std(ddof=1))
    # checkpoint chosen on the lowest dev rmse
    log = [json.loads(ln) for ln in (run / "train_log.jsonl").read_text().splitlines()]
    dev_rmse = [r["eval_rmse"] for r in log if "eval_rmse" in r]
    assert metrics["train"]["best_dev_metric"] == pytest.approx(min(dev_rmse))

    texts = [t for t, _ in SCORE_ROWS]
    rc, out, err = run_cli(["predict", run, *texts], capsys)
    assert rc == 0, err
    values = [json.loads(line)["value"] for line in out.splitlines()]
    records = [json.loads(ln) for ln in (run / "predictions_test.jsonl").read_text().splitlines()]
    assert [r["pred"] for r in records] == pytest.approx(values[3:], abs=1e-4)
    # pipeline() returns the logit as is for a regression config: already in the data's units
    clf = pipeline("text-classification", model=str(run / "model"))
    assert [r["score"] for r in clf(texts)] == pytest.approx(values, abs=1e-5)
    assert np.std(values) > 0 and abs(np.mean(values) - targets.mean()) < 3 * targets.std()

    rc, out, err = run_cli(["eval", run, "--data", d / "test.csv", "--label-column", "rating"], capsys)
    assert rc == 0, err
    assert json.loads(out)["rmse"] == pytest.approx(metrics["test"]["rmse"], abs=1e-6)

    pred = Predictor.from_pretrained(run)
    for merged in (False, True):
        again = tmp_path / f"again-{merged}"
        pred.model.save_pretrained(again, tokenizer=pred.tokenizer, merged=merged)
        assert [r["value"] for r in Predictor.from_pretrained(again).predict(texts)] == pytest.approx(values, abs=1e-5)


# ------------------------------------------------------------------ end to end: text pairs


def _write_pairs(root: Path, regression: bool = False) -> Path:
    d = root / ("pairs-reg" if regression else "pairs")
    d.mkdir()

    def rows(rs):
        return [{"premise": a, "hypothesis": b, "label": (1.0 if y == "yes" else -1.0) if regression else y}
                for a, b, y in rs]

    _jsonl(d / "train.jsonl", rows(PAIR_ROWS * 3))
    _jsonl(d / "dev.jsonl", rows(PAIR_ROWS[:2]))
    _jsonl(d / "test.jsonl", rows(PAIR_ROWS[2:]))
    return d


def test_cli_text_pairs_end_to_end_and_served(tmp_path, tiny_model_dir, tiny_seq_model_dir, capsys):
    from fastapi.testclient import TestClient

    from fsllm.serve import create_app

    data = _write_pairs(tmp_path)
    run = tmp_path / "run"
    rc, out, err = run_cli(["train", "--data", data, "--model", tiny_model_dir, "-o", run, "--epochs", 2,
                            "--batch-size", 4, "--text-column", "premise", "--text-pair-column", "hypothesis"], capsys)
    assert rc == 0, err
    assert json.loads((run / "model" / "config.json").read_text())["text_pair"] is True
    records = [json.loads(ln) for ln in (run / "predictions_test.jsonl").read_text().splitlines()]
    assert records[0]["text_pair"] == PAIR_ROWS[2][1]
    rc, out, err = run_cli(["eval", run, "--data", data / "test.jsonl", "--text-column", "premise",
                            "--text-pair-column", "hypothesis"], capsys)
    assert rc == 0, err
    test_metrics = json.loads((run / "metrics.json").read_text())["test"]
    assert isinstance(test_metrics["seconds"], float)  # the split's inference time, beside its scores
    assert json.loads(out)["accuracy"] == test_metrics["accuracy"] and json.loads(out)["loss"] == pytest.approx(
        test_metrics["loss"], abs=1e-6)

    # fsllm predict: JSON objects, extra fields kept; a plain line is an error naming it
    inputs = tmp_path / "in.jsonl"
    _jsonl(inputs, [{"id": n, "text": a, "text_pair": b} for n, (a, b, _) in enumerate(PAIR_ROWS)])
    rc, out, err = run_cli(["predict", run, "--file", inputs], capsys)
    assert rc == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["id"] for r in rows] == list(range(6)) and all(r["label"] in ("yes", "no") for r in rows)
    (tmp_path / "bad.txt").write_text('{"text": "a", "text_pair": "b"}\njust a text\n')
    rc, out, err = run_cli(["predict", run, "--file", tmp_path / "bad.txt"], capsys)
    assert rc == 2 and "bad.txt:2" in err and "text_pair" in err

    pred = Predictor.from_pretrained(run)
    as_tuples = pred.predict([(a, b) for a, b, _ in PAIR_ROWS])
    assert as_tuples == pred.predict([a for a, _, _ in PAIR_ROWS], text_pairs=[b for _, b, _ in PAIR_ROWS])
    assert [r["label"] for r in as_tuples] == [r["label"] for r in rows]
    assert [r["score"] for r in as_tuples] == pytest.approx([r["score"] for r in rows])
    with pytest.raises(DataError, match="trained on text pairs"):
        pred.predict(["a single text"])
    # pipeline() users join the pair with the EOS token themselves (its own pair encoding has no separator)
    from transformers import pipeline

    clf = pipeline("text-classification", model=str(run / "model"))
    theirs = clf([f"{a}{pred.tokenizer.eos_token}{b}" for a, b, _ in PAIR_ROWS])
    assert [r["label"] for r in theirs] == [r["label"] for r in as_tuples]
    assert [r["score"] for r in theirs] == pytest.approx([r["score"] for r in as_tuples], abs=1e-5)

    # the server: TEI's [[a, b], ...] rows for a pair model; single texts refused, and pairs for a single-text model
    with TestClient(create_app(pred, max_batch_size=4, max_wait_ms=1)) as c:
        r = c.post("/predict", json={"inputs": [[a, b] for a, b, _ in PAIR_ROWS]})
        assert r.status_code == 200, r.text
        for answer, ours in zip(r.json(), as_tuples):
            best = answer[0]
            assert best["label"] == ours["label"] and best["score"] == pytest.approx(ours["score"], abs=1e-5)
        single = c.post("/predict", json={"inputs": ["John lives in Paris", "John lives in a city"]})
        assert single.status_code == 200 and single.json()[0]["label"] == as_tuples[0]["label"]
        r = c.post("/predict", json={"inputs": "just one text"})
        assert r.status_code == 422 and "pairs" in r.json()["error"]
        assert c.get("/info").json()["text_pairs"] is True
    with TestClient(create_app(Predictor.from_pretrained(tiny_seq_model_dir), max_wait_ms=1)) as c:
        r = c.post("/predict", json={"inputs": [["good film", "bad film"]]})
        assert r.status_code == 422 and "not trained on text pairs" in r.json()["error"]

    for merged in (False, True):
        again = tmp_path / f"again-{merged}"
        pred.model.save_pretrained(again, tokenizer=pred.tokenizer, merged=merged)
        assert Predictor.from_pretrained(again).predict([(a, b) for a, b, _ in PAIR_ROWS]) == pytest.approx(as_tuples)


def test_text_pair_regression_from_python(tmp_path, tiny_model_dir):
    from fsllm.training import TrainConfig, train

    data = _write_pairs(tmp_path, regression=True)
    result = train(TrainConfig(data=str(data), model=str(tiny_model_dir), output_dir=str(tmp_path / "run"),
                               text_column="premise", text_pair_column="hypothesis", problem_type="regression",
                               max_steps=4, batch_size=4))
    assert result.metrics["problem_type"] == "regression" and "spearman" in result.metrics["test"]
    pred = Predictor.from_pretrained(result.run_dir)
    values = pred.predict([(a, b) for a, b, _ in PAIR_ROWS])
    assert all(set(v) == {"value"} and np.isfinite(v["value"]) for v in values)
    with pytest.raises(FSLLMError, match="selection_metric 'micro_f1'.*spearman"):
        train(TrainConfig(data=str(data), model=str(tiny_model_dir), output_dir=str(tmp_path / "run3"),
                          text_column="premise", text_pair_column="hypothesis", problem_type="regression",
                          max_steps=1, selection_metric="micro_f1"))
    with pytest.raises(FSLLMError, match="threshold_per_label"):
        train(TrainConfig(data=str(data), model=str(tiny_model_dir), output_dir=str(tmp_path / "run2"),
                          text_column="premise", text_pair_column="hypothesis", problem_type="regression",
                          max_steps=1, threshold_per_label=True))


def test_cli_pre_split_json_lines(tmp_path, tiny_ner_model_dir, tiny_seq_model_dir, capsys):
    f = tmp_path / "in.jsonl"
    f.write_text('{"id": 7, "tokens": ["John", "visited", "Paris"]}\n\n{"tokens": ["Credit", "Suisse", "\'s"]}\n')
    assert main(["predict", str(tiny_ner_model_dir), "--pre-split", "--file", str(f)]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["tokens"] for r in rows] == [["John", "visited", "Paris"], ["Credit", "Suisse", "'s"]]
    assert rows[0]["id"] == 7 and all(len(r["tags"]) == len(r["tokens"]) for r in rows)
    # texts after the option, on the command line
    assert main(["predict", str(tiny_ner_model_dir), "--pre-split", '{"tokens": ["a", "b"]}']) == 0
    assert len(json.loads(capsys.readouterr().out)["tags"]) == 2

    def one_error(args):
        rc = main([str(a) for a in args])
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.startswith("fsllm: error:")]
        assert rc == 2 and len(lines) == 1, err
        return lines[0]

    f.write_text('{"tokens": ["ok"]}\n["not", "an", "object"]\n')
    assert f"{f}:2:" in one_error(["predict", tiny_ner_model_dir, "--pre-split", "--file", f])
    f.write_text('{"tokens": ["ok"]}\n{"tokens": ["x", 3]}\n')
    msg = one_error(["predict", tiny_ner_model_dir, "--pre-split", "--file", f])
    assert f"{f}:2:" in msg and "token 2" in msg
    f.write_text("{oops\n")
    assert f"{f}:1: --pre-split: invalid JSON" in one_error(["predict", tiny_ner_model_dir, "--pre-split", "--file", f])
    assert "sequence classifier" in one_error(["predict", tiny_seq_model_dir, "--pre-split", '{"tokens": ["a"]}'])


TEXTS = ["John Smith visited Paris .", "Mary works for Google in London today", "the film was good"]


def test_pipelines_load_the_fs_model_and_agree_with_predict(tmp_path):
    folders = _trained_word_models(tmp_path)

    from fsllm.decoding import set_decoding

    ner = pipeline("token-classification", model=str(folders["token"]), aggregation_strategy="first")
    assert type(ner.model) is FSForTokenClassification
    # the model's own decoding (the default, Viterbi over mean sub-token scores): the same entities; then
    # greedy over first sub-tokens, where a word's score is its first token's probability as the pipeline's is
    for decoding, scores in (("viterbi", "mean"), ("greedy", "first")):
        set_decoding(ner.model, decoding, scores)
        pred = Predictor.from_pretrained(folders["token"], ner_decoding=decoding, word_scores=scores)
        ours, theirs = pred.predict(TEXTS), ner(TEXTS)
        assert sum(len(e) for e in ours) >= 3  # the comparison covers real entities
        for a, b in zip(theirs, ours):
            assert [(e["entity_group"], e["start"], e["end"], e["word"]) for e in a] == [
                (e["entity_group"], e["start"], e["end"], e["word"]) for e in b
            ]
            if scores == "first":
                assert [float(e["score"]) for e in a] == pytest.approx([e["score"] for e in b], abs=1e-5)

    clf = pipeline("text-classification", model=str(folders["sequence"]))
    assert type(clf.model) is FSForSequenceClassification
    ours = Predictor.from_pretrained(folders["sequence"]).predict(TEXTS)
    theirs = clf(TEXTS)
    assert [r["label"] for r in theirs] == [r["label"] for r in ours]
    assert [r["score"] for r in theirs] == pytest.approx([r["score"] for r in ours], abs=1e-5)


SPACED = ["Super 12 beat Otago 34 - 20 in 1996 .", "Bre-X fell 2 cents to 3 .", "Barrick won 4 of 5 in Toronto"]


def _entity_key(e: dict) -> tuple:
    """An entity without the spaces its byte-level BPE tokens carry (the pipeline's ``word`` starts with one)."""
    w = e["word"]
    return (e["entity_group"], int(e["start"]) + len(w) - len(w.lstrip()), int(e["end"]) - len(w) + len(w.rstrip()), w.strip())


def test_pipeline_finds_fsllm_entities_around_lone_space_tokens(tmp_path):
    """SmolLM2 writes the space before a digit as a token of its own, which the pipeline's word heuristic
    takes for a word: the whitespace rule gives it the label that keeps the entities fsllm's. Without the
    rule this random model's labels on those tokens make the pipeline's entities differ."""
    from fsllm import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    cfg = _config("llama", 2)
    cfg.vocab_size = len(tok)
    torch.manual_seed(1)  # a draw whose labels on lone spaces are not all O
    labels = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-ORG", 4: "I-ORG", 5: "B-LOC", 6: "I-LOC", 7: "B-MISC", 8: "I-MISC"}
    model = FSForTokenClassification.from_backbone(transformers.LlamaModel(cfg).eval(), id2label=labels).eval()
    with_rule, without = tmp_path / "rule", tmp_path / "none"
    model.save_pretrained(with_rule, tokenizer=tok, merged=True)  # saved with its tokenizer: records its whitespace ids
    assert model.config.whitespace_token_ids
    model.config.whitespace_token_ids = []
    model.save_pretrained(without, tokenizer=tok, merged=True)

    def agree(folder):
        ner = pipeline("token-classification", model=str(folder), aggregation_strategy="first")
        ours = Predictor.from_pretrained(folder).predict(SPACED)
        assert sum(len(e) for e in ours) >= 5  # the comparison covers real entities
        return [[_entity_key(e) for e in a] == [_entity_key(e) for e in b] for a, b in zip(ner(SPACED), ours)]

    assert all(agree(with_rule))
    assert not all(agree(without))


def test_precision_option_of_predict_eval_and_serve(tmp_path, tiny_seq_model_dir, capsys):
    from fastapi.testclient import TestClient

    from fsllm.serve import create_app

    rc, out, err = run_cli(["predict", tiny_seq_model_dir, "--precision", "bf16", "the film was good"], capsys)
    assert rc == 0, err
    (bf16,) = [json.loads(line) for line in out.splitlines()]
    rc, out, _ = run_cli(["predict", tiny_seq_model_dir, "the film was good"], capsys)
    (fp32,) = [json.loads(line) for line in out.splitlines()]
    assert bf16["label"] == fp32["label"] and bf16["score"] != fp32["score"]
    with pytest.raises(SystemExit):
        run_cli(["predict", tiny_seq_model_dir, "--precision", "fp8", "x"], capsys)
    assert "--precision: invalid choice" in capsys.readouterr().err
    with TestClient(create_app(str(tiny_seq_model_dir), max_wait_ms=1, precision="bf16")) as c:
        assert c.get("/info").json()["model_dtype"] == "bfloat16"
        r = c.post("/predict", json={"inputs": "the film was good"})
        assert r.status_code == 200 and r.json()[0]["label"] == fp32["label"]
