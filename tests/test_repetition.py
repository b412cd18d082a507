"""Sequence repetition (``FSConfig.repeat``): the text read k times inside the forward, labels and pooling
from the last copy, exact under padding, and an ordinary model for save/load, ``pipeline()``,
``fsllm predict`` and the server."""

from __future__ import annotations

import copy
import json

import httpx
import pytest
import torch
from conftest import VOCAB, _perturb, tiny_backbone, word_llama, write_csv_dir
from transformers import pipeline

from fsllm import FSConfig, FSForSequenceClassification, FSForTokenClassification, load_model
from fsllm.cli import build_parser, main, train_config_from_args
from fsllm.decoding import raw_logits
from fsllm.errors import ConfigError
from fsllm.inference import Predictor
from fsllm.repetition import last_copy, repeat_sequence
from fsllm.serve import create_app

L = 12


def ids(n: int, seed: int, batch: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, n), generator=g)


def test_repeat_sequence_gathers_real_tokens_repeats_them_and_right_pads():
    x = torch.tensor([[5, 6, 7], [0, 8, 9], [4, 0, 0]])
    mask = torch.tensor([[1, 1, 1], [0, 1, 1], [1, 0, 0]])
    r = repeat_sequence(x, mask, 2)
    assert r.input_ids[:, :6].tolist() == [[5, 6, 7, 5, 6, 7], [8, 9, 8, 9, 0, 0], [4, 4, 0, 0, 0, 0]]
    assert r.attention_mask.tolist() == [[1] * 6, [1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]]
    # each real input position reads its token's last copy
    assert r.source[0].tolist() == [3, 4, 5]
    assert r.source[1, 1:].tolist() == [2, 3]
    assert r.source[2, 0].item() == 1
    hidden = torch.arange(3 * 6, dtype=torch.float32).view(3, 6, 1)
    assert last_copy(hidden, r)[0, :, 0].tolist() == [3.0, 4.0, 5.0]
    three = repeat_sequence(x[:1], mask[:1], 3)
    assert three.input_ids.tolist() == [[5, 6, 7] * 3] and three.source.tolist() == [[6, 7, 8]]


@pytest.mark.parametrize("family,attention", [
    ("llama", "causal"), ("llama", "bidirectional"), ("qwen2", "causal"), ("qwen2", "decay"),
    ("mistral", "causal"),  # a sliding window (5) shorter than the repeated text
])
@torch.no_grad()
def test_repetition_is_exact_alone_and_left_or_right_padded(family, attention):
    """Distances (decay, windows) and positions count real tokens across the copies, whatever the padding."""
    fs = FSConfig(attention=attention, decay_lambda=0.5, repeat=2, use_lora=False, head_dropout=0.0, pooling="last")
    token = FSForTokenClassification.from_backbone(tiny_backbone(family), num_labels=3, fs_config=fs).eval()
    seq = FSForSequenceClassification.from_backbone(tiny_backbone(family), num_labels=3, fs_config=fs).eval()
    short = ids(7, seed=2)
    alone_tok, alone_seq = token(short).logits, seq(short).logits
    assert alone_tok.shape == (1, 7, 3)  # token labels keep the input's layout
    for side in ("left", "right"):
        batch = torch.zeros(2, L, dtype=torch.long)
        mask = torch.zeros(2, L, dtype=torch.long)
        batch[0], mask[0] = ids(L, seed=4)[0], 1
        sl = slice(L - 7, L) if side == "left" else slice(0, 7)
        batch[1, sl], mask[1, sl] = short[0], 1
        torch.testing.assert_close(token(batch, mask).logits[1, sl], alone_tok[0], atol=1e-5, rtol=0, msg=side)
        torch.testing.assert_close(seq(batch, mask).logits[1:], alone_seq, atol=1e-5, rtol=0, msg=side)


@torch.no_grad()
def test_repetition_reads_the_last_copy_of_the_text_fed_k_times():
    """repeat=k computes what the same weights compute on the text concatenated k times, at the last copy."""
    fs = FSConfig(attention="causal", repeat=3, use_lora=False, head_dropout=0.0)
    model = FSForTokenClassification.from_backbone(tiny_backbone("qwen2"), num_labels=3, fs_config=fs).eval()
    once = copy.deepcopy(model)
    once.fs_config = FSConfig(attention="causal", repeat=1)
    x = ids(6, seed=1)
    torch.testing.assert_close(model.encode(x), once.encode(torch.cat([x, x, x], 1))[:, 12:], atol=1e-6, rtol=0)


@torch.no_grad()
def test_causal_repetition_lets_the_first_token_see_the_last():
    x = ids(8, seed=3)
    changed = x.clone()
    changed[0, -1] = (changed[0, -1] + 7) % VOCAB
    for repeat, sees in ((1, False), (2, True)):
        fs = FSConfig(attention="causal", repeat=repeat, use_lora=False, head_dropout=0.0)
        model = FSForTokenClassification.from_backbone(tiny_backbone("llama"), num_labels=3, fs_config=fs).eval()
        diff = (model(x).logits[0, 0] - model(changed).logits[0, 0]).abs().max().item()
        assert (diff > 1e-6) == sees, (repeat, diff)


def test_repeat_must_be_a_positive_integer():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="repeat must be an integer >= 1"):
            FSConfig(repeat=bad)


def test_repeated_model_saves_loads_and_runs_in_pipeline(tmp_path):
    tok, backbone = word_llama()
    fs = FSConfig(attention="causal", repeat=2, head_dropout=0.0, lora_dropout=0.0)
    model = FSForTokenClassification.from_backbone(backbone, fs_config=fs, id2label={0: "O", 1: "B-PER", 2: "I-PER"})
    _perturb(model, scale=0.3)
    model.eval()
    enc = tok(["John visited Paris", "the film"], padding=True, return_tensors="pt")
    with torch.no_grad():
        before = model(**enc).logits
    model.save_pretrained(tmp_path / "m", tokenizer=tok, merged=True)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["fs"]["repeat"] == 2
    assert "the text read 2 times" in (tmp_path / "m" / "README.md").read_text()
    loaded = load_model(tmp_path / "m")
    assert loaded.fs_config.repeat == 2
    # the head's own logits (saving with a tokenizer gives forward the word table it orders logits for pipeline() with)
    with torch.no_grad(), raw_logits(loaded):
        torch.testing.assert_close(loaded(**enc).logits, before, atol=1e-5, rtol=1e-5)  # LoRA merged: rounding
    pipe = pipeline("token-classification", model=str(tmp_path / "m"), aggregation_strategy="none")
    got = pipe("John visited Paris")
    assert [e["word"] for e in got if e["entity"] != "O"] == [t for t, k in zip(
        ["John", "visited", "Paris"], before[0, :3].argmax(-1).tolist(), strict=True) if k != 0]


def test_cli_trains_a_repeated_model_that_predicts_and_serves(tmp_path, tiny_model_dir, capsys):
    from test_serve import LiveServer  # the suite's real uvicorn server on a loopback port

    d = write_csv_dir(tmp_path)
    run = tmp_path / "run"
    rc = main(["train", "--data", str(d), "--model", str(tiny_model_dir), "-o", str(run), "--max-steps", "2",
               "--batch-size", "4", "--attention", "causal", "--repeat", "2", "--no-test"])
    assert rc == 0, capsys.readouterr().err
    assert json.loads((run / "config.json").read_text())["fs"]["repeat"] == 2
    assert json.loads((run / "model" / "config.json").read_text())["fs"]["repeat"] == 2
    again = train_config_from_args(build_parser().parse_args(["train", "--config", str(run / "config.json")]))
    assert again.fs.repeat == 2 and again.fs.attention == "causal"
    capsys.readouterr()
    assert main(["predict", str(run), "loved the movie"]) == 0
    answer = json.loads(capsys.readouterr().out.splitlines()[0])
    predictor = Predictor.from_pretrained(run)
    assert predictor.model.fs_config.repeat == 2
    ids_ = predictor.tokenizer("loved the movie", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        direct = predictor.model(ids_).logits[0].argmax().item()
    assert answer["label"] == predictor.model.id2label[direct]
    with LiveServer(create_app(predictor, max_batch_size=4, max_wait_ms=5, model_id="repeat")) as server:
        r = httpx.post(server.url + "/predict", json={"inputs": "loved the movie"}, timeout=30)
    assert r.status_code == 200, r.text
    top = max(r.json(), key=lambda a: a["score"]) if isinstance(r.json(), list) else r.json()
    assert top["label"] == answer["label"]
