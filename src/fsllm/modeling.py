"""FS models: a decoder backbone with released attention, pooling and a classification head.

``FSForSequenceClassification`` pools the final hidden states; ``FSForTokenClassification``
classifies every token. Both follow the transformers conventions (``from_pretrained`` /
``save_pretrained``, ``SequenceClassifierOutput`` / ``TokenClassifierOutput``, ``-100``
ignored in labels) and keep LoRA as a real PEFT adapter, so a saved folder is small
(adapter + head) and the backbone is referenced, not copied.
"""

from __future__ import annotations

import copy
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from peft.utils import load_peft_weights
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import (
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

from . import attention as fs_attention
from .backbones import (
    base_model_of,
    decoder_layers,
    default_lora_targets,
    load_backbone,
)
from .config import FSConfig
from .errors import ModelFolderError
from .fast_dropout import use_fast_lora_dropout
from .heads import ClassificationHead, pool

CONFIG_NAME = "fsllm_config.json"
HEAD_NAME = "fsllm_head.safetensors"
MERGED_BACKBONE_DIR = "backbone"
FORMAT_VERSION = 1


def _inverse_softplus(x: float) -> float:
    # softplus(y) = x  <=>  y = log(exp(x) - 1); stable for small and large x
    return x + math.log(-math.expm1(-x)) if x > 0 else -30.0


class FSModel(nn.Module):
    """Shared machinery of the two FS task models; use one of the subclasses."""

    task: str = ""

    def __init__(
        self,
        backbone: PreTrainedModel,
        num_labels: int,
        fs_config: FSConfig | None = None,
        id2label: dict[int, str] | None = None,
        label2id: dict[str, int] | None = None,
        backbone_ref: str | None = None,
        inject_lora: bool = True,
    ):
        super().__init__()
        fs_config = fs_config or FSConfig()
        self.fs_config = fs_config
        self.num_labels = num_labels
        self.id2label = {int(k): v for k, v in (id2label or {i: f"LABEL_{i}" for i in range(num_labels)}).items()}
        self.label2id = label2id or {v: k for k, v in self.id2label.items()}
        if len(self.id2label) != num_labels:
            raise ValueError(f"id2label has {len(self.id2label)} labels, num_labels is {num_labels}")

        base = base_model_of(backbone)
        self.backbone_ref = backbone_ref or base.config._name_or_path
        self.base_attn_implementation = fs_attention.base_implementation_name(base.config._attn_implementation or "sdpa")
        # Causal mode goes through the same wrapper too, so padding is handled the
        # same way in every mode (and fs_layers can mix modes).
        base.set_attn_implementation(fs_attention.fs_implementation_name(self.base_attn_implementation))
        self.num_layers = len(decoder_layers(base))
        self.fs_layer_ids = fs_config.resolve_layers(self.num_layers)
        modes = ["causal"] * self.num_layers
        for i in self.fs_layer_ids:
            modes[i] = fs_config.attention
        self._layer_modes = modes

        dtype = next(base.parameters()).dtype
        if fs_config.attention == "decay":
            init = torch.full((self.num_layers,), float(fs_config.decay_lambda), dtype=torch.float32)
            if fs_config.learnable_lambda:
                raw = torch.full_like(init, _inverse_softplus(float(fs_config.decay_lambda)))
                self.fs_lambda_raw = nn.Parameter(raw)
            else:
                self.register_buffer("fs_lambda_const", init, persistent=False)

        for p in base.parameters():
            p.requires_grad_(False)
        if fs_config.use_lora and inject_lora:
            targets = fs_config.lora_target_modules or default_lora_targets(base)
            lora = LoraConfig(
                r=fs_config.lora_r,
                lora_alpha=fs_config.lora_alpha,
                lora_dropout=fs_config.lora_dropout,
                target_modules=targets,
                bias="none",
            )
            with warnings.catch_warnings():
                # PEFT calls a transformers property deprecated in 5.x; not actionable for users
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                base = get_peft_model(base, lora)
            # PEFT's per-projection dropout is ~30% of a CPU training step; same statistics, cheaper masks
            use_fast_lora_dropout(base)
        self.backbone = base
        hidden = base.config.hidden_size
        self.head = ClassificationHead(
            hidden, num_labels, kind=fs_config.head, hidden=fs_config.head_hidden_size, dropout=fs_config.head_dropout
        ).to(dtype)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_backbone(
        cls,
        backbone: str | PreTrainedModel = "smollm2-135m",
        num_labels: int | None = None,
        fs_config: FSConfig | None = None,
        id2label: dict[int, str] | None = None,
        label2id: dict[str, int] | None = None,
        **load_kwargs: Any,
    ) -> FSModel:
        """Build an FS model on a backbone: a built-in name, a local folder, a hub name or a loaded model.

        ``load_kwargs`` go to ``load_backbone`` (e.g. ``attn_implementation="eager"``).
        """
        if num_labels is None:
            if id2label is None:
                raise ValueError("give num_labels or id2label")
            num_labels = len(id2label)
        if isinstance(backbone, str):
            ref = backbone
            backbone = load_backbone(backbone, **load_kwargs)
        else:
            ref = None
        return cls(backbone, num_labels, fs_config, id2label, label2id, backbone_ref=ref)

    # ------------------------------------------------------------------ forward
    @property
    def fs_lambdas(self) -> torch.Tensor | None:
        """Per-layer decay rates (``None`` unless ``attention="decay"``)."""
        if hasattr(self, "fs_lambda_raw"):
            return F.softplus(self.fs_lambda_raw)
        return getattr(self, "fs_lambda_const", None)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states ``[B, L, H]`` of the backbone with the released mask."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        # Positions count real tokens only, so left padding does not shift RoPE.
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        state = fs_attention.FSAttentionState(self._layer_modes, self.fs_lambdas)
        out = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
            fs_attention=state,
        )
        # a layer that never saw the state computed causal attention: fail rather than train on it
        state.check_complete(decoder_layers(self.backbone), type(self._base_model()).__name__)
        return out.last_hidden_state

    # ------------------------------------------------------------------ parameters
    def trainable_parameters(self) -> tuple[int, int]:
        """``(trainable, total)`` parameter counts."""
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return trainable, total

    def print_trainable_parameters(self) -> None:
        trainable, total = self.trainable_parameters()
        print(f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}")

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Passed to the backbone (lets ``TrainingArguments(gradient_checkpointing=True)`` work)."""
        base = self._base_model()
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs or {"use_reentrant": False})

    def _base_model(self) -> PreTrainedModel:
        return self.backbone.get_base_model() if isinstance(self.backbone, PeftModel) else self.backbone

    @property
    def config(self):
        """The backbone's config (what HF ``Trainer`` and PEFT expect to find on a model)."""
        return self._base_model().config

    # ------------------------------------------------------------------ persistence
    def _trainable_state(self) -> dict[str, torch.Tensor]:
        state = {f"head.{k}": v.detach().contiguous() for k, v in self.head.state_dict().items()}
        if hasattr(self, "fs_lambda_raw"):
            state["fs_lambda_raw"] = self.fs_lambda_raw.detach().contiguous()
        return state

    def _meta(self, merged: bool) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "task": self.task,
            "model_class": type(self).__name__,
            "num_labels": self.num_labels,
            "id2label": {str(k): v for k, v in self.id2label.items()},
            "label2id": self.label2id,
            "fs_config": self.fs_config.to_dict(),
            "backbone": self.backbone_ref,
            "attn_implementation": self.base_attn_implementation,
            "merged": merged,
        }

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        tokenizer: PreTrainedTokenizerBase | None = None,
        merged: bool = False,
        **_: Any,
    ) -> None:
        """Write the FS config, label maps, head, LoRA adapter and a reference to the backbone.

        With ``merged=True`` the LoRA weights are merged into a copy of the backbone,
        which is written under ``backbone/``: one standalone folder that needs neither
        PEFT adapters nor the original backbone to load.
        """
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        save_file(self._trainable_state(), str(out / HEAD_NAME))
        if merged:
            base = self.backbone
            if isinstance(base, PeftModel):
                base = copy.deepcopy(base).merge_and_unload()
            base.config._attn_implementation_internal = self.base_attn_implementation
            base.save_pretrained(out / MERGED_BACKBONE_DIR)
            if tokenizer is not None:
                tokenizer.save_pretrained(out / MERGED_BACKBONE_DIR)
        elif isinstance(self.backbone, PeftModel):
            self.backbone.save_pretrained(str(out))
        (out / CONFIG_NAME).write_text(json.dumps(self._meta(merged), indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(out)

    @classmethod
    def from_pretrained(
        cls,
        model_directory: str | os.PathLike,
        backbone: str | PreTrainedModel | None = None,
        **load_kwargs: Any,
    ) -> FSModel:
        """Load a folder written by ``save_pretrained``.

        ``backbone`` overrides the saved reference (e.g. when the backbone moved).
        """
        folder = Path(model_directory)
        meta = read_model_meta(folder)
        model_cls = _MODEL_CLASSES.get(meta["model_class"], cls)
        if cls is not FSModel and model_cls is not cls:
            raise ModelFolderError(f"{folder}: holds a {meta['model_class']}, not a {cls.__name__}")
        fs_config = FSConfig.from_dict(meta["fs_config"])
        load_kwargs.setdefault("attn_implementation", meta.get("attn_implementation", "sdpa"))
        id2label = {int(k): v for k, v in meta["id2label"].items()}
        if meta.get("merged"):
            bb = load_backbone(str(folder / MERGED_BACKBONE_DIR), **load_kwargs)
            model = model_cls(bb, meta["num_labels"], fs_config, id2label, meta["label2id"], meta["backbone"], inject_lora=False)
        else:
            if backbone is None or isinstance(backbone, str):
                bb = load_backbone(backbone or meta["backbone"], **load_kwargs)
            else:
                bb = backbone
            model = model_cls(bb, meta["num_labels"], fs_config, id2label, meta["label2id"], meta["backbone"])
        model.load_trained_weights(folder)
        return model

    def load_trained_weights(self, folder: str | os.PathLike) -> None:
        """Load what training changes (LoRA adapter, head, learnable lambdas) from a saved folder.

        Used by ``from_pretrained`` and by the trainer to resume a run or restore its best checkpoint.
        """
        folder = Path(folder)
        if isinstance(self.backbone, PeftModel):
            try:
                weights = load_peft_weights(str(folder), device="cpu")
            except Exception as e:  # noqa: BLE001 - any failure here means a broken folder
                raise ModelFolderError(f"{folder}: cannot read the LoRA adapter: {e}".splitlines()[0]) from e
            result = set_peft_model_state_dict(self.backbone, weights)
            if getattr(result, "unexpected_keys", None):
                raise ModelFolderError(f"{folder}: adapter has unexpected keys {result.unexpected_keys[:3]}")
        path = folder / HEAD_NAME
        try:
            state = load_file(str(path))
        except Exception as e:  # noqa: BLE001
            raise ModelFolderError(f"{path}: cannot read the head weights: {e}".splitlines()[0]) from e
        if "fs_lambda_raw" in state:
            with torch.no_grad():
                self.fs_lambda_raw.copy_(state.pop("fs_lambda_raw"))
        head = {k[len("head.") :]: v for k, v in state.items()}
        try:
            self.head.load_state_dict(head)
        except RuntimeError as e:
            raise ModelFolderError(f"{path}: head does not match the config: {e}".splitlines()[0]) from e


class FSForSequenceClassification(FSModel):
    """Sentence-level classification: released attention -> pooling -> head."""

    task = "sequence"

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **_: Any,
    ) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.encode(input_ids, attention_mask)
        logits = self.head(pool(hidden, attention_mask, self.fs_config.pooling))
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


class FSForTokenClassification(FSModel):
    """Token-level classification (NER): released attention -> per-token head."""

    task = "token"

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **_: Any,
    ) -> TokenClassifierOutput:
        hidden = self.encode(input_ids, attention_mask)
        logits = self.head(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().reshape(-1, self.num_labels), labels.reshape(-1), ignore_index=-100)
        return TokenClassifierOutput(loss=loss, logits=logits)


_MODEL_CLASSES: dict[str, type[FSModel]] = {
    "FSForSequenceClassification": FSForSequenceClassification,
    "FSForTokenClassification": FSForTokenClassification,
}


def read_model_meta(folder: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``fsllm_config.json``; a clear ``ModelFolderError`` if it is missing or broken."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: no such model folder")
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise ModelFolderError(f"{folder}: not an fsllm model folder (no {CONFIG_NAME})")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFolderError(f"{path}: corrupt ({e})") from e
    missing = [k for k in ("task", "model_class", "num_labels", "id2label", "fs_config", "backbone") if k not in meta]
    if missing:
        raise ModelFolderError(f"{path}: missing fields {missing}")
    return meta


def load_model(folder: str | os.PathLike, **kwargs: Any) -> FSModel:
    """Load any saved FS model, whatever its task."""
    return FSModel.from_pretrained(folder, **kwargs)
