"""Document context (``TrainConfig.document_context``): an NER sentence read with the words around it in its
document, the context read and never labelled, the same way in training, the run's own scores, ``fsllm eval``,
``Predictor`` and ``fsllm predict --pre-split``."""

from __future__ import annotations

import json
import logging

import pytest
from conftest import CONLL_DEV, CONLL_TRAIN, build_word_tokenizer, write_conll_dir

from fsllm.config import ConfigError, FSLLMConfig, TrainConfig
from fsllm.tokenization import context_of, token_classification_features, with_document_context

LABEL2ID = {"O": 0, "B-PER": 1, "I-PER": 2, "B-LOC": 3, "I-LOC": 4}


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


# ------------------------------------------------------------------------------ attaching the context


def test_context_stays_in_its_document_and_keeps_the_nearest_words():
    exs = [
        {"tokens": ["a", "b"], "document": 0},
        {"tokens": ["c", "d", "e"], "document": 0},
        {"tokens": ["f"], "document": 0},
        {"tokens": ["g", "h"], "document": 1},
        {"tokens": ["i"]},  # no document known: no neighbours
    ]
    out = with_document_context(exs, 2)
    assert [(e["context_left"], e["context_right"]) for e in out] == [
        ([], ["c", "d"]),
        (["a", "b"], ["f"]),
        (["d", "e"], []),  # the two nearest words before it
        ([], []),  # document 1 begins: nothing of document 0
        ([], []),
    ]
    assert context_of(out[0]) == ([], ["c", "d"]) and context_of(out[3]) is None
    assert "context_left" not in exs[0]  # the examples given are not changed
    assert [e["context_left"] for e in with_document_context(exs, 5)][2] == ["a", "b", "c", "d", "e"]


# ------------------------------------------------------------------------------ model inputs


def test_the_context_is_read_but_carries_no_word_and_no_label():
    tok = build_word_tokenizer()
    words, tags = ["John", "visited", "Paris"], ["B-PER", "O", "B-LOC"]
    alone = token_classification_features(words, tags, tok, LABEL2ID, 32)
    (f,) = token_classification_features(words, tags, tok, LABEL2ID, 32, context=(["the", "EU"], ["today", "."]),
                                         context_tokens=8)
    assert f["input_ids"] == ids(tok, "the EU John visited Paris today .")
    assert f["word_ids"] == [-1, -1, 0, 1, 2, -1, -1]
    assert f["labels"] == [-100, -100, 1, 0, 3, -100, -100]
    assert f["first"] == [False, False, True, True, True, False, False]
    # the sentence's own positions hold what it holds alone
    assert f["input_ids"][2:5] == alone[0]["input_ids"] and f["labels"][2:5] == alone[0]["labels"]
    # no context, or a budget of 0: the sentence alone
    assert token_classification_features(words, tags, tok, LABEL2ID, 32, context=(["the"], ["."]), context_tokens=0) \
        == alone


def test_the_context_is_cut_to_its_budget_and_to_max_length():
    tok = build_word_tokenizer()
    words, tags = ["John", "visited", "Paris"], ["B-PER", "O", "B-LOC"]
    left, right = ["the", "EU", "loved", "London"], ["today", ".", "Mary", "lives"]

    def read(max_length, context_tokens):
        (f,) = token_classification_features(words, tags, tok, LABEL2ID, max_length, context=(left, right),
                                             context_tokens=context_tokens)
        return tok.decode(f["input_ids"]).split()

    # at most context_tokens a side, the nearest ones
    assert read(64, 2) == ["loved", "London", "John", "visited", "Paris", "today", "."]
    # max_length leaves 2 tokens of room: one a side
    assert read(5, 8) == ["London", "John", "visited", "Paris", "today"]
    # room one side cannot use goes to the other: 4 tokens of room, no left context
    (f,) = token_classification_features(words, tags, tok, LABEL2ID, 7, context=([], right), context_tokens=8)
    assert tok.decode(f["input_ids"]).split() == ["John", "visited", "Paris", "today", ".", "Mary", "lives"]
    # a sentence longer than max_length alone is cut into windows without context, as without it
    assert token_classification_features(words, tags, tok, LABEL2ID, 2, context=(left, right), context_tokens=8) \
        == token_classification_features(words, tags, tok, LABEL2ID, 2)


def test_document_context_must_be_a_count_of_tokens():
    with pytest.raises(ConfigError, match="document_context must be an integer >= 0"):
        TrainConfig(document_context=-1)
    with pytest.raises(ValueError, match="document_context must be an integer >= 0"):
        FSLLMConfig(document_context=1.5)
    assert FSLLMConfig().document_context == 0  # folders written before the field: each sentence alone


# ------------------------------------------------------------------------------ data preparation


def test_the_context_is_attached_before_the_subset_is_drawn(tmp_path):
    from fsllm.prepare import prepare_data

    data = write_conll_dir(tmp_path)
    cfg = TrainConfig(data=str(data), train_subset=4, seed=1, document_context=16)
    prepared = prepare_data(cfg)
    full = with_document_context(prepare_data(TrainConfig(data=str(data))).train, 16)
    by_tokens = {tuple(e["tokens"]): e for e in full}
    for ex in prepared.train:  # each sampled sentence has its neighbours in the file, not in the sample
        assert (ex["context_left"], ex["context_right"]) == (by_tokens[tuple(ex["tokens"])]["context_left"],
                                                             by_tokens[tuple(ex["tokens"])]["context_right"])
    # the file's three documents of three sentences: a middle sentence sees both of its neighbours
    mid = CONLL_TRAIN.split("\n\n")[2].split("\n")
    assert by_tokens[tuple(line.split()[0] for line in mid if line)]["context_left"][:2] == ["John", "Smith"]


def test_document_context_is_refused_for_sequence_tasks(tmp_path):
    from conftest import write_csv_dir

    from fsllm.prepare import prepare_data

    with pytest.raises(ConfigError, match="document_context applies to token"):
        prepare_data(TrainConfig(data=str(write_csv_dir(tmp_path)), document_context=8))


def test_data_without_documents_warns_and_reads_sentences_alone(caplog):
    from fsllm.prepare import attach_document_context

    with caplog.at_level(logging.WARNING, logger="fsllm.prepare"):
        out = attach_document_context([{"tokens": ["a"]}, {"tokens": ["b"]}], 8, "hub data")
    assert "hub data marks no documents" in caplog.text
    assert [context_of(e) for e in out] == [None, None]


# ------------------------------------------------------------------------------ one reading everywhere


@pytest.fixture(scope="module")
def context_run(tmp_path_factory, tiny_model_dir):
    from fsllm.training import train

    tmp = tmp_path_factory.mktemp("document-context")
    data = write_conll_dir(tmp)
    result = train(data=str(data), model=str(tiny_model_dir), output_dir=str(tmp / "run"), max_steps=2, batch_size=4,
                   max_length=24, document_context=6, learning_rate=0.05, precision="fp32")
    return data, result


def _test_sentences(data):
    from fsllm.data import read_conll

    return read_conll(data / "test.txt")


def test_a_run_records_its_context_and_every_reader_reads_as_the_run_scored(context_run, tmp_path, capsys, caplog):
    from fsllm.cli import main
    from fsllm.inference import Predictor

    data, result = context_run
    assert json.loads((result.model_dir / "config.json").read_text())["document_context"] == 6
    assert "up to 6 sub-tokens of its document" in (result.model_dir / "README.md").read_text()  # the model card
    run_preds = [json.loads(x) for x in (result.run_dir / "predictions_test.jsonl").read_text().splitlines()]
    sentences = _test_sentences(data)
    assert len(sentences) == 2 and sentences[0]["document"] == sentences[1]["document"]  # neighbours

    # Predictor with the sentences' documents: the run's own test predictions
    pred = Predictor.from_pretrained(result.run_dir)
    with caplog.at_level(logging.WARNING, logger="fsllm.inference"):
        with_docs = pred.predict(words=[s["tokens"] for s in sentences], documents=[s["document"] for s in sentences])
        assert not caplog.records
        alone = pred.predict(words=[s["tokens"] for s in sentences])
        pred.predict(words=[s["tokens"] for s in sentences])
    # sentences without their documents: said once, not on every call
    assert [r.getMessage() for r in caplog.records if "read alone" in r.getMessage()] == [
        "this model was trained reading each sentence with up to 6 sub-tokens of its document's neighbours; sentences "
        "given without documents= are read alone, which scores lower (about 10 F1 on CoNLL-2003, docs/levers.md)"]
    for r, p in zip(run_preds, with_docs):
        assert p["tags"] == r["pred"]
        assert p["scores"] == pytest.approx(r["score"], abs=2e-4)
    # the context is read: without it the scores differ
    gap = max(abs(a - b) for p, q in zip(with_docs, alone) for a, b in zip(p["scores"], q["scores"]))
    assert gap > 1e-3

    # fsllm eval on the test file reads it with its documents, as the run scored it
    out = tmp_path / "eval.jsonl"
    assert main(["eval", str(result.run_dir), "--data", str(data / "test.txt"), "--output", str(out)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["f1"] == pytest.approx(result.metrics["test"]["f1"])
    for r, e in zip(run_preds, (json.loads(x) for x in out.read_text().splitlines())):
        assert e["score"] == pytest.approx(r["score"], abs=2e-4)

    # fsllm predict --pre-split: objects naming their document
    objs = [json.dumps({"tokens": s["tokens"], "document": "d1"}) for s in sentences]
    assert main(["predict", str(result.run_dir), "--pre-split", *objs]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["tags"] for x in lines] == [r["pred"] for r in run_preds]
    assert lines[0]["document"] == "d1"  # the object's own fields travel through


def test_documents_are_checked_and_go_with_words(context_run):
    from fsllm.errors import DataError, FSLLMError
    from fsllm.inference import Predictor

    _, result = context_run
    pred = Predictor.from_pretrained(result.run_dir)
    with pytest.raises(DataError, match="2 sentences but 1 documents"):
        pred.predict(words=[["John"], ["Paris"]], documents=[0])
    with pytest.raises(FSLLMError, match="documents= goes with words="):
        pred.predict(["John visited Paris"], documents=[0])


def test_a_model_without_context_ignores_documents(tiny_ner_model_dir, caplog):
    from fsllm.inference import Predictor

    pred = Predictor.from_pretrained(tiny_ner_model_dir)
    sentences = [s.split() for s in CONLL_DEV.split("\n") if s][:2]
    with caplog.at_level(logging.WARNING, logger="fsllm.inference"):
        assert pred.predict(words=sentences, documents=[0, 0]) == pred.predict(words=sentences)
    assert not caplog.records  # nothing to say about sentences read alone by a model trained so


def test_an_fsllm_that_predates_document_context_refuses_such_a_folder(context_run, tiny_ner_model_dir, monkeypatch,
                                                                      tmp_path):
    """An older fsllm would take ``document_context`` for an unknown attribute and read each sentence alone
    without a word; the folder's format (3 with context, 2 without) makes it refuse instead."""
    import shutil

    from fsllm import persistence
    from fsllm.errors import ModelFolderError

    _, result = context_run
    assert json.loads((result.model_dir / "config.json").read_text())["fsllm_format"] == 3
    assert json.loads((tiny_ner_model_dir / "config.json").read_text())["fsllm_format"] == 2
    monkeypatch.setattr(persistence, "FSLLM_FORMAT", 2)  # what the format check of an fsllm of format 2 sees
    with pytest.raises(ModelFolderError, match="written by a newer fsllm"):
        persistence.load_config(result.model_dir)
    assert persistence.load_config(tiny_ner_model_dir).document_context == 0
    monkeypatch.undo()
    newer = tmp_path / "newer"
    shutil.copytree(tiny_ner_model_dir, newer)
    raw = json.loads((newer / "config.json").read_text())
    (newer / "config.json").write_text(json.dumps({**raw, "fsllm_format": 5}))
    with pytest.raises(ModelFolderError, match=r"written by a newer fsllm \(format 5\)"):
        persistence.load_config(newer)
