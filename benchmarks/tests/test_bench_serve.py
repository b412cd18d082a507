"""The serving load test: its baseline endpoint's model call answers what fsllm serve answers, its
answer comparison tells equal answers from different ones, and (slow) a whole run writes its results."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

# benchmarks/ for the scripts, tests/ for the library tests' helpers (``conftest``, ``test_serve``)
ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "tests")]

import bench_serve  # noqa: E402
from test_serve import NER_LABELS, SEQ_LABELS, _tiny_model_dir  # noqa: E402

from fsllm import FSForSequenceClassification, FSForTokenClassification  # noqa: E402
from fsllm.inference import Predictor, batched_logits  # noqa: E402
from fsllm.serve import label_scores  # noqa: E402

TEXTS = ["John Smith visited Paris .", "a great moving film", "Mary works for Google in London today"]


def test_baseline_pipeline_answers_as_fsllm_serve(tmp_path):
    seq = _tiny_model_dir(FSForSequenceClassification, SEQ_LABELS, 3, tmp_path / "seq")
    task, pipe = bench_serve.build_baseline(str(seq))
    predictor = Predictor.from_pretrained(seq)
    assert task == "sequence"
    for text in TEXTS:
        ids = predictor.tokenizer(text)["input_ids"]
        (logits,) = batched_logits(predictor.model, [{"input_ids": ids, "attention_mask": [1] * len(ids)}])
        ours = label_scores(logits, predictor.model.id2label, raw_scores=False)
        theirs = bench_serve._plain(pipe(text))
        theirs = theirs[0] if isinstance(theirs[0], list) else theirs
        assert bench_serve.same_answer(ours, theirs, "sequence", 1e-5), (ours, theirs)

    ner = _tiny_model_dir(FSForTokenClassification, NER_LABELS, 4, tmp_path / "ner")
    task, pipe = bench_serve.build_baseline(str(ner))
    assert task == "token"
    ents = bench_serve._plain(pipe(TEXTS[0]))
    assert all(set(e) >= {"entity_group", "score", "word", "start", "end"} and isinstance(e["score"], float)
               for e in ents)
    json.dumps(ents)  # what the baseline endpoint sends


def test_same_answer_tells_equal_from_different():
    a = [{"label": "pos", "score": 0.7}, {"label": "neg", "score": 0.3}]
    assert bench_serve.same_answer(a, [{"label": "pos", "score": 0.70001}, {"label": "neg", "score": 0.29999}],
                                   "sequence", 1e-4)
    assert not bench_serve.same_answer(a, [{"label": "neg", "score": 0.7}, {"label": "pos", "score": 0.3}],
                                       "sequence", 1e-4)
    assert not bench_serve.same_answer(a, [{"label": "pos", "score": 0.6}, {"label": "neg", "score": 0.4}],
                                       "sequence", 1e-4)
    assert not bench_serve.same_answer(a, "error text", "sequence", 1e-4)
    e = [{"entity_group": "PER", "score": 0.9, "word": "John", "start": 4, "end": 8}]
    # the pipeline's entity starts at the space its first byte-level BPE token carries
    assert bench_serve.same_answer(e, [dict(e[0], word=" John", start=3)], "token", 1e-4)
    assert not bench_serve.same_answer(e, [dict(e[0], word=" John")], "token", 1e-4)
    assert not bench_serve.same_answer(e, [dict(e[0], end=14, word="John Smith")], "token", 1e-4)
    assert not bench_serve.same_answer(e, [], "token", 1e-4)


@pytest.mark.slow
def test_a_short_run_writes_json_and_markdown(tmp_path):
    seq = _tiny_model_dir(FSForSequenceClassification, SEQ_LABELS, 3, tmp_path / "seq")
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    assert bench_serve.main(["--model", str(seq), "--levels", "1,2", "--requests", "6", "--texts", str(texts),
                             "--name", "smoke", "--out-dir", str(tmp_path / "out"), "--fsllm-threads", "default,1"]) == 0
    res = json.loads((tmp_path / "out" / "smoke.json").read_text())
    assert res["identical_outputs"] and res["exit_status"]["fsllm"] == 0  # plain uvicorn (baseline) dies by the signal
    assert [(r["server"], r["concurrency"], r["correct"], r["errors"]) for r in res["levels"]] == [
        ("baseline", 1, 6, 0), ("baseline", 2, 6, 0), ("fsllm", 1, 6, 0), ("fsllm", 2, 6, 0),
        ("fsllm-t1", 1, 6, 0), ("fsllm-t1", 2, 6, 0)]
    assert res["torch_threads"]["fsllm-t1"] == 1 and set(res["speedups"]) == {"fsllm", "fsllm-t1"}
    assert res["speedup_requests_per_s"] == res["speedups"]["fsllm"]
    md = (tmp_path / "out" / "smoke.md").read_text()
    assert "| fsllm | 2 |" in md and "| fsllm-t1 | 2 |" in md and "fsllm-t1 / baseline requests/s" in md
    fs_rows = [r for r in res["levels"] if r["server"] == "fsllm"]
    assert all(r["batches"]["forwards"] >= 3 and sum(r["batches"]["forwards_by_batch_size_le"].values())
               == r["batches"]["forwards"] for r in fs_rows)  # 6 texts in forwards of at most 2
    assert fs_rows[0]["batches"] == {"forwards": 6, "mean_batch": 1.0, "forwards_by_batch_size_le": {"1": 6}}
    assert all("batches" not in r for r in res["levels"] if r["server"] == "baseline")


def test_batch_delta_splits_the_cumulative_histogram_between_two_scrapes():
    before = {"1": 2.0, "2": 2.0, "4": 3.0, "+Inf": 3.0, "sum": 5.0, "count": 3.0}  # batches of 1, 1, 3
    after = {"1": 3.0, "2": 5.0, "4": 6.0, "+Inf": 7.0, "sum": 27.0, "count": 7.0}  # then 1, 2, 2, 17
    assert bench_serve.batch_delta(before, after) == {
        "forwards": 4, "mean_batch": 5.5,
        "forwards_by_batch_size_le": {"1": 1, "2": 2, "+Inf": 1}}
