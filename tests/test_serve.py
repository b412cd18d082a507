"""``fsllm serve`` end to end: a real uvicorn server on a loopback port, real HTTP (httpx), tiny saved models.

Every request loop here is bounded in count and time; no test touches the network beyond 127.0.0.1.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import jsonschema
import numpy as np
import pytest
import torch
import transformers
import uvicorn
from conftest import WORDS, build_word_tokenizer, word_llama

from fsllm import FSConfig, FSForSequenceClassification, FSForTokenClassification
from fsllm.errors import FSLLMError
from fsllm.inference import Predictor
from fsllm.serving import DynamicBatcher, create_app

SEQ_LABELS = {0: "negative", 1: "neutral", 2: "positive"}
NER_LABELS = dict(enumerate(["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]))
SRC = str(Path(__file__).resolve().parents[1] / "src")
TIMEOUT = httpx.Timeout(30.0)
#: TEI's published ``Info`` schema (where it comes from: the file's ``$comment``)
TEI_INFO_SCHEMA = json.loads((Path(__file__).parent / "tei_info_schema.json").read_text())


def metric(text: str, name: str, **labels: str) -> float | None:
    """The sum of the samples ``name`` with ``labels`` in a Prometheus exposition (None: no such sample)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = None
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total = (total or 0.0) + s.value
    return total


def _save(model, tok, out: Path) -> Path:
    model.save_pretrained(out, tokenizer=tok, merged=True)  # merged: the tiny backbone has no hub name to refer to
    return out


def _tiny_model_dir(cls, id2label: dict[int, str], seed: int, out: Path) -> Path:
    """A saved tiny FS model (word-level tokenizer, 2-layer Llama) whose trainable weights are scaled up:
    a random head scores every text about 1/n per label, too flat to tell a wrong label order."""
    tok, backbone = word_llama(seed=seed)
    model = cls.from_backbone(backbone, fs_config=FSConfig(lora_dropout=0.0, head_dropout=0.0), id2label=id2label)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.mul_(2.0)
    return _save(model, tok, out)


@pytest.fixture(scope="module")
def seq_dir(tmp_path_factory) -> Path:
    return _tiny_model_dir(FSForSequenceClassification, SEQ_LABELS, 3, tmp_path_factory.mktemp("seq"))


@pytest.fixture(scope="module")
def ner_dir(tmp_path_factory) -> Path:
    return _tiny_model_dir(FSForTokenClassification, NER_LABELS, 4, tmp_path_factory.mktemp("ner"))


class LiveServer:
    """uvicorn serving ``app`` in a thread on a free loopback port (the socket is bound here, port 0)."""

    def __init__(self, app):
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=None))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


def sentences(n: int, seed: int, lo: int = 2, hi: int = 9) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


@pytest.fixture(scope="module")
def seq_predictor(seq_dir) -> Predictor:
    return Predictor.from_pretrained(seq_dir, max_length=12)


@pytest.fixture(scope="module")
def seq_server(seq_predictor):
    app = create_app(seq_predictor, max_batch_size=8, max_wait_ms=20, max_queue=64, model_id="tiny-seq")
    with LiveServer(app) as s:
        yield s


@pytest.fixture(scope="module")
def ner_predictor(ner_dir) -> Predictor:
    return Predictor.from_pretrained(ner_dir, max_length=8)  # short: a 20-word text takes several windows


@pytest.fixture(scope="module")
def ner_server(ner_predictor):
    with LiveServer(create_app(ner_predictor, max_batch_size=8, max_wait_ms=5, model_id="tiny-ner")) as s:
        yield s


def same_entities(got: list[dict], want: list[dict]) -> bool:
    """The same spans and groups, scores equal to float rounding (batching changes the last bits)."""
    key = [(e["entity_group"], e["word"], e["start"], e["end"]) for e in got]
    return key == [(e["entity_group"], e["word"], e["start"], e["end"]) for e in want] and all(
        abs(a["score"] - b["score"]) < 1e-5 for a, b in zip(got, want))


def _probs_alone(predictor: Predictor, text: str) -> dict[str, float]:
    """A text's label probabilities from the model directly, one text per forward."""
    ids = predictor.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        logits = predictor.model(ids, torch.ones_like(ids)).logits[0].float()
    probs = torch.softmax(logits, -1)
    return {predictor.model.id2label[i]: float(p) for i, p in enumerate(probs)}


# ------------------------------------------------------------------------------------------ sequence tasks


def test_predict_answers_teis_schema_for_single_and_batch_inputs(seq_server, seq_predictor):
    """All labels, best first, softmax scores equal to the model's; a batch answers a list per input in
    order, in the flat form and in TEI's ``[[text], ...]`` form; ``/`` answers like ``/predict``."""
    texts = sentences(5, seed=1)
    with httpx.Client(base_url=seq_server.url, timeout=TIMEOUT) as c:
        r = c.post("/predict", json={"inputs": texts[0]})
        assert r.status_code == 200, r.text
        one = r.json()
        assert sorted(d["label"] for d in one) == sorted(SEQ_LABELS.values()) and all(a["score"] >= b["score"] for a, b in zip(one, one[1:]))
        assert math.isclose(sum(d["score"] for d in one), 1.0, abs_tol=1e-5)
        want = _probs_alone(seq_predictor, texts[0])
        assert all(abs(d["score"] - want[d["label"]]) < 1e-5 for d in one)
        assert one[0]["label"] == seq_predictor.predict([texts[0]])[0]["label"]

        flat = c.post("/predict", json={"inputs": texts}).json()
        tei = c.post("/predict", json={"inputs": [[t] for t in texts]}).json()
        root = c.post("/", json={"inputs": texts}).json()
        assert len(flat) == len(texts)
        for t, got, got_tei, got_root in zip(texts, flat, tei, root):
            want = _probs_alone(seq_predictor, t)
            for answer in (got, got_tei, got_root):
                assert {d["label"]: round(d["score"], 5) for d in answer} == {k: round(v, 5) for k, v in want.items()}

        raw = c.post("/predict", json={"inputs": texts[1], "raw_scores": True}).json()
        logits = torch.tensor([d["score"] for d in raw])
        assert [d["label"] for d in raw] == [d["label"] for d in c.post("/predict", json={"inputs": texts[1]}).json()]
        assert abs(float(logits.sum()) - 1.0) > 1e-3  # logits, not probabilities
        want = _probs_alone(seq_predictor, texts[1])
        assert all(abs(float(p) - want[d["label"]]) < 1e-5 for p, d in zip(torch.softmax(logits, 0), raw))
        assert c.get("/").json() == {"status": "ok"}


def test_huggingface_hub_inference_client_works_unchanged(seq_server, ner_server, seq_predictor, ner_predictor):
    """``InferenceClient(model=<TEI URL>)`` posts ``{"inputs", "parameters"}`` to the root URL."""
    hub = pytest.importorskip("huggingface_hub")
    text = "John visited Paris with Mary"
    top = hub.InferenceClient(model=seq_server.url, token="unused-local").text_classification(text)
    # with TEI's single-input answer the client returns the best label (as it does against TEI)
    best = max(_probs_alone(seq_predictor, text).items(), key=lambda kv: kv[1])
    assert top.label == best[0] and abs(top.score - best[1]) < 1e-5
    ents = hub.InferenceClient(model=ner_server.url, token="unused-local").token_classification(text)
    assert [(e.entity_group, e.word, e.start, e.end) for e in ents] == [
        (e["entity_group"], e["word"], e["start"], e["end"]) for e in ner_predictor.predict([text])[0]]


def test_errors_have_teis_shape_and_the_server_keeps_serving(seq_server, seq_predictor):
    """422 for malformed bodies, empty input and text pairs; 413 over the max input length unless truncate."""
    long_words = ("the film was good and the actors were great and the plot moving " * 2).split()
    long_text = " ".join(long_words)  # 26 words, word-level tokenizer: 26 tokens > max_length 12
    with httpx.Client(base_url=seq_server.url, timeout=TIMEOUT) as c:
        cases = [
            (c.post("/predict", content=b"{not json", headers={"content-type": "application/json"}), 422, None),
            (c.post("/predict", json={"text": "x"}), 422, "inputs"),
            (c.post("/predict", json={"inputs": 5}), 422, None),
            (c.post("/predict", json={"inputs": []}), 422, "empty"),
            (c.post("/predict", json={"inputs": "   "}), 422, "empty"),
            (c.post("/predict", json={"inputs": [["good film", "bad film"]]}), 422, "pair"),
            (c.post("/predict", json={"inputs": ["good", ["a", "b", "c"]]}), 422, None),
            (c.post("/predict", json={"inputs": "good", "truncation_direction": "Middle"}), 422, None),
            (c.post("/predict", json={"inputs": ["good", long_text]}), 413, "max input length"),
            (c.post("/ner", json={"inputs": "good"}), 424, "/predict"),
            (c.get("/nope"), 404, None),
        ]
        for r, status, needle in cases:
            assert r.status_code == status, (r.status_code, r.text)
            body = r.json()
            assert set(body) == {"error", "error_type"} and body["error"], body
            if needle:
                assert needle in body["error"], body

        for direction, kept in (("Right", long_words[:12]), ("left", long_words[-12:])):
            r = c.post("/predict", json={"inputs": long_text, "truncate": True, "truncation_direction": direction})
            assert r.status_code == 200, r.text
            want = _probs_alone(seq_predictor, " ".join(kept))
            assert all(abs(d["score"] - want[d["label"]]) < 1e-5 for d in r.json()), direction
        assert c.post("/predict", json={"inputs": "a good film"}).status_code == 200


def test_full_queue_answers_503_with_retry_after_then_recovers(seq_predictor):
    """With the batch worker held, the queue fills; the request beyond gets 503 + Retry-After, those
    queued are answered once the worker runs again, and so are new requests."""
    app = create_app(seq_predictor, max_batch_size=2, max_wait_ms=0, max_queue=3)
    batcher = app.state.batcher
    release, entered = threading.Event(), threading.Event()
    real = batcher.run_batch

    def held(payloads):
        entered.set()
        assert release.wait(30)
        return real(payloads)

    batcher.run_batch = held
    with LiveServer(app) as s, httpx.Client(base_url=s.url, timeout=TIMEOUT) as c, ThreadPoolExecutor(4) as pool:
        first = pool.submit(c.post, "/predict", json={"inputs": ["good film", "bad film"]})  # taken by the worker
        assert entered.wait(10)
        queued = pool.submit(c.post, "/predict", json={"inputs": ["a", "great", "plot"]})  # fills the queue (3)
        deadline = time.monotonic() + 10
        while batcher.depth() < 3:
            assert time.monotonic() < deadline, "the second request never queued"
            time.sleep(0.01)
        r = c.post("/predict", json={"inputs": "one more"})
        assert r.status_code == 503 and r.headers.get("retry-after") == "1", r.text
        assert r.json()["error_type"] == "overloaded"
        assert c.post("/predict", json={"inputs": ["w"] * 4}).status_code == 413  # never fits the queue
        release.set()
        assert first.result(30).status_code == 200 and queued.result(30).status_code == 200
        assert len(queued.result().json()) == 3
        assert c.post("/predict", json={"inputs": "one more"}).status_code == 200
        assert metric(c.get("/metrics").text, "fsllm_requests_total", route="/predict", status="503") == 1


def test_backend_failures_answer_500_json_and_the_server_keeps_serving(seq_predictor):
    app = create_app(seq_predictor, max_batch_size=4, max_wait_ms=0)
    batcher = app.state.batcher
    real = batcher.run_batch
    failures = iter([RuntimeError("device lost"), [np.full(3, np.nan)]])

    def flaky(payloads):
        f = next(failures, None)
        if f is None:
            return real(payloads)
        if isinstance(f, Exception):
            raise f
        return f

    batcher.run_batch = flaky
    with LiveServer(app) as s, httpx.Client(base_url=s.url, timeout=TIMEOUT) as c:
        for needle in ("device lost", "non-finite"):
            r = c.post("/predict", json={"inputs": "good film"})
            assert r.status_code == 500 and r.json()["error_type"] == "backend" and needle in r.json()["error"], r.text
        assert c.post("/predict", json={"inputs": "good film"}).status_code == 200
        assert c.get("/health").status_code == 200


def test_concurrent_requests_are_batched_and_answer_as_each_text_alone(seq_server, seq_predictor):
    """8 threads x 12 requests (single texts and small batches): every score equals the text's score
    computed alone to 1e-5, and the server did group texts of different requests into one forward."""
    pool_texts = sentences(40, seed=7, lo=1, hi=12)
    alone = {t: _probs_alone(seq_predictor, t) for t in pool_texts}
    with httpx.Client(base_url=seq_server.url, timeout=TIMEOUT) as c:
        before = _batch_stats(c.get("/metrics").text)

    def client(k: int) -> int:
        rng = random.Random(k)
        checked = 0
        with httpx.Client(base_url=seq_server.url, timeout=TIMEOUT) as c:
            for _ in range(12):
                chosen = rng.sample(pool_texts, rng.choice([1, 1, 2, 3]))
                inputs = chosen[0] if len(chosen) == 1 and rng.random() < 0.5 else chosen
                r = c.post("/predict", json={"inputs": inputs})
                assert r.status_code == 200, r.text
                answers = [r.json()] if isinstance(inputs, str) else r.json()
                for t, answer in zip(chosen, answers, strict=True):
                    for d in answer:
                        assert abs(d["score"] - alone[t][d["label"]]) < 1e-5, (t, d, alone[t])
                    checked += 1
        return checked

    with ThreadPoolExecutor(8) as pool:
        checked = sum(pool.map(client, range(8), timeout=120))
    assert checked >= 96
    with httpx.Client(base_url=seq_server.url, timeout=TIMEOUT) as c:
        after = _batch_stats(c.get("/metrics").text)
    texts, forwards = after[0] - before[0], after[1] - before[1]
    assert texts == checked and forwards < texts, (texts, forwards)  # some forward held several requests' texts


def _batch_stats(metrics: str) -> tuple[float, float]:
    return metric(metrics, "fsllm_batch_size_sum"), metric(metrics, "fsllm_batch_size_count")


# -------------------------------------------------------------------------------------------------- NER


def test_ner_answers_pipeline_entities_with_offsets_and_windows_long_texts(ner_server, ner_predictor):
    """Token models answer ``{entity_group, score, word, start, end}`` per input on /predict and /ner,
    the same as ``Predictor.predict``; a text far over the max input length is windowed, not truncated."""
    texts = ["John Smith visited Paris .", "  Mary works for Google in  London today !"]
    long_text = " ".join(sentences(6, seed=5, lo=4, hi=6))  # > 20 words, max_length 8
    with httpx.Client(base_url=ner_server.url, timeout=TIMEOUT) as c:
        single = c.post("/ner", json={"inputs": texts[0]})
        assert single.status_code == 200, single.text
        assert single.json() == ner_predictor.predict([texts[0]])[0]
        batch = c.post("/predict", json={"inputs": texts + [long_text]}).json()
        want = ner_predictor.predict(texts + [long_text])
        assert len(batch) == 3
        for t, got, exp in zip(texts + [long_text], batch, want):
            assert [(e["entity_group"], e["word"], e["start"], e["end"]) for e in got] == [
                (e["entity_group"], e["word"], e["start"], e["end"]) for e in exp]
            assert all(abs(a["score"] - b["score"]) < 1e-5 for a, b in zip(got, exp))
            assert all(t[e["start"] : e["end"]] == e["word"] and set(e) == {"entity_group", "score", "word", "start", "end"}
                       for e in got)
        assert any(e["start"] > len(" ".join(long_text.split()[:8])) for e in batch[2]), "entities past the first window"
        assert c.post("/predict", json={"inputs": long_text}).status_code == 200  # no 413 for NER


def test_pre_split_sentences_are_read_with_their_documents_as_the_predictor_reads_them(tmp_path, seq_server):
    tok, backbone = word_llama(seed=5)
    model = FSForTokenClassification.from_backbone(
        backbone, fs_config=FSConfig(lora_dropout=0.0, head_dropout=0.0), id2label=NER_LABELS)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.mul_(2.0)
    model.config.document_context = 4  # as a run with --document-context 4 saves it
    predictor = Predictor.from_pretrained(_save(model, tok, tmp_path / "ctx"), max_length=16)
    words = [s.split() for s in sentences(5, seed=7)]
    docs = ["a", "a", "a", 7, 7]
    want = predictor.predict(words=words, documents=docs)
    alone = predictor.predict(words=words)
    # the context is read: a sentence with neighbours scores otherwise than alone
    assert max(abs(a - b) for p, q in zip(want, alone) for a, b in zip(p["scores"], q["scores"])) > 1e-3

    def same(got: list[dict], expected: list[dict]) -> bool:
        return all(g["tokens"] == e["tokens"] and g["tags"] == e["tags"] and same_entities(g["entities"], e["entities"])
                   and g["scores"] == pytest.approx(e["scores"], abs=2e-4) for g, e in zip(got, expected))

    with LiveServer(create_app(predictor, max_batch_size=4, max_wait_ms=5)) as s:
        assert httpx.get(s.url + "/info", timeout=TIMEOUT).json()["document_context"] == 4
        r = httpx.post(s.url + "/predict", json={"inputs": [{"tokens": w, "document": d} for w, d in zip(words, docs)]},
                       timeout=TIMEOUT)
        assert r.status_code == 200 and len(r.json()) == len(words) and same(r.json(), want)
        # without documents (or one sentence per request) each sentence is read alone
        r = httpx.post(s.url + "/ner", json={"inputs": [{"tokens": w} for w in words]}, timeout=TIMEOUT)
        assert r.status_code == 200 and same(r.json(), alone)
        for body, status, says in [
            ({"inputs": ["John lives here", {"tokens": ["John"]}]}, 422, "texts or sentences, not both"),
            ({"inputs": [{"tokens": []}]}, 422, "malformed request"),
            ({"inputs": [{"tokens": ["John", " "]}]}, 422, "input 0: word 2 is ' '"),
            ({"inputs": [{"tokens": ["John"], "doc": 1}]}, 422, "malformed request"),  # a misspelt key is refused
        ]:
            r = httpx.post(s.url + "/predict", json=body, timeout=TIMEOUT)
            assert (r.status_code, r.json()["error_type"]) == (status, "validation") and says in r.json()["error"], r.text
    r = httpx.post(seq_server.url + "/predict", json={"inputs": [{"tokens": ["a", "film"]}]}, timeout=TIMEOUT)
    assert r.status_code == 422 and "apply to token-classification (NER) models" in r.json()["error"]


def test_ner_input_limit_answers_413_with_teis_body_and_is_reported_in_info(ner_predictor, seq_predictor, seq_dir,
                                                                           monkeypatch):
    """A text of exactly ``max_input_tokens`` sub-tokens is served, one more is a 413 in TEI's error body
    (also inside a batch, naming the input), and /info reports the limit as ``max_input_length``."""
    limit = 40
    app = create_app(ner_predictor, max_batch_size=8, max_wait_ms=0, max_input_tokens=limit, model_id="tiny-ner")
    words = sentences(1, seed=9, lo=limit + 1, hi=limit + 1)[0].split()  # word-level tokenizer: a word is a token
    at_limit, over = " ".join(words[:limit]), " ".join(words)
    with LiveServer(app) as s, httpx.Client(base_url=s.url, timeout=TIMEOUT) as c:
        assert c.get("/info").json()["max_input_length"] == limit
        r = c.post("/predict", json={"inputs": at_limit})
        assert r.status_code == 200 and same_entities(r.json(), ner_predictor.predict([at_limit])[0]), r.text
        for inputs, needle in ((over, "input 0"), (["John went home", over], "input 1")):
            r = c.post("/ner", json={"inputs": inputs})
            assert r.status_code == 413, r.text
            assert set(r.json()) == {"error", "error_type"} and r.json()["error_type"] == "validation"
            assert needle in r.json()["error"] and f"max input length {limit}" in r.json()["error"]
        assert c.post("/ner", json={"inputs": "John went home"}).status_code == 200
    with pytest.raises(FSLLMError, match="applies to token"):  # a sequence model's limit: its max input length
        create_app(seq_predictor, max_input_tokens=10)
    from fsllm.serving import serve

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("uvicorn started"))
    with pytest.raises(FSLLMError, match="applies to token"):  # told once, not by every worker process
        serve(str(seq_dir), max_input_tokens=10, workers=2)


def test_small_requests_stay_fast_while_a_request_at_the_ner_limit_is_in_flight(ner_dir):
    """A text at the input limit is ~330 windows; each row of a forward is made to cost 3 ms (a forward hook),
    so it runs for seconds. Ten one-sentence requests sent meanwhile are each answered within a couple of
    forwards, all before the long one ends: its windows go in bounded chunks between them."""
    predictor = Predictor.from_pretrained(ner_dir, max_length=8)  # 7 tokens a window after BOS, stride 1
    hook = predictor.model.register_forward_pre_hook(
        lambda m, args, kwargs: time.sleep(0.003 * kwargs["input_ids"].shape[0]), with_kwargs=True)
    limit = 2000
    app = create_app(predictor, max_batch_size=8, max_wait_ms=2, max_input_tokens=limit, model_id="tiny-ner")
    long_text = " ".join(sentences(1, seed=21, lo=limit, hi=limit)[0].split()[:limit])
    small = sentences(10, seed=22, lo=4, hi=8)
    try:
        with LiveServer(app) as s, httpx.Client(base_url=s.url, timeout=TIMEOUT) as c, ThreadPoolExecutor(1) as pool:
            t0 = time.perf_counter()
            long_req = pool.submit(httpx.post, s.url + "/ner", json={"inputs": long_text}, timeout=120)
            deadline = time.monotonic() + 30
            while app.state.batcher.depth() == 0:  # its windows are queued: it is in flight
                assert time.monotonic() < deadline and not long_req.done(), "the long request never queued"
                time.sleep(0.005)
            latencies, answers = [], []
            for text in small:
                t = time.perf_counter()
                r = c.post("/ner", json={"inputs": text})
                latencies.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
                answers.append(r.json())
            assert not long_req.done(), "the small requests waited for the long one"
            r = long_req.result(120)
            long_s = time.perf_counter() - t0
        assert r.status_code == 200, r.text
    finally:
        hook.remove()
    for got, want in zip([*answers, r.json()], predictor.predict([*small, long_text]), strict=True):
        assert same_entities(got, want)  # chunked windows answer as the text alone
    p99 = max(latencies)  # 10 samples: the p99 is the slowest
    assert p99 < 1.0 and p99 < long_s / 4, (latencies, long_s)


# ------------------------------------------------------------------------------------------ health & co


def test_health_info_and_prometheus_metrics(seq_server):
    with httpx.Client(base_url=seq_server.url, timeout=TIMEOUT) as c:
        assert c.get("/health").json() == {"status": "ok"}
        c.post("/predict", json={"inputs": "good film"})
        c.post("/predict", json={"inputs": []})
        info = c.get("/info").json()
        assert info["task"] == "sequence" and info["labels"] == list(SEQ_LABELS.values())
        assert info["max_input_length"] == 12 and info["max_batch_size"] == 8 and info["model_id"] == "tiny-seq"
        assert info["transformers_version"] == transformers.__version__ and info["torch_version"] == torch.__version__
        assert {"fsllm_version", "backbone", "model_type", "max_queue"} <= set(info)
        schema = c.get("/openapi.json").json()  # the OpenAPI page documents the request schema
        assert {"/predict", "/ner", "/health", "/info", "/metrics"} <= set(schema["paths"])
        assert {"inputs", "raw_scores", "truncate", "truncation_direction"} <= set(
            schema["components"]["schemas"]["PredictRequest"]["properties"])
        r = c.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text  # parsed by prometheus_client's own parser: a malformed exposition raises
    assert metric(text, "fsllm_requests_total", route="/predict", status="200") >= 1
    assert metric(text, "fsllm_requests_total", route="/predict", status="422") >= 1
    assert metric(text, "fsllm_request_duration_seconds_bucket", route="/predict", le="+Inf") >= 2
    assert metric(text, "fsllm_batch_size_bucket", le="1.0") >= 1 and metric(text, "fsllm_queue_depth") == 0
    assert metric(text, "fsllm_texts_total") >= 1 and metric(text, "fsllm_requests_in_flight") == 1  # the scrape


def test_the_token_budget_counts_what_a_repeating_model_reads(tmp_path):
    """A model that repeats its input (FSConfig.repeat = 2) reads each text twice in a forward: the batcher
    counts twice its tokens against max_batch_tokens, and the CPU default holds one of its windows."""
    for cls, task in ((FSForTokenClassification, "token"), (FSForSequenceClassification, "sequence")):
        labels = NER_LABELS if task == "token" else SEQ_LABELS
        unit = {"input_ids": [5, 6, 7]} if task == "token" else [5, 6, 7]  # an NER window / a text's token ids
        for reps in (1, 2):
            tok, backbone = word_llama(seed=5)  # from_backbone wraps the backbone it is given
            folder = _save(cls.from_backbone(backbone, fs_config=FSConfig(repeat=reps), id2label=labels), tok,
                           tmp_path / f"{task}-{reps}")
            app = create_app(Predictor.from_pretrained(folder, max_length=300), device="cpu")
            batcher = app.state.batcher
            assert batcher.size_of(unit) == reps * 3
            assert batcher.max_batch_tokens == max(512, reps * 300) == app.state.info["max_batch_tokens"]


def test_info_has_every_field_of_teis_info_schema_for_sequence_and_ner_models(seq_server, ner_server):
    """``/info`` validates against TEI's published ``Info`` schema, with every property present (the nullable
    ones as null), for a sequence and an NER model, and keeps fsllm's own fields."""
    tei_fields = set(TEI_INFO_SCHEMA["$defs"]["Info"]["properties"])
    for server, task, labels in ((seq_server, "sequence", SEQ_LABELS), (ner_server, "token", NER_LABELS)):
        info = httpx.get(server.url + "/info", timeout=TIMEOUT).json()
        jsonschema.validate(info, TEI_INFO_SCHEMA)
        assert tei_fields <= set(info), tei_fields - set(info)
        assert info["model_type"] == {"classifier": {"id2label": {str(k): v for k, v in labels.items()},
                                                     "label2id": {v: k for k, v in labels.items()}}}
        assert info["task"] == task and info["labels"] == list(labels.values()) and info["served_model_name"]
        assert info["sha"] is None and info["docker_label"] is None and info["model_dtype"] == "float32"
        assert info["max_batch_tokens"] == server.app.state.batcher.max_batch_tokens
    with pytest.raises(jsonschema.ValidationError):  # the schema does tell: the old NER model type fails it
        jsonschema.validate(dict(info, model_type={"token_classifier": info["model_type"]["classifier"]}),
                            TEI_INFO_SCHEMA)


def test_batcher_respects_max_batch_size_and_fails_only_the_bad_item():
    seen: list[int] = []

    def run(payloads):
        seen.append(len(payloads))
        return [ValueError("bad") if p == "bad" else p * 2 for p in payloads]

    b = DynamicBatcher(run, max_batch_size=4, max_wait_ms=50, max_queue=20)
    b.start()
    try:
        futures = b.submit(list(range(9)) + ["bad"])
        assert [f.result(10) for f in futures[:9]] == [2 * i for i in range(9)]
        with pytest.raises(ValueError):
            futures[9].result(10)
    finally:
        b.stop(10)
    assert max(seen) <= 4 and sum(seen) == 10 and len(seen) == 3


def test_batcher_waits_only_for_requests_on_their_way():
    """A lone text goes at once, not after max_wait_ms; an announced request is waited for and joins the batch."""
    seen: list[int] = []
    b = DynamicBatcher(lambda ps: (seen.append(len(ps)), ps)[1], max_batch_size=8, max_wait_ms=3000, max_queue=8)
    b.start()
    try:
        t0 = time.monotonic()
        assert b.submit(["alone"])[0].result(10) == "alone"
        assert time.monotonic() - t0 < 1.5, "a lone request waited for max_wait_ms"
        b.announce()
        first = b.submit(["a"])
        time.sleep(0.3)  # the worker waits: one more request was announced
        second = b.submit(["b", "c"], announced=True)
        assert [f.result(10) for f in first + second] == ["a", "b", "c"]
        assert seen == [1, 3]
    finally:
        b.stop(10)


def test_batcher_interleaves_a_long_requests_windows_with_later_requests():
    """A 40-window text does not hold the worker: each forward takes units round-robin over the queued
    requests, within ``max_batch_tokens``; the queue bound counts texts, not windows; results come back
    per text in window order."""
    seen: list[list[str]] = []
    gate, entered = threading.Event(), threading.Event()

    def run(payloads):
        seen.append(list(payloads))
        entered.set()
        assert gate.wait(10)
        return [p.upper() for p in payloads]

    b = DynamicBatcher(run, max_batch_size=4, max_wait_ms=0, max_queue=3, max_batch_tokens=7, size_of=len)
    b.start()
    try:
        long_windows = [f"w{i:02d}" for i in range(40)]  # 3 tokens each: two fit the budget of 7
        (long_f,) = b.submit([long_windows], parts=True)
        assert entered.wait(10)  # the first forward holds the long text's first windows
        small = b.submit(["a"]) + b.submit(["bb"])  # 2 more texts: the queue holds 3 whatever their windows
        with pytest.raises(Exception, match="queue full"):
            b.submit(["c"])
        gate.set()
        assert [f.result(10) for f in small] == ["A", "BB"]
        assert long_f.result(10) == [w.upper() for w in long_windows]
    finally:
        gate.set()
        b.stop(10)
    assert seen[0] == ["w00", "w01"] and set(seen[1]) == {"w02", "a", "bb"}, seen[:3]  # round-robin, <= 7 tokens
    assert all(sum(map(len, batch)) <= 7 for batch in seen) and sum(map(len, seen)) == 42


def test_batcher_does_not_starve_requests_behind_a_window_that_fills_the_token_budget():
    """When one window of a long text fills ``max_batch_tokens`` alone, the line rotates: the next forward
    serves the request behind it instead of the long text's next window."""
    order: list[str] = []
    gate, entered = threading.Event(), threading.Event()

    def run(payloads):
        order.extend(payloads)
        entered.set()
        assert gate.wait(10)
        return payloads

    b = DynamicBatcher(run, max_batch_size=8, max_wait_ms=0, max_queue=8, max_batch_tokens=3, size_of=len)
    b.start()
    try:
        (long_f,) = b.submit([[f"w{i:02d}" for i in range(6)]], parts=True)  # 3 tokens a window: one a forward
        assert entered.wait(10)
        (small_f,) = b.submit(["s"])
        gate.set()
        assert small_f.result(10) == "s" and long_f.result(10) == [f"w{i:02d}" for i in range(6)]
    finally:
        gate.set()
        b.stop(10)
    # the window in progress, then one more (the newcomer joins the line at its back), not all six first
    assert order.index("s") <= 2, order


# -------------------------------------------------------------------------------------- the CLI process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def slow_seq_dir(tmp_path_factory) -> Path:
    """A sequence model wide enough that a 64 x 250-token request takes a few seconds on one CPU thread."""
    tok = build_word_tokenizer()
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                   pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = FSForSequenceClassification.from_backbone(transformers.LlamaModel(cfg), id2label=SEQ_LABELS)
    run = tmp_path_factory.mktemp("slow-run")  # a run folder: the model under model/, the max length in config.json
    _save(model, tok, run / "model")
    (run / "config.json").write_text(json.dumps({"max_length": 300}))
    return run


def _start_cli(model_dir: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """``fsllm serve`` as its own process; returns once /health answers 200 (bounded wait)."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fsllm.cli", "serve", str(model_dir), "--port", str(port), "--log-level", "warning",
         *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"fsllm serve exited with {proc.returncode}: {proc.stdout.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("fsllm serve did not come up")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def test_sigterm_lets_the_in_flight_request_finish_and_exits_0(slow_seq_dir):
    proc, url = _start_cli(slow_seq_dir)
    try:
        big = [" ".join(random.Random(i).choice(WORDS) for _ in range(250)) for i in range(64)]
        with ThreadPoolExecutor(1) as pool:
            fut = pool.submit(httpx.post, url + "/predict", json={"inputs": big}, timeout=120)
            deadline = time.monotonic() + 30
            while metric(httpx.get(url + "/metrics", timeout=5).text, "fsllm_requests_in_flight") != 2:  # it + /metrics
                assert time.monotonic() < deadline and not fut.done(), "the big request was never in flight"
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            assert not fut.done()  # the signal came while the request was being answered
            r = fut.result(120)
        assert r.status_code == 200, r.text
        assert len(r.json()) == 64 and all(len(a) == 3 for a in r.json())
        assert proc.wait(60) == 0, proc.stdout.read().decode()[-2000:]
    finally:
        _stop(proc)


def test_workers_load_the_handed_options_share_their_metrics_and_stop_on_sigterm(seq_dir):
    """``--workers 2``, real processes, real HTTP: both processes (told apart by their pid in /info) load the
    model with the options they were handed (device, precision, threads, batch limits) and answer as that
    model does; a scrape of /metrics on either process counts the requests both served; SIGTERM exits 0.

    The device is ``cuda:0`` where torch sees a GPU, else ``cpu``; there ``auto`` would give "cpu" too,
    so bf16, which is not the default, shows that the precision reached the workers."""
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    proc, url = _start_cli(seq_dir, "--workers", "2", "--max-batch-size", "4", "--max-batch-tokens", "999",
                           "--threads", "2", "--device", device, "--precision", "bf16")
    try:
        infos: dict[int, dict] = {}
        sent, deadline = 0, time.monotonic() + 120  # the second process may still be loading the model
        while (len(infos) < 2 or sent < 6) and time.monotonic() < deadline and sent < 1000:
            info = httpx.get(url + "/info", timeout=TIMEOUT).json()  # a new connection each: either process
            sent += 1
            infos[info["pid"]] = info
            time.sleep(0.02)
        assert len(infos) == 2, f"one process answered all {sent} requests"
        for info in infos.values():
            jsonschema.validate(info, TEI_INFO_SCHEMA)
            assert info["model_id"] == str(seq_dir) and info["max_batch_size"] == 4 and info["torch_threads"] == 2
            assert info["max_batch_tokens"] == 999 and info["model_dtype"] == "bfloat16" and info["device"] == device
        for _ in range(3):  # one scrape may come from either process: each must count both processes' requests
            scraped = metric(httpx.get(url + "/metrics", timeout=TIMEOUT).text, "fsllm_requests_total",
                             route="/info", status="200")
            assert scraped == sent, (scraped, sent)
        predictor = Predictor.from_pretrained(seq_dir, precision="bf16", device=device)
        texts = sentences(6, seed=11)
        for _ in range(3):
            got = httpx.post(url + "/predict", json={"inputs": texts}, timeout=TIMEOUT).json()
            for t, answer in zip(texts, got, strict=True):
                want = predictor.predict([t])[0]
                assert answer[0]["label"] == want["label"] and abs(answer[0]["score"] - want["score"]) < 2e-2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, proc.stdout.read().decode()[-2000:]
    finally:
        _stop(proc)


def test_a_gpu_that_is_not_there_fails_at_start_with_the_reason(seq_dir, monkeypatch):
    """``--device cuda`` where torch sees no GPU stops before uvicorn starts (once, not in every worker)."""
    import uvicorn

    from fsllm.serving import serve

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("uvicorn started"))
    for workers in (1, 2):
        with pytest.raises(FSLLMError, match="no CUDA GPU"):
            serve(str(seq_dir), device="cuda", workers=workers)


def test_serve_leaves_the_callers_signal_handlers_and_environment_alone(seq_dir, monkeypatch):
    """``serve()`` is a library call: it installs no SIGTERM handler (the ``fsllm serve`` entry point does) and
    gives its caller's environment back. What it hands the workers, the real app factory loads from."""
    from fsllm import serving

    before_handler, before_env = signal.getsignal(signal.SIGTERM), dict(os.environ)
    handed: dict[str, str] = {}
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: handed.update(os.environ))  # the process manager
    serving.serve(str(seq_dir), workers=2, device="cpu", precision="bf16", max_batch_tokens=777, threads=1)
    assert signal.getsignal(signal.SIGTERM) is before_handler
    assert dict(os.environ) == before_env
    assert handed[serving.ENV_DEVICE] == "cpu" and handed["PROMETHEUS_MULTIPROC_DIR"]
    threads = torch.get_num_threads()
    try:
        for k, v in handed.items():
            if k.startswith("FSLLM_SERVE_"):
                monkeypatch.setenv(k, v)
        app = serving.app_from_env()  # what each worker runs
    finally:
        torch.set_num_threads(threads)
    assert app.state.info["model_dtype"] == "bfloat16" and app.state.info["device"] == "cpu"
    assert app.state.info["max_batch_tokens"] == 777 and app.state.info["model_id"] == str(seq_dir)


def test_forward_threads_leave_a_core_to_the_http_side(monkeypatch):
    """The default keeps one core for the event loop and splits the rest among workers; an explicit value
    wins; a set ``OMP_NUM_THREADS`` is the user's choice and is applied."""
    from fsllm.serving import forward_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert forward_threads() == 7
    assert forward_threads(workers=3) == 2
    assert forward_threads(workers=16) == 1
    assert forward_threads(3) == 3
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert forward_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "4")  # applied even where MKL_NUM_THREADS says otherwise
    assert forward_threads() == 4 and forward_threads(workers=2) == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    assert forward_threads() is None
    assert forward_threads(2, workers=2) == 2
    with pytest.raises(FSLLMError, match="--threads"):
        forward_threads(0)


def test_every_create_app_option_reaches_each_worker_process(monkeypatch):
    """``--workers N`` hands create_app's options to each process through the environment and ``app_from_env``
    reads them back: one table serves both sides, so every option (all of create_app's keywords but
    ``model_id``) arrives with its value and type, and one left out or None arrives as create_app's default."""
    import inspect

    from fsllm.serving import app as app_module

    values = dict(max_batch_size=7, max_wait_ms=2.5, max_queue=9, max_batch_tokens=777, max_input_tokens=300,
                  precision="bf16", device="cpu", ner_decoding="viterbi", word_scores="mean")
    params = inspect.signature(app_module.create_app).parameters.values()
    keywords = [p.name for p in params if p.kind is p.KEYWORD_ONLY]
    assert set(keywords) - {"model_id"} == set(values)  # a new option of create_app must be handed on too

    def load(env: dict[str, str | None]) -> dict:
        for k in [k for k in os.environ if k.startswith("FSLLM_SERVE_")]:
            monkeypatch.delenv(k)
        for k, v in env.items():
            if v is not None:
                monkeypatch.setenv(k, v)
        got: dict = {}
        monkeypatch.setattr(app_module, "create_app", lambda model, **kw: got.update(kw, model=model))
        monkeypatch.setattr(torch, "set_num_threads", lambda n: got.update(threads=n))
        app_module.app_from_env()
        return got

    assert load(app_module.worker_env("some/run", 3, **values)) == {**values, "model": "some/run", "threads": 3}
    assert load(app_module.worker_env("some/run", None, max_batch_tokens=None, precision="fp32")) == {
        "model": "some/run", "precision": "fp32"}
    with pytest.raises(TypeError, match="max_batch"):
        app_module.worker_env("some/run", None, max_batch=3)
