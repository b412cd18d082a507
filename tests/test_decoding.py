"""NER decoding: strict IOB2 entities (the seqeval rule) everywhere, exact IOB2-constrained Viterbi,
word scores from the first or the mean sub-token, and the options saved with a model and overridden
by Predictor, fsllm eval / predict / serve."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from conftest import _perturb, build_word_tokenizer, tiny_backbone

import fsllm.evaluation as evaluation
import fsllm.inference as inference
from fsllm import FSConfig, FSForTokenClassification
from fsllm.cli import main
from fsllm.decoding import (
    allowed_transitions,
    decode_words,
    entities_from_tags,
    iob2_spans,
    raw_logits,
    viterbi,
    word_log_probs,
)
from fsllm.errors import ConfigError
from fsllm.evaluation import evaluate_examples
from fsllm.inference import Predictor
from fsllm.metrics import ner_metrics
from fsllm.modeling import load_model
from fsllm.serving import encode_ner, ner_entities
from fsllm.serving.app import _run_batch_fn

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def _valid(tags) -> bool:
    """IOB2 as written in the standard, independently of fsllm.decoding: I-X only after B-X or I-X."""
    prev = "O"
    for t in tags:
        if t.startswith("I-") and prev[2:] != t[2:]:
            return False
        prev = t
    return True


# ------------------------------------------------------------------ tags -> entities


def test_spans_are_seqevals_strict_iob2_entities_for_every_short_sequence():
    from seqeval.scheme import IOB2, Tokens

    for n in range(1, 5):
        for tags in itertools.product(LABELS, repeat=n):
            want = [(e.tag, e.start, e.end) for e in Tokens(list(tags), IOB2).entities]
            assert iob2_spans(tags) == want, tags


def test_a_stray_inside_tag_starts_no_entity():
    words = ["John", "lives", "in", "New", "York"]
    text = " ".join(words)
    spans = [(0, 4), (5, 10), (11, 13), (14, 17), (18, 22)]
    # a stray I-PER first, then B-LOC I-PER: LOC over "New" only, the I-PER after it starts nothing
    ents = entities_from_tags(["I-PER", "O", "O", "B-LOC", "I-PER"], [0.9, 1, 1, 0.8, 0.6], spans, text)
    assert [(e["entity_group"], e["word"]) for e in ents] == [("LOC", "New")]
    assert ents[0]["score"] == pytest.approx(0.8)


# ------------------------------------------------------------------ Viterbi


@pytest.mark.parametrize("labels", [LABELS, ["B-LOC", "I-PER", "O", "I-LOC", "B-PER"], ["O", "B-X", "I-X"]])
def test_viterbi_is_the_best_valid_sequence_by_brute_force(labels):
    rng = np.random.default_rng(0)
    start, follow = allowed_transitions(labels)
    for n in range(1, 6):
        for _ in range(15):
            logp = np.log(rng.dirichlet(np.ones(len(labels)) * 0.5, size=n))
            path = viterbi(logp, start, follow)
            best, best_seq = -np.inf, None
            for seq in itertools.product(range(len(labels)), repeat=n):
                if not _valid([labels[i] for i in seq]):
                    continue
                s = sum(logp[t, i] for t, i in enumerate(seq))
                if s > best:
                    best, best_seq = s, seq
            assert tuple(int(i) for i in path) == best_seq
            assert sum(logp[t, i] for t, i in enumerate(path)) == pytest.approx(best)


def test_viterbi_mends_what_greedy_leaves_stray():
    # word 1 leans I-PER after an O: greedy keeps the stray tag (no entity), Viterbi picks B-PER or O
    logp = np.log(np.array([
        [0.70, 0.10, 0.05, 0.10, 0.05],
        [0.05, 0.40, 0.45, 0.05, 0.05],
    ]))
    greedy, _ = decode_words(logp, LABELS, "greedy")
    best, scores = decode_words(logp, LABELS, "viterbi")
    assert greedy == ["O", "I-PER"] and iob2_spans(greedy) == []
    assert best == ["O", "B-PER"] and scores == pytest.approx([0.70, 0.40])
    with pytest.raises(ConfigError, match="ner_decoding must be one of greedy, viterbi"):
        decode_words(logp, LABELS, "beam")


def test_mean_word_scores_average_the_sub_tokens_log_probabilities():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(5, 3)) * 3
    word_ids, first = [-1, 0, 0, 0, 1], [False, True, False, False, True]
    lp = torch.log_softmax(torch.tensor(logits), -1)
    by_first = word_log_probs(logits, word_ids, first, "first")
    by_mean = word_log_probs(logits, word_ids, first, "mean")
    assert by_first[0] is None and by_mean[2] is None
    np.testing.assert_allclose(by_first[1], lp[1].numpy())
    np.testing.assert_allclose(by_mean[1], torch.log_softmax(lp[1:4].mean(0), -1).numpy())
    np.testing.assert_allclose(by_mean[4], lp[4].numpy())  # a one-token word: the same either way


# ------------------------------------------------------------------ one rule in predict, serve and eval


@pytest.fixture
def stray_logits(monkeypatch):
    """Logits that make greedy decoding tag "John lives in Paris" as O I-PER O B-LOC (a stray I-PER)."""
    want = {"John": "O", "lives": "I-PER", "in": "O", "Paris": "B-LOC"}
    tok = build_word_tokenizer()

    def fake(model, features, *a, **k):
        out = []
        for f in features:
            lg = np.zeros((len(f["input_ids"]), len(model.config.id2label)), dtype=np.float32)
            for pos, tid in enumerate(f["input_ids"]):
                word = tok.convert_ids_to_tokens(tid)
                if word in want:
                    lg[pos, model.config.label2id[want[word]]] = 5.0
                    lg[pos, model.config.label2id["B-PER"]] += 4.0 if word == "lives" else 0.0
            out.append(lg)
        return out

    monkeypatch.setattr(evaluation, "batched_logits", fake)
    monkeypatch.setattr(inference, "batched_logits", fake)  # the server's forward


def test_a_stray_inside_tag_gives_the_same_entities_in_predict_serve_and_eval(tiny_ner_model_dir, stray_logits):
    pred = Predictor.from_pretrained(tiny_ner_model_dir, ner_decoding="greedy")  # the default would mend the stray tag
    words = ["John", "lives", "in", "Paris"]
    (by_words,) = pred.predict(words=[words])
    assert by_words["tags"] == ["O", "I-PER", "O", "B-LOC"]
    (by_text,) = pred.predict([" ".join(words)])
    served_input = encode_ner(pred.tokenizer, " ".join(words), pred.max_length, 10_000)
    served = ner_entities(served_input, _run_batch_fn(pred, 8)(served_input.windows), pred.model, pred.tokenizer)
    assert [e["entity_group"] for e in by_words["entities"]] == ["LOC"]
    assert by_text == served == by_words["entities"]
    # eval scores the same tags: one predicted entity, and it is the gold LOC
    metrics, _ = evaluate_examples(pred.model, pred.tokenizer, [{"tokens": words, "tags": ["O", "O", "O", "B-LOC"]}], 64)
    assert metrics["n_pred_entities"] == 1 and metrics["precision"] == 1.0
    # Viterbi (an inference option on the same model) mends the stray tag into an entity
    (best,) = Predictor.from_pretrained(tiny_ner_model_dir, ner_decoding="viterbi").predict(words=[words])
    assert best["tags"] == ["O", "B-PER", "O", "B-LOC"]
    assert [e["word"] for e in best["entities"]] == ["lives", "Paris"]
    metrics, _ = evaluate_examples(pred.model, pred.tokenizer, [{"tokens": words, "tags": best["tags"]}], 64,
                                   ner_decoding="viterbi")
    assert metrics["f1"] == 1.0 and metrics["n_pred_entities"] == 2
    assert ner_metrics([best["tags"]], [by_words["tags"]])["n_pred_entities"] == len(by_words["entities"])


# ------------------------------------------------------------------ saved with the model, overridden when read

SENTENCES = [["John", "Smith", "visited", "Paris", "today"], ["Mary", "Jones", "works", "for", "Google", "in", "London"],
             ["the", "film", "was", "good"], ["Apple", "company", "city", "river", "Berlin", "EU"],
             ["German", "British", "actors", "loved", "the", "plot"], ["Smith", "lives", "with", "Mary", "at", "Berlin"]]


def _saved_ner_model(tmp_path, family: str, **fs):
    tok = build_word_tokenizer()
    bb = tmp_path / f"bb-{family}"
    tiny_backbone(family).save_pretrained(bb)
    torch.manual_seed(1)
    model = FSForTokenClassification.from_backbone(str(bb), id2label=dict(enumerate(LABELS)), fs_config=FSConfig(**fs))
    _perturb(model, scale=0.3, seed=2)
    model.save_pretrained(tmp_path / family, tokenizer=tok)
    return tmp_path / family, tok


def _best_valid_tags(folder, tok, sentence):
    """The highest-scoring valid IOB2 tags by brute force, from the model's first-sub-token logits
    (one token per word with the word-level tokenizer; no BOS is added)."""
    model = load_model(folder).eval()
    ids = tok(" ".join(sentence), add_special_tokens=False)["input_ids"]
    assert len(ids) == len(sentence)
    with torch.no_grad(), raw_logits(model):  # the head's own logits, not those ordered for pipeline()
        lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1).numpy()
    best, best_seq = -np.inf, None
    for seq in itertools.product(range(len(LABELS)), repeat=len(sentence)):
        tags = [LABELS[i] for i in seq]
        if _valid(tags):
            s = lp[np.arange(len(seq)), list(seq)].sum()
            if s > best:
                best, best_seq = s, tags
    return best_seq, [LABELS[i] for i in lp.argmax(-1)]


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
def test_viterbi_saved_with_the_model_reaches_predictor_and_cli(tmp_path, family, capsys):
    folder, tok = _saved_ner_model(tmp_path, family, ner_decoding="viterbi", word_scores="first")
    assert json.loads((folder / "config.json").read_text())["fs"]["ner_decoding"] == "viterbi"
    loaded = load_model(folder)
    assert loaded.config.fs["ner_decoding"] == "viterbi" and loaded.fs_config.ner_decoding == "viterbi"
    pred = Predictor.from_pretrained(folder)
    assert pred.decoding == ("viterbi", "first")
    got = pred.predict(words=SENTENCES)
    short = [s for s in SENTENCES if len(s) <= 6]  # brute force over 5^6 sequences at most
    stray = 0
    for s in short:
        best, greedy = _best_valid_tags(folder, tok, s)
        assert got[SENTENCES.index(s)]["tags"] == best, s
        stray += best != greedy
    assert stray, "no sentence where greedy and Viterbi differ: the test could not tell them apart"
    # the CLI reads the folder's setting, and --decoding greedy overrides it
    for flags, want in (([], got), (["--decoding", "greedy"], Predictor.from_pretrained(folder, ner_decoding="greedy")
                                     .predict(words=SENTENCES))):
        rc = main(["predict", str(folder), "--pre-split", "--device", "cpu", *flags,
                   *[json.dumps({"tokens": s}) for s in SENTENCES]])
        out = capsys.readouterr()
        assert rc == 0, out.err
        lines = [json.loads(x) for x in out.out.splitlines()]
        assert [x["tags"] for x in lines] == [r["tags"] for r in want]
        assert [x["entities"] for x in lines] == [r["entities"] for r in want]


def test_word_scores_and_decoding_are_reading_options_of_any_saved_model(tmp_path, capsys):
    folder, _ = _saved_ner_model(tmp_path, "llama")  # saved with the defaults
    assert Predictor.from_pretrained(folder).decoding == ("viterbi", "mean")
    pred = Predictor.from_pretrained(folder, ner_decoding="greedy", word_scores="first")
    assert pred.decoding == ("greedy", "first") and pred.model.fs_config.word_scores == "first"
    out = tmp_path / "again"
    pred.model.save_pretrained(out)  # what a reader chose travels with the folder it saves
    assert json.loads((out / "config.json").read_text())["fs"]["word_scores"] == "first"
    # a folder saved before the options existed was selected on dev under greedy / first: it reads so still
    config = json.loads((folder / "config.json").read_text())
    del config["fs"]["ner_decoding"], config["fs"]["word_scores"]
    (folder / "config.json").write_text(json.dumps(config))
    assert Predictor.from_pretrained(folder).decoding == ("greedy", "first")
    with pytest.raises(ConfigError, match="word_scores must be one of first, mean"):
        Predictor.from_pretrained(folder, word_scores="max")
    with pytest.raises(SystemExit):
        main(["predict", str(folder), "--word-scores", "max", "John"])
    assert "invalid choice: 'max'" in capsys.readouterr().err


def test_eval_decoding_flag_scores_the_same_model_both_ways(tmp_path, capsys):
    from conftest import write_conll_dir

    folder, _ = _saved_ner_model(tmp_path, "llama")
    data = write_conll_dir(tmp_path)
    scores = {}
    for decoding, word_scores in (("greedy", "first"), ("viterbi", "first"), ("greedy", "mean"), ("viterbi", "mean")):
        reading = f"{decoding}/{word_scores}"
        rc = main(["eval", str(folder), "--data", str(data), "--split", "test", "--device", "cpu",
                   "--decoding", decoding, "--word-scores", word_scores, "-o", str(tmp_path / f"{decoding}.jsonl")])
        out = capsys.readouterr()
        assert rc == 0, out.err
        scores[reading] = json.loads(out.out)
        records = [json.loads(x) for x in (tmp_path / f"{decoding}.jsonl").read_text().splitlines()]
        pred = Predictor.from_pretrained(folder, ner_decoding=decoding,
                                         word_scores=word_scores).predict(words=[r["tokens"] for r in records])
        assert [r["pred"] for r in records] == [p["tags"] for p in pred]
        assert scores[reading]["n_pred_entities"] == sum(len(p["entities"]) for p in pred)
    # every run also prints the table of all four readings of its one forward, whatever its own decoding:
    # each entry is what `--decoding D --word-scores W` scores
    for reading, s in scores.items():
        assert s["decodings"] == scores["greedy/first"]["decodings"]
        assert s["decodings"][reading] == {k: s[k] for k in ("precision", "recall", "f1")}
    rc = main(["eval", str(tmp_path / "bb-llama"), "--data", str(data), "--decoding", "viterbi"])
    assert rc == 2


def test_the_decodings_table_names_each_reading_by_the_decoding_that_scored_it(tmp_path):
    """Gold tags are one reading's own output: that reading, and only that one, scores 1.0 in the table."""
    from tokenizers import pre_tokenizers

    folder, tok = _saved_ner_model(tmp_path, "qwen2")
    # punctuation splits a word into sub-tokens, so the first and mean readings differ
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                                   pre_tokenizers.Punctuation()])
    tok.save_pretrained(folder)
    words = [s.split() for s in ("John lives in Paris-London", "Mary visited London-Paris-John with John",
                                 "Paris and London.John", "John Mary-Paris London lives visited-in-Paris",
                                 "in-in-in John.Mary visited Paris-London-Mary", "with John-John Mary lives-in London")]
    readings = [(d, w) for d in ("greedy", "viterbi") for w in ("first", "mean")]
    outputs = {r: [p["tags"] for p in Predictor.from_pretrained(folder, ner_decoding=r[0], word_scores=r[1])
                   .predict(words=words)] for r in readings}
    assert len({json.dumps(o) for o in outputs.values()}) == 4  # the four readings tag these sentences differently
    pred = Predictor.from_pretrained(folder)
    for (decoding, scores), gold in outputs.items():
        exs = [{"tokens": w, "tags": g} for w, g in zip(words, gold)]
        m, _ = evaluate_examples(pred.model, pred.tokenizer, exs, pred.max_length, all_decodings=True)
        table = {k: v["f1"] for k, v in m["decodings"].items()}
        assert table[f"{decoding}/{scores}"] == 1.0, table
        assert sorted(table.values())[-2] < 1.0, table
        assert m["decodings_seconds"] >= 0


def test_decoding_options_refused_for_a_sequence_model(tiny_seq_model_dir, capsys):
    with pytest.raises(ConfigError, match="apply to token-classification"):
        Predictor.from_pretrained(tiny_seq_model_dir, ner_decoding="viterbi")
    rc = main(["predict", str(tiny_seq_model_dir), "--decoding", "viterbi", "a good film"])
    assert rc == 2 and "token-classification" in capsys.readouterr().err


def test_fsllm_serve_decoding_flag_answers_the_predictors_viterbi_entities(tmp_path):
    import os
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx

    folder, _ = _saved_ner_model(tmp_path, "llama", ner_decoding="greedy", word_scores="first")  # the flag asks for Viterbi
    texts = [" ".join(s) for s in SENTENCES]
    viterbi_ents = Predictor.from_pretrained(folder, ner_decoding="viterbi").predict(texts)
    assert viterbi_ents != Predictor.from_pretrained(folder).predict(texts), "greedy and Viterbi agree: no test"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "fsllm.cli", "serve", str(folder), "--port", str(port), "--device",
                             "cpu", "--decoding", "viterbi", "--log-level", "warning"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            assert time.monotonic() < deadline, "fsllm serve did not come up"
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        info = httpx.get(url + "/info", timeout=10).json()
        assert info["ner_decoding"] == {"ner_decoding": "viterbi", "word_scores": "first"}
        got = httpx.post(url + "/ner", json={"inputs": texts}, timeout=30).json()
        assert [[(e["entity_group"], e["start"], e["end"]) for e in g] for g in got] == \
            [[(e["entity_group"], e["start"], e["end"]) for e in g] for g in viterbi_ents]
    finally:
        proc.kill()
        proc.wait(10)


# ------------------------------------------------------------------ pipeline()


def _pipeline_entities(folder, sentences):
    import warnings

    from transformers import pipeline

    ner = pipeline("token-classification", model=str(folder), aggregation_strategy="first", device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Tokenizer does not support real words, using fallback heuristic"
        out = []
        for s in sentences:
            text = " ".join(s)
            # a byte-level BPE token's offsets take in the space before it: an entity starts after it
            out.append([(e["entity_group"], e["start"] + (text[e["start"]] == " "), e["end"]) for e in ner(text)])
        return out


def _fsllm_entities(folder, sentences):
    return [[(e["entity_group"], e["start"], e["end"]) for e in r["entities"]]
            for r in Predictor.from_pretrained(folder, device="cpu").predict(words=sentences)]


@pytest.mark.parametrize("decoding", ["greedy", "viterbi"])
def test_pipeline_finds_the_entities_of_the_configured_decoding(tmp_path, decoding, monkeypatch):
    folder, _ = _saved_ner_model(tmp_path, "llama", ner_decoding=decoding)
    want = _fsllm_entities(folder, SENTENCES)
    assert _pipeline_entities(folder, SENTENCES) == want
    # the same model's raw logits, which transformers reads as greedy tags with a stray I- starting an entity,
    # give other entities on these sentences: the ordering is what makes them agree
    monkeypatch.setattr(FSForTokenClassification, "pipeline_decoding", False)
    assert _pipeline_entities(folder, SENTENCES) != want


def test_pipeline_words_of_a_byte_level_bpe_tokenizer(tmp_path, monkeypatch):
    """SmolLM2's tokenizer marks the space before a word on the token and writes the space before a digit
    as a token of its own: forward finds pipeline()'s words from the token ids (FSLLMConfig.word_starts)."""
    import transformers

    from fsllm import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(3)
    transformers.LlamaModel(cfg).save_pretrained(tmp_path / "bb")
    torch.manual_seed(1)
    model = FSForTokenClassification.from_backbone(str(tmp_path / "bb"), id2label=dict(enumerate(LABELS)),
                                                   fs_config=FSConfig(ner_decoding="viterbi", word_scores="mean"))
    _perturb(model, scale=0.3, seed=2)
    model.save_pretrained(tmp_path / "m", tokenizer=tok)
    table = json.loads((tmp_path / "m" / "config.json").read_text())["word_starts"]
    assert table["size"] == len(tok) and "every_token" not in table
    sentences = [["Nadim", "Ladki", "visited", "Zaragoza", "12", "times", "."],
                 ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "in", "1996"],
                 ["Peter", "Blackburn", "said", "Brussels", "2-1", "'s", "U.N.", "office"]]
    want = _fsllm_entities(tmp_path / "m", sentences)
    assert any(want), "no entity at all: nothing to compare"
    assert _pipeline_entities(tmp_path / "m", sentences) == want
    monkeypatch.setattr(FSForTokenClassification, "pipeline_decoding", False)
    assert _pipeline_entities(tmp_path / "m", sentences) != want


def test_fsllm_train_saves_the_decoding_and_scores_dev_with_it(tmp_path, tiny_model_dir, capsys):
    from conftest import write_conll_dir

    data, run = write_conll_dir(tmp_path), tmp_path / "run"
    rc = main(["train", "--data", str(data), "--model", str(tiny_model_dir), "-o", str(run), "--max-steps", "2",
               "--batch-size", "2", "--decoding", "viterbi", "--word-scores", "mean", "--no-test"])
    assert rc == 0, capsys.readouterr().err
    assert {k: json.loads((run / "config.json").read_text())["fs"][k] for k in ("ner_decoding", "word_scores")} == \
        {"ner_decoding": "viterbi", "word_scores": "mean"}
    saved = json.loads((run / "model" / "config.json").read_text())
    assert saved["fs"]["ner_decoding"] == "viterbi" and saved["fs"]["word_scores"] == "mean"
    assert saved["word_starts"] == {"every_token": True, "special": [0, 1, 2, 3]}
    pred = Predictor.from_pretrained(run)
    assert pred.decoding == ("viterbi", "mean")
    records = [json.loads(x) for x in (run / "predictions_dev.jsonl").read_text().splitlines()]
    assert [r["pred"] for r in records] == [p["tags"] for p in pred.predict(words=[r["tokens"] for r in records])]
    # the run's dev result also says what each other decoding would have scored, its own among them
    dev = json.loads((run / "metrics.json").read_text())["dev"]
    assert len(dev["decodings"]) == 4 and dev["decodings"]["viterbi/mean"]["f1"] == dev["f1"]
    assert "decodings_seconds" not in dev


def test_one_threads_raw_reading_leaves_another_threads_pipeline_logits_alone(tmp_path):
    """Threads sharing a model (a Predictor behind a threaded server): a reader's raw_logits in one thread
    must neither reach a pipeline() forward in another nor, overlapping another reader's, outlive both."""
    import threading

    folder, tok = _saved_ner_model(tmp_path, "llama", ner_decoding="viterbi")
    model = load_model(folder).eval()
    ids = torch.tensor([tok(" ".join(SENTENCES[1]), add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        with raw_logits(model):
            raw = model(ids).logits
        ordered = model(ids).logits
    assert not torch.equal(raw, ordered)
    other = load_model(folder).eval()  # another model in the reader's own thread is not switched either
    with torch.no_grad(), raw_logits(model):
        assert torch.equal(other(ids).logits, ordered) and torch.equal(model(ids).logits, raw)
    inside, done = [threading.Event() for _ in range(2)], [threading.Event() for _ in range(2)]
    seen = {}

    def reader(k):  # enters raw_logits, waits, reads, leaves when told
        with torch.no_grad(), raw_logits(model):
            inside[k].set()
            done[k].wait(10)
            seen[k] = model(ids).logits

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(2)]
    threads[0].start()
    assert inside[0].wait(10)
    threads[1].start()
    assert inside[1].wait(10)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ordered)  # both readers are inside: this thread is not
    done[0].set()  # the first reader leaves while the second is still inside
    threads[0].join(10)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ordered)
    done[1].set()
    threads[1].join(10)
    assert torch.equal(seen[0], raw) and torch.equal(seen[1], raw)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ordered)  # and nothing is left switched after both


def test_an_eval_mode_loss_reads_the_heads_own_logits(tmp_path):
    folder, tok = _saved_ner_model(tmp_path, "llama", ner_decoding="viterbi")
    model = load_model(folder).eval()
    ids = torch.tensor([tok(" ".join(SENTENCES[1]), add_special_tokens=False)["input_ids"]])
    labels = torch.tensor([[LABELS.index(t) for t in ["B-PER", "I-PER", "O", "O", "B-LOC", "O", "B-LOC"]]])
    assert labels.shape == ids.shape
    with torch.no_grad():
        with raw_logits(model):
            raw = model(ids).logits
        ordered = model(ids).logits
        assert not torch.equal(raw, ordered)  # pipeline() gets other logits here, so the check below can fail
        loss = model(ids, labels=labels).loss
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(raw[0], labels[0]))
