"""FS models as native transformers models: Auto classes, both folder kinds, ``pipeline()``, the Hub."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_backbone, word_llama
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    pipeline,
)

import fsllm
from fsllm import FSConfig, FSForSequenceClassification, FSForTokenClassification, ModelFolderError, load_model
from fsllm.config import FSLLMConfig
from fsllm.inference import Predictor

AUTO = {FSForSequenceClassification: AutoModelForSequenceClassification, FSForTokenClassification: AutoModelForTokenClassification}


def _perturb(model, scale: float = 0.05, seed: int = 0) -> None:
    """Move every trainable weight off its initial value (LoRA B starts at zero), as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)


def _batch(seed: int = 0, vocab: int = 100):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(3, vocab, (3, 9), generator=g)
    mask = torch.ones_like(x)
    mask[1, :3] = 0  # left padding
    mask[2, 6:] = 0  # right padding
    return x, mask


@pytest.mark.parametrize("cls", [FSForSequenceClassification, FSForTokenClassification], ids=["sequence", "token"])
def test_auto_classes_load_both_folder_kinds_with_identical_logits(tmp_path, monkeypatch, family, cls):
    bb_dir = tmp_path / "backbone"
    tiny_backbone(family).save_pretrained(bb_dir)
    monkeypatch.chdir(tmp_path)  # a relative backbone path must still resolve from elsewhere later
    fs = FSConfig(attention="decay", decay_lambda=0.2, learnable_lambda=True, head_dropout=0.0, lora_dropout=0.0)
    model = cls.from_backbone("backbone", id2label={0: "a", 1: "b", 2: "c"}, fs_config=fs).eval()
    _perturb(model)
    x, mask = _batch()
    with torch.no_grad():
        before = model(x, mask).logits
    model.save_pretrained(tmp_path / "small")
    model.save_pretrained(tmp_path / "merged", merged=True)
    assert not (tmp_path / "small" / "adapter_config.json").exists()  # transformers' adapter detection must not fire
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)

    for kind in ("small", "merged"):
        assert isinstance(AutoConfig.from_pretrained(tmp_path / kind), FSLLMConfig)
        loaded = AUTO[cls].from_pretrained(tmp_path / kind)
        assert type(loaded) is cls and not loaded.training
        assert loaded.config.id2label == {0: "a", 1: "b", 2: "c"} and loaded.config.label2id["c"] == 2
        with torch.no_grad():
            after = loaded(x, mask).logits
        torch.testing.assert_close(after, before, atol=1e-5, rtol=0, msg=f"{kind} folder")
        torch.testing.assert_close(loaded.fs_lambdas, model.fs_lambdas)

    # the merged folder stands alone: it builds from its own config, without the backbone's files
    shutil.rmtree(bb_dir)
    with torch.no_grad():
        alone = AUTO[cls].from_pretrained(tmp_path / "merged")(x, mask).logits
    torch.testing.assert_close(alone, before, atol=1e-5, rtol=0)


def test_auto_class_of_the_other_task_is_refused(tmp_path):
    model = FSForTokenClassification.from_backbone(tiny_backbone("llama"), num_labels=3)
    model.save_pretrained(tmp_path / "m", merged=True)
    with pytest.raises(ModelFolderError, match="holds a FSForTokenClassification, not a FSForSequenceClassification"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "m")
    assert type(load_model(tmp_path / "m")) is FSForTokenClassification


def test_folder_of_an_older_fsllm_gives_a_clear_error(tmp_path):
    (tmp_path / "fsllm_config.json").write_text("{}")
    with pytest.raises(ModelFolderError, match="saved by fsllm 0.1"):
        load_model(tmp_path)


def test_merged_save_of_a_head_only_model_leaves_the_live_model_alone(tmp_path):
    model = FSForSequenceClassification.from_backbone(
        tiny_backbone("llama"), num_labels=2, fs_config=FSConfig(use_lora=False, head_dropout=0.0)
    ).eval()
    x, mask = _batch()
    with torch.no_grad():
        hidden = model.encode(x, mask)
        model.save_pretrained(tmp_path / "m", merged=True)
        torch.testing.assert_close(model.encode(x, mask), hidden, atol=0, rtol=0)
        torch.testing.assert_close(load_model(tmp_path / "m").encode(x, mask), hidden, atol=1e-6, rtol=0)


def _trained_word_models(tmp_path: Path) -> dict[str, Path]:
    """A token and a sequence model on the tiny word-level Llama, saved with their tokenizer."""
    tok, bb = word_llama()
    bb.save_pretrained(tmp_path / "bb")
    tok.save_pretrained(tmp_path / "bb")
    out = {}
    for name, cls, labels in (
        ("token", FSForTokenClassification, ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]),
        ("sequence", FSForSequenceClassification, ["negative", "positive"]),
    ):
        torch.manual_seed(1)
        model = cls.from_backbone(str(tmp_path / "bb"), id2label=dict(enumerate(labels)))
        _perturb(model, scale=0.3, seed=2)
        model.save_pretrained(tmp_path / name, tokenizer=tok)
        out[name] = tmp_path / name
    return out


TEXTS = ["John Smith visited Paris .", "Mary works for Google in London today", "the film was good"]


def test_pipelines_load_the_fs_model_and_agree_with_predict(tmp_path):
    folders = _trained_word_models(tmp_path)

    ner = pipeline("token-classification", model=str(folders["token"]), aggregation_strategy="first")
    assert type(ner.model) is FSForTokenClassification
    ours = Predictor.from_pretrained(folders["token"]).predict(TEXTS)
    theirs = ner(TEXTS)
    assert sum(len(e) for e in ours) >= 3  # the comparison covers real entities
    for a, b in zip(theirs, ours):
        assert [(e["entity_group"], e["start"], e["end"], e["word"]) for e in a] == [
            (e["entity_group"], e["start"], e["end"], e["word"]) for e in b
        ]
        assert [float(e["score"]) for e in a] == pytest.approx([e["score"] for e in b], abs=1e-5)

    clf = pipeline("text-classification", model=str(folders["sequence"]))
    assert type(clf.model) is FSForSequenceClassification
    ours = Predictor.from_pretrained(folders["sequence"]).predict(TEXTS)
    theirs = clf(TEXTS)
    assert [r["label"] for r in theirs] == [r["label"] for r in ours]
    assert [r["score"] for r in theirs] == pytest.approx([r["score"] for r in ours], abs=1e-5)


class _FakeHub:
    """Stands in for the Hub API: a commit lands in a local folder laid out as the Hub cache."""

    def __init__(self, cache: Path):
        self.cache = cache
        self.commits: list[list[str]] = []

    def create_repo(self, repo_id, **_):
        return type("Repo", (), {"repo_id": repo_id})()

    def create_commit(self, repo_id, operations, **_):
        sha = f"{len(self.commits) + 1:040d}"
        repo = self.cache / f"models--{repo_id.replace('/', '--')}"
        snap = repo / "snapshots" / sha
        for op in operations:
            dest = snap / op.path_in_repo
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(op.path_or_fileobj, dest)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(sha)
        self.commits.append(sorted(op.path_in_repo for op in operations))
        return sha


@pytest.mark.parametrize("merged", [False, True], ids=["small", "merged"])
def test_push_to_hub_and_load_by_repo_id_offline(tmp_path, monkeypatch, merged):
    import huggingface_hub.constants
    import transformers.utils.hub

    hub = _FakeHub(tmp_path / "hub-cache")
    real_hf_api = transformers.utils.hub.hf_api
    monkeypatch.setattr(transformers.utils.hub, "hf_api", lambda: hub)
    folders = _trained_word_models(tmp_path)
    model = load_model(folders["token"])
    tok = Predictor.from_pretrained(folders["token"]).tokenizer
    model.push_to_hub("someone/fs-ner", tokenizer=tok, merged=merged)
    files = hub.commits[-1]
    assert "config.json" in files and "README.md" in files and "tokenizer.json" in files
    assert ("model.safetensors" in files) == merged and ("adapter/adapter_model.safetensors" in files) != merged

    # resolve the repo id through the Hub cache, with the network switched off
    monkeypatch.setattr(transformers.utils.hub, "hf_api", real_hf_api)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub.cache))
    x, mask = _batch(vocab=len(tok))
    loaded = AutoModelForTokenClassification.from_pretrained("someone/fs-ner")
    with torch.no_grad():
        want = model.eval()(x, mask).logits
        # merging LoRA rounds W + BA once in fp32; the weights here were pushed far from init (|logit| ~ 30)
        torch.testing.assert_close(loaded(x, mask).logits, want, atol=5e-5 * float(want.abs().max()), rtol=0)
    ner = pipeline("token-classification", model="someone/fs-ner", aggregation_strategy="first")
    assert type(ner.model) is FSForTokenClassification
    with pytest.raises(ModelFolderError, match="not on the Hub"):
        load_model("someone/missing")


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
    parsed = ModelCard(model_card_text(model, metrics, dataset="conll2003")).data.to_dict()
    assert parsed["pipeline_tag"] == "token-classification" and parsed["library_name"] == "fsllm"
    results = parsed["model-index"][0]["results"]
    assert {(r["dataset"]["split"], r["metrics"][0]["value"]) for r in results} == {("test", 0.64), ("dev", 0.71)}
    assert fsllm.BUILTIN_MODELS["smollm2-135m"].hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_adapter_missing_lora_weights_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    bb = tmp_path / "bb"
    tiny_backbone("llama").save_pretrained(bb)
    FSForTokenClassification.from_backbone(str(bb), num_labels=3).save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "adapter" / "adapter_model.safetensors"
    weights = load_file(str(path))
    dropped = sorted(weights)[0]
    save_file({k: v for k, v in weights.items() if k != dropped}, str(path))
    with pytest.raises(ModelFolderError, match="adapter lacks 1 LoRA weights"):
        load_model(tmp_path / "m")
