"""Training (fsllm.training): the Trainer subclass, the loss, thresholds chosen on dev, precision.

Gradient checkpointing through the Trainer: ``TrainingArguments(gradient_checkpointing=True)``.
The transformers 5 Trainer calls ``model.activation_checkpointing_enable(...)``, which hands
``every_n_layers``/``offload`` to ``FSModel.gradient_checkpointing_enable`` (it overrides the
deprecated name); the FS model passes them on to the backbone, non-reentrant. Checkpointing must
change memory only: one optimizer step gets the same loss and gradients with and without it.
"""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import torch
from conftest import word_llama, write_conll_dir, write_csv_dir
from transformers import TrainerCallback, TrainingArguments

from fsllm import FSConfig, FSForTokenClassification
from fsllm.training import FSTrainer, make_collator, make_features

LABELS = ["O", "B-PER", "B-LOC"]
SENTENCES = [
    (["John", "visited", "Paris", "."], ["B-PER", "O", "B-LOC", "O"]),
    (["Mary", "lives", "in", "London", "today", "."], ["B-PER", "O", "O", "B-LOC", "O", "O"]),
    (["the", "film", "was", "good", "!"], ["O", "O", "O", "O", "O"]),
    (["Smith", "works", "in", "Berlin"], ["B-PER", "O", "O", "B-LOC"]),
]


class Capture(TrainerCallback):
    """Records whether each decoder layer checkpoints, how often layer 0's MLP runs forward (a
    checkpointed layer computes it again during backward),
    and the gradients just before the optimizer step."""

    def __init__(self) -> None:
        self.flags: list[bool] = []
        self.mlp0_calls = 0
        self.grads: dict[str, torch.Tensor] = {}

    def on_train_begin(self, args, state, control, model=None, **kw):
        layers = model._base_model().layers
        self.flags = [bool(getattr(layer, "gradient_checkpointing", False)) for layer in layers]
        mlp = layers[0].mlp
        forward = mlp.forward

        def counting_forward(*a, **k):
            self.mlp0_calls += 1
            return forward(*a, **k)

        # the instance's forward, not a forward hook: torch does not fire module hooks in the recompute
        mlp.forward = counting_forward

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


class LossTrainer(FSTrainer):
    losses: list[float]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self.losses.append(float((loss[0] if return_outputs else loss).detach()))
        return loss


def one_step(tmp_path, checkpointing: bool) -> tuple[float, Capture]:
    tok, backbone = word_llama()
    label2id = {lab: i for i, lab in enumerate(LABELS)}
    torch.manual_seed(0)
    model = FSForTokenClassification.from_backbone(backbone, id2label=dict(enumerate(LABELS)))
    feats, _ = make_features("token", [{"tokens": w, "tags": t} for w, t in SENTENCES], tok, label2id, 32)
    args = TrainingArguments(
        output_dir=str(tmp_path / f"ckpt{int(checkpointing)}"),
        max_steps=1,
        per_device_train_batch_size=len(feats),
        learning_rate=1e-3,
        gradient_checkpointing=checkpointing,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=True,
    )
    cap = Capture()
    trainer = LossTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(feats),
                          data_collator=make_collator("token", tok), callbacks=[cap])
    trainer.losses = []
    trainer.train()
    assert len(trainer.losses) == 1
    return trainer.losses[0], cap


def test_training_arguments_gradient_checkpointing_checkpoints_every_layer_and_keeps_loss_and_grads(tmp_path):
    loss_off, off = one_step(tmp_path, checkpointing=False)
    loss_on, on = one_step(tmp_path, checkpointing=True)
    assert off.flags == [False, False]
    assert on.flags == [True, True]
    # a checkpointed layer runs its forward again during backward
    assert (off.mlp0_calls, on.mlp0_calls) == (1, 2)
    assert loss_on == pytest.approx(loss_off, abs=1e-6)
    assert on.grads.keys() == off.grads.keys()
    assert any("lora_A" in n for n in on.grads) and any(n.startswith("head.") for n in on.grads)
    for name, g in off.grads.items():
        torch.testing.assert_close(on.grads[name], g, atol=1e-6, rtol=1e-5, msg=name)


def test_train_config_gradient_checkpointing_reaches_the_backbone(tmp_path, tiny_model_dir):
    """``fsllm train --gradient-checkpointing`` / ``TrainConfig(gradient_checkpointing=True)``."""
    from fsllm.training import train

    data = tmp_path / "ner"
    data.mkdir()
    text = "\n\n".join("\n".join(f"{w} {t}" for w, t in zip(words, tags)) for words, tags in SENTENCES) + "\n"
    for split in ("train", "dev", "test"):
        (data / f"{split}.txt").write_text(text)
    flags = {}
    for on in (False, True):
        cap = Capture()
        train(data=str(data), model=str(tiny_model_dir), output_dir=str(tmp_path / f"run{int(on)}"), max_steps=1,
              batch_size=4, gradient_checkpointing=on, callbacks=[cap])
        flags[on] = cap.flags
    assert flags == {False: [False, False], True: [True, True]}


def test_the_run_passes_checkpointing_under_the_trainers_current_name_without_its_deprecation_warning(tmp_path):
    import warnings
    from types import SimpleNamespace

    from fsllm import TrainConfig
    from fsllm.training import TRAINING_ARGUMENT_NAMES, training_arguments

    folder = SimpleNamespace(checkpoints_dir=tmp_path)
    for on in (False, True):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            args = training_arguments(TrainConfig(gradient_checkpointing=on), folder, "f1", has_dev=True)
        assert not [w for w in caught if "gradient_checkpointing" in str(w.message)]
        assert args.gradient_checkpointing is on
        if "activation_checkpointing" in TRAINING_ARGUMENT_NAMES:
            assert args.activation_checkpointing is on


# ------------------------------------------------------------------ mixed precision


def test_bf16_training_runs_under_autocast_and_rejects_bad_precisions(tmp_path, tiny_model_dir, caplog):
    """precision="bf16" trains under bf16 autocast (the backbone's projections compute in bf16) while
    the trained weights stay fp32; unknown precisions and fp16 without a GPU are clear errors. On a CPU
    the log says how many torch threads train (MKL_NUM_THREADS can make it fewer than OMP_NUM_THREADS says)."""
    from transformers import TrainerCallback

    from fsllm.errors import FSLLMError
    from fsllm.training import train

    data = write_csv_dir(tmp_path)
    seen: set[torch.dtype] = set()

    class WatchDtypes(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            lin = next(m for n, m in model.named_modules() if n.endswith("q_proj.base_layer"))
            lin.register_forward_hook(lambda mod, inp, out: seen.add(out.dtype) if mod.training else None)

    with caplog.at_level("INFO", logger="fsllm.training"):
        result = train(
            data=str(data), model=str(tiny_model_dir), output_dir=str(tmp_path / "bf16"), max_steps=2, batch_size=4,
            precision="bf16", evaluate_test=False, callbacks=[WatchDtypes()],
        )
    assert seen == {torch.bfloat16}
    if not torch.cuda.is_available():
        assert f"training on {torch.get_num_threads()} torch threads" in caplog.text
    assert json.loads((result.run_dir / "config.json").read_text())["precision"] == "bf16"
    from safetensors.torch import load_file

    head = load_file(str(result.model_dir / "fsllm_head.safetensors"))
    assert {t.dtype for t in head.values()} == {torch.float32}

    with pytest.raises(FSLLMError, match="precision 'fp8'"):
        train(data=str(data), model=str(tiny_model_dir), output_dir=str(tmp_path / "x"), precision="fp8")
    if not torch.cuda.is_available():
        with pytest.raises(FSLLMError, match="fp16 needs a CUDA GPU"):
            train(data=str(data), model=str(tiny_model_dir), output_dir=str(tmp_path / "y"), precision="fp16")


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


# ------------------------------------------------------------------ thresholds chosen on dev


class _Stub:
    """What choose_thresholds needs of a model: the label map and a config to write into."""

    def __init__(self, labels):
        from fsllm.config import FSLLMConfig

        self.id2label = dict(enumerate(labels))
        self.num_labels = len(labels)
        self.config = FSLLMConfig(id2label=self.id2label, problem_type="multi_label_classification")


def test_thresholds_are_chosen_on_dev_globally_and_per_label(monkeypatch):
    from fsllm import inference
    from fsllm.training import choose_thresholds

    # label a is present when p >= 0.3; label b when p >= 0.8: no single threshold gets both right
    probs = [np.array([0.35, 0.85]), np.array([0.32, 0.2]), np.array([0.1, 0.7]), np.array([0.2, 0.9])]
    gold = [["a", "b"], ["a"], [], ["b"]]
    monkeypatch.setattr(inference, "sequence_probabilities", lambda *a, **k: probs)
    dev = [{"text": "x", "label": g} for g in gold]

    model = _Stub(["a", "b"])
    chosen = choose_thresholds(model, None, dev, 16, 8, per_label=False)
    # global: 0.3 gets a twice and b thrice (one wrong b); 0.75..0.85 gets b twice and no a: 0.3 wins
    assert chosen == {"global": 0.3, "per_label": None}
    assert model.config.multi_label_threshold == 0.3 and model.config.threshold_of("b") == 0.3

    model = _Stub(["a", "b"])
    chosen = choose_thresholds(model, None, dev, 16, 8, per_label=True)
    assert chosen["per_label"]["a"] <= 0.3 and 0.7 < chosen["per_label"]["b"] <= 0.85
    assert model.config.threshold_of("a") == chosen["per_label"]["a"]
    assert model.config.threshold_of("b") == chosen["per_label"]["b"]


def test_a_collapsed_dev_evaluation_warns_with_the_step(tmp_path, monkeypatch, caplog):
    """FSTrainer's dev evaluation tells the user when every dev prediction is the same class."""
    import fsllm.training as T

    answers = {"pred": "positive"}

    def fake_eval(model, tok, examples, max_length, batch_size, progress=False):
        return {"accuracy": 0.5}, [{"text": ex["text"], "label": ex["label"], "pred": answers["pred"]} for ex in examples]

    monkeypatch.setattr(T, "evaluate_examples", fake_eval)
    tok, backbone = word_llama()
    model = FSForTokenClassification.from_backbone(backbone, id2label=dict(enumerate(LABELS)))
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", disable_tqdm=True)
    dev = [{"text": "good", "label": "positive"}, {"text": "bad", "label": "negative"}]
    trainer = FSTrainer(model=model, args=args, fs_eval=(tok, dev, 16, 8))
    with caplog.at_level("WARNING", logger="fsllm.training"):
        assert trainer.evaluate()["eval_accuracy"] == 0.5
    assert "step 0: every dev prediction is 'positive'; the model has collapsed" in caplog.text
    caplog.clear()
    monkeypatch.setattr(T, "evaluate_examples", lambda m, t, exs, *a, **k: (
        {"accuracy": 1.0}, [{"text": ex["text"], "label": ex["label"], "pred": ex["label"]} for ex in exs]))
    with caplog.at_level("WARNING", logger="fsllm.training"):
        trainer.evaluate()
    assert "collapsed" not in caplog.text


def test_fstrainer_selects_a_model_without_load_trained_weights_through_an_evaluator_the_stock_way(tmp_path):
    """A model that is not an FS model (here a plain causal LM) trains through ``FSTrainer``: dev is scored
    by ``evaluator``, whose whole result is kept by step, and the best checkpoint is saved and reloaded by
    the stock ``Trainer`` code, as ``load_trained_weights`` is not there."""
    import transformers
    from conftest import _config, build_word_tokenizer

    tok = build_word_tokenizer()
    cfg = _config("llama", 2)
    cfg.vocab_size = len(tok)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    feats = [{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [5, 6, 7]}] * 4
    ds = datasets.Dataset.from_list(feats)
    seen: dict[int, dict] = {}

    def evaluator(m) -> dict:
        step = trainer.state.global_step
        seen[step] = {n: p.detach().clone() for n, p in m.named_parameters()}
        return {"accuracy": {2: 0.9, 4: 0.1}[step], "labels": ["kept", "whole"]}

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", disable_tqdm=True,
                             max_steps=4, per_device_train_batch_size=2, learning_rate=1e-2,
                             eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2,
                             load_best_model_at_end=True, metric_for_best_model="accuracy")
    trainer = FSTrainer(model=model, args=args, train_dataset=ds, eval_dataset=ds,
                        data_collator=make_collator("token", tok), evaluator=evaluator)
    trainer.train()
    assert sorted(seen) == [2, 4] and trainer.state.best_global_step == 2
    assert all(torch.equal(p.detach(), seen[2][n]) for n, p in model.named_parameters())
    assert trainer.evaluations[2] == {"accuracy": 0.9, "labels": ["kept", "whole"]}
    with pytest.raises(ValueError, match="fs_eval or evaluator"):
        FSTrainer(model=model, args=args, fs_eval=(tok, [], 16, 8), evaluator=evaluator)


# ------------------------------------------------------------------ the loss over accumulated batches


@pytest.mark.parametrize("task", ["token", "sequence"])
def test_gradient_accumulation_gives_the_update_of_the_whole_batch(tmp_path, task):
    """2 accumulated batches of 8 and one batch of 16 are the same optimizer step: the same logged loss and
    the same weights after one SGD step. Exact only when the model divides its summed loss by the
    Trainer's ``num_items_in_batch``: the Trainer no longer divides by the accumulation steps for a model
    that accepts loss keyword arguments, so a per-batch mean gave twice the step (and, for tokens, a mean
    of batch means instead of the mean over the tokens)."""
    from conftest import one_sgd_step

    whole = one_sgd_step(task, tmp_path / "whole", batch_size=16)
    accumulated = one_sgd_step(task, tmp_path / "acc", batch_size=8, accumulation=2)
    assert accumulated["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    for name, w in whole["weights"].items():
        torch.testing.assert_close(accumulated["weights"][name], w, atol=1e-6, rtol=1e-5, msg=name)
    assert any(not torch.equal(w, whole["before"][n]) for n, w in whole["weights"].items())  # the step moved them


def test_length_balanced_loss_with_accumulation_is_the_whole_batch_step(tmp_path):
    """A length-balanced token loss divides the step's token sum by the average batch's count: with
    2 accumulated batches of 8 (average count T/2 each) it is the step of one batch of 16 (average T)."""
    from conftest import one_sgd_step

    whole = one_sgd_step("token", tmp_path / "whole", batch_size=16, tokens_per_batch=30.0)
    accumulated = one_sgd_step("token", tmp_path / "acc", batch_size=8, accumulation=2, tokens_per_batch=15.0)
    assert accumulated["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    for name, w in whole["weights"].items():
        torch.testing.assert_close(accumulated["weights"][name], w, atol=1e-6, rtol=1e-5, msg=name)


# ------------------------------------------------------------------ FSDP


def test_an_fsdp_launch_on_gpus_is_refused_in_one_line_before_anything_is_written(tmp_path, tiny_model_dir, monkeypatch):
    """Under FSDP the end of a run (saving and evaluating the best model, process 0 alone) waited forever
    for the other processes' share of the sharded weights. ``accelerate launch`` with an FSDP config on
    GPUs sets ACCELERATE_USE_FSDP; the run is refused before any model loads or file is written. On a
    CPU accelerate runs the same launch as DDP, which completes (test_distributed, slow), so it goes on."""
    from fsllm.errors import FSLLMError
    from fsllm.training import train

    data = write_csv_dir(tmp_path)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    on_gpu = torch.cuda.is_available()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    loaded = []
    monkeypatch.setattr("fsllm.training.prepare_data", lambda cfg: loaded.append(cfg))
    with pytest.raises(FSLLMError, match="does not run under FSDP") as e:
        train(data=str(data), model=str(tiny_model_dir), output_dir=str(tmp_path / "run"), precision="fp32")
    assert "\n" not in str(e.value) and "DDP" in str(e.value)
    assert not loaded and not (tmp_path / "run").exists()

    from fsllm.training import fsdp_launch

    assert fsdp_launch()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: on_gpu)
    assert fsdp_launch() == on_gpu  # a CPU machine: accelerate runs DDP, fsllm trains


def test_a_training_that_fails_gives_back_the_signal_handlers_it_replaced(tmp_path, tiny_model_dir):
    """Training stops on SIGTERM / Ctrl-C with a checkpoint (``fsllm.interruption``) through handlers it installs;
    a training that raises must put the caller's back, or the process would then ignore its first SIGTERM."""
    import signal

    from fsllm.training import train

    class Fails(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            raise RuntimeError("failed in step 1")

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with pytest.raises(RuntimeError, match="failed in step 1"):
        train(data=str(write_conll_dir(tmp_path)), model=str(tiny_model_dir), output_dir=str(tmp_path / "run"),
              max_steps=3, batch_size=4, callbacks=[Fails()])
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_resumed_run_keeps_its_early_stopping_count(tmp_path, tiny_model_dir):
    """Early stopping's count of evaluations without a new best is part of the run: an interrupted run
    resumed must stop where the uninterrupted one stops, not wait ``patience`` more evaluations."""
    from conftest import write_csv_dir

    from fsllm.training import train

    data = write_csv_dir(tmp_path)
    # a rate so small that the dev score never moves: the first evaluation stays the best
    common = dict(data=str(data), model=str(tiny_model_dir), batch_size=2, learning_rate=1e-12, eval_steps=1,
                  max_steps=8, early_stopping_patience=2, evaluate_test=False, logging_steps=1)

    def steps_run(run) -> int:
        return json.loads((run / "metrics.json").read_text())["train"]["steps"]

    train(output_dir=str(tmp_path / "whole"), **common)
    whole = steps_run(tmp_path / "whole")
    assert whole == 3  # best at 1, no better at 2 and 3: patience 2 stops it

    class Interrupt(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 2:  # step 2 evaluated and checkpointed: one evaluation without a new best
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(output_dir=str(tmp_path / "cut"), callbacks=[Interrupt()], **common)
    train(resume=True, output_dir=str(tmp_path / "cut"))
    assert steps_run(tmp_path / "cut") == whole


def test_a_resumed_run_reports_the_whole_training_time_not_its_last_part(tmp_path, tiny_model_dir):
    """``train.seconds`` is the run's training time over every process that trained it (a cost figure reads
    it): the seconds up to the checkpoint are saved with it and added on resume. A checkpoint written before
    the clock existed cannot say, and the metrics then give no ``seconds_before_resume``."""
    import time

    from conftest import write_csv_dir

    from fsllm.training import train

    data = write_csv_dir(tmp_path)
    common = dict(data=str(data), model=str(tiny_model_dir), batch_size=2, eval_steps=1, max_steps=4,
                  evaluate_test=False, logging_steps=1)

    class SlowThenInterrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            time.sleep(0.4)  # steps 1 and 2 take at least 0.8 s before the checkpoint of step 2

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise KeyboardInterrupt

    def seconds(run) -> dict:
        return json.loads((run / "metrics.json").read_text())["train"]

    train(output_dir=str(tmp_path / "whole"), **common)
    assert "resumed_from_step" not in seconds(tmp_path / "whole")
    for name in ("cut", "old"):
        with pytest.raises(KeyboardInterrupt):
            train(output_dir=str(tmp_path / name), callbacks=[SlowThenInterrupt()], **common)
    state = tmp_path / "old" / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    saved = json.loads(state.read_text())
    assert "TrainingClock" in saved["stateful_callbacks"]
    del saved["stateful_callbacks"]["TrainingClock"]  # as a checkpoint of an earlier fsllm
    state.write_text(json.dumps(saved))
    for name in ("cut", "old"):
        train(resume=True, output_dir=str(tmp_path / name))
    cut, old = seconds(tmp_path / "cut"), seconds(tmp_path / "old")
    assert cut["resumed_from_step"] == 2 and cut["seconds_before_resume"] >= 0.8
    assert cut["seconds"] >= cut["seconds_before_resume"] and cut["seconds"] < cut["seconds_before_resume"] + 60
    assert old["resumed_from_step"] == 2 and "seconds_before_resume" not in old and old["seconds"] > 0
