"""Predictor and the entity spans it reports: offsets, pre-split words, text pairs in padded batches."""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest
import torch
from conftest import _perturbed_seq_model

import fsllm.inference as inference
from fsllm.errors import DataError, FSLLMError
from fsllm.inference import Predictor, batched_logits, entities_from_tags
from fsllm.segmentation import split_words
from fsllm.tokenization import pair_features


def test_entities_map_back_to_character_offsets():
    text = "John Smith visited New York ."
    words, spans = split_words(text)
    assert words == ["John", "Smith", "visited", "New", "York", "."]
    ents = entities_from_tags(["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O"], [0.9, 0.7, 1, 0.8, 0.6, 1], spans, text)
    assert ents == [
        {"entity_group": "PER", "score": pytest.approx(0.8), "word": "John Smith", "start": 0, "end": 10},
        {"entity_group": "LOC", "score": pytest.approx(0.7), "word": "New York", "start": 19, "end": 27},
    ]


# ------------------------------------------------------------------ Predictor


def test_predict_feeds_the_forms_and_reports_spans_in_the_original_text(tiny_ner_model_dir, monkeypatch):
    pred = Predictor.from_pretrained(tiny_ner_model_dir)
    seen = []
    real = inference.predict_word_tags

    def spy(model, tok, sentences, *a, **k):
        seen.extend(list(s) for s in sentences)
        tags, scores, logits = real(model, tok, sentences, *a, **k)
        return [["B-PER"] * len(s) for s in sentences], scores, logits  # every word a PER: one entity

    monkeypatch.setattr(inference, "predict_word_tags", spy)
    text = unicodedata.normalize("NFD", "\ufeffJosé's Ber\u00adlin")
    (ents,) = pred.predict([text])
    assert seen == [["José", "'s", "Berlin"]]
    assert [(e["start"], e["end"]) for e in ents] == [(1, 6), (6, 8), (9, 16)]
    assert all(text[e["start"] : e["end"]] == e["word"] for e in ents)
    with pytest.raises(DataError, match="input 1: no words"):
        pred.predict(["\u200b\u200b"])


def test_predict_pre_split_words(tiny_ner_model_dir, tiny_seq_model_dir):
    pred = Predictor.from_pretrained(tiny_ner_model_dir)
    sents = [["John", "visited", "New York"], ["东", "京"]]
    out = pred.predict(words=sents)
    assert [r["tokens"] for r in out] == sents
    for r in out:
        assert len(r["tags"]) == len(r["tokens"]) == len(r["scores"])
        text = " ".join(r["tokens"])
        assert all(text[e["start"] : e["end"]] == e["word"] for e in r["entities"])
    with pytest.raises(FSLLMError, match="either texts or words"):
        pred.predict(["a"], words=sents)
    with pytest.raises(DataError, match="input 2: word 1"):
        pred.predict(words=[["a"], ["", "b"]])
    with pytest.raises(DataError, match="input 1: expected a non-empty list"):
        pred.predict(words=["John visited"])
    with pytest.raises(FSLLMError, match="token-classification"):
        Predictor.from_pretrained(tiny_seq_model_dir).predict(words=sents)


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


def test_bf16_predictor_casts_the_weights_and_keeps_the_labels(tiny_seq_model_dir, monkeypatch):
    import fsllm.config as config

    texts = ["John visited Paris .", "the film was good", "Mary works for Google in London today", "awful plot"]
    fp32 = Predictor.from_pretrained(tiny_seq_model_dir)
    bf16 = Predictor.from_pretrained(tiny_seq_model_dir, precision="bf16")
    assert bf16.precision == "bf16" and next(bf16.model.parameters()).dtype == torch.bfloat16
    assert next(fp32.model.parameters()).dtype == torch.float32
    a, b = fp32.predict(texts), bf16.predict(texts)
    assert [r["label"] for r in a] == [r["label"] for r in b]
    assert [r["score"] for r in a] == pytest.approx([r["score"] for r in b], abs=0.05)
    assert [r["score"] for r in a] != [r["score"] for r in b]  # bf16 really ran
    # auto follows the hardware
    monkeypatch.setattr(config, "native_bf16", lambda: None)
    assert Predictor.from_pretrained(tiny_seq_model_dir, precision="auto").precision == "fp32"
    monkeypatch.setattr(config, "native_bf16", lambda: "the CPU has AVX512-BF16")
    assert Predictor.from_pretrained(tiny_seq_model_dir, precision="auto").precision == "bf16"
    with pytest.raises(FSLLMError, match="precision must be"):
        Predictor.from_pretrained(tiny_seq_model_dir, precision="fp8")


def test_bf16_asked_for_where_it_is_emulated_is_kept_with_a_warning(tiny_seq_model_dir, monkeypatch, caplog):
    """An AVX2 CPU runs bf16 matmuls tens of times slower than fp32: the reader keeps the choice but says so."""
    import fsllm.config as config

    monkeypatch.setattr(config, "bf16_hardware", lambda: None)
    with caplog.at_level("WARNING", logger="fsllm"):
        assert Predictor.from_pretrained(tiny_seq_model_dir, precision="bf16").precision == "bf16"
    assert "precision bf16: no bf16 matmul hardware here" in caplog.text
    caplog.clear()
    monkeypatch.setattr(config, "bf16_hardware", lambda: "the CPU has AVX512-BF16")
    with caplog.at_level("WARNING", logger="fsllm"):
        Predictor.from_pretrained(tiny_seq_model_dir, precision="bf16")
        monkeypatch.setattr(config, "bf16_hardware", lambda: None)
        Predictor.from_pretrained(tiny_seq_model_dir, precision="fp32")  # fp32 needs nothing
    assert "no bf16 matmul hardware here" not in caplog.text


def test_device_auto_picks_the_gpu_when_torch_sees_one_and_a_missing_gpu_is_a_clear_error(tiny_seq_model_dir,
                                                                                           monkeypatch):
    from fsllm.config import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # what a GPU machine answers
    assert resolve_device("auto") == torch.device("cuda") and resolve_device(None) == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    for bad, why in (("cuda", "no CUDA GPU"), ("cuda:1", "no CUDA GPU"), ("gpu0", "use auto, cpu, cuda"),
                     ("meta", "cpu or cuda")):
        with pytest.raises(FSLLMError, match=why):
            resolve_device(bad)
    with pytest.raises(FSLLMError, match="no CUDA GPU"):  # before the model is touched
        Predictor.from_pretrained(tiny_seq_model_dir, device="cuda")
    pred = Predictor.from_pretrained(tiny_seq_model_dir, device="auto")
    assert pred.device == torch.device("cpu") and next(pred.model.parameters()).device == torch.device("cpu")
    # the predictor moves the model to the device it resolved: where the forward runs, not only a label
    import fsllm.inference as inference

    marked = torch.device("cpu", 0)  # a device that nothing else in loading would name
    monkeypatch.setattr(inference, "resolve_device", lambda device: marked)
    moved = []
    real_to = torch.nn.Module.to
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moved.append(a) or real_to(self, *a, **k))
    pred = Predictor.from_pretrained(tiny_seq_model_dir, device="cuda")
    assert pred.device == marked and (marked,) in moved


def test_predictor_works_on_its_own_copy_of_a_model_being_trained():
    """Predictor merges LoRA, casts and switches to eval mode: done to the caller's model, a model still
    being trained lost its LoRA gradients (merged weights, frozen) and its dropout. It now copies it."""
    from conftest import word_llama

    from fsllm import FSConfig, FSForSequenceClassification

    tok, backbone = word_llama()
    torch.manual_seed(0)
    model = FSForSequenceClassification.from_backbone(backbone, num_labels=2, fs_config=FSConfig(lora_dropout=0.0,
                                                                                                   head_dropout=0.0))
    _lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    with torch.no_grad():
        for p in _lora_b:
            p.normal_(0, 0.1)
    model.train()
    ids = torch.tensor([tok("good film")["input_ids"]])
    with torch.no_grad():
        want = model(input_ids=ids).logits
    predictor = Predictor(model, tok, precision="bf16", device="cpu")
    assert model.training and not any(getattr(m, "merged", False) for m in model.modules())
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    loss = model(input_ids=ids, labels=torch.tensor([1])).loss
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in _lora_b)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, want)
    # the predictor's copy is merged and in bf16, and answers as the model does
    assert any(getattr(m, "merged", False) for m in predictor.model.modules())
    assert predictor.predict(["good film"])[0]["label"] == model.id2label[int(want.argmax())]
    # copy=False hands the model over: merged in place, as documented
    Predictor(model, tok, device="cpu", copy=False)
    assert any(getattr(m, "merged", False) for m in model.modules()) and not model.training
