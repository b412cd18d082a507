"""Multi-label classification, regression and text pairs, from the readers to the CLI, the server and pipeline()."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_word_tokenizer, word_llama

from fsllm import FSConfig, FSForSequenceClassification
from fsllm.cli import main
from fsllm.data import read_table
from fsllm.errors import DataError, FSLLMError
from fsllm.inference import Predictor, batched_logits
from fsllm.metrics import multilabel_metrics, primary_metric, regression_metrics
from fsllm.tokenization import pair_features, pair_ids

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


def run_cli(args, capsys):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------ metrics


def test_multilabel_metrics_by_hand():
    gold = [["a", "b"], ["a"], [], ["c"]]
    pred = [["a"], ["a", "c"], [], ["c"]]
    m = multilabel_metrics(gold, pred, ["a", "b", "c"])
    # decisions: tp a=2, c=1; fp c=1; fn b=1 -> micro P 3/4, R 3/4
    assert m["micro_precision"] == pytest.approx(0.75) and m["micro_recall"] == pytest.approx(0.75)
    assert m["micro_f1"] == pytest.approx(0.75)
    # per label: a (1, 1, 1), b (0, 0, 0), c (P 1/2, R 1, F 2/3)
    assert m["per_label"]["c"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}
    assert m["macro_f1"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    # samples: F1 2/3, 2/3, 1 (nothing gold, nothing predicted), 1
    assert m["samples_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1 + 1) / 4)
    assert m["subset_accuracy"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="not one of the labels"):
        multilabel_metrics([["a"]], [["z"]], ["a"])


def test_regression_metrics_and_primary_metrics():
    m = regression_metrics([1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 6.0])
    assert m["rmse"] == pytest.approx(np.sqrt((0 + 1 + 1 + 4) / 4))
    assert m["mae"] == pytest.approx(1.0)
    assert m["spearman"] == pytest.approx(0.8)
    assert m["pearson"] == pytest.approx(np.corrcoef([1, 2, 3, 4], [1, 3, 2, 6])[0, 1])
    assert regression_metrics([1.0, 2.0], [5.0, 5.0])["spearman"] == 0.0  # constant prediction: no rank signal
    assert primary_metric("sequence", "regression") == "spearman"
    assert primary_metric("sequence", "multi_label_classification") == "micro_f1"
    assert primary_metric("sequence") == "accuracy"


# ------------------------------------------------------------------ readers


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
    assert ids[0] == 1 and ids.count(1) == 1 and len(ids) == 6 and ids[3 if ids[3] == 2 else 4] == 2


def _perturbed_seq_model(problem_type=None, num_labels=2, seed=0):
    tok, backbone = word_llama(seed)
    model = FSForSequenceClassification.from_backbone(
        backbone, num_labels=num_labels, fs_config=FSConfig(head_dropout=0.0, lora_dropout=0.0), problem_type=problem_type
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return tok, model.eval()


@pytest.mark.parametrize("side", ["right", "left"])
def test_a_pair_alone_and_in_a_padded_batch_get_the_same_logits(side):
    tok, model = _perturbed_seq_model()
    short, _ = pair_features("John visited Paris", "Mary lives", tok, 64)
    long_, _ = pair_features("the film was good and the actors were great", "the plot was boring and awful", tok, 64)
    alone = model(torch.tensor([short["input_ids"]])).logits[0]
    width = len(long_["input_ids"])
    n = len(short["input_ids"])
    ids = torch.zeros((2, width), dtype=torch.long)
    mask = torch.zeros((2, width), dtype=torch.long)
    ids[0] = torch.tensor(long_["input_ids"])
    mask[0] = 1
    if side == "right":
        ids[1, :n], mask[1, :n] = torch.tensor(short["input_ids"]), 1
    else:
        ids[1, width - n :], mask[1, width - n :] = torch.tensor(short["input_ids"]), 1
    with torch.no_grad():
        batched = model(ids, mask).logits[1]
    assert width > n + 3  # the batch really pads the short pair
    torch.testing.assert_close(batched, alone.detach(), atol=1e-5, rtol=0)
    # the same through the inference path
    (lg_alone,), lg_batch = batched_logits(model, [short]), batched_logits(model, [long_, short])
    np.testing.assert_allclose(lg_batch[1], lg_alone, atol=1e-5)


# ------------------------------------------------------------------ the forward of each problem type


def test_regression_forward_answers_in_data_units_and_fits_standardised_targets():
    tok, model = _perturbed_seq_model("regression", num_labels=1)
    ids = torch.tensor([tok("a great film")["input_ids"], tok("a boring film")["input_ids"]])
    z = model(ids).logits.squeeze(-1).detach()  # mean 0, std 1: the head's own output
    model.config.target_mean, model.config.target_std = 2.0, 3.0
    out = model(ids, labels=torch.tensor([5.0, -1.0]))
    torch.testing.assert_close(out.logits.squeeze(-1), z * 3.0 + 2.0)
    expected = torch.mean((z - torch.tensor([(5.0 - 2.0) / 3.0, (-1.0 - 2.0) / 3.0])) ** 2)
    torch.testing.assert_close(out.loss, expected)


def test_multi_label_forward_uses_binary_cross_entropy():
    tok, model = _perturbed_seq_model("multi_label_classification", num_labels=3)
    ids = torch.tensor([tok("a great film")["input_ids"]])
    target = torch.tensor([[1.0, 0.0, 1.0]])
    out = model(ids, labels=target)
    torch.testing.assert_close(out.loss, torch.nn.functional.binary_cross_entropy_with_logits(out.logits, target))


# ------------------------------------------------------------------ thresholds chosen on dev


class _Stub:
    """What choose_thresholds needs of a model: the label map and a config to write into."""

    def __init__(self, labels):
        from fsllm.config import FSLLMConfig

        self.id2label = dict(enumerate(labels))
        self.num_labels = len(labels)
        self.config = FSLLMConfig(id2label=self.id2label, problem_type="multi_label_classification")


def test_thresholds_are_chosen_on_dev_globally_and_per_label(monkeypatch):
    from fsllm import inference
    from fsllm.training import choose_thresholds

    # label a is present when p >= 0.3; label b when p >= 0.8: no single threshold gets both right
    probs = [np.array([0.35, 0.85]), np.array([0.32, 0.2]), np.array([0.1, 0.7]), np.array([0.2, 0.9])]
    gold = [["a", "b"], ["a"], [], ["b"]]
    monkeypatch.setattr(inference, "sequence_probabilities", lambda *a, **k: probs)
    dev = [{"text": "x", "label": g} for g in gold]

    model = _Stub(["a", "b"])
    chosen = choose_thresholds(model, None, dev, 16, 8, per_label=False)
    # global: 0.3 gets a twice and b thrice (one wrong b); 0.75..0.85 gets b twice and no a: 0.3 wins
    assert chosen == {"global": 0.3, "per_label": None}
    assert model.config.multi_label_threshold == 0.3 and model.config.threshold_of("b") == 0.3

    model = _Stub(["a", "b"])
    chosen = choose_thresholds(model, None, dev, 16, 8, per_label=True)
    assert chosen["per_label"]["a"] <= 0.3 and 0.7 < chosen["per_label"]["b"] <= 0.85
    assert model.config.threshold_of("a") == chosen["per_label"]["a"]
    assert model.config.threshold_of("b") == chosen["per_label"]["b"]


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
