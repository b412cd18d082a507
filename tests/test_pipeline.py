"""The pipeline end to end on a tiny model: alignment and windows, the CLI, bad input, kill-and-resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import build_word_tokenizer, word_llama

from fsllm import FSConfig, FSForSequenceClassification, FSForTokenClassification
from fsllm.cli import main
from fsllm.inference import entities_from_tags
from fsllm.tokenization import (
    merge_window_predictions,
    split_words,
    token_classification_features,
    windows,
)
from fsllm.training import make_collator, make_features

CONLL_TRAIN = """-DOCSTART- -X- -X- O

John NNP B-NP B-PER
Smith NNP I-NP I-PER
visited VBD B-VP O
Paris NNP B-NP B-LOC
. . O O

Mary NNP B-NP B-PER
works VBZ B-VP O
for IN B-PP O
Google NNP B-NP B-ORG
. . O O

the DT B-NP O
EU NNP I-NP B-ORG
loved VBD B-VP O
London NNP B-NP B-LOC
"""

CONLL_DEV = """Jones NNP B-NP B-PER
lives VBZ B-VP O
in IN B-PP O
Berlin NNP B-NP B-LOC
"""

SENTIMENT_ROWS = [
    ("a great moving film", "positive"),
    ("boring plot and awful actors", "negative"),
    ("loved the movie", "positive"),
    ("hated the film", "negative"),
    ("good actors , great plot", "positive"),
    ("bad movie , boring", "negative"),
]


def write_conll_dir(root: Path) -> Path:
    d = root / "ner"
    d.mkdir()
    (d / "train.txt").write_text(CONLL_TRAIN * 3)
    (d / "dev.txt").write_text(CONLL_DEV)
    (d / "test.txt").write_text(CONLL_DEV + "\n" + CONLL_TRAIN.split("\n\n")[1])
    return d


def write_csv_dir(root: Path) -> Path:
    d = root / "sent"
    d.mkdir()
    for split, rows in (("train", SENTIMENT_ROWS * 3), ("dev", SENTIMENT_ROWS[:2]), ("test", SENTIMENT_ROWS[2:])):
        lines = ["text,label"] + [f'"{t}",{y}' for t, y in rows]
        (d / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return d


# ------------------------------------------------------------------ alignment and windows


def test_windows_overlap_and_cover():
    assert windows(3, 4, 1) == [(0, 3)]
    assert windows(10, 4, 1) == [(0, 4), (3, 7), (6, 10)]
    assert windows(8, 4, 2) == [(0, 4), (2, 6), (4, 8)]
    with pytest.raises(ValueError):
        windows(10, 4, 4)


def test_first_subtoken_carries_the_label_real_bpe_tokenizer():
    """With SmolLM2's byte-level BPE: one label per word, on its first sub-token; sub-tokens rebuild each word."""
    from fsllm import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    words = ["Nadim", "Ladki", "visited", "Zaragoza", "'s", "U.N.", "office", "."]
    tags = ["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG", "O", "O"]
    label2id = {"O": 0, "B-PER": 1, "I-PER": 2, "B-LOC": 3, "B-ORG": 4}
    (feat,) = token_classification_features(words, tags, tok, label2id, max_length=64)
    labelled = [(k, lab) for k, lab in enumerate(feat["labels"]) if lab != -100]
    assert [lab for _, lab in labelled] == [label2id[t] for t in tags]
    # the sub-tokens of each word decode back to that word
    for w, word in enumerate(words):
        pieces = [feat["input_ids"][k] for k, wid in enumerate(feat["word_ids"]) if wid == w]
        assert tok.decode(pieces).strip() == word
        first = next(k for k, wid in enumerate(feat["word_ids"]) if wid == w)
        assert feat["labels"][first] == label2id[tags[w]]
    assert sum(1 for wid in feat["word_ids"] if wid >= 0) > len(words)  # some words really are split


def test_long_sentence_becomes_windows_and_every_word_keeps_a_prediction():
    tok = build_word_tokenizer()
    words = ("John visited Paris and London with Mary today . " * 4).split()
    tags = ["B-PER" if w in ("John", "Mary") else "B-LOC" if w in ("Paris", "London") else "O" for w in words]
    label2id = {"O": 0, "B-PER": 1, "B-LOC": 2}
    feats = token_classification_features(words, tags, tok, label2id, max_length=10, stride=3)
    assert len(feats) > 1 and all(len(f["input_ids"]) <= 10 for f in feats)
    # every word is labelled in at least one window
    covered = {w for f in feats for w, lab in zip(f["word_ids"], f["labels"]) if lab != -100}
    assert covered == set(range(len(words)))
    # a "prediction" equal to the word index shows which window each word was taken from
    merged = merge_window_predictions(len(words), [(f["word_ids"], f["first"], f["word_ids"]) for f in feats])
    assert merged == list(range(len(words)))


def test_merge_prefers_the_window_with_more_context():
    # word 2 is at the edge (position 2 of 3) of window A and in the middle of window B
    a = ([0, 1, 2], [True, True, True], ["a0", "a1", "a2"])
    b = ([1, 2, 3, 4], [True, True, True, True], ["b1", "b2", "b3", "b4"])
    assert merge_window_predictions(5, [a, b]) == ["a0", "a1", "b2", "b3", "b4"]


def test_entities_map_back_to_character_offsets():
    text = "John Smith visited New York ."
    words, spans = split_words(text)
    assert words == ["John", "Smith", "visited", "New", "York", "."]
    ents = entities_from_tags(["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O"], [0.9, 0.7, 1, 0.8, 0.6, 1], spans, text)
    assert ents == [
        {"entity_group": "PER", "score": pytest.approx(0.8), "word": "John Smith", "start": 0, "end": 10},
        {"entity_group": "LOC", "score": pytest.approx(0.7), "word": "New York", "start": 19, "end": 27},
    ]


# ------------------------------------------------------------------ the CLI end to end


def run_cli(args, capsys):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_token_task_end_to_end(tmp_path, tiny_model_dir, capsys, monkeypatch):
    data = write_conll_dir(tmp_path)
    run = tmp_path / "run"
    rc, out, err = run_cli(
        ["train", "--data", data, "--model", tiny_model_dir, "--output", run, "--max-steps", 5, "--batch-size", 4,
         "--eval-steps", 2, "--lr", "5e-3"], capsys)
    assert rc == 0, err
    assert "test f1:" in out and f"run folder: {run}" in out
    for name in ("config.json", "metrics.json", "train_log.jsonl", "predictions_test.jsonl", "predictions_dev.jsonl",
                 "model/config.json", "model/adapter/adapter_model.safetensors", "model/README.md", "plots/loss.png", "plots/dev_f1.png"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task"] == "token" and 0 <= metrics["test"]["f1"] <= 1
    card = (run / "model" / "README.md").read_text()
    assert "pipeline_tag: token-classification" in card and f"value: {metrics['test']['f1']}" in card
    assert set(metrics["test"]["per_type"]) <= {"PER", "LOC", "ORG"}
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in log)
    # dev is evaluated every 2 steps and at the last step, which then competes for "best"
    assert [r["step"] for r in log if "eval_f1" in r] == [2, 4, 5]
    preds = [json.loads(line) for line in (run / "predictions_test.jsonl").read_text().splitlines()]
    assert preds[0]["tokens"] == ["Jones", "lives", "in", "Berlin"] and len(preds[0]["pred"]) == 4

    rc, out, err = run_cli(["eval", run, "--data", data, "--split", "test"], capsys)
    assert rc == 0, err
    assert json.loads(out)["f1"] == pytest.approx(metrics["test"]["f1"])

    rc, out, err = run_cli(["predict", run, "John visited Paris .", "Mary works for Google"], capsys)
    assert rc == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["text"] for r in rows] == ["John visited Paris .", "Mary works for Google"]
    for r in rows:
        for e in r["entities"]:
            assert set(e) == {"entity_group", "score", "word", "start", "end"}
            assert r["text"][e["start"]:e["end"]] == e["word"]

    texts = tmp_path / "in.txt"
    texts.write_text("John visited Paris .\n\nMary works for Google\n")
    rc, out_file, err = run_cli(["predict", run, "--file", texts], capsys)
    assert rc == 0 and out_file == out

    monkeypatch.setattr(sys, "stdin", type("S", (), {"buffer": type("B", (), {"read": lambda self: texts.read_bytes()})()})())
    rc, out_stdin, err = run_cli(["predict", run], capsys)
    assert rc == 0 and out_stdin == out


def test_cli_sequence_task_end_to_end(tmp_path, tiny_model_dir, capsys):
    data = write_csv_dir(tmp_path)
    run = tmp_path / "run"
    rc, out, err = run_cli(
        ["train", "--data", data, "--model", tiny_model_dir, "--output", run, "--epochs", 2, "--batch-size", 4,
         "--pooling", "last", "--attention", "decay", "--decay-lambda", "0.5"], capsys)
    assert rc == 0, err
    assert "test accuracy:" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["labels"] == ["negative", "positive"]
    assert (run / "plots" / "confusion_test.png").is_file()
    saved = json.loads((run / "model" / "config.json").read_text())
    assert saved["model_type"] == "fsllm" and saved["architectures"] == ["FSForSequenceClassification"]
    assert saved["fs"]["attention"] == "decay" and saved["fs"]["pooling"] == "last"
    rc, out, err = run_cli(["predict", run, "a great film", "boring plot"], capsys)
    assert rc == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert all(r["label"] in ("negative", "positive") and 0.5 <= r["score"] <= 1 for r in rows)


# ------------------------------------------------------------------ bad input: one line, exit 2


def one_line_error(args, capsys):
    rc, out, err = run_cli(args, capsys)
    lines = [ln for ln in err.splitlines() if ln.startswith("fsllm: error:")]
    assert rc == 2, (rc, err)
    assert len(lines) == 1, err
    return lines[0]


def test_bad_inputs_give_one_line_errors(tmp_path, tiny_model_dir, capsys):
    base = ["train", "--model", tiny_model_dir, "--max-steps", 1, "--batch-size", 2]

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.txt").write_text("John B-PER\nSmith\n")
    msg = one_line_error(base + ["--data", bad, "--output", tmp_path / "r1"], capsys)
    assert "train.txt:2" in msg

    cols = tmp_path / "cols"
    cols.mkdir()
    (cols / "train.csv").write_text("sentence,label\nhello,positive\n")
    msg = one_line_error(base + ["--data", cols, "--output", tmp_path / "r2"], capsys)
    assert "train.csv" in msg and "text" in msg

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "train.csv").write_text("")
    msg = one_line_error(base + ["--data", empty, "--output", tmp_path / "r3"], capsys)
    assert "train.csv" in msg and "empty" in msg.lower()

    blank = tmp_path / "blank"
    blank.mkdir()
    (blank / "train.csv").write_text('text,label\nfine,positive\n"  ",negative\n')
    msg = one_line_error(base + ["--data", blank, "--output", tmp_path / "r4"], capsys)
    assert "train.csv:3" in msg

    binary = tmp_path / "binary"
    binary.mkdir()
    (binary / "train.csv").write_bytes(b"text,label\ngood,positive\nbad \xff\xfe,negative\n")
    msg = one_line_error(base + ["--data", binary, "--output", tmp_path / "r5"], capsys)
    assert "train.csv:3" in msg and "UTF-8" in msg

    unknown = write_csv_dir(tmp_path)
    (unknown / "dev.csv").write_text("text,label\nso so,neutral\n")
    msg = one_line_error(base + ["--data", unknown, "--output", tmp_path / "r6"], capsys)
    assert "'neutral'" in msg and "dev" in msg

    msg = one_line_error(["predict", tmp_path / "no-such-run", "hello"], capsys)
    assert "no such model folder" in msg
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{oops")
    msg = one_line_error(["predict", corrupt, "hello"], capsys)
    assert "corrupt" in msg

    msg = one_line_error(["train", "--data", "no-such-dataset", "--output", tmp_path / "r7"], capsys)
    assert "conll2003" in msg  # lists the catalogue


def test_existing_run_folder_is_not_overwritten(tmp_path, tiny_model_dir, capsys):
    data = write_csv_dir(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("{}")
    msg = one_line_error(["train", "--data", data, "--model", tiny_model_dir, "--output", run], capsys)
    assert "--resume" in msg
    assert (run / "metrics.json").read_text() == "{}"


# ------------------------------------------------------------------ kill and resume

TRAIN_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from transformers import TrainerCallback
    from fsllm.training import train

    class Slow(TrainerCallback):  # gives the test time to kill the run between steps
        def on_step_end(self, args, state, control, **kw):
            time.sleep(float(sys.argv[3]))

    train(data=sys.argv[1], model=sys.argv[2], output_dir=sys.argv[4], max_steps=10, eval_steps=2, batch_size=4,
          learning_rate=5e-3, seed=7, save_total_limit=None, logging_steps=1, callbacks=[Slow()])
    """
)


def kill_once_written(proc: subprocess.Popen, target: Path, never: str, timeout: float = 240) -> None:
    """SIGKILL ``proc`` as soon as ``target`` exists (polled; bounded by ``timeout`` seconds)."""
    deadline = time.time() + timeout
    while not target.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert target.is_file(), never
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


REPORT_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import fsllm.training as training
    from fsllm.training import train

    evaluate = training.evaluate_examples

    def slow_evaluate(*args, **kwargs):  # the final report takes long enough to be killed in it
        out = evaluate(*args, **kwargs)
        if kwargs.get("progress") == "test":
            time.sleep(30)
        return out

    training.evaluate_examples = slow_evaluate
    train(data=sys.argv[1], model=sys.argv[2], output_dir=sys.argv[3], max_steps=4, batch_size=4,
          learning_rate=5e-3, seed=7)
    """
)


def test_run_killed_during_its_report_leaves_whole_files_and_resumes(tmp_path, tiny_model_dir):
    """Every file of the report is whole or absent after a kill, and --resume writes the report."""
    from fsllm.training import train

    data = write_conll_dir(tmp_path)
    script = tmp_path / "report.py"
    script.write_text(REPORT_SCRIPT)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(script), str(data), str(tiny_model_dir), str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    target = run / "predictions_dev.jsonl"  # written before the (slowed) test evaluation
    kill_once_written(proc, target, "the run never reached its report")
    assert not (run / "metrics.json").exists() and not (run / "predictions_test.jsonl").exists()
    assert [json.loads(line)["tokens"] for line in target.read_text().splitlines()]  # whole lines
    assert (run / "model" / "config.json").is_file() and not list(run.glob(".*"))  # no temporaries left

    resumed = train(resume=True, output_dir=str(run))
    assert json.loads((run / "metrics.json").read_text())["test"]["f1"] == resumed.metrics["test"]["f1"]
    assert len((run / "predictions_test.jsonl").read_text().splitlines()) == resumed.metrics["sizes"]["test"]


def test_killed_run_resumes_to_the_same_metrics(tmp_path, tiny_model_dir):
    from fsllm.training import train

    data = write_conll_dir(tmp_path)
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(data), str(tiny_model_dir), "0.4", str(killed)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    target = killed / "checkpoints" / "checkpoint-4" / "trainer_state.json"
    kill_once_written(proc, target, "the run never reached checkpoint-4")
    assert not (killed / "metrics.json").exists(), "the run finished before it was killed"

    resumed = train(resume=True, output_dir=str(killed))
    full = subprocess.run(
        [sys.executable, str(script), str(data), str(tiny_model_dir), "0", str(tmp_path / "full")],
        capture_output=True, text=True, env=env,
    )
    assert full.returncode == 0, full.stderr[-2000:]
    expected = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert resumed.metrics["train"]["steps"] == expected["train"]["steps"] == 10
    for split in ("dev", "test"):
        for key in ("f1", "precision", "recall", "token_accuracy"):
            assert resumed.metrics[split][key] == pytest.approx(expected[split][key], abs=1e-9), (split, key)
    assert resumed.metrics["train"]["best_dev_metric"] == pytest.approx(expected["train"]["best_dev_metric"])
    # the last checkpoint's weights agree (the tiny model's F1 alone could agree by chance)
    from safetensors.torch import load_file

    last = Path("checkpoints") / "checkpoint-10"
    for name in ("adapter/adapter_model.safetensors", "fsllm_head.safetensors"):
        got, want = load_file(str(killed / last / name)), load_file(str(tmp_path / "full" / last / name))
        assert got.keys() == want.keys()
        for k in want:
            assert torch.allclose(got[k], want[k], atol=1e-6), (name, k)
    # the training log reads like one run: each step once, same losses (to float noise: the two
    # processes may sum in another order when their thread counts differ)
    def losses(run):
        rows = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in rows if "loss" in r]

    got, want = losses(killed), losses(tmp_path / "full")
    assert [step for step, _ in got] == [step for step, _ in want]
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in want], abs=1e-5)


def test_torchrun_two_processes_share_the_data_and_write_one_run(tmp_path, tiny_model_dir):
    """``torchrun`` (gloo on CPU): the batches are split between the processes, process 0 writes the run."""
    data = write_conll_dir(tmp_path)
    run = tmp_path / "run"
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "fsllm.cli", "train", "--data", str(data), "--model", str(tiny_model_dir), "--output", str(run),
         "--epochs", "2", "--batch-size", "2"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    # 9 training sentences, 2 per process and step, 2 processes: 3 steps per epoch (5 in one process)
    assert metrics["train"]["steps"] == 6
    evals = [r for r in map(json.loads, (run / "train_log.jsonl").read_text().splitlines()) if "eval_f1" in r]
    assert [(r["step"], r["epoch"]) for r in evals] == [(3, 1.0), (6, 2.0)]  # logged once, by process 0
    assert proc.stdout.count("test f1:") == 1
    assert (run / "model" / "fsllm_head.safetensors").is_file()


# ------------------------------------------------------------------ mixed precision


def test_bf16_training_runs_under_autocast_and_rejects_bad_precisions(tmp_path, tiny_model_dir):
    """precision="bf16" trains under bf16 autocast (the backbone's projections compute in bf16) while
    the trained weights stay fp32; unknown precisions and fp16 without a GPU are clear errors."""
    from transformers import TrainerCallback

    from fsllm.errors import FSLLMError
    from fsllm.training import train

    data = write_csv_dir(tmp_path)
    seen: set[torch.dtype] = set()

    class WatchDtypes(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            lin = next(m for n, m in model.named_modules() if n.endswith("q_proj.base_layer"))
            lin.register_forward_hook(lambda mod, inp, out: seen.add(out.dtype) if mod.training else None)

    result = train(
        data=str(data), model=str(tiny_model_dir), output_dir=str(tmp_path / "bf16"), max_steps=2, batch_size=4,
        precision="bf16", evaluate_test=False, callbacks=[WatchDtypes()],
    )
    assert seen == {torch.bfloat16}
    assert json.loads((result.run_dir / "config.json").read_text())["precision"] == "bf16"
    from safetensors.torch import load_file

    head = load_file(str(result.model_dir / "fsllm_head.safetensors"))
    assert {t.dtype for t in head.values()} == {torch.float32}

    with pytest.raises(FSLLMError, match="precision 'fp8'"):
        train(data=str(data), model=str(tiny_model_dir), output_dir=str(tmp_path / "x"), precision="fp8")
    if not torch.cuda.is_available():
        with pytest.raises(FSLLMError, match="fp16 needs a CUDA GPU"):
            train(data=str(data), model=str(tiny_model_dir), output_dir=str(tmp_path / "y"), precision="fp16")


@pytest.mark.parametrize("task", ["token", "sequence"])
def test_fixed_length_padding_gives_the_same_loss_and_gradients_as_dynamic_padding(task):
    """The LS-LLaMA/BiLLM recipe pads every batch to 64 tokens; fsllm pads to the longest example.
    With padding keys masked and padded positions out of the loss, the two recipes are the same
    estimator (only cheaper), so the speed benchmark's dev-F1 differences between them are noise."""
    tok, backbone = word_llama()
    fs = FSConfig(lora_dropout=0.0, head_dropout=0.0)
    if task == "token":
        examples = [
            {"tokens": "John Smith visited Paris .".split(), "tags": ["B-PER", "I-PER", "O", "B-LOC", "O"]},
            {"tokens": "Mary works for Google in London today".split(), "tags": ["B-PER", "O", "O", "B-ORG", "O", "B-LOC", "O"]},
            {"tokens": "the EU".split(), "tags": ["O", "B-ORG"]},
        ]
        label2id = {t: i for i, t in enumerate(["O", "B-PER", "I-PER", "B-LOC", "B-ORG"])}
        model = FSForTokenClassification.from_backbone(backbone, num_labels=len(label2id), fs_config=fs)
    else:
        examples = [{"text": t, "label": y} for t, y in SENTIMENT_ROWS[:4]]
        label2id = {"negative": 0, "positive": 1}
        model = FSForSequenceClassification.from_backbone(backbone, num_labels=2, fs_config=fs)
    feats, _ = make_features(task, examples, tok, label2id, max_length=64)
    model.train()

    def loss_and_grads(pad_to_length):
        batch = make_collator(task, tok, pad_to_length)([dict(f) for f in feats])
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return batch["input_ids"].shape[1], loss.detach(), grads

    dyn_len, dyn_loss, dyn_grads = loss_and_grads(None)
    fix_len, fix_loss, fix_grads = loss_and_grads(64)
    assert (dyn_len, fix_len) == (max(len(f["input_ids"]) for f in feats), 64)
    torch.testing.assert_close(fix_loss, dyn_loss, rtol=1e-5, atol=1e-6)
    assert dyn_grads.keys() == fix_grads.keys() and len(dyn_grads) > 0
    for n in dyn_grads:
        torch.testing.assert_close(fix_grads[n], dyn_grads[n], rtol=1e-4, atol=1e-6, msg=n)
    assert any(g.abs().sum() > 0 for g in dyn_grads.values())


def test_length_balanced_loss_weighs_every_token_the_same(tmp_path, tiny_model_dir, monkeypatch):
    """With ``length_balanced_loss`` a batch's training loss is the sum of its token losses over the
    average batch's token count (so a short batch weighs less), not the mean over its own tokens;
    evaluation keeps the plain mean, and ``train`` wires the average batch's count in."""
    from transformers import TrainingArguments

    from fsllm.training import FSTrainer, tokens_per_batch, train

    feats = [{"labels": [-100, 1, 0, -100]}, {"labels": [2, 2, 2, 2, 2, -100]}, {"labels": [-100]}]
    assert tokens_per_batch(feats, 4) == 4 * 7 / 3

    tok, backbone = word_llama()
    model = FSForTokenClassification.from_backbone(backbone, num_labels=3, fs_config=FSConfig(lora_dropout=0.0, head_dropout=0.0))
    x = torch.randint(4, len(tok), (2, 6))
    labels = x % 3
    labels[0, 4:] = -100
    labels[1, 1:] = -100  # 5 labelled tokens in this batch
    inputs = {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": labels}
    args = TrainingArguments(output_dir=str(tmp_path / "t"), use_cpu=True, report_to="none")
    trainer = FSTrainer(model=model, args=args, tokens_per_batch=20.0)
    with torch.no_grad():
        logits = model.eval()(**inputs).logits
        token_sum = torch.nn.functional.cross_entropy(logits.reshape(-1, 3), labels.reshape(-1), reduction="sum")
        torch.testing.assert_close(trainer.compute_loss(model, inputs), token_sum / 5)  # eval: the mean
        torch.testing.assert_close(trainer.compute_loss(model.train(), inputs), token_sum / 20)

    seen = []
    original = FSTrainer.compute_loss

    def spy(self, *a, **k):
        seen.append(self.tokens_per_batch)
        return original(self, *a, **k)

    monkeypatch.setattr(FSTrainer, "compute_loss", spy)
    data = write_conll_dir(tmp_path)
    for balanced in (True, False):
        seen.clear()
        train(data=str(data), model=str(tiny_model_dir), output_dir=str(tmp_path / f"run-{balanced}"), max_steps=1,
              batch_size=2, length_balanced_loss=balanced, evaluate_test=False)
        assert seen and all((v is not None and v > 0) if balanced else v is None for v in seen), (balanced, seen)
