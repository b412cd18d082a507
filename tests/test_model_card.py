"""The model card written with a saved model: its metadata."""

from __future__ import annotations

from conftest import _trained_word_models

import fsllm
from fsllm import load_model


def test_model_card_metadata(tmp_path):
    folders = _trained_word_models(tmp_path)
    card = (folders["sequence"] / "README.md").read_text()
    meta = card.split("---")[1]
    assert "library_name: fsllm" in meta and "pipeline_tag: text-classification" in meta
    assert "model-index" not in meta  # no metrics without a training run

    from huggingface_hub import ModelCard

    from fsllm.model_card import model_card_text

    model = load_model(folders["token"])
    metrics = {"primary_metric": "f1", "dev": {"f1": 0.71}, "test": {"f1": 0.64}}
    parsed = ModelCard(model_card_text(model.config, metrics, dataset="conll2003")).data.to_dict()
    assert parsed["pipeline_tag"] == "token-classification" and parsed["library_name"] == "fsllm"
    results = parsed["model-index"][0]["results"]
    assert {(r["dataset"]["split"], r["metrics"][0]["value"]) for r in results} == {("test", 0.64), ("dev", 0.71)}
    assert fsllm.BUILTIN_MODELS["smollm2-135m"].hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
