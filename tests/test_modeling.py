"""FS models: trainable parameters, save/load, merged export, learning, the packaged SmolLM2."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import VOCAB, _perturb, _perturbed_seq_model, _trained_word_models, tiny_backbone
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification, pipeline

from fsllm import FSConfig, FSForSequenceClassification, FSForTokenClassification, ModelFolderError, load_model
from fsllm.backbones import default_lora_targets
from fsllm.config import FSLLMConfig
from fsllm.errors import ConfigError
from fsllm.inference import Predictor
from fsllm.modeling import learned_lambdas


def batch(n=4, length=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(3, VOCAB, (n, length), generator=g)
    mask = torch.ones_like(x)
    mask[1, -3:] = 0
    mask[2, :2] = 0
    return x, mask


@pytest.mark.parametrize(
    "cfg",
    [FSConfig(), FSConfig(attention="decay", decay_lambda=0.2, learnable_lambda=True), FSConfig(head="linear")],
    ids=["default", "learnable-lambda", "linear-head"],
)
def test_only_lora_head_and_lambda_are_trainable(family, cfg):
    model = FSForSequenceClassification.from_backbone(tiny_backbone(family), num_labels=3, fs_config=cfg)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable, "nothing to train"
    for name in trainable:
        assert "lora_" in name or name.startswith("head.") or name == "fs_lambda_raw", name
    assert any("lora_A" in n for n in trainable)
    assert any(n.startswith("head.") for n in trainable)
    assert ("fs_lambda_raw" in trainable) == cfg.learnable_lambda
    # every projection of every decoder layer is adapted, nothing outside them
    adapted = {n.split(".lora_A")[0].split(".")[-1] for n in trainable if "lora_A" in n}
    assert adapted == set(default_lora_targets(tiny_backbone(family)))
    t, total = model.trainable_parameters()
    assert 0 < t < total


def _train_a_bit(model, x, mask, labels, steps=3):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    model.train()
    for _ in range(steps):
        loss = model(x, mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


@pytest.mark.parametrize("cls", [FSForSequenceClassification, FSForTokenClassification])
def test_save_load_identical_logits_without_backbone_weights(tmp_path, cls, monkeypatch):
    bb_dir = tmp_path / "backbone"
    tiny_backbone("qwen2").save_pretrained(bb_dir)
    cfg = FSConfig(attention="decay", decay_lambda=0.3, learnable_lambda=True)
    model = cls.from_backbone(str(bb_dir), num_labels=3, fs_config=cfg, id2label={0: "a", 1: "b", 2: "c"})
    x, mask = batch()
    labels = torch.tensor([0, 1, 2, 1]) if cls is FSForSequenceClassification else torch.randint(0, 3, x.shape)
    _train_a_bit(model, x, mask, labels)  # so LoRA B, head and lambda are not at their init values
    with torch.no_grad():
        before = model(x, mask).logits
    out = tmp_path / "saved"
    model.save_pretrained(out)

    meta = json.loads((out / "config.json").read_text())
    assert meta["model_type"] == "fsllm" and meta["task"] == cls.task
    assert meta["backbone"] == str(bb_dir.resolve()) and meta["id2label"]["2"] == "c"
    for f in out.rglob("*.safetensors"):
        with safe_open(str(f), "pt") as sf:
            for key in sf.keys():
                assert "lora_" in key or key.startswith("head.") or key == "fs_lambda_raw", key
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    backbone_size = sum(f.stat().st_size for f in bb_dir.rglob("*.safetensors"))
    assert size < backbone_size

    loaded = load_model(out).eval()
    assert type(loaded) is cls and loaded.id2label == model.id2label
    with torch.no_grad():
        after = loaded(x, mask).logits
    torch.testing.assert_close(after, before, atol=0, rtol=0)
    torch.testing.assert_close(loaded.fs_lambdas, model.fs_lambdas)

    merged = tmp_path / "merged"
    model.save_pretrained(merged, merged=True)
    assert (merged / "model.safetensors").is_file() and json.loads((merged / "config.json").read_text())["merged"]
    # the merged folder stands alone: the original backbone can disappear
    for f in bb_dir.iterdir():
        f.unlink()
    standalone = load_model(merged).eval()
    with torch.no_grad():
        torch.testing.assert_close(standalone(x, mask).logits, before, atol=1e-5, rtol=1e-5)


def test_small_folder_is_written_from_a_given_state_dict(tmp_path):
    """The Trainer under FSDP passes the full state dict it gathered: the small folder is written
    from it (head, lambda and LoRA tensors), not from the model's own (sharded) parameters."""
    bb_dir = tmp_path / "backbone"
    tiny_backbone("llama").save_pretrained(bb_dir)
    model = FSForTokenClassification.from_backbone(
        str(bb_dir), num_labels=3, fs_config=FSConfig(attention="decay", learnable_lambda=True))
    given = {k: v.clone() for k, v in model.state_dict().items()}
    for k in given:
        if k.startswith("head.") or "lora_B" in k or k == "fs_lambda_raw":
            given[k] += 0.25  # differs from the live model's tensors
    model.save_pretrained(tmp_path / "m", state_dict=given)
    loaded = load_model(tmp_path / "m")
    got = loaded.state_dict()
    changed = [k for k in given if k.startswith("head.") or "lora_B" in k or k == "fs_lambda_raw"]
    assert changed and any("lora_B" in k for k in changed)
    for k in changed:
        torch.testing.assert_close(got[k], given[k], atol=0, rtol=0)
        assert not torch.equal(got[k], model.state_dict()[k]), k


def test_missing_and_corrupt_model_folders(tmp_path):
    with pytest.raises(ModelFolderError, match="no such model folder"):
        load_model(tmp_path / "nope")
    with pytest.raises(ModelFolderError, match="not an fsllm model folder"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelFolderError, match="corrupt"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ModelFolderError, match="not an fsllm model folder.*'llama'"):
        load_model(tmp_path)


@pytest.mark.parametrize("cls", [FSForSequenceClassification, FSForTokenClassification])
def test_a_few_steps_lower_the_loss(cls):
    torch.manual_seed(0)
    model = cls.from_backbone(tiny_backbone("llama"), num_labels=3, fs_config=FSConfig(lora_dropout=0.0, head_dropout=0.0))
    x, mask = batch(8, seed=5)
    labels = torch.arange(8) % 3 if cls is FSForSequenceClassification else x % 3
    with torch.no_grad():
        start = model(x, mask, labels=labels).loss.item()
    _train_a_bit(model, x, mask, labels, steps=15)
    with torch.no_grad():
        end = model(x, mask, labels=labels).loss.item()
    assert end < 0.7 * start, (start, end)


def test_learnable_lambda_gets_gradient_and_stays_non_negative():
    model = FSForTokenClassification.from_backbone(tiny_backbone("llama"), num_labels=3, fs_config=FSConfig(attention="decay", decay_lambda=0.5, learnable_lambda=True))
    torch.testing.assert_close(model.fs_lambdas, torch.full((2,), 0.5))
    x, mask = batch()
    model(x, mask, labels=x % 3).loss.backward()
    assert model.fs_lambda_raw.grad is not None and model.fs_lambda_raw.grad.abs().sum() > 0
    with torch.no_grad():
        model.fs_lambda_raw.fill_(-50.0)
    assert (model.fs_lambdas >= 0).all()


def test_token_labels_minus_100_are_ignored():
    model = FSForTokenClassification.from_backbone(tiny_backbone("llama"), num_labels=3, fs_config=FSConfig(head_dropout=0.0)).eval()
    x, mask = batch()
    labels = x % 3
    ignored = labels.clone()
    ignored[:, 4:] = -100
    with torch.no_grad():
        logits = model(x, mask).logits
        loss = model(x, mask, labels=ignored).loss
    expected = torch.nn.functional.cross_entropy(logits[:, :4].reshape(-1, 3), labels[:, :4].reshape(-1))
    torch.testing.assert_close(loss, expected)


def test_packaged_smollm2_loads_and_predicts(tmp_path):
    """The packaged SmolLM2-135M converts into the cache once and an FS model on it predicts."""
    pytest.importorskip("gguf")
    from fsllm import load_backbone, load_tokenizer
    from fsllm.backbones import builtin_model_path

    path = builtin_model_path("smollm2-135m")
    assert (path / "config.json").is_file()
    tok = load_tokenizer("smollm2-135m")
    assert tok.pad_token == "<|im_end|>"
    backbone = load_backbone("smollm2-135m")
    assert backbone.config.num_hidden_layers == 30 and backbone.config.hidden_size == 576
    model = FSForSequenceClassification.from_backbone(backbone, num_labels=2, fs_config=FSConfig()).eval()
    enc = tok(["a wonderful, moving film", "dull"], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(enc.input_ids, enc.attention_mask)
    assert out.logits.shape == (2, 2) and torch.isfinite(out.logits).all()
    # the sentence alone gives the same logits as inside the padded batch
    alone = tok(["dull"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(alone.input_ids, alone.attention_mask).logits, out.logits[1:], atol=1e-4, rtol=0)


def test_lora_starts_as_peft_initialises_it():
    """B = 0 at init (PEFT's rule), so an untrained FS model computes what its backbone computes;
    ``post_init`` must not draw LoRA weights again from the backbone's initialiser."""
    model = FSForTokenClassification.from_backbone(tiny_backbone("llama"), num_labels=3)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(bool((p == 0).all()) for p in lora_b)
    lora_a = [p for n, p in model.named_parameters() if "lora_A" in n]
    assert all(float(p.abs().sum()) > 0 for p in lora_a)

@torch.no_grad()
def test_set_attention_switches_modes_layers_and_kernel_in_place():
    """One set of weights, several attention variants: each switch gives the model built that way."""
    model = FSForTokenClassification.from_backbone(
        tiny_backbone("llama", layers=3), num_labels=3, fs_config=FSConfig(attention="decay", decay_lambda=0.5)
    ).eval()
    x, mask = batch()
    decay = model(x, mask).logits
    model.set_attention(mode="causal")
    assert model.layer_modes == ["causal"] * 3
    causal = model(x, mask).logits
    model.set_attention(mode="bidirectional", layers="last:1", implementation="eager")
    assert model.layer_modes == ["causal", "causal", "bidirectional"] and model.fs_layer_ids == [2]
    assert model.base_attn_implementation == "eager"
    last = model(x, mask).logits
    model.set_attention(mode="decay", layers="all", implementation="sdpa")
    torch.testing.assert_close(model(x, mask).logits, decay)
    # the same weights built as a causal model, and as bidirectional in the last layer
    for cfg, want in ((FSConfig(attention="causal"), causal), (FSConfig(fs_layers="last:1"), last)):
        other = FSForTokenClassification.from_backbone(tiny_backbone("llama", layers=3), num_labels=3, fs_config=cfg)
        other.eval()
        other.backbone.load_state_dict(model.backbone.state_dict())
        other.head.load_state_dict(model.head.state_dict())
        torch.testing.assert_close(other(x, mask).logits, want, atol=1e-5, rtol=1e-5)
    model.set_attention(decay_horizon_bias=math.inf)
    assert model.decay_horizon_bias == math.inf
    with pytest.raises(ConfigError):
        model.set_attention(mode="sideways")
    with pytest.raises(ConfigError):
        model.set_attention(decay_horizon_bias=0.0)
    plain = FSForTokenClassification.from_backbone(tiny_backbone("llama"), num_labels=3)
    with pytest.raises(ConfigError):  # built without lambdas
        plain.set_attention(mode="decay")


@torch.no_grad()
def test_observe_masks_reports_each_layer_within_the_block_only():
    model = FSForTokenClassification.from_backbone(tiny_backbone("llama", layers=3), num_labels=3).eval()
    x, mask = batch()
    seen = []
    with model.observe_masks(lambda i, m: seen.append(i)):
        model(x, mask)
    assert seen == [0, 1, 2]
    model(x, mask)
    assert seen == [0, 1, 2]  # the observer is gone after the block


def test_learned_lambdas_read_from_small_and_merged_folders(tmp_path):
    cfg = FSConfig(attention="decay", decay_lambda=0.5, learnable_lambda=True)
    model = FSForSequenceClassification.from_backbone(tiny_backbone("llama"), num_labels=2, fs_config=cfg)
    with torch.no_grad():
        model.fs_lambda_raw.copy_(torch.tensor([0.3, -1.0]))
    model.save_pretrained(tmp_path / "small")
    model.save_pretrained(tmp_path / "merged", merged=True)
    want = model.fs_lambdas.tolist()
    assert learned_lambdas(tmp_path / "small") == pytest.approx(want)
    assert learned_lambdas(tmp_path / "merged") == pytest.approx(want)
    fixed = FSForSequenceClassification.from_backbone(tiny_backbone("llama"), num_labels=2,
                                                      fs_config=FSConfig(attention="decay", decay_lambda=0.5))
    fixed.save_pretrained(tmp_path / "fixed")
    assert learned_lambdas(tmp_path / "fixed") is None  # fixed rates are the config's, not learned
    assert learned_lambdas(tmp_path / "nothing") is None


# ------------------------------------------------------------------ the forward of each problem type


def test_regression_forward_answers_in_data_units_and_fits_standardised_targets():
    tok, model = _perturbed_seq_model("regression", num_labels=1)
    ids = torch.tensor([tok("a great film")["input_ids"], tok("a boring film")["input_ids"]])
    z = model(ids).logits.squeeze(-1).detach()  # mean 0, std 1: the head's own output
    model.config.target_mean, model.config.target_std = 2.0, 3.0
    out = model(ids, labels=torch.tensor([5.0, -1.0]))
    torch.testing.assert_close(out.logits.squeeze(-1), z * 3.0 + 2.0)
    expected = torch.mean((z - torch.tensor([(5.0 - 2.0) / 3.0, (-1.0 - 2.0) / 3.0])) ** 2)
    torch.testing.assert_close(out.loss, expected)


def test_multi_label_forward_uses_binary_cross_entropy():
    tok, model = _perturbed_seq_model("multi_label_classification", num_labels=3)
    ids = torch.tensor([tok("a great film")["input_ids"]])
    target = torch.tensor([[1.0, 0.0, 1.0]])
    out = model(ids, labels=target)
    torch.testing.assert_close(out.loss, torch.nn.functional.binary_cross_entropy_with_logits(out.logits, target))


AUTO = {FSForSequenceClassification: AutoModelForSequenceClassification, FSForTokenClassification: AutoModelForTokenClassification}


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


class _FakeHub:
    """Stands in for the Hub at huggingface_hub's public API (``HfApi.create_repo`` and
    ``HfApi.upload_folder``): an upload lands in a local folder laid out as the Hub cache. Any other
    way to the Hub (``create_commit``, which private helpers call) fails the test."""

    def __init__(self, cache: Path):
        self.cache = cache
        self.commits: list[list[str]] = []
        self.calls: list[dict] = []

    def install(self, monkeypatch) -> None:
        from huggingface_hub import HfApi

        hub = self
        monkeypatch.setattr(HfApi, "create_repo", lambda api, repo_id, **kw: hub.create_repo(repo_id, **kw))
        monkeypatch.setattr(HfApi, "upload_folder", lambda api, **kw: hub.upload_folder(**kw))

        def no_commit(api, *a, **kw):
            raise AssertionError("create_commit called: the upload must go through HfApi.upload_folder")

        monkeypatch.setattr(HfApi, "create_commit", no_commit)

    def create_repo(self, repo_id, **_):
        return type("Repo", (), {"repo_id": repo_id})()

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        self.calls.append({"repo_id": repo_id, **kwargs})
        sha = f"{len(self.commits) + 1:040d}"
        repo = self.cache / f"models--{repo_id.replace('/', '--')}"
        snap = repo / "snapshots" / sha
        files = sorted(p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*") if p.is_file())
        for name in files:
            dest = snap / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(folder_path) / name, dest)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(sha)
        self.commits.append(files)
        return sha


@pytest.mark.parametrize("merged", [False, True], ids=["small", "merged"])
def test_push_to_hub_and_load_by_repo_id_offline(tmp_path, monkeypatch, merged):
    import huggingface_hub.constants

    hub = _FakeHub(tmp_path / "hub-cache")
    folders = _trained_word_models(tmp_path)
    model = load_model(folders["token"])
    tok = Predictor.from_pretrained(folders["token"]).tokenizer
    with pytest.MonkeyPatch.context() as mp:
        hub.install(mp)
        model.push_to_hub("someone/fs-ner", tokenizer=tok, merged=merged, commit_message="first", revision="main",
                          create_pr=True)
    files = hub.commits[-1]
    assert "config.json" in files and "README.md" in files and "tokenizer.json" in files
    assert ("model.safetensors" in files) == merged and ("adapter/adapter_model.safetensors" in files) != merged
    call = hub.calls[-1]
    assert (call["commit_message"], call["revision"], call["create_pr"]) == ("first", "main", True)

    # resolve the repo id through the Hub cache, with the network switched off
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


BIO = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
WS = 9  # the id standing for a whitespace-only token in these tests


def _whitespace_case():
    """Row 0: whitespace before tokens whose top label is I-PER, B-LOC and O, and as the last token;
    row 1: whitespace as the last real token before right padding."""
    model = FSForTokenClassification.from_backbone(tiny_backbone("llama"), id2label=BIO).eval()
    model.config.whitespace_token_ids = [WS]
    ids = torch.tensor([[5, WS, 6, WS, 7, WS, 8, WS], [5, 6, WS, 0, 0, 0, 0, 0]])
    mask = torch.tensor([[1] * 8, [1, 1, 1, 0, 0, 0, 0, 0]])
    torch.manual_seed(0)
    logits = torch.randn(2, 8, len(BIO))
    for t, top in ((2, 2), (4, 3), (6, 0)):
        logits[0, t, top] = 5.0
    return model, ids, mask, logits


def test_whitespace_token_is_inside_an_entity_only_when_the_next_word_continues_it():
    model, ids, mask, logits = _whitespace_case()
    out = model.label_whitespace(ids, mask, logits)
    torch.testing.assert_close(out[0, 1], logits[0, 2])  # next is I-PER: the space is inside, same scores
    # next is B-LOC: the space is O, with B-LOC's score (O and B-LOC swap places)
    want = logits[0, 4].clone()
    want[0], want[3] = logits[0, 4, 3], logits[0, 4, 0]
    torch.testing.assert_close(out[0, 3], want)
    assert int(out[0, 3].argmax()) == 0
    torch.testing.assert_close(out[0, 5], logits[0, 6])  # next is O: O
    others = [(0, t) for t in (0, 2, 4, 6, 7)] + [(1, t) for t in range(8)]  # words, the last token, padding
    for b, t in others:
        torch.testing.assert_close(out[b, t], logits[b, t])


def test_whitespace_rule_needs_bio_labels_and_whitespace_ids():
    model, ids, mask, logits = _whitespace_case()
    model.config.whitespace_token_ids = None
    assert torch.equal(model.label_whitespace(ids, mask, logits), logits)
    other = FSForTokenClassification.from_backbone(tiny_backbone("llama"), id2label={0: "A", 1: "B-X", 2: "I-X"}).eval()
    other.config.whitespace_token_ids = [WS]
    assert torch.equal(other.label_whitespace(ids, mask, logits[..., :3]), logits[..., :3])


def test_forward_applies_the_whitespace_rule_the_same_alone_and_padded():
    model, ids, mask, _ = _whitespace_case()
    with torch.no_grad():
        model.config.whitespace_token_ids = None
        raw = model(ids, mask).logits
        model.config.whitespace_token_ids = [WS]
        got = model(ids, mask).logits
        alone = model(ids[1:, :3], mask[1:, :3]).logits
    # the rule written out position by position (not label_whitespace, the function under test): a
    # whitespace token followed by a real one takes that token's scores, with its top label and O swapped
    # unless the top label is an I- tag (the space is then inside the entity)
    want = raw.clone()
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1] - 1):
            if int(ids[b, t]) != WS or not int(mask[b, t + 1]):
                continue
            nxt = raw[b, t + 1].clone()
            top = int(nxt.argmax())
            if not BIO[top].startswith("I-"):
                nxt[0], nxt[top] = raw[b, t + 1, top], raw[b, t + 1, 0]
            want[b, t] = nxt
    torch.testing.assert_close(got, want)
    assert not torch.equal(got[0, 1], raw[0, 1])
    torch.testing.assert_close(got[1, :3], alone[0])


def test_a_head_file_and_a_model_that_disagree_on_learnable_lambdas_are_a_folder_error(tmp_path):
    """A folder saved without learnable lambdas, loaded into a model that has them, used to keep the initial
    lambdas without a word; the reverse raised an AttributeError. Both are one ModelFolderError."""
    from fsllm.errors import ModelFolderError

    learnable = FSConfig(attention="decay", decay_lambda=0.5, learnable_lambda=True)
    with_lambdas = FSForTokenClassification.from_backbone(tiny_backbone("llama"), num_labels=3, fs_config=learnable)
    without = FSForTokenClassification.from_backbone(tiny_backbone("llama"), num_labels=3, fs_config=FSConfig())
    with_lambdas.save_pretrained(tmp_path / "with")
    without.save_pretrained(tmp_path / "without")
    with pytest.raises(ModelFolderError, match="lacks the learned decay lambdas"):
        with_lambdas.load_trained_weights(tmp_path / "without")
    with pytest.raises(ModelFolderError, match="holds learned decay lambdas"):
        without.load_trained_weights(tmp_path / "with")
    with_lambdas.load_trained_weights(tmp_path / "with")  # the matching folders still load


@pytest.mark.parametrize("num_labels", [2, 3])
def test_regression_with_more_than_one_output_is_refused(num_labels):
    """MSE against one target per example broadcast silently over several outputs."""
    with pytest.raises(ConfigError, match="num_labels must be 1"):
        FSForSequenceClassification.from_backbone(tiny_backbone("llama"), num_labels=num_labels, problem_type="regression")
    FSForSequenceClassification.from_backbone(tiny_backbone("llama"), num_labels=1, problem_type="regression")
