"""bench_document_reading.py: documents are the runs of consecutive sentences that name the same one, and a
whole document's tags go back to its sentences in order."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "benchmarks")]

import bench_document_reading as B  # noqa: E402


def test_documents_are_consecutive_runs_and_a_sentence_without_one_is_alone():
    rows = [{"document": 0}, {"document": 0}, {}, {}, {"document": 1}, {"document": 0}]
    assert B.documents_of(rows) == [[0, 1], [2], [3], [4], [5]]


class _Echo:
    """A predictor whose tag for a word is the word itself, and which records what it was given."""

    def __init__(self):
        self.given = None

    def predict(self, words, progress=False):
        self.given = words
        return [{"tags": list(ws)} for ws in words]


def test_a_whole_documents_tags_are_split_back_into_its_sentences():
    rows = [{"tokens": ["a", "b"], "document": 0}, {"tokens": ["c"], "document": 0},
            {"tokens": ["d", "e", "f"], "document": 1}, {"tokens": ["g"]}]
    pred = _Echo()
    assert B.whole_document_tags(pred, rows) == [["a", "b"], ["c"], ["d", "e", "f"], ["g"]]
    assert pred.given == [["a", "b", "c"], ["d", "e", "f"], ["g"]]  # one word sequence per document
