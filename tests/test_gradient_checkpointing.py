"""Gradient checkpointing through the Trainer: ``TrainingArguments(gradient_checkpointing=True)``.

The transformers 5 Trainer calls ``model.activation_checkpointing_enable(...)``, which hands
``every_n_layers``/``offload`` to ``FSModel.gradient_checkpointing_enable`` (it overrides the
deprecated name); the FS model passes them on to the backbone, non-reentrant. Checkpointing must
change memory only: one optimizer step gets the same loss and gradients with and without it.
"""

from __future__ import annotations

import datasets
import pytest
import torch
from conftest import word_llama
from transformers import TrainerCallback, TrainingArguments

from fsllm import FSForTokenClassification
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
