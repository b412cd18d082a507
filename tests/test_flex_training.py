"""``fsllm train --attn-implementation flex_attention`` in the real training loop, with attention decay.

torch (2.13) has no flex_attention backward on a CPU: there a run that trains LoRA or a learnable lambda
(both need gradients through the attention) is refused up front with one line, and a head-only run
(``--no-use-lora``) trains through the flex forward. The default-suite test runs torch's
``flex_attention`` without inductor (transformers' wrapper compiles it, ~40 s per input shape on a
2-core CPU); the slow one runs it compiled, as ``fsllm train`` does. Both check the trained folder
answers as the same weights do with sdpa.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import write_csv_dir
from transformers import TrainerCallback

from fsllm.cli import main
from fsllm.config import FSConfig
from fsllm.modeling import load_model
from fsllm.training import flex_backward_here, train


class HeadAtStart(TrainerCallback):
    def __init__(self) -> None:
        self.head: dict[str, torch.Tensor] = {}
        self.losses: list[float] = []

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.head = {k: v.detach().clone() for k, v in model.head.state_dict().items()}

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])


def eager_flex(monkeypatch) -> None:
    """torch's flex_attention called as it is (traced with dynamo's eager backend), not inductor-compiled."""
    import transformers.integrations.flex_attention as tfa
    from torch.nn.attention.flex_attention import flex_attention

    monkeypatch.setattr(tfa, "compile_friendly_flex_attention",
                        lambda q, k, v, training=False, **kw: flex_attention(q, k, v, **kw))


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_flex_decay_trains_the_head_and_answers_as_sdpa_at_the_same_weights(tmp_path, tiny_model_dir, monkeypatch,
                                                                             compiled):
    if not compiled:
        eager_flex(monkeypatch)
    watch = HeadAtStart()
    fs = FSConfig(attention="decay", decay_lambda=0.5, use_lora=False, head_dropout=0.0)
    result = train(data=str(write_csv_dir(tmp_path)), model=str(tiny_model_dir), output_dir=str(tmp_path / "run"),
                   fs=fs, attn_implementation="flex_attention", max_steps=3, batch_size=4, logging_steps=1,
                   learning_rate=5e-2, pad_to_length=8, evaluate_test=False, callbacks=[watch])
    assert len(watch.losses) >= 3 and all(math.isfinite(x) for x in watch.losses)
    flex = load_model(result.model_dir)
    assert flex.config.backbone_attn_implementation == "flex_attention"
    assert flex.layer_modes == ["decay", "decay"]
    moved = max(float((flex.head.state_dict()[k] - v).abs().max()) for k, v in watch.head.items())
    assert moved > 1e-3
    sdpa = load_model(result.model_dir, attn_implementation="sdpa")
    assert sdpa.config.backbone_attn_implementation == "sdpa"
    ids = torch.tensor([[4, 5, 6, 7, 8, 9], [0, 0, 10, 11, 12, 13]])
    mask = (ids != 0).long()
    with torch.no_grad():
        torch.testing.assert_close(flex(ids, mask).logits, sdpa(ids, mask).logits, atol=1e-4, rtol=1e-4)
    assert json.loads((result.run_dir / "config.json").read_text())["attn_implementation"] == "flex_attention"


@pytest.mark.skipif(flex_backward_here(), reason="torch has a flex_attention backward on this device")
def test_flex_with_lora_on_a_cpu_is_refused_in_one_line_before_a_run_folder(tmp_path, tiny_model_dir, capsys):
    run = tmp_path / "run"
    rc = main(["train", "--data", str(write_csv_dir(tmp_path)), "--model", str(tiny_model_dir), "--output", str(run),
               "--max-steps", "1", "--attention", "decay", "--decay-lambda", "0.5",
               "--attn-implementation", "flex_attention"])
    err = capsys.readouterr().err
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("fsllm: error:")]
    assert len(lines) == 1 and "no flex_attention backward on a CPU" in lines[0] and "--no-use-lora" in lines[0]
    assert not run.exists()
