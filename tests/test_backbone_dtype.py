"""The dtype of the backbone's frozen weights (``TrainConfig.backbone_dtype``, ``fsllm train --backbone-dtype``):
bf16 backbone weights, LoRA and the head in fp32, under the Trainer's autocast and without it; the model
folder records it and ``Predictor`` (``fsllm eval / predict / serve``) loads the backbone in it again."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import write_csv_dir
from transformers import TrainerCallback

from fsllm.config import FSLLMConfig, TrainConfig, resolve_backbone_dtype
from fsllm.errors import ConfigError
from fsllm.inference import Predictor


class WatchDtypes(TrainerCallback):
    """The dtypes of the parameters when training starts, and of the loss of every step."""

    def __init__(self) -> None:
        self.params: dict[str, set[torch.dtype]] = {}
        self.losses: list[float] = []

    def on_train_begin(self, args, state, control, model=None, **kw):
        for name, p in model.named_parameters():
            kind = "head" if name.startswith("head.") else "lora" if "lora_" in name else "frozen"
            self.params.setdefault(kind, set()).add(p.dtype)

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])


def frozen_dtypes(model) -> set[torch.dtype]:
    return {p.dtype for n, p in model.named_parameters() if not n.startswith("head.") and "lora_" not in n}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_bf16_backbone_trains_with_fp32_lora_and_head_and_the_folder_loads_it_in_bf16(tmp_path, tiny_model_dir,
                                                                                      precision):
    """Without autocast (fp32) the backbone computes in bf16 and the fp32 head gets bf16 hidden states;
    with the Trainer's bf16 autocast the same weights train too."""
    from fsllm.training import train

    watch = WatchDtypes()
    result = train(data=str(write_csv_dir(tmp_path)), model=str(tiny_model_dir), output_dir=str(tmp_path / "run"),
                   max_steps=2, batch_size=4, logging_steps=1, backbone_dtype="bf16", precision=precision,
                   callbacks=[watch])
    assert watch.params == {"frozen": {torch.bfloat16}, "lora": {torch.float32}, "head": {torch.float32}}
    assert watch.losses and all(torch.isfinite(torch.tensor(x)) for x in watch.losses)
    assert json.loads((result.run_dir / "config.json").read_text())["backbone_dtype"] == "bf16"
    assert json.loads((result.model_dir / "config.json").read_text())["backbone_dtype"] == "bf16"

    pred = Predictor.from_pretrained(result.run_dir)  # fp32 precision: the weights as they were evaluated
    assert frozen_dtypes(pred.model) == {torch.bfloat16}
    assert {p.dtype for p in pred.model.head.parameters()} == {torch.float32}
    out = pred.predict(["a great moving film", "boring plot"])
    assert all(r["label"] in ("negative", "positive") for r in out)
    # the folder scores as the run scored: same dev accuracy from the reloaded (bf16-backbone, merged) model
    from fsllm.evaluation import evaluate_examples
    from fsllm.prepare import eval_examples

    dev = eval_examples(str(tmp_path / "sent"), "validation", None, task="sequence", labels=pred.model.label2id)
    metrics, _ = evaluate_examples(pred.model, pred.tokenizer, dev, pred.max_length)
    if precision == "fp32":  # the run's dev score ran without autocast, as the Predictor does
        assert metrics["accuracy"] == pytest.approx(result.metrics["dev"]["accuracy"])


def test_the_default_is_fp32_and_old_folders_load_fp32(tmp_path, tiny_model_dir, tiny_seq_model_dir):
    """The default changes nothing: fp32 weights whatever the hardware (auto would pick bf16 on a bf16 CPU)."""
    assert TrainConfig().backbone_dtype == "fp32"
    old = tmp_path / "old"
    shutil.copytree(tiny_seq_model_dir, old)
    raw = json.loads((old / "config.json").read_text())
    raw.pop("backbone_dtype", None)  # a folder written before the field
    (old / "config.json").write_text(json.dumps(raw))
    assert frozen_dtypes(Predictor.from_pretrained(tmp_path / "old").model) == {torch.float32}


def test_auto_follows_the_bf16_hardware_rule_and_bad_values_are_clear_errors(monkeypatch):
    monkeypatch.setenv("FSLLM_NATIVE_BF16", "0")
    assert resolve_backbone_dtype("auto")[0] == "fp32"
    monkeypatch.setattr("fsllm.config.native_bf16", lambda: "the CPU has AVX512-BF16")
    assert resolve_backbone_dtype("auto") == ("bf16", "the CPU has AVX512-BF16")
    assert resolve_backbone_dtype("fp16")[0] == "fp16"
    with pytest.raises(ConfigError, match="backbone_dtype 'int8': choose one of auto, fp32, bf16, fp16"):
        TrainConfig(backbone_dtype="int8")
    with pytest.raises(ConfigError, match="quantised backbone"):
        TrainConfig(backbone_dtype="bf16", quantize="4bit")
    with pytest.raises(ValueError, match="backbone_dtype must be one of fp32, bf16, fp16"):
        FSLLMConfig(backbone_dtype="auto")


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 weights train on a GPU")
def test_fp16_weights_without_a_gpu_are_refused_before_a_run_folder(tmp_path, tiny_model_dir):
    from fsllm.errors import FSLLMError
    from fsllm.training import train

    with pytest.raises(FSLLMError, match="backbone_dtype fp16 needs a CUDA GPU"):
        train(data=str(write_csv_dir(tmp_path)), model=str(tiny_model_dir), output_dir=str(tmp_path / "r"),
              backbone_dtype="fp16")
    assert not (tmp_path / "r").exists()


def test_the_cli_option_sets_it():
    from fsllm.cli import build_parser, train_config_from_args

    a = build_parser().parse_args(["train", "--data", "x", "--backbone-dtype", "bf16"])
    assert train_config_from_args(a).backbone_dtype == "bf16"


@pytest.mark.parametrize("merged", [False, True])
def test_both_folder_kinds_reload_a_bf16_backbone_in_bf16_with_an_fp32_head(tmp_path, tiny_model_dir, merged):
    from fsllm import FSConfig, FSForSequenceClassification, load_model

    torch.manual_seed(0)
    model = FSForSequenceClassification.from_backbone(
        str(tiny_model_dir), num_labels=2, dtype=torch.bfloat16,
        fs_config=FSConfig(attention="decay", decay_lambda=0.5, learnable_lambda=True)).eval()
    assert model.config.backbone_dtype == "bf16" and model.fs_lambda_raw.dtype == torch.float32
    model.save_pretrained(tmp_path / "m", merged=merged)
    loaded = load_model(tmp_path / "m")
    assert {p.dtype for n, p in loaded.backbone.named_parameters() if "lora_" not in n} == {torch.bfloat16}
    assert {p.dtype for p in loaded.head.parameters()} == {loaded.fs_lambda_raw.dtype} == {torch.float32}
    ids = torch.tensor([[4, 5, 6, 7], [0, 0, 8, 9]])
    with torch.no_grad():
        want, got = model(ids, (ids != 0).long()).logits, loaded(ids, (ids != 0).long()).logits
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=2e-3, rtol=0)  # merging LoRA into bf16 weights rounds once more
