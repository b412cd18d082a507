"""Unsupervised adaptation of a backbone to released attention before supervised training (``fsllm adapt``).

A decoder was pre-trained to read causally; an FS model makes it read bidirectionally (or with a
decayed future) from the first supervised step. LLM2Vec (BehnamGhader et al. 2024) adapts the decoder
to that first, without labels, by *masked next-token prediction* (MNTP): attention is released, a
share of the input tokens is replaced by a mask token, and LoRA learns to predict each masked token at
position ``i`` from the model's own next-token head at position ``i - 1`` (the head keeps its causal
meaning "the token after this one"; the loss reads masked positions only). This module runs that
recipe on any decoder with an LM head and writes an ordinary Hugging Face causal-LM folder with the
LoRA merged in, which ``fsllm train --model FOLDER`` takes as a backbone like any other.

Released attention is the FS models' own (``fsllm.attention``): the causal LM's attention
implementation is set to the registered ``fsllm_<impl>`` and every forward runs under an
``FSAttentionState`` holding the per-layer modes, as ``FSModel.encode`` does; no modeling file is
copied. Training is the stock ``Trainer`` with its checkpoints, resume and progress bar.

What follows LLM2Vec's ``experiments/run_mntp.py`` and its released MNTP configurations for Llama: 20 % of
the tokens chosen, of which 80 % are replaced by the mask token, 10 % by a random token and 10 % kept
(transformers' ``DataCollatorForLanguageModeling``; ``full_masking`` is the ``all_mask`` collator of its
Mistral recipe), the tokenizer's mask token or else ``"_"``, special tokens never masked, LoRA on every
projection of the decoder layers (r 16, alpha 32, dropout 0.05). What differs: far fewer steps by default (``steps``), texts read one
per example (no concatenation into blocks), and the first token of a text is never chosen (no
position before it could predict it; LLM2Vec can choose it when the tokenizer adds no BOS, and the
shift then drops its label, which only corrupts the input).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments, set_seed

from . import atomic
from . import attention as fs_attention
from .backbones import add_lora, decoder_layers, load_tokenizer, lora_config, resolve_backbone_path
from .config import (
    ATTENTION_MODES,
    PRECISIONS,
    FSConfig,
    emulated_bf16,
    parse_fs_layers,
    parse_names,
    resolve_precision,
    setting,
)
from .errors import ConfigError, DataError, FSLLMError
from .interruption import StopOnSignal, train_stopping_on_signal
from .run import (
    CHECKPOINTS_DIR,
    TRAIN_LOG_FILE,
    TRAINER_STATE_FILE,
    _truncate_log,
    checkpoint_step,
    is_main_process,
    several_processes,
)
from .training import JsonlLogCallback, TrainingClock, train_timing

logger = logging.getLogger(__name__)

#: the JSON an adapted folder carries: the ``AdaptConfig`` and what the run did (read back by ``--resume``)
ADAPTATION_FILE = "fsllm_adaptation.json"
#: the adapter file of a checkpoint (PEFT's): with the trainer state, what makes a checkpoint complete
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: LLM2Vec's substitute mask token for tokenizers without one (its ``mask_token_type="blank"``)
BLANK_MASK_TOKEN = "_"


@dataclass
class AdaptConfig:
    """Everything ``fsllm adapt`` needs; saved in the adapted folder (``fsllm_adaptation.json``).

    Defaults are LLM2Vec's MNTP recipe (mask 20 %, LoRA r 16 / alpha 32 / dropout 0.05) except the
    number of steps and the learning rate: LLM2Vec trains 1,000 steps of batch 32 at lr 5e-5 on a GPU;
    the default here is 100 steps of batch 8, 800 texts, about a quarter of what the main job's training
    reads (3 epochs of 1,000 sentences), which keeps it to minutes on a CPU (its measured cost is in
    docs/levers.md), with a higher rate (1e-4) for the ten times fewer steps. Neither is tuned.
    """

    model: str = setting("smollm2-135m", "the decoder to adapt: built-in name (fsllm models), folder or hub id of a "
                         "causal LM (its next-token head is what MNTP trains through)")
    data: str | None = setting(
        "conll2003", "texts from the training split of a data set: catalogue name, folder, file or hub id, as fsllm "
        "train reads it (NER: each sentence's words joined with spaces; tables: the text column). Only the split "
        "fsllm train trains on is read: never dev or test (a single file: the 90 % train keeps)")
    text_file: str | None = setting(
        None, "texts from a plain UTF-8 file instead, one text per line (blank lines skipped); replaces --data")
    text_column: str | None = setting(None, "the text column of a table (default: found by name, as fsllm train)")
    text_pair_column: str | None = setting(
        None, "a second text column of a table: each pair gives two texts")
    train_subset: int | None = setting(
        None, "use N training examples: the seeded sample fsllm train --train-subset N --seed S draws, so the "
        "adaptation reads the texts the supervised run will")
    output_dir: str | None = setting(
        None, "the adapted model folder (default runs/<model>-mntp-<time>): fsllm train --model takes it; "
        "checkpoints and train_log.jsonl are written there while adapting", flags=("--output", "-o"))
    steps: int = setting(100, "optimizer steps (LLM2Vec: 1,000 of batch 32 on a GPU). 100 of batch 8 read 800 texts, "
                         "a quarter of what the main job's training reads: minutes on a CPU (cost: docs/levers.md)")
    batch_size: int = setting(8, "texts per step")
    learning_rate: float = setting(1e-4, "peak learning rate, linear decay to 0 (LLM2Vec: 5e-5 over 1,000 steps)",
                                   flags=("--lr",))
    mask_probability: float = setting(
        0.2, "share of the maskable tokens to predict (LLM2Vec: 0.2 for its Llama recipes); of those, 80 % are "
        "replaced by the mask token, 10 % by a random token and 10 % kept, as BERT and LLM2Vec's 0.2 recipes do. "
        "Special tokens, padding and a text's first token are never chosen")
    full_masking: bool = setting(
        False, "replace every chosen token by the mask token, no random or kept ones (LLM2Vec's all_mask collator, "
        "which its Mistral recipe uses with --mask-probability 0.8)")
    mask_token: str | None = setting(
        None, "the token that replaces masked tokens (default: the tokenizer's mask token, else '_' as in LLM2Vec); "
        "must be one token of the vocabulary")
    max_length: int = setting(128, "tokens per text; longer texts are cut")
    lora_r: int = setting(16, "LoRA rank (LLM2Vec: 16); merged into the weights at the end")
    lora_alpha: int = setting(32, "LoRA alpha (LLM2Vec: 2 x rank)")
    lora_dropout: float = setting(0.05, "LoRA dropout (LLM2Vec: 0.05)")
    lora_target_modules: list[str] | None = setting(
        None, "projection names to adapt, comma-separated (default: every Linear of the decoder layers, as fsllm "
        "train's default; never the embeddings or the LM head)", flags=("--lora-targets",), parse=parse_names)
    attention: str = setting(
        "bidirectional", "the released attention while adapting: use the mode the supervised run will use "
        "('bidirectional', fsllm train's default; 'decay' with --decay-lambda; 'causal' adapts nothing to release)",
        choices=ATTENTION_MODES)
    decay_lambda: float = setting(0.0, "lambda of attention 'decay' (see fsllm train --decay-lambda)")
    fs_layers: str | list[int] | None = setting(
        None, "layers that get the released mask, the others causal: as fsllm train's --fs-layers (default all)",
        parse=parse_fs_layers)
    seed: int = setting(42, "seed of the subset, LoRA's initialisation, the batch order and the masks")
    precision: str = setting(
        "auto", "'auto' (bf16 autocast where the GPU or CPU has bf16 matmul hardware, else fp32), 'bf16', 'fp16' "
        "(GPU) or 'fp32'; the weights and the merged folder stay fp32", choices=PRECISIONS)
    save_steps: int = setting(25, "checkpoint (the LoRA weights and optimizer state) every N steps: where --resume "
                              "continues from; removed once the merged folder is written")
    logging_steps: int = setting(10, "log the training loss every N steps (train_log.jsonl)")

    def __post_init__(self) -> None:
        if self.text_file is not None:
            self.data = None  # the plain text file replaces the data set
        if self.data is None and self.text_file is None:
            raise ConfigError("give the texts to adapt on: --data (a data set) or --text-file (one text per line)")
        for name in ("steps", "batch_size", "max_length", "lora_r", "lora_alpha", "save_steps", "logging_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.train_subset is not None and (isinstance(self.train_subset, bool) or not isinstance(self.train_subset, int)
                                              or self.train_subset <= 0):
            raise ConfigError(f"train_subset must be a positive integer or None, got {self.train_subset!r}")
        if not (isinstance(self.mask_probability, (int, float)) and 0 < self.mask_probability < 1):
            raise ConfigError(f"mask_probability must be in (0, 1), got {self.mask_probability!r}")
        if not (isinstance(self.learning_rate, (int, float)) and math.isfinite(self.learning_rate)
                and self.learning_rate > 0):
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.mask_token is not None and not self.mask_token:
            raise ConfigError("mask_token must be a non-empty string (or None: the tokenizer's, else '_')")
        self.fs_config()  # the attention settings are checked as the FS model checks them

    def fs_config(self) -> FSConfig:
        """The attention settings as an ``FSConfig`` (its checks, its ``resolve_layers``)."""
        return FSConfig(attention=self.attention, decay_lambda=self.decay_lambda, fs_layers=self.fs_layers)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdaptConfig:
        """Back from :meth:`to_dict`; an unknown field is an error, not silently dropped."""
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown adaptation options {sorted(unknown)}")
        return cls(**data)


# ---------------------------------------------------------------------------------- texts


def read_text_file(path: str | os.PathLike) -> list[str]:
    """The non-blank lines of a plain text file (decoded as fsllm's data readers decode: a BOM picks
    UTF-8/16/32, bad bytes and control characters are an error at their line)."""
    from .data.readers import read_text, split_lines

    p = str(path)
    texts = [line.strip() for line in split_lines(read_text(p)) if line.strip()]
    if not texts:
        raise DataError("no text in the file (every line is blank): give one text per line", p)
    return texts


def training_texts(cfg: AdaptConfig) -> list[str]:
    """The texts to adapt on: the lines of ``text_file``, or the training split of ``data`` as ``fsllm train``
    loads it (with its ``train_subset`` draw). NER sentences are their words joined with spaces, a pair's two
    texts are two texts. Dev and test examples are never used."""
    from .data import load_any
    from .prepare import seeded_subset

    if cfg.text_file is not None:
        return seeded_subset(read_text_file(cfg.text_file), cfg.train_subset, cfg.seed)
    data = load_any(cfg.data, text_column=cfg.text_column, text_pair_column=cfg.text_pair_column)
    rows = list(data.splits["train"]) if "train" in data.splits else []
    rows = seeded_subset(rows, cfg.train_subset, cfg.seed)
    texts: list[str] = []
    for row in rows:
        if data.task == "token":
            texts.append(" ".join(row["tokens"]))
        else:
            texts.append(row["text"])
            if row.get("text_pair"):
                texts.append(row["text_pair"])
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise DataError(f"{cfg.data}: no training texts")
    return texts


# ---------------------------------------------------------------------------------- masking


def mask_token_id(tokenizer, mask_token: str | None = None) -> int:
    """The id that replaces masked tokens: ``mask_token``, else the tokenizer's mask token, else ``"_"``
    (LLM2Vec's choice for decoders, which have no mask token). It must be one token of the vocabulary:
    an id that does not exist would be the unknown token, or an error in the embedding."""
    token = mask_token or tokenizer.mask_token or BLANK_MASK_TOKEN
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or (tid == tokenizer.unk_token_id and token != tokenizer.unk_token):
        raise ConfigError(f"mask token {token!r} is not a token of the tokenizer's vocabulary; name one with "
                          "--mask-token")
    return int(tid)


def maskable_positions(input_ids: torch.Tensor, attention_mask: torch.Tensor, special_ids: Sequence[int]) -> torch.Tensor:
    """``[B, L]`` bool: the positions MNTP may mask. Real tokens (``attention_mask``) that are not special
    tokens and are not their text's first real token (its prediction would come from the position
    before it, which is padding or nothing)."""
    real = attention_mask.bool()
    first = real & (real.long().cumsum(-1) == 1)
    special = torch.isin(input_ids, torch.tensor(sorted(set(special_ids)), dtype=input_ids.dtype, device=input_ids.device))
    return real & ~first & ~special


#: what becomes of the chosen tokens (shares replaced by the mask token, by a random token, kept as they are):
#: BERT's split, which LLM2Vec's 20 % recipes use (its ``data_collator_type="default"``, transformers'
#: ``DataCollatorForLanguageModeling``); ``FULL_MASKING`` is its ``all_mask`` collator
BERT_SPLIT = (0.8, 0.1, 0.1)
FULL_MASKING = (1.0, 0.0, 0.0)


def mask_tokens(
    input_ids: torch.Tensor, maskable: torch.Tensor, probability: float, mask_id: int,
    generator: torch.Generator | None = None, split: tuple[float, float, float] = FULL_MASKING,
    vocab_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(masked input_ids, labels)``: each maskable position is chosen with ``probability``; a chosen
    position's label is its original token, every other label is -100. A chosen input becomes ``mask_id``,
    a random token of ``vocab_size`` or stays as it is, in the shares ``split`` (``BERT_SPLIT``: 80/10/10;
    the default ``FULL_MASKING``: the mask token always)."""
    device = input_ids.device
    chosen = (torch.rand(input_ids.shape, generator=generator, device=device) < probability) & maskable
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    fate = torch.rand(input_ids.shape, generator=generator, device=device)
    to_mask = chosen & (fate < split[0])
    to_random = chosen & (fate >= split[0]) & (fate < split[0] + split[1])
    out = input_ids.masked_fill(to_mask, mask_id)
    if bool(to_random.any()):
        if vocab_size is None:
            raise ValueError("a split with random tokens needs vocab_size")
        random = torch.randint(vocab_size, input_ids.shape, generator=generator, device=device, dtype=input_ids.dtype)
        out = torch.where(to_random, random, out)
    return out, labels


class MNTPCollator:
    """Pads a batch of texts on the right and masks it (:func:`mask_tokens`), each text by itself.

    A text's masks are drawn from a generator seeded by ``seed``, the ``epoch`` (set by :class:`MaskEpoch` as
    each epoch begins) and the text's tokens, and by nothing else:

    * not torch's global generator: the ``Trainer``'s data loader collates the next batch before the step
      that precedes it ends, so the global state a checkpoint saves has already drawn that batch's masks,
      and a resumed run would mask it otherwise than the uninterrupted run did;
    * not the batch: under several processes each collates its own share of a step's texts, and masks
      drawn per batch would differ from one process's, where the whole step is one batch. Drawn per text,
      a run on N processes with batches of B masks every text as one process with batches of N*B does.

    A text gets new masks every epoch.
    """

    def __init__(self, pad_id: int, mask_id: int, special_ids: Sequence[int], probability: float, seed: int = 0,
                 split: tuple[float, float, float] = FULL_MASKING, vocab_size: int | None = None):
        self.pad_id, self.mask_id, self.probability = int(pad_id), int(mask_id), float(probability)
        self.special_ids = sorted({int(i) for i in special_ids})
        self.seed = int(seed)
        self.split, self.vocab_size = split, vocab_size
        self.epoch = 0

    def generator(self, input_ids: Sequence[int]) -> torch.Generator:
        """The generator of one text's masks in this epoch: seeded by ``seed``, ``epoch`` and its token ids."""
        tokens = torch.tensor([self.epoch, *input_ids], dtype=torch.long).numpy().tobytes()
        digest = hashlib.blake2b(tokens, digest_size=8, key=str(self.seed).encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        length = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), length), self.pad_id, dtype=torch.long)
        masked = ids.clone()
        labels = torch.full_like(ids, -100)
        attention = torch.zeros((len(features), length), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            text = torch.tensor([f["input_ids"]], dtype=torch.long)
            ones = torch.ones_like(text)
            masked[row, :n], labels[row, :n] = (t[0] for t in mask_tokens(
                text, maskable_positions(text, ones, self.special_ids), self.probability, self.mask_id,
                self.generator(f["input_ids"]), self.split, self.vocab_size))
            attention[row, :n] = 1
        return {"input_ids": masked, "attention_mask": attention, "labels": labels}


class MaskEpoch(TrainerCallback):
    """Tells the collator which epoch begins, so that a text is masked anew each epoch (and the same way
    again when an interrupted run resumes within it: ``state.epoch`` is the epochs done, whole at the start
    of one and restored with a checkpoint)."""

    def __init__(self, collator: MNTPCollator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = math.floor(state.epoch or 0)


def mntp_loss(logits: torch.Tensor, labels: torch.Tensor, num_items: torch.Tensor | int | None = None) -> torch.Tensor:
    """Cross-entropy of each masked token at position ``i`` against the logits at ``i - 1`` (the next-token
    head, shifted by one), summed over the batch's masked tokens (positions labelled -100 do not count) and
    divided by ``num_items`` (default: their number, a mean). A batch with no masked token gives a zero loss
    that still reaches every parameter's graph."""
    shifted, targets = logits[:, :-1], labels[:, 1:]
    picked = targets != -100
    if not bool(picked.any()):
        return logits.sum() * 0.0
    total = F.cross_entropy(shifted[picked].float(), targets[picked], reduction="sum")
    return total / (picked.sum() if num_items is None else num_items)


# ---------------------------------------------------------------------------------- model


def check_causal_lm(name_or_path: str) -> str:
    """The local path or hub id of ``name_or_path`` once its config (alone: no weights are read) is a decoder-only
    causal LM whose attention FS attention can release; anything else is refused in one line."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    path = resolve_backbone_path(name_or_path)
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise FSLLMError(f"{path}: not a model folder (no config.json)")
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise FSLLMError(f"cannot load model {name_or_path!r}: {e}".splitlines()[0]) from e
    arch = (getattr(config, "architectures", None) or [config.model_type])[0]
    if getattr(config, "is_encoder_decoder", False) or config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise FSLLMError(f"{name_or_path}: {arch} is not a decoder-only causal LM; fsllm adapt trains a decoder's "
                         "next-token head (a Llama, Qwen, SmolLM2, Gemma ... model)")
    fs_attention.check_backbone(config)  # masked-LM encoders, linear attention: refused as FS models refuse them
    return path


def load_causal_lm(name_or_path: str, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A decoder-only causal LM with its next-token head, in ``dtype``; anything else is refused in one line
    (an encoder, an encoder-decoder, a base-model folder without a head, a layer FS attention cannot
    release: :func:`check_causal_lm`)."""
    from transformers import AutoModelForCausalLM

    path = check_causal_lm(name_or_path)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa", dtype=dtype,
                                                           output_loading_info=True)
    except (OSError, ValueError) as e:
        raise FSLLMError(f"cannot load model {name_or_path!r}: {e}".splitlines()[0]) from e
    head = model.get_output_embeddings()
    head_names = {n for n, p in model.named_parameters() if any(p is q for q in head.parameters())} if head else set()
    if head is None or head_names & set(info.get("missing_keys", ())):
        raise FSLLMError(f"{name_or_path}: the folder holds no next-token head (a base model saved without its LM "
                         "head?); fsllm adapt needs the causal LM's head, e.g. the checkpoint the base model came from")
    return model


def release_attention(model: PreTrainedModel, cfg: AdaptConfig) -> fs_attention.FSAttentionState:
    """Switch ``model``'s attention to FS attention and return the state a forward runs under (the
    per-layer modes of ``cfg``), as ``FSModel`` does for its backbone."""
    base = model.get_decoder() if hasattr(model, "get_decoder") else model
    fs = cfg.fs_config()
    impl = fs_attention.base_implementation_name(model.config._attn_implementation or "sdpa")
    model.set_attn_implementation(fs_attention.fs_implementation_name(impl))
    n = fs_attention.attention_layer_count(base, len(decoder_layers(base)))
    modes = ["causal"] * n
    for i in fs.resolve_layers(n):
        modes[i] = fs.attention
    lambdas = torch.full((n,), float(fs.decay_lambda)) if fs.attention == "decay" else None
    return fs_attention.FSAttentionState(modes, lambdas)


def released_logits(model: torch.nn.Module, state: fs_attention.FSAttentionState, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor) -> torch.Tensor:
    """The LM's logits ``[B, L, V]`` with released attention (``state``'s modes), positions counted over
    real tokens as ``FSModel.encode`` counts them. Fails if a layer never received the state (it would
    have computed causal attention)."""
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    forward_state = fs_attention.FSAttentionState(state.layer_modes, state.lambdas)  # a fresh mask cache per forward
    if model.training and torch.is_grad_enabled():
        fs_attention.carry_state_into_checkpointing(model)
    with fs_attention.active_state(forward_state):
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    forward_state.check_complete(len(forward_state.layer_modes), type(model).__name__)
    return out.logits


class MNTPTrainer(Trainer):
    """The stock ``Trainer`` with the MNTP loss of the LM under released attention (:func:`released_logits`,
    :func:`mntp_loss`): a mean over the step's masked tokens, as LLM2Vec's cross-entropy is.

    The mean is over the whole step's tokens, on every process together: the ``Trainer`` counts them
    (``num_items_in_batch``, summed over the processes), each process divides its sum by that count, and the
    loss is multiplied by the number of processes, which DDP's mean of the gradients divides out again. So a
    step on N processes is the step of one process given all their texts, not a mean of N batch means.
    """

    def __init__(self, *args, fs_state: fs_attention.FSAttentionState, **kwargs):
        super().__init__(*args, **kwargs)
        self.fs_state = fs_state
        # counted per step and over the processes by the Trainer (labels[..., 1:]: the first token is never masked)
        self.model_accepts_loss_kwargs = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits = released_logits(model, self.fs_state, inputs["input_ids"], inputs["attention_mask"])
        loss = mntp_loss(logits, inputs["labels"], num_items_in_batch)
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        return (loss, {"logits": logits}) if return_outputs else loss


# ---------------------------------------------------------------------------------- run


def _default_output(cfg: AdaptConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{Path(str(cfg.model)).name.replace('/', '_')}-mntp-{stamp}"


def _record(folder: Path) -> dict[str, Any] | None:
    path = folder / ADAPTATION_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FSLLMError(f"{path}: not readable ({e})".splitlines()[0]) from None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise FSLLMError(f"{path}: not an fsllm adaptation record")
    return record


def resolve_adapt_config(config: AdaptConfig | None, resume: bool, overrides: dict[str, Any]) -> AdaptConfig:
    """The configuration to adapt with, every check done before anything is written. Resuming reads the
    folder's own record, and refuses an override that would make the continued run another one."""
    if resume:
        out = overrides.get("output_dir") or (config.output_dir if config else None)
        if not out:
            raise FSLLMError("--resume needs the adapted folder (--output)")
        record = _record(Path(out))
        if record is None:
            raise FSLLMError(f"{out}: nothing to resume (no {ADAPTATION_FILE})")
        cfg = AdaptConfig.from_dict(record["config"])
        changed = sorted(k for k, v in overrides.items() if k != "output_dir" and getattr(cfg, k, object()) != v)
        if changed:
            raise FSLLMError(f"--resume continues the adaptation as {Path(out) / ADAPTATION_FILE} says and cannot "
                             f"change {', '.join(changed)}; start a new one with another --output")
        cfg.output_dir = str(out)
        return cfg
    cfg = dataclasses.replace(config, **overrides) if config is not None else AdaptConfig(**overrides)
    if cfg.precision == "auto":  # resolved once, so the record says what the run used
        cfg.precision, why = resolve_precision("auto")
        logger.warning("precision auto: %s (%s)", cfg.precision, why)
    if cfg.precision == "bf16" and (slow := emulated_bf16("precision bf16")):
        logger.warning(slow)
    if cfg.precision == "fp16" and not torch.cuda.is_available():
        raise FSLLMError("precision fp16 needs a CUDA GPU; on a CPU use bf16 or fp32")
    if several_processes() and not cfg.output_dir:
        raise FSLLMError("with several processes, pass --output (each process must name the same folder)")
    out = Path(cfg.output_dir) if cfg.output_dir else _default_output(cfg)
    # process 0 alone writes the folder: the others would find it begun by then
    if is_main_process() and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FSLLMError(f"{out} already exists and is not empty: pass --resume to continue an adaptation there, "
                         "or another --output")
    cfg.output_dir = str(out)
    return cfg


def last_adapter_checkpoint(folder: Path) -> str | None:
    """Newest ``checkpoint-N`` with its trainer state and adapter weights written (a run killed while writing
    one leaves it without ``trainer_state.json``, which the Trainer writes last)."""
    if not folder.is_dir():
        return None
    found = [(step, d) for d in folder.iterdir() if (step := checkpoint_step(d)) is not None
             and (d / TRAINER_STATE_FILE).is_file() and (d / ADAPTER_WEIGHTS).is_file()]
    return str(max(found)[1]) if found else None


def _features(texts: list[str], tokenizer, max_length: int, special_ids: Sequence[int]) -> tuple[list[dict], int]:
    """Tokenised texts (special tokens as the tokenizer adds them, cut at ``max_length``), and how many
    were dropped for having no maskable token."""
    import datasets

    feats, dropped = [], 0
    for text in texts:
        ids = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
        t = torch.tensor([ids])
        if not bool(maskable_positions(t, torch.ones_like(t), special_ids).any()):
            dropped += 1
            continue
        feats.append({"input_ids": ids})
    return datasets.Dataset.from_list(feats) if feats else None, dropped


def adapt(config: AdaptConfig | None = None, *, resume: bool = False, callbacks: Sequence[TrainerCallback] = (),
          **overrides: Any) -> Path:
    """Adapt a decoder to released attention by MNTP with LoRA; write the merged causal-LM folder, return its path.

    ``adapt(AdaptConfig(model=..., data=...))`` or ``adapt(model=..., text_file=...)``. The folder holds the
    weights, the tokenizer and ``fsllm_adaptation.json`` (the settings, the steps, the first and last logged loss);
    ``fsllm train --model FOLDER`` reads it as a backbone. With ``resume=True`` and the ``output_dir`` of an
    interrupted adaptation, training continues from its last checkpoint with its saved configuration.
    ``callbacks`` are passed to the ``Trainer`` with fsllm's own (the log written as training goes).
    Under ``torchrun`` / ``accelerate launch`` every process calls it with the same ``output_dir``; process 0
    writes the folder, and N processes with ``batch_size`` B adapt as one process with N*B does
    (``MNTPCollator``, ``MNTPTrainer`` in this module).
    """
    cfg = resolve_adapt_config(config, resume, overrides)
    out = Path(cfg.output_dir)
    if resume and (_record(out) or {}).get("complete"):
        logger.warning("%s: the adaptation is complete already", out)
        return out
    check_causal_lm(cfg.model)  # before the data is read: a wrong model is the cheaper mistake to report
    set_seed(cfg.seed)
    texts = training_texts(cfg)
    tokenizer = load_tokenizer(cfg.model)
    mask_id = mask_token_id(tokenizer, cfg.mask_token)
    special = [i for i in tokenizer.all_special_ids if i is not None]
    dataset, dropped = _features(texts, tokenizer, cfg.max_length, special)
    if dataset is None:
        raise DataError(f"{cfg.text_file or cfg.data}: no text has a token to mask (each is one token or special "
                        "tokens only)")
    if dropped:
        logger.warning("%d of %d texts have no token to mask (one token long) and are left out", dropped, len(texts))
    model = load_causal_lm(cfg.model)
    state = release_attention(model, cfg)
    lora = lora_config(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                       targets=cfg.lora_target_modules)
    model = add_lora(model, lora)
    # the folder is written only once the data and the model have loaded: a bad input leaves nothing behind;
    # under torchrun / accelerate launch process 0 writes it, and the Trainer (DDP) keeps the weights in step
    main = is_main_process()
    record = {"method": "MNTP (LLM2Vec masked next-token prediction) with LoRA, merged", "complete": False,
              "config": cfg.to_dict(), "texts": len(dataset), "mask_token_id": mask_id}
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            atomic.write_text(out / ADAPTATION_FILE, json.dumps(record, indent=2))
    args = TrainingArguments(
        output_dir=str(out / CHECKPOINTS_DIR), max_steps=cfg.steps, per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate, lr_scheduler_type="linear", seed=cfg.seed, data_seed=cfg.seed,
        logging_steps=cfg.logging_steps, logging_first_step=True, save_strategy="steps", save_steps=cfg.save_steps,
        save_total_limit=1, eval_strategy="no", report_to="none", remove_unused_columns=False,
        restore_callback_states_from_checkpoint=True,  # the training clock's seconds so far
        dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(), bf16=cfg.precision == "bf16",
        fp16=cfg.precision == "fp16", disable_tqdm=False,
    )
    collator = MNTPCollator(tokenizer.pad_token_id, mask_id, special, cfg.mask_probability, cfg.seed,
                            FULL_MASKING if cfg.full_masking else BERT_SPLIT, len(tokenizer))
    trainer = MNTPTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                          callbacks=[JsonlLogCallback(out / TRAIN_LOG_FILE), TrainingClock(), MaskEpoch(collator),
                                     StopOnSignal(), *callbacks],
                          fs_state=state)
    checkpoint = last_adapter_checkpoint(out / CHECKPOINTS_DIR) if resume else None
    if resume and main:
        _truncate_log(out / TRAIN_LOG_FILE, checkpoint_step(checkpoint) if checkpoint else 0)
        logger.info("resuming from %s", checkpoint or "the beginning (no complete checkpoint yet)")
    t0 = time.time()
    train_stopping_on_signal(trainer, checkpoint, f"continue with `fsllm adapt --resume --output {out}`")
    seconds = time.time() - t0
    timing = train_timing(trainer, seconds, checkpoint)  # the whole run's seconds, resumed or not
    if not main:
        return out
    merged = model.merge_and_unload()
    merged.set_attn_implementation(impl := fs_attention.base_implementation_name(merged.config._attn_implementation))
    merged.save_pretrained(out)
    load_tokenizer_files(cfg.model).save_pretrained(out)
    # the logged losses (each the mean since the previous log) span a resumed run's whole history, which
    # ``result.training_loss`` (the steps of this call only) does not
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    record.update(complete=True, steps=trainer.state.global_step, train_seconds=timing.pop("seconds"),
                  train_seconds_last_call=round(seconds, 1), **timing,
                  loss_first=losses[0] if losses else None, loss_last=losses[-1] if losses else None,
                  attn_implementation=impl)
    atomic.write_text(out / ADAPTATION_FILE, json.dumps(record, indent=2))
    shutil.rmtree(out / CHECKPOINTS_DIR, ignore_errors=True)
    return out


def load_tokenizer_files(name_or_path: str):
    """The backbone's tokenizer as its files say (no pad token added), to save beside the adapted weights."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_backbone_path(name_or_path))
