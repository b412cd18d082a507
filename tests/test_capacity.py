"""Training levers beyond the paper's recipe: a lambda annealed during training (``TrainConfig.lambda_schedule``),
learning rates of their own for the head and the lambdas, full fine-tuning of the backbone, rsLoRA and DoRA.
Each is a config field, saved with the model or the run, and leaves an ordinary model folder behind."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import _perturb, tiny_backbone, word_llama, write_csv_dir
from safetensors.torch import load_file
from transformers import TrainerCallback

import fsllm.training as training
from fsllm import FSConfig, FSForSequenceClassification, FSForTokenClassification, load_model
from fsllm.cli import main
from fsllm.config import TrainConfig
from fsllm.errors import ConfigError
from fsllm.run import RunFolder
from fsllm.training import LambdaScheduleCallback, train

# ------------------------------------------------------------------ the lambda schedule


def test_lambda_schedule_values_linear_and_cosine():
    linear = LambdaScheduleCallback("linear", 10.0, 0.0, 0.5)
    # over the first 5 of 10 steps: 10, 8, 6, 4, 2, then 0 and kept
    assert [linear.value(s, 10) for s in range(8)] == pytest.approx([10, 8, 6, 4, 2, 0, 0, 0])
    cosine = LambdaScheduleCallback("cosine", 4.0, 1.0, 1.0)
    assert [cosine.value(s, 4) for s in (0, 2, 4)] == pytest.approx([4.0, 2.5, 1.0])
    assert cosine.value(1, 4) == pytest.approx(1.0 + 3.0 * 0.5 * (1 + math.cos(math.pi / 4)))


class Watch(TrainerCallback):
    """The lambda each training forward computes with, the dev evaluations' steps, and the live model."""

    def __init__(self, best_step: int | None = None):
        self.seen: list[float] = []
        self.model = None
        self.best_step = best_step

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.model = model
        model.register_forward_pre_hook(lambda m, a: self.seen.append(float(m.fs_lambdas[0])) if m.training else None)

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        # make the dev score pick the checkpoint of ``best_step`` (the schedule has not reached its end there)
        if self.best_step is not None:
            metrics["eval_accuracy"] = 1.0 if state.global_step == self.best_step else 0.0


def test_lambda_schedule_drives_training_and_the_saved_model_keeps_the_selected_lambda(tmp_path, tiny_model_dir):
    data = write_csv_dir(tmp_path)
    watch = Watch(best_step=2)
    fs = FSConfig(attention="decay", decay_lambda=0.5, head_dropout=0.0, lora_dropout=0.0)
    result = train(data=str(data), model=str(tiny_model_dir), output_dir=str(tmp_path / "run"), max_steps=4,
                   batch_size=4, eval_steps=2, fs=fs, lambda_schedule="linear", lambda_start=4.5,
                   evaluate_test=False, callbacks=[watch])
    # steps 0..3 of 4 from 4.5 to 0.5: 4.5, 3.5, 2.5, 1.5 (lambda reaches 0.5 after the last step)
    assert watch.seen == pytest.approx([4.5, 3.5, 2.5, 1.5])
    assert Path(result.metrics["train"]["best_checkpoint"]).name == "checkpoint-2"
    # the checkpoints carry the lambda of their step, the saved model the one of the selected step
    run = result.run_dir
    assert json.loads((run / "checkpoints" / "checkpoint-4" / "config.json").read_text())["fs"]["decay_lambda"] == 0.5
    assert json.loads((result.model_dir / "config.json").read_text())["fs"]["decay_lambda"] == pytest.approx(2.5)
    assert json.loads((run / "config.json").read_text())["lambda_schedule"] == "linear"
    loaded = load_model(result.model_dir)
    live = watch.model.eval()
    x = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, live(x).logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(loaded.fs_lambdas, torch.full((2,), 2.5))


def test_lambda_schedule_needs_fixed_decay_lambdas():
    with pytest.raises(ConfigError, match="needs --attention decay"):
        TrainConfig(lambda_schedule="linear")
    with pytest.raises(ConfigError, match="needs --attention decay"):
        TrainConfig(lambda_schedule="linear", fs=FSConfig(attention="decay", learnable_lambda=True))
    with pytest.raises(ConfigError, match="lambda_schedule_fraction"):
        TrainConfig(lambda_schedule_fraction=0.0)
    with pytest.raises(ConfigError, match="lambda_learning_rate .* needs --learnable-lambda"):
        TrainConfig(lambda_learning_rate=1e-2)


# ------------------------------------------------------------------ learning rates per part


class Step(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kw):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        self.model, self.optimizer = model, optimizer

    def moved(self, part: str) -> float:
        return max((p.detach() - self.before[n]).abs().max().item() for n, p in self.model.named_parameters()
                   if n in self.before and part in n)


def test_head_and_lambda_learning_rates_are_their_own(tmp_path, tiny_model_dir):
    """Adam's first step moves each weight by about its learning rate: the head and the lambdas move by
    theirs, LoRA by --lr."""
    data = write_csv_dir(tmp_path)
    step = Step()
    fs = FSConfig(attention="decay", decay_lambda=0.3, learnable_lambda=True)
    train(data=str(data), model=str(tiny_model_dir), output_dir=str(tmp_path / "run"), max_steps=1, batch_size=4,
          learning_rate=1e-5, head_learning_rate=1e-2, lambda_learning_rate=3e-3, fs=fs, evaluate_test=False,
          callbacks=[step])
    assert 5e-3 < step.moved("head.") <= 1.01e-2
    assert 1.5e-3 < step.moved("fs_lambda_raw") <= 3.03e-3
    assert step.moved("lora_") <= 1.01e-5
    rates = sorted({g["initial_lr"] for g in step.optimizer.param_groups if g["params"]})
    assert rates == pytest.approx([1e-5, 3e-3, 1e-2])


def test_loraplus_trains_loras_b_matrices_at_its_multiple_of_the_rate(tmp_path, tiny_model_dir, capsys):
    """``--loraplus-lr-ratio 16``: the B matrices get 16x --lr (Adam's first step moves each by about its rate;
    A, multiplied by a zero B at the start, gets no gradient in that step), saved with the run, refused without
    LoRA."""
    data = write_csv_dir(tmp_path)
    step = Step()
    levers = training.lever_callbacks
    try:
        training.lever_callbacks = lambda cfg: [*levers(cfg), step]
        rc = main(["train", "--data", str(data), "--model", str(tiny_model_dir), "-o", str(tmp_path / "run"),
                   "--max-steps", "1", "--batch-size", "4", "--lr", "1e-4", "--loraplus-lr-ratio", "16", "--no-test"])
    finally:
        training.lever_callbacks = levers
    assert rc == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["loraplus_lr_ratio"] == 16
    assert 8e-4 < step.moved("lora_B") <= 1.62e-3
    assert step.moved("head.") <= 1.01e-4
    b_rates = {g["initial_lr"] for g in step.optimizer.param_groups
               if any(p is q for p in g["params"] for n, q in step.model.named_parameters() if ".lora_B." in n)}
    assert len(b_rates) == 1 and b_rates.pop() == pytest.approx(1.6e-3)
    with pytest.raises(ConfigError, match="needs LoRA"):
        TrainConfig(loraplus_lr_ratio=16, fs=FSConfig(full_finetune=True))
    with pytest.raises(ConfigError, match="must be > 0"):
        TrainConfig(loraplus_lr_ratio=0)


# ------------------------------------------------------------------ full fine-tuning


def test_full_finetune_trains_every_backbone_weight_and_saves_a_merged_folder(tmp_path, tiny_model_dir, capsys):
    model = FSForSequenceClassification.from_backbone(tiny_backbone("qwen2"), num_labels=2,
                                                      fs_config=FSConfig(full_finetune=True))
    assert model.config.merged and not any("lora_" in n for n, _ in model.named_parameters())
    assert all(p.requires_grad for p in model.parameters())

    data = write_csv_dir(tmp_path)
    run = tmp_path / "run"
    rc = main(["train", "--data", str(data), "--model", str(tiny_model_dir), "-o", str(run), "--max-steps", "2",
               "--batch-size", "4", "--eval-steps", "1", "--full-finetune", "--lr", "1e-2", "--no-test"])
    assert rc == 0, capsys.readouterr().err
    assert json.loads((run / "config.json").read_text())["fs"]["full_finetune"] is True
    saved = json.loads((run / "model" / "config.json").read_text())
    assert saved["merged"] and saved["fs"]["full_finetune"]
    assert "every backbone weight fine-tuned" in (run / "model" / "README.md").read_text()
    weights = load_file(str(run / "model" / "model.safetensors"))
    original = load_file(str(tiny_model_dir / "model.safetensors"))
    for name in ("embed_tokens.weight", "layers.0.self_attn.q_proj.weight", "layers.1.mlp.down_proj.weight"):
        assert not torch.equal(weights[f"backbone.{name}"], original[name]), name
    # the checkpoints are whole models too: best-checkpoint loading and --resume read them back
    assert Path(RunFolder(run).last_complete_checkpoint()).name == "checkpoint-2"
    ckpt = sorted((run / "checkpoints").glob("checkpoint-*"))[0]
    loaded = load_model(ckpt)
    fresh = FSForSequenceClassification.from_backbone(str(tiny_model_dir), num_labels=2,
                                                      fs_config=FSConfig(full_finetune=True))
    fresh.load_trained_weights(ckpt)
    x = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x).logits, loaded(x).logits, atol=1e-6, rtol=0)
    capsys.readouterr()
    assert main(["predict", str(run), "loved the movie"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["label"] in ("positive", "negative")


def test_full_finetune_refuses_lora_variants_and_quantization():
    with pytest.raises(ConfigError, match="use_dora change LoRA"):
        FSConfig(full_finetune=True, use_dora=True)
    with pytest.raises(ConfigError, match="use_rslora change LoRA"):
        FSConfig(use_lora=False, use_rslora=True)
    with pytest.raises(ConfigError, match="quantized backbone"):
        TrainConfig(fs=FSConfig(full_finetune=True), quantize="4bit")


# ------------------------------------------------------------------ rsLoRA and DoRA


@pytest.mark.parametrize("variant,cls", [("use_rslora", FSForSequenceClassification), ("use_dora", FSForTokenClassification)],
                         ids=["rslora-sequence", "dora-token"])
def test_lora_variants_reach_peft_and_round_trip(tmp_path, variant, cls):
    tok, backbone = word_llama()
    backbone.save_pretrained(tmp_path / "bb")
    fs = FSConfig(lora_r=4, lora_alpha=16, head_dropout=0.0, lora_dropout=0.0, **{variant: True})
    model = cls.from_backbone(str(tmp_path / "bb"), num_labels=3, fs_config=fs)
    q = model.backbone.get_base_model().layers[0].self_attn.q_proj
    if variant == "use_rslora":
        assert q.scaling["default"] == pytest.approx(16 / math.sqrt(4))  # plain LoRA: 16 / 4
    else:
        assert "default" in q.lora_magnitude_vector
    _perturb(model, scale=0.1)
    model.eval()
    enc = tok(["John visited Paris", "the film"], padding=True, return_tensors="pt")
    with torch.no_grad():
        before = model(**enc).logits
    model.save_pretrained(tmp_path / "small")
    adapter = json.loads((tmp_path / "small" / "adapter" / "adapter_config.json").read_text())
    assert adapter[variant] is True
    model.save_pretrained(tmp_path / "merged", merged=True)
    for kind in ("small", "merged"):
        with torch.no_grad():
            after = load_model(tmp_path / kind)(**enc).logits
        torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5, msg=kind)
