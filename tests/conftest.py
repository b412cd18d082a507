"""Shared fixtures and helpers of tests/ and tests/integration/: tiny random decoder models of every
supported family built from configs, a word-level tokenizer, saved tiny FS models, and the small data
folders and inputs several test modules write."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import transformers

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

VOCAB = 101

_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=48,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def _config(family: str, layers: int):
    c = dict(_COMMON, num_hidden_layers=layers)
    if family == "llama":
        return transformers.LlamaConfig(**c)
    if family == "qwen2":
        return transformers.Qwen2Config(**c)
    if family == "qwen3":
        return transformers.Qwen3Config(**c, head_dim=8)
    if family == "mistral":
        # window smaller than the test sequences so the sliding-window path is exercised
        return transformers.MistralConfig(**c, sliding_window=5)
    if family == "gemma3":
        types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
        return transformers.Gemma3TextConfig(
            **c, head_dim=8, sliding_window=5, layer_types=types, query_pre_attn_scalar=8
        )
    if family == "phi3":
        return transformers.Phi3Config(**c)
    if family == "glm":
        return transformers.GlmConfig(**c, head_dim=8)
    raise ValueError(family)


@pytest.fixture(autouse=True)
def _fp32_for_precision_auto(monkeypatch):
    """``precision="auto"`` (the training default) is bf16 on CPUs with bf16 matmuls: the suite runs fp32
    on every machine (subprocesses too, through the environment), so its numbers do not depend on the
    CPU. The precision tests set the hardware they test."""
    monkeypatch.setenv("FSLLM_NATIVE_BF16", "0")


FAMILIES = ["llama", "qwen2", "qwen3", "mistral", "gemma3", "phi3", "glm"]
IMPLEMENTATIONS = ["sdpa", "eager"]


def tiny_backbone(family: str = "llama", impl: str = "sdpa", layers: int = 2, seed: int = 0):
    """A randomly initialised base model (no LM head) of ``family`` in fp32."""
    torch.manual_seed(seed)
    cfg = _config(family, layers)
    cfg._attn_implementation = impl
    model = transformers.AutoModel.from_config(cfg, attn_implementation=impl, dtype=torch.float32)
    return model.eval()


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request):
    return request.param


WORDS = (
    "the a of to in and is was John Mary Paris London Berlin Google Apple EU German British "
    "film movie good bad great awful loved hated plot actors boring moving visited lives works "
    "for with at on . , ! today yesterday company city river Smith Jones"
).split()


def build_word_tokenizer():
    """A word-level fast tokenizer built in the test (offsets included, no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def word_llama(seed: int = 0):
    """A tiny random Llama (2 layers) sized to the word-level tokenizer: ``(tokenizer, model)``."""
    tok = build_word_tokenizer()
    cfg = _config("llama", 2)
    cfg.vocab_size = len(tok)
    torch.manual_seed(seed)
    return tok, transformers.LlamaModel(cfg)


def _saved(out: Path, tok, model) -> Path:
    """``model`` and ``tok`` saved in ``out``, a folder ``from_pretrained`` reads back."""
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny Llama (2 layers) with its word-level tokenizer: a stand-in backbone for CLI tests."""
    return _saved(tmp_path_factory.mktemp("tiny-llama"), *word_llama())


def word_llama_lm(seed: int = 0):
    """A tiny random Llama causal LM (2 layers, its own LM head) with the word-level tokenizer plus a mask token
    ``<mask>``: ``(tokenizer, model)``, a stand-in for a decoder with its next-token head (``fsllm adapt``)."""
    tok = build_word_tokenizer()
    tok.add_special_tokens({"mask_token": "<mask>"})
    cfg = _config("llama", 2)
    cfg.vocab_size = len(tok)
    torch.manual_seed(seed)
    return tok, transformers.LlamaForCausalLM(cfg)


@pytest.fixture(scope="session")
def tiny_causal_lm_dir(tmp_path_factory):
    """A saved tiny Llama causal LM with its tokenizer (``word_llama_lm``)."""
    return _saved(tmp_path_factory.mktemp("tiny-llama-lm"), *word_llama_lm())


NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]


def save_tiny_fs_model(out, backbone_dir, task: str = "token", labels: list[str] | None = None):
    """An untrained FS model on the tiny backbone, saved as ``fsllm train`` saves one (no training:
    prediction and evaluation only need a loadable folder with a label map)."""
    from fsllm import FSConfig, FSForSequenceClassification, FSForTokenClassification

    labels = labels or (NER_LABELS if task == "token" else ["negative", "positive"])
    cls = FSForTokenClassification if task == "token" else FSForSequenceClassification
    torch.manual_seed(0)
    model = cls.from_backbone(str(backbone_dir), fs_config=FSConfig(), id2label=dict(enumerate(labels)))
    model.save_pretrained(out, tokenizer=build_word_tokenizer())
    return out


@pytest.fixture(scope="session")
def tiny_ner_model_dir(tmp_path_factory, tiny_model_dir):
    """A saved (untrained) FS token-classification model with the labels ``NER_LABELS``."""
    return save_tiny_fs_model(tmp_path_factory.mktemp("tiny-ner"), tiny_model_dir, "token")


@pytest.fixture(scope="session")
def tiny_seq_model_dir(tmp_path_factory, tiny_model_dir):
    """A saved (untrained) FS sequence classifier with the labels negative / positive."""
    return save_tiny_fs_model(tmp_path_factory.mktemp("tiny-seq"), tiny_model_dir, "sequence")


def write_file(tmp_path, name: str, data: str | bytes):
    """``tmp_path / name`` holding ``data`` exactly as given: bytes as they are, text as UTF-8 with
    its line ends untouched (the readers' tests feed CRLF, lone CR and BOMs on purpose)."""
    p = tmp_path / name
    if isinstance(data, bytes):
        p.write_bytes(data)
    else:
        p.write_text(data, encoding="utf-8", newline="")
    return p


# ------------------------------------------------------------------ data sets written by the tests

SENTIMENT_ROWS = [
    ("a great moving film", "positive"),
    ("boring plot and awful actors", "negative"),
    ("loved the movie", "positive"),
    ("hated the film", "negative"),
    ("good actors , great plot", "positive"),
    ("bad movie , boring", "negative"),
]


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


def _jsonl(path: Path, rows: list[dict]) -> Path:
    """``rows`` written to ``path`` as JSON lines."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


LONG = "x" * 100_000


CONLL_OK = "John B-PER\nlives O\n\nMary B-PER\n"


CONLL_ROWS = [{"tokens": ["John", "lives"], "tags": ["B-PER", "O"]}, {"tokens": ["Mary"], "tags": ["B-PER"]}]


# ------------------------------------------------------------------ models with trained-looking weights

def _perturb(model, scale: float = 0.05, seed: int = 0) -> None:
    """Move every trainable weight off its initial value (LoRA B starts at zero), as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)


def _perturbed_seq_model(problem_type=None, num_labels=2, seed=0):
    """A tiny sequence classifier on the word-level Llama, trainable weights moved off their start."""
    from fsllm import FSConfig, FSForSequenceClassification

    tok, backbone = word_llama(seed)
    model = FSForSequenceClassification.from_backbone(
        backbone, num_labels=num_labels, fs_config=FSConfig(head_dropout=0.0, lora_dropout=0.0), problem_type=problem_type
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return tok, model.eval()


def _trained_word_models(tmp_path: Path) -> dict[str, Path]:
    """A token and a sequence model on the tiny word-level Llama, saved with their tokenizer."""
    from fsllm import FSForSequenceClassification, FSForTokenClassification

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


# ------------------------------------------------------------------ one optimizer step through the Trainer

def one_sgd_step(task: str, out_dir, batch_size: int, accumulation: int = 1, tokens_per_batch: float | None = None,
                 examples: int = 16) -> dict:
    """One plain-SGD optimizer step of ``FSTrainer`` on a tiny model over ``examples`` fixed examples (the
    whole global batch): ``{"loss": the logged loss, "weights" / "before": {name: trainable tensor} after
    and before the step}``.

    Plain SGD (no momentum, no clipping) makes the update proportional to the gradient, so a loss that is
    scaled wrongly (by the processes, or not divided over the accumulated batches) moves the weights
    by a different amount; Adam would hide a constant factor. Under ``torchrun`` each process runs this
    and the Trainer splits the batches between them. Dropout is off so every layout computes the same."""
    import datasets
    from transformers import TrainingArguments

    from fsllm import FSConfig, FSForSequenceClassification, FSForTokenClassification
    from fsllm.training import FSTrainer, make_collator

    tok, backbone = word_llama()
    g = torch.Generator().manual_seed(123)
    feats = []
    for n in range(examples):
        length = 3 + n % 7  # uneven lengths and labelled counts: local means differ from the global one
        ids = torch.randint(4, len(tok), (length,), generator=g).tolist()
        if task == "token":
            labels = torch.randint(0, 3, (length,), generator=g)
            labels[torch.rand(length, generator=g) < 0.4] = -100
            feats.append({"input_ids": ids, "attention_mask": [1] * length, "labels": labels.tolist()})
        else:
            feats.append({"input_ids": ids, "attention_mask": [1] * length, "labels": int(torch.randint(0, 3, (1,), generator=g))})
    cls = FSForTokenClassification if task == "token" else FSForSequenceClassification
    torch.manual_seed(0)
    model = cls.from_backbone(backbone, num_labels=3, fs_config=FSConfig(lora_dropout=0.0, head_dropout=0.0))
    args = TrainingArguments(
        output_dir=str(out_dir), max_steps=1, per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation, learning_rate=0.5, optim="sgd", weight_decay=0.0,
        max_grad_norm=0.0, lr_scheduler_type="constant", use_cpu=True, report_to="none", save_strategy="no",
        logging_steps=1, remove_unused_columns=False, dataloader_num_workers=0, seed=0, disable_tqdm=True,
    )
    trainer = FSTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(feats),
                        data_collator=make_collator(task, tok), tokens_per_batch=tokens_per_batch)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer.train()
    loss = next(r["loss"] for r in trainer.state.log_history if "loss" in r)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return {"loss": loss, "weights": weights, "before": before}
