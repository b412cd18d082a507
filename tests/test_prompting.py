"""A prompt appended inside the forward (``FSConfig.prompt``) and the verbalizer head: exact under padding,
the untrained model is the language model's own zero-shot reading, and an ordinary model for save/load,
``pipeline()``, the CLI, ``fsllm predict`` and the server."""

from __future__ import annotations

import json

import httpx
import pytest
import torch
import transformers
from conftest import VOCAB, _config, _perturb, build_word_tokenizer, tiny_backbone, word_llama_lm, write_csv_dir
from transformers import pipeline

from fsllm import FSConfig, FSForSequenceClassification, FSForTokenClassification, load_model
from fsllm.cli import build_parser, main, train_command, train_config_from_args
from fsllm.config import FSLLMConfig
from fsllm.errors import ConfigError, FSLLMError
from fsllm.inference import Predictor
from fsllm.prompting import append_prompt, label_word_ids
from fsllm.serve import create_app

WORDS = {"negative": "bad", "positive": "good"}  # the word-level test tokenizer knows these
LABELS = {0: "negative", 1: "positive"}
PROMPT = " the film is"


def verbalizer_fs(**kw) -> FSConfig:
    return FSConfig(**{"pooling": "last", "head": "verbalizer", "prompt": PROMPT, "label_words": WORDS,
                       "head_dropout": 0.0, **kw})


def lm_word(tokenizer, word: str) -> int:
    return tokenizer.convert_tokens_to_ids(word)


def test_append_prompt_follows_each_rows_real_tokens_and_right_pads():
    x = torch.tensor([[5, 6, 7], [0, 8, 9], [4, 0, 0]])
    mask = torch.tensor([[1, 1, 1], [0, 1, 1], [1, 0, 0]])
    ids, new_mask = append_prompt(x, mask, [40, 41])
    assert ids.tolist() == [[5, 6, 7, 40, 41], [8, 9, 40, 41, 0], [4, 40, 41, 0, 0]]
    assert new_mask.tolist() == [[1] * 5, [1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]


@pytest.mark.parametrize("family,attention", [("llama", "bidirectional"), ("qwen2", "causal"), ("mistral", "decay"),
                                              ("gemma3", "bidirectional")])
@torch.no_grad()
def test_a_prompted_model_is_exact_alone_and_left_or_right_padded(family, attention):
    tok = build_word_tokenizer()
    fs = FSConfig(attention=attention, decay_lambda=0.5, pooling="last", prompt=PROMPT, head_dropout=0.0, use_lora=False)
    model = FSForSequenceClassification.from_backbone(tiny_backbone(family), num_labels=3, fs_config=fs,
                                                      tokenizer=tok).eval()
    assert model.config.prompt_ids == tok(PROMPT, add_special_tokens=False)["input_ids"]
    g = torch.Generator().manual_seed(0)
    short, long = torch.randint(3, VOCAB, (1, 5), generator=g), torch.randint(3, VOCAB, (1, 9), generator=g)
    alone = model(short).logits
    for side in ("left", "right"):
        batch, mask = torch.zeros(2, 9, dtype=torch.long), torch.zeros(2, 9, dtype=torch.long)
        batch[0], mask[0] = long[0], 1
        sl = slice(4, 9) if side == "left" else slice(0, 5)
        batch[1, sl], mask[1, sl] = short[0], 1
        torch.testing.assert_close(model(batch, mask).logits[1:], alone, atol=1e-5, rtol=0, msg=side)


@torch.no_grad()
def test_the_prompt_is_read_after_the_text():
    """With a prompt, the model computes what the same weights compute on the text followed by the prompt's tokens."""
    tok = build_word_tokenizer()
    prompted = FSForSequenceClassification.from_backbone(
        tiny_backbone("llama"), num_labels=2, tokenizer=tok,
        fs_config=FSConfig(attention="causal", pooling="last", prompt=PROMPT, use_lora=False, head_dropout=0.0)).eval()
    bare = FSForSequenceClassification.from_backbone(
        tiny_backbone("llama"), num_labels=2,
        fs_config=FSConfig(attention="causal", pooling="last", use_lora=False, head_dropout=0.0)).eval()
    bare.head.load_state_dict(prompted.head.state_dict())
    text = tok("loved the movie", return_tensors="pt")["input_ids"]
    full = tok("loved the movie" + PROMPT, return_tensors="pt")["input_ids"]
    torch.testing.assert_close(prompted(text).logits, bare(full).logits, atol=1e-6, rtol=0)
    assert not torch.allclose(prompted(text).logits, bare(text).logits, atol=1e-4)


@torch.no_grad()
def test_an_untrained_verbalizer_scores_labels_as_the_language_model_scores_their_words(tmp_path):
    """Causal mask, no training: the logits are the LM's next-word logits of the label words after text + prompt.
    The tiny LM's head is not tied: the rows come from lm_head.weight in its folder."""
    tok, lm = word_llama_lm()
    with torch.no_grad():  # a trained final norm's scale (a random init's is 1: a second norm would change nothing)
        lm.model.norm.weight.uniform_(0.5, 3.0)
    lm.eval().save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    model = FSForSequenceClassification.from_backbone(str(tmp_path / "lm"), id2label=LABELS,
                                                      fs_config=verbalizer_fs(attention="causal")).eval()
    words = [tok.convert_tokens_to_ids(w) for w in ("bad", "good")]
    assert model.config.verbalizer_ids == words
    enc = tok(["loved the movie", "boring plot and awful actors"], padding=True, return_tensors="pt")
    got = model(**enc).logits
    for i, text in enumerate(["loved the movie", "boring plot and awful actors"]):
        ids = tok(text + PROMPT, return_tensors="pt")["input_ids"]
        torch.testing.assert_close(got[i], lm(ids).logits[0, -1, words], atol=1e-4, rtol=1e-4)


def test_a_tied_backbone_gives_the_input_embedding_rows():
    tok = build_word_tokenizer()
    cfg = _config("llama", 2)
    cfg.vocab_size, cfg.tie_word_embeddings = len(tok), True
    torch.manual_seed(0)
    backbone = transformers.LlamaModel(cfg)
    model = FSForSequenceClassification.from_backbone(backbone, id2label=LABELS, fs_config=verbalizer_fs(), tokenizer=tok)
    ids = [tok.convert_tokens_to_ids(w) for w in ("bad", "good")]
    torch.testing.assert_close(model.head.out.weight, backbone.get_input_embeddings().weight[ids])
    assert model.head.out.bias.abs().max().item() == 0.0
    cfg.tie_word_embeddings = False  # untied and no folder to read lm_head.weight from: refused, not guessed
    with pytest.raises(FSLLMError, match="does not tie it"):
        FSForSequenceClassification.from_backbone(transformers.LlamaModel(cfg), id2label=LABELS,
                                                  fs_config=verbalizer_fs(), tokenizer=tok)


def test_bad_prompt_and_verbalizer_settings_are_refused():
    tok = build_word_tokenizer()
    with pytest.raises(ConfigError, match="set pooling='last'"):
        FSConfig(head="verbalizer")
    with pytest.raises(ConfigError, match="label_words are the verbalizer head's"):
        FSConfig(label_words=WORDS)
    with pytest.raises(ConfigError, match="prompt must be a non-empty string"):
        FSConfig(prompt="  ")
    with pytest.raises(ConfigError, match="begin with the same token"):
        label_word_ids(tok, LABELS)  # neither label name is a word of the test vocabulary: both <unk>
    with pytest.raises(ConfigError, match="names labels the data does not have"):
        label_word_ids(tok, LABELS, {"neutral": "good"})
    with pytest.raises(ConfigError, match="is for sequence tasks"):
        FSForTokenClassification.from_backbone(tiny_backbone("llama"), num_labels=3, tokenizer=tok,
                                               fs_config=FSConfig(prompt=PROMPT))
    with pytest.raises(ValueError, match="prompt_ids must be a non-empty list of token ids"):
        FSLLMConfig(fs=FSConfig(prompt=PROMPT).to_dict(), prompt_ids=["the"])
    with pytest.raises(ConfigError, match="a prompt but no prompt_ids"):
        FSForSequenceClassification(FSLLMConfig(fs=FSConfig(prompt=PROMPT).to_dict(), decoder_config=_config("llama", 2),
                                                num_labels=2))
    with pytest.raises(ConfigError, match="is for sequence tasks"):  # before its labels' words are looked up
        FSForTokenClassification.from_backbone(tiny_backbone("llama"), id2label={0: "O", 1: "B-PER"}, tokenizer=tok,
                                               fs_config=FSConfig(head="verbalizer", pooling="last"))
    with pytest.raises(ConfigError, match="regression"):
        FSForSequenceClassification.from_backbone(tiny_backbone("llama"), id2label={0: "score"}, tokenizer=tok,
                                                  problem_type="regression",
                                                  fs_config=verbalizer_fs(label_words={"score": "good"}))


def test_a_label_word_of_several_tokens_is_read_by_its_first_and_logged(caplog):
    tok = build_word_tokenizer()
    words = {"negative": "bad film", "positive": "good"}
    with caplog.at_level("WARNING", logger="fsllm.prompting"):
        ids = label_word_ids(tok, LABELS, words)
    assert ids == [lm_word(tok, "bad"), lm_word(tok, "good")]
    assert [r.getMessage() for r in caplog.records] == ["label 'negative': its word 'bad film' is 2 tokens; "
                                                        "the verbalizer reads its first, 'bad'"]


def test_a_verbalizer_model_saves_loads_and_runs_in_pipeline(tmp_path):
    tok, lm = word_llama_lm()
    lm.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    model = FSForSequenceClassification.from_backbone(str(tmp_path / "lm"), id2label=LABELS, fs_config=verbalizer_fs())
    _perturb(model, scale=0.3)
    model.eval()
    texts = ["loved the movie", "hated the film , boring"]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        before = model(**enc).logits
    model.save_pretrained(tmp_path / "m", tokenizer=tok)
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["fs"]["prompt"] == PROMPT and saved["prompt_ids"] == model.config.prompt_ids
    assert saved["fsllm_format"] == 4  # an fsllm that reads format 3 at most says "upgrade" (test_document_context)
    card = (tmp_path / "m" / "README.md").read_text()
    assert "a verbalizer head" in card and "followed by the prompt ' the film is'" in card
    loaded = load_model(tmp_path / "m").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**enc).logits, before, atol=1e-5, rtol=1e-5)
    pipe = pipeline("text-classification", model=str(tmp_path / "m"), top_k=None)
    for text, logits in zip(texts, before, strict=True):
        scores = {a["label"]: a["score"] for a in pipe([text])[0]}
        torch.testing.assert_close(torch.tensor([scores["negative"], scores["positive"]]), logits.softmax(-1),
                                   atol=1e-5, rtol=1e-5)


def test_cli_trains_a_prompted_verbalizer_model_that_predicts_and_serves(tmp_path, tiny_causal_lm_dir, capsys):
    from test_serve import LiveServer  # the suite's real uvicorn server on a loopback port

    d = write_csv_dir(tmp_path)
    run = tmp_path / "run"
    rc = main(["train", "--data", str(d), "--model", str(tiny_causal_lm_dir), "-o", str(run), "--max-steps", "2",
               "--batch-size", "4", "--pooling", "last", "--head", "verbalizer", "--prompt", "\\nthe film is",
               "--label-words", "negative=bad,positive=good", "--no-test"])
    assert rc == 0, capsys.readouterr().err
    fs = json.loads((run / "model" / "config.json").read_text())["fs"]
    assert fs["prompt"] == "\nthe film is" and fs["label_words"] == WORDS  # \n typed in a shell is a newline
    again = train_config_from_args(build_parser().parse_args(["train", "--config", str(run / "config.json")]))
    assert again.fs.prompt == "\nthe film is" and again.fs.head == "verbalizer"
    # the run's command is one line that gives the same settings back
    command = train_command(again)
    assert command[command.index("--prompt") + 1] == "\\nthe film is"
    assert command[command.index("--label-words") + 1] == "negative=bad,positive=good"
    rebuilt = train_config_from_args(build_parser().parse_args(command))
    assert (rebuilt.fs.prompt, rebuilt.fs.label_words) == ("\nthe film is", WORDS)
    capsys.readouterr()
    assert main(["predict", str(run), "loved the movie"]) == 0
    answer = json.loads(capsys.readouterr().out.splitlines()[0])
    predictor = Predictor.from_pretrained(run)
    # the rows stayed the label words' output embeddings; the bias trained
    lm = transformers.AutoModelForCausalLM.from_pretrained(tiny_causal_lm_dir)
    head = predictor.model.head.out
    torch.testing.assert_close(head.weight, lm.lm_head.weight[[lm_word(predictor.tokenizer, w) for w in ("bad", "good")]])
    assert head.bias.abs().max().item() > 0
    ids = predictor.tokenizer("loved the movie", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        direct = predictor.model(ids).logits[0]
    assert answer["label"] == predictor.model.id2label[direct.argmax().item()]
    with LiveServer(create_app(predictor, max_batch_size=4, max_wait_ms=5, model_id="verbalizer")) as server:
        r = httpx.post(server.url + "/predict", json={"inputs": "loved the movie"}, timeout=30)
    assert r.status_code == 200, r.text
    top = max(r.json(), key=lambda a: a["score"]) if isinstance(r.json(), list) else r.json()
    assert top["label"] == answer["label"]
    assert top["score"] == pytest.approx(direct.softmax(-1).max().item(), abs=1e-5)
