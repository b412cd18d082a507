"""``fsllm adapt``: LLM2Vec's masked next-token prediction before supervised training (fsllm.adaptation).

The masking (which positions, which labels), the loss (shifted by one, masked tokens only), the released
attention while adapting, an adapted folder that ``fsllm train`` takes as a backbone, resuming, and the
one-line errors on bad input. Tiny models built from configs; no network.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import CONLL_DEV, CONLL_TRAIN, word_llama_lm, write_conll_dir
from safetensors.torch import load_file
from transformers import TrainerCallback

from fsllm.adaptation import (
    ADAPTATION_FILE,
    BERT_SPLIT,
    AdaptConfig,
    MaskEpoch,
    MNTPCollator,
    adapt,
    mask_token_id,
    mask_tokens,
    maskable_positions,
    mntp_loss,
    release_attention,
    released_logits,
    training_texts,
)
from fsllm.cli import build_parser, main
from fsllm.errors import ConfigError, FSLLMError, TrainingInterrupted

SPECIAL = [0, 1, 2, 3]  # <pad> <s> </s> <unk> of the word-level tokenizer


# ------------------------------------------------------------------ masking


def test_maskable_positions_leave_out_padding_special_tokens_and_the_first_token():
    # row 0: BOS, three words, EOS, right padding whose id (7) is an ordinary word: padding is told by the mask
    # row 1: left padding, then four words: the first real token (position 2) has nothing before it to predict it
    ids = torch.tensor([[1, 5, 6, 7, 2, 7, 7], [7, 7, 8, 9, 10, 11, 12]])
    attention = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 1]])
    got = maskable_positions(ids, attention, SPECIAL)
    expected = torch.tensor([[0, 1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(got, expected)

    # everything maskable chosen (probability 1): the inputs become the mask id there, the labels the original tokens
    masked, labels = mask_tokens(ids, got, 1.0, mask_id=99)
    assert torch.equal(masked, torch.tensor([[1, 99, 99, 99, 2, 7, 7], [7, 7, 8, 99, 99, 99, 99]]))
    assert torch.equal(labels, torch.tensor([[-100, 5, 6, 7, -100, -100, -100], [-100, -100, -100, 9, 10, 11, 12]]))


def test_mask_tokens_chooses_the_configured_share_of_the_maskable_tokens():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 50, (64, 200), generator=g)
    maskable = torch.rand(ids.shape, generator=g) < 0.5
    masked, labels = mask_tokens(ids, maskable, 0.2, mask_id=99, generator=g)
    chosen = labels != -100
    assert not bool((chosen & ~maskable).any())  # never outside the maskable positions
    share = chosen.sum().item() / maskable.sum().item()
    assert 0.18 < share < 0.22
    assert torch.equal(masked[chosen], torch.full((int(chosen.sum()),), 99))  # every chosen token is masked
    assert torch.equal(masked[~chosen], ids[~chosen])  # and nothing else changes
    assert torch.equal(labels[chosen], ids[chosen])


def test_the_chosen_tokens_are_split_80_10_10_as_bert_and_llm2vec_do():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 1000, (64, 200), generator=g)
    maskable = torch.ones_like(ids, dtype=torch.bool)
    masked, labels = mask_tokens(ids, maskable, 0.5, mask_id=3, generator=g, split=BERT_SPLIT, vocab_size=1000)
    chosen = labels != -100
    assert torch.equal(labels[chosen], ids[chosen])  # every chosen token is predicted, whatever its input became
    assert torch.equal(masked[~chosen], ids[~chosen])
    n = chosen.sum().item()
    as_mask = (masked[chosen] == 3).sum().item() / n
    kept = (masked[chosen] == ids[chosen]).sum().item() / n  # kept, or drawn at random as itself (1 in 1,000)
    assert 0.78 < as_mask < 0.82 and 0.09 < kept < 0.11 and 0.09 < 1 - as_mask - kept < 0.11
    assert int(masked.max()) < 1000
    with pytest.raises(ValueError, match="vocab_size"):
        mask_tokens(ids, maskable, 0.5, mask_id=3, split=BERT_SPLIT)


def test_the_collator_pads_right_and_never_masks_padding():
    collate = MNTPCollator(pad_id=0, mask_id=99, special_ids=SPECIAL, probability=1.0)
    batch = collate([{"input_ids": [5, 6, 7, 8]}, {"input_ids": [1, 9, 2]}])
    assert torch.equal(batch["attention_mask"], torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]))
    assert torch.equal(batch["input_ids"], torch.tensor([[5, 99, 99, 99], [1, 99, 2, 0]]))
    assert torch.equal(batch["labels"], torch.tensor([[-100, 6, 7, 8], [-100, 9, -100, -100]]))


def test_the_masks_are_a_function_of_the_seed_the_epoch_and_the_text_alone():
    long, short = {"input_ids": list(range(4, 60))}, {"input_ids": list(range(60, 90))}
    collate = MNTPCollator(pad_id=0, mask_id=99, special_ids=SPECIAL, probability=0.5, seed=3)
    torch.manual_seed(0)
    first = collate([long, short])
    torch.manual_seed(1)
    again = collate([long, short])
    assert torch.equal(first["labels"], again["labels"])  # not torch's global generator
    # not the batch: a text alone, or elsewhere in another batch, is masked as it was (what lets N processes
    # with a share of the step each mask as one process with the whole step does)
    alone = collate([short])
    assert torch.equal(alone["labels"][0], first["labels"][1, :30])
    assert torch.equal(alone["input_ids"][0], first["input_ids"][1, :30])
    assert torch.equal(collate([short, long])["labels"][1], first["labels"][0])
    assert (first["labels"][1, :30] != -100).any() and (first["labels"][1, 30:] == -100).all()
    other = MNTPCollator(pad_id=0, mask_id=99, special_ids=SPECIAL, probability=0.5, seed=4)([long, short])
    assert not torch.equal(first["labels"], other["labels"])
    collate.epoch = 1  # the next epoch: new masks
    assert not torch.equal(collate([long])["labels"][0], first["labels"][0])


def test_each_epoch_that_begins_is_told_to_the_collator_as_a_resumed_run_restores_it():
    from transformers import TrainerControl, TrainerState

    collate = MNTPCollator(pad_id=0, mask_id=99, special_ids=SPECIAL, probability=0.5)
    callback = MaskEpoch(collate)
    for done, epoch in ((None, 0), (0.0, 0), (1.0, 1), (2.0, 2), (1.4, 1)):  # 1.4: resumed within the second
        callback.on_epoch_begin(None, TrainerState(epoch=done), TrainerControl())
        assert collate.epoch == epoch


def test_mask_token_is_the_tokenizers_else_a_blank_that_must_be_in_the_vocabulary():
    tok, _ = word_llama_lm()
    assert mask_token_id(tok) == tok.convert_tokens_to_ids("<mask>")
    assert mask_token_id(tok, "Paris") == tok.convert_tokens_to_ids("Paris")
    from conftest import build_word_tokenizer

    plain = build_word_tokenizer()  # no mask token and no "_": LLM2Vec's blank is not a token here
    with pytest.raises(ConfigError, match="'_' is not a token"):
        mask_token_id(plain)


# ------------------------------------------------------------------ loss


def test_the_loss_predicts_each_masked_token_from_the_position_before_it():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 11, generator=g)
    labels = torch.full((2, 6), -100)
    labels[0, 2], labels[0, 5], labels[1, 1] = 4, 7, 3
    by_hand = torch.stack([F.cross_entropy(logits[b, i - 1], labels[b, i]) for b, i in ((0, 2), (0, 5), (1, 1))]).mean()
    assert torch.allclose(mntp_loss(logits, labels), by_hand)

    # the logits of a position before no masked token, and of the last position (before nothing), do not count
    # (random changes: a constant added to a position's logits would not change its softmax)
    moved = logits.clone()
    for b, i in ((0, 0), (0, 2), (0, 5), (1, 2), (1, 3), (1, 5)):  # the counted ones: (0, 1), (0, 4), (1, 0)
        moved[b, i] += torch.randn(11, generator=g)
    assert torch.allclose(mntp_loss(moved, labels), by_hand)
    # but those before a masked token do
    moved[0, 1] += torch.randn(11, generator=g)
    assert not torch.allclose(mntp_loss(moved, labels), by_hand)


def test_a_batch_without_masked_tokens_gives_a_zero_loss_with_a_graph():
    logits = torch.randn(1, 4, 5, requires_grad=True)
    loss = mntp_loss(logits, torch.full((1, 4), -100))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None


# ------------------------------------------------------------------ released attention


def _lm_and_two_texts():
    """The tiny causal LM in eval mode and two texts that differ in their last token only (with their mask)."""
    tok, model = word_llama_lm()
    model.eval()
    ids = torch.tensor([tok.convert_tokens_to_ids("John visited Paris today".split())])
    other = ids.clone()
    other[0, -1] = tok.convert_tokens_to_ids("yesterday")
    return model, ids, other, torch.ones_like(ids)


@pytest.mark.parametrize("lora", [False, True])
def test_attention_is_released_while_adapting(lora):
    model, ids, other, mask = _lm_and_two_texts()
    state = release_attention(model, AdaptConfig(attention="bidirectional"))
    if lora:
        from peft import get_peft_model

        from fsllm.backbones import lora_config

        model = get_peft_model(model, lora_config(model, r=4, alpha=8, dropout=0.0)).eval()
    with torch.no_grad():
        a, b = released_logits(model, state, ids, mask), released_logits(model, state, other, mask)
    assert not torch.allclose(a[0, 0], b[0, 0], atol=1e-6)  # the first position sees a later token

    causal = release_attention(model, AdaptConfig(attention="causal"))
    with torch.no_grad():
        a, b = released_logits(model, causal, ids, mask), released_logits(model, causal, other, mask)
    assert torch.allclose(a[0, :-1], b[0, :-1], atol=1e-6)  # the control: causal attention does not


def test_decay_attention_while_adapting_weighs_the_future_by_its_lambda():
    model, ids, other, mask = _lm_and_two_texts()

    def change_at_0(**attention) -> float:
        state = release_attention(model, AdaptConfig(**attention))
        with torch.no_grad():
            return (released_logits(model, state, ids, mask)[0, 0] - released_logits(model, state, other, mask)[0, 0]).abs().max().item()

    bidirectional = change_at_0(attention="bidirectional")
    assert change_at_0(attention="decay", decay_lambda=0.0) == pytest.approx(bidirectional, abs=1e-6)
    assert 0 < change_at_0(attention="decay", decay_lambda=1.0) < bidirectional
    assert change_at_0(attention="decay", decay_lambda=60.0) < 1e-6  # a token 3 away weighs e^-180: causal
    with pytest.raises(ConfigError, match="out of range"):
        release_attention(model, AdaptConfig(fs_layers=[5]))  # a 2-layer model


# ------------------------------------------------------------------ data


def test_only_the_training_split_is_read(tmp_path):
    d = write_conll_dir(tmp_path)
    texts = training_texts(AdaptConfig(data=str(d)))
    train_sentences = [" ".join(ln.split()[0] for ln in block.strip().splitlines() if not ln.startswith("-DOCSTART"))
                       for block in CONLL_TRAIN.split("\n\n")]
    assert texts == [s for s in train_sentences if s] * 3
    assert not {ln.split()[0] for ln in CONLL_DEV.splitlines()} & set(" ".join(texts).split())  # dev/test words

    # a single file: fsllm train keeps 90 % for training and carves dev from the rest; adapt reads the 90 %
    single = tmp_path / "train.conll"
    single.write_text(CONLL_TRAIN * 10)
    from fsllm.data import load_any

    kept = [" ".join(r["tokens"]) for r in load_any(str(single)).splits["train"]]
    assert training_texts(AdaptConfig(data=str(single))) == kept and len(kept) == 27

    pairs = tmp_path / "pairs.csv"
    pairs.write_text("text,other,label\n" + "a great film,it was loved,positive\nboring plot,hated it,negative\n" * 10)
    rows = load_any(str(pairs), text_pair_column="other").splits["train"]
    expected = [t for r in rows for t in (r["text"], r["text_pair"])]  # a pair's two texts, train rows only
    assert training_texts(AdaptConfig(data=str(pairs), text_pair_column="other")) == expected and len(expected) == 36

    lines = tmp_path / "texts.txt"
    lines.write_text("first text\n\n  \nsecond text\n")
    assert training_texts(AdaptConfig(text_file=str(lines))) == ["first text", "second text"]
    assert training_texts(AdaptConfig(text_file=str(lines), train_subset=1, seed=0)) in (["first text"], ["second text"])


# ------------------------------------------------------------------ end to end


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_adapt_writes_a_causal_lm_folder_that_fsllm_train_takes_as_a_backbone(tmp_path, tiny_causal_lm_dir, capsys):
    data = write_conll_dir(tmp_path)
    out = tmp_path / "adapted"
    rc = main(["adapt", "--model", str(tiny_causal_lm_dir), "--data", str(data), "-o", str(out), "--steps", "3",
               "--batch-size", "2", "--lr", "1e-2", "--logging-steps", "1", "--precision", "fp32"])
    assert rc == 0, capsys.readouterr().err
    assert str(out) in capsys.readouterr().out
    record = json.loads((out / ADAPTATION_FILE).read_text())
    assert record["complete"] and record["steps"] == 3 and record["config"]["attention"] == "bidirectional"
    assert not (out / "checkpoints").exists()  # removed once the merged folder is written
    logged = [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2, 3]
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "fsllm" not in json.dumps(config)
    # the LoRA update is merged into the projections; the embeddings and the head are untouched
    before, after = _weights(Path(tiny_causal_lm_dir)), _weights(out)
    assert set(before) == set(after)
    assert not torch.equal(before["model.layers.0.self_attn.q_proj.weight"], after["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])
    assert torch.equal(before["lm_head.weight"], after["lm_head.weight"])

    run = tmp_path / "run"
    rc = main(["train", "--data", str(data), "--model", str(out), "-o", str(run), "--max-steps", "2",
               "--batch-size", "2", "--no-test"])
    assert rc == 0, capsys.readouterr().err
    assert json.loads((run / "model" / "config.json").read_text())["backbone"] == str(out)

    # --config repeats the adaptation from its record; flags override it
    a = build_parser().parse_args(["adapt", "--config", str(out / ADAPTATION_FILE), "--steps", "7", "-o", "x"])
    from fsllm.cli import adapt_config_from_args

    cfg = adapt_config_from_args(a)
    assert (cfg.steps, cfg.output_dir, cfg.model, cfg.learning_rate) == (7, "x", str(tiny_causal_lm_dir), 1e-2)


class _Stop(TrainerCallback):
    """Kill the run once ``step`` is logged (as a crash after the log, before the next checkpoint, would)."""

    def __init__(self, step: int):
        self.step = step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError("killed")


class _Steps(TrainerCallback):
    """The steps one call of adapt trains."""

    def __init__(self):
        self.steps: list[int] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def test_an_interrupted_adaptation_resumes_where_it_stopped(tmp_path, tiny_causal_lm_dir):
    data = write_conll_dir(tmp_path)
    cfg = dict(model=str(tiny_causal_lm_dir), data=str(data), steps=6, batch_size=2, save_steps=2, logging_steps=1,
               learning_rate=1e-2, precision="fp32")
    whole = adapt(AdaptConfig(**cfg, output_dir=str(tmp_path / "whole")))

    out = tmp_path / "cut"
    with pytest.raises(RuntimeError, match="killed"):
        adapt(AdaptConfig(**cfg, output_dir=str(out)), callbacks=[_Stop(5)])
    assert not json.loads((out / ADAPTATION_FILE).read_text())["complete"]
    assert not (out / "config.json").exists()  # not a model folder until it is complete
    assert (out / "checkpoints" / "checkpoint-4").is_dir()
    with pytest.raises(FSLLMError, match="cannot change steps"):
        adapt(resume=True, output_dir=str(out), steps=10)
    assert [json.loads(ln)["step"] for ln in (out / "train_log.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5]
    resumed = _Steps()
    assert adapt(resume=True, output_dir=str(out), callbacks=[resumed]) == out
    assert resumed.steps == [5, 6]  # from checkpoint-4, not from the beginning

    record = json.loads((out / ADAPTATION_FILE).read_text())
    assert record["steps"] == 6 and record["resumed_from_step"] == 4
    # the whole run's training time: the seconds before checkpoint-4, saved with it, and this call's
    assert record["train_seconds"] == pytest.approx(record["seconds_before_resume"] + record["train_seconds_last_call"],
                                                    abs=0.11)
    assert record["seconds_before_resume"] > 0
    steps = [json.loads(ln)["step"] for ln in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6, 6]  # step 5 logged once: the killed run's record was dropped (6: the summary)
    a, b = _weights(whole), _weights(out)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)  # the same weights as the uninterrupted run


class _Signal(TrainerCallback):
    """Sends this process SIGTERM as step ``at`` begins, as a scheduler would."""

    def __init__(self, at: int):
        self.at = at

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_stops_the_adaptation_with_a_checkpoint_at_the_step_and_resume_finishes_it(tmp_path,
                                                                                          tiny_causal_lm_dir):
    """A signal between checkpoints (every 4 steps here) saves one at the step it ends (3), and
    ``--resume`` goes on from there to the weights of the uninterrupted adaptation."""
    data = write_conll_dir(tmp_path)
    cfg = dict(model=str(tiny_causal_lm_dir), data=str(data), steps=6, batch_size=2, save_steps=4, logging_steps=1,
               learning_rate=1e-2, precision="fp32")
    whole = adapt(AdaptConfig(**cfg, output_dir=str(tmp_path / "whole")))

    out = tmp_path / "cut"
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted, match="stopped by SIGTERM at step 3.*fsllm adapt --resume") as stop:
        adapt(AdaptConfig(**cfg, output_dir=str(out)), callbacks=[_Signal(3)])
    assert stop.value.signum == signal.SIGTERM and stop.value.checkpoint.endswith("checkpoint-3")
    assert not json.loads((out / ADAPTATION_FILE).read_text())["complete"]
    assert signal.getsignal(signal.SIGTERM) == handler  # training's handler is not left behind
    resumed = _Steps()
    assert adapt(resume=True, output_dir=str(out), callbacks=[resumed]) == out
    assert resumed.steps == [4, 5, 6]
    a, b = _weights(whole), _weights(out)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


# ------------------------------------------------------------------ bad input


def _fails(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    # one line of error (a progress bar of the weights loading before it may share stderr)
    assert err.splitlines()[-1].startswith("fsllm: error: ") and err.count("fsllm: error") == 1, err
    assert "Traceback" not in err
    return err.splitlines()[-1]


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, tiny_causal_lm_dir, tiny_model_dir, capsys):
    from transformers import BertConfig, T5Config

    out = tmp_path / "out"
    base = ["adapt", "--model", str(tiny_causal_lm_dir), "-o", str(out)]
    missing = tmp_path / "nope.txt"
    err = _fails(capsys, [*base, "--text-file", str(missing)])
    assert "not found" in err and str(missing) in err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n\n")
    err = _fails(capsys, [*base, "--text-file", str(empty)])
    assert str(empty) in err and "no text" in err

    texts = tmp_path / "texts.txt"
    texts.write_text("John visited Paris\n")
    bert, t5 = tmp_path / "bert", tmp_path / "t5"
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32).save_pretrained(bert)
    T5Config(d_model=32, num_layers=1, num_heads=2, d_ff=32).save_pretrained(t5)
    assert "not a decoder-only" in _fails(capsys, ["adapt", "--model", str(bert), "--text-file", str(texts), "-o", str(out)])
    assert "not a decoder-only" in _fails(capsys, ["adapt", "--model", str(t5), "--text-file", str(texts), "-o", str(out)])
    # a base model saved without its LM head: nothing to predict the next token with
    assert "no next-token head" in _fails(capsys, ["adapt", "--model", str(tiny_model_dir), "--text-file", str(texts),
                                                   "--mask-token", "<unk>", "-o", str(out)])
    assert "mask_probability" in _fails(capsys, [*base, "--text-file", str(texts), "--mask-probability", "1.5"])
    assert "nothing to resume" in _fails(capsys, ["adapt", "--resume", "-o", str(out)])
    assert not out.exists()

    out.mkdir()
    (out / "something").write_text("x")
    assert "already exists" in _fails(capsys, [*base, "--text-file", str(texts)])


# ------------------------------------------------------------------ command line


def test_every_adapt_setting_has_help_and_an_option(tmp_path):
    import dataclasses

    from fsllm.cli import adapt_config_from_args

    help_text = build_parser()._subparsers._group_actions[0].choices["adapt"].format_help()
    for f in dataclasses.fields(AdaptConfig):
        assert f.metadata.get("help"), f"AdaptConfig.{f.name} has no help"
        flag = "--" + f.name.replace("_", "-")
        assert flag in help_text, flag
        value = {int: "3", float: "0.5"}.get(type(f.default))
        if "choices" in f.metadata:
            value = f.metadata["choices"][-1]
        if value is not None:
            a = build_parser().parse_args(["adapt", flag, value])
            assert getattr(adapt_config_from_args(a), f.name) == (type(f.default)(value) if f.default is not None else value)
    # a plain text file replaces the data set, also over a --config that names one
    saved = tmp_path / "settings.json"
    saved.write_text(json.dumps({"data": "rt-polarity", "steps": 5}))
    for argv in (["--text-file", "t.txt"], ["--config", str(saved), "--text-file", "t.txt"]):
        cfg = adapt_config_from_args(build_parser().parse_args(["adapt", *argv]))
        assert (cfg.text_file, cfg.data) == ("t.txt", None)
    assert adapt_config_from_args(build_parser().parse_args(["adapt", "--config", str(saved)])).steps == 5
    saved.write_text(json.dumps({"text_file": "t.txt"}))  # and --data replaces a --config's text file
    cfg = adapt_config_from_args(build_parser().parse_args(["adapt", "--config", str(saved), "--data", "rt-polarity"]))
    assert (cfg.text_file, cfg.data) == (None, "rt-polarity")
    saved.write_text(json.dumps({"no_such_setting": 1}))
    with pytest.raises(FSLLMError, match="no_such_setting"):
        adapt_config_from_args(build_parser().parse_args(["adapt", "--config", str(saved)]))


def test_an_adaptation_given_bf16_where_it_is_emulated_keeps_it_and_warns(tmp_path, monkeypatch, caplog):
    import fsllm.config as config
    from fsllm.adaptation import resolve_adapt_config

    monkeypatch.setattr(config, "bf16_hardware", lambda: None)
    with caplog.at_level("WARNING", logger="fsllm"):
        cfg = resolve_adapt_config(None, False, {"precision": "bf16", "output_dir": str(tmp_path / "a")})
    assert cfg.precision == "bf16" and "precision bf16: no bf16 matmul hardware here" in caplog.text
    caplog.clear()
    monkeypatch.setattr(config, "bf16_hardware", lambda: "the CPU has AMX-BF16")
    with caplog.at_level("WARNING", logger="fsllm"):
        resolve_adapt_config(None, False, {"precision": "bf16", "output_dir": str(tmp_path / "b")})
    assert "no bf16 matmul hardware here" not in caplog.text
