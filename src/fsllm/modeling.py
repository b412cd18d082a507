"""FS models: a decoder backbone with released attention, pooling and a classification head.

``FSForSequenceClassification`` pools the final hidden states; ``FSForTokenClassification``
classifies every token. Both are ``PreTrainedModel`` subclasses with their own config
(``FSLLMConfig``, ``model_type = "fsllm"``) registered with ``AutoConfig`` and
``AutoModelFor{Sequence,Token}Classification`` when ``fsllm`` is imported, so a saved folder
loads with ``AutoModelFor*.from_pretrained`` and ``transformers.pipeline()``, and
``push_to_hub`` / ``from_pretrained("owner/name")`` go through the Hub as for any model.

Saving and loading a model folder (the small kind and the merged one, the Hub) are ``FSModel``'s too,
from :class:`fsllm.persistence.FolderMixin`, so that this module reads as the model: the config, the
backbone with released attention (``encode``), pooling, the head and the loss (the two ``forward``).
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from peft import PeftModel
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    PreTrainedModel,
)
from transformers.modeling_outputs import (
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

from . import attention as fs_attention
from .backbones import (
    add_lora,
    base_model_of,
    decoder_layers,
    is_quantized,
    load_backbone,
    load_tokenizer,
    lora_config,
    output_embedding_rows,
)
from .config import ATTENTION_MODES, FSConfig, FSLLMConfig, dtype_name
from .errors import ConfigError, ModelFolderError
from .fast_dropout import use_fast_lora_dropout

# the folder's file names (a module of their own); importable from here too, where code outside the package finds them
from .filenames import ADAPTER_DIR, CONFIG_NAME, HEAD_NAME, LEGACY_CONFIG_NAME, MODEL_CARD_NAME  # noqa: F401
from .fused_lora import use_fused_lora
from .heads import ClassificationHead, pool

# a model folder's saving and loading (FSModel's FolderMixin); these names are importable from here too
from .persistence import MODEL_CLASSES, FolderMixin, learned_lambdas, load_config, portable_backbone_ref  # noqa: F401
from .prompting import append_prompt, label_word_ids, prompt_token_ids
from .repetition import last_copy, repeat_sequence


def _inverse_softplus(x: float) -> float:
    # softplus(y) = x  <=>  y = log(exp(x) - 1); stable for small and large x
    return x + math.log(-math.expm1(-x)) if x > 0 else -30.0


def _reduce_loss(total: torch.Tensor, count: torch.Tensor | int, num_items_in_batch: torch.Tensor | int | None) -> torch.Tensor:
    """A loss summed over a batch's label values, divided by ``num_items_in_batch`` when the ``Trainer``
    gives it, else by this batch's own ``count`` (a mean, as a model called by hand returns).

    The ``Trainer`` passes ``num_items_in_batch`` to a model that accepts loss keyword arguments: the
    label values that are not -100 counted over the whole optimizer step (every accumulated batch and,
    by default, every process). It then neither divides the loss by the accumulation steps nor lets
    DDP's gradient mean shrink it (it multiplies by the number of processes): a local mean would come
    out N times too large on N processes. Sum over the global count is exact in both cases.
    """
    if num_items_in_batch is None:
        return total / (count.clamp(min=1) if torch.is_tensor(count) else max(int(count), 1))
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


class FSModel(FolderMixin, PreTrainedModel):
    """Shared machinery of the two FS task models; use one of the subclasses (or ``load_model``)."""

    config_class = FSLLMConfig
    base_model_prefix = "backbone"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    #: the forwards honour ``num_items_in_batch`` (see ``_reduce_loss``): the ``Trainer`` reads this flag
    accepts_loss_kwargs = True
    # what training changes stays fp32 when a merged folder loads in bf16 or fp16 (its config's dtype)
    _keep_in_fp32_modules_strict = [r"^head\.", r"^fs_lambda_raw$"]
    task: str = ""

    def __init__(self, config: FSLLMConfig, backbone: PreTrainedModel | None = None):
        """Build the model from ``config``.

        ``backbone`` is an already loaded decoder (its weights are kept); without it the backbone
        is built from ``config.decoder_config`` with fresh weights, which is what ``from_pretrained``
        of a merged folder does before it loads every weight from ``model.safetensors``.
        """
        super().__init__(config)
        if self.task and config.task != self.task:
            raise ModelFolderError(f"{type(self).__name__} is a {self.task} model; the config is for a {config.task} model")
        if config.problem_type == "regression" and config.num_labels != 1:
            # MSE against [B] targets would broadcast over [B, num_labels] logits without a word
            raise ConfigError(f"problem_type='regression' predicts one value: num_labels must be 1, got {config.num_labels}")
        fs_config = config.fs_config
        self.fs_config = fs_config
        self.num_labels = config.num_labels
        if config.label2id is None:
            config.label2id = {v: k for k, v in config.id2label.items()}

        if backbone is None:
            impl = config.decoder_config._attn_implementation or config.backbone_attn_implementation
            backbone = AutoModel.from_config(config.decoder_config, attn_implementation=fs_attention.base_implementation_name(impl))
        base = base_model_of(backbone)
        fs_attention.check_backbone(base.config)  # refuse what FS attention cannot express, at wrap time
        config.decoder_config = base.config
        config.backbone_attn_implementation = fs_attention.base_implementation_name(base.config._attn_implementation or "sdpa")
        # Causal mode goes through the same wrapper too, so padding is handled the
        # same way in every mode (and fs_layers can mix modes).
        base.set_attn_implementation(fs_attention.fs_implementation_name(config.backbone_attn_implementation))
        # one mode per attention layer index (= per decoder layer, but for LongCat-Flash's two attentions per layer)
        self.num_layers = fs_attention.attention_layer_count(base, len(decoder_layers(base)))
        self.fs_layer_ids = fs_config.resolve_layers(self.num_layers)
        modes = ["causal"] * self.num_layers
        for i in self.fs_layer_ids:
            modes[i] = fs_config.attention
        self._layer_modes = modes
        # run-time attention settings that are not saved (see set_attention and observe_masks)
        self.decay_horizon_bias: float | None = None
        self._mask_observer: Callable[[int | None, torch.Tensor | None], None] | None = None

        if fs_config.attention == "decay":
            init = torch.full((self.num_layers,), float(fs_config.decay_lambda), dtype=torch.float32)
            if fs_config.learnable_lambda:
                raw = torch.full_like(init, _inverse_softplus(float(fs_config.decay_lambda)))
                self.fs_lambda_raw = nn.Parameter(raw)
            else:
                self.register_buffer("fs_lambda_const", init, persistent=False)

        if fs_config.full_finetune:
            if is_quantized(base):
                raise ConfigError("full_finetune trains the backbone's weights, which a quantized backbone cannot")
            # every weight trains, so the model's folder is the merged kind: it holds them all
            config.merged = True
        for p in base.parameters():
            p.requires_grad_(fs_config.full_finetune)
        if fs_config.use_lora and not config.merged:
            # attention and dense projections by default; expert weights only when named (see lora_config)
            lora = lora_config(base, r=fs_config.lora_r, alpha=fs_config.lora_alpha, dropout=fs_config.lora_dropout,
                               targets=fs_config.lora_target_modules, use_rslora=fs_config.use_rslora,
                               use_dora=fs_config.use_dora)
            base = add_lora(base, lora)
            # PEFT's per-projection dropout dominates a CPU step; same statistics, cheaper masks
            use_fast_lora_dropout(base)
            # the LoRA update as one multiply-add (the same function, fewer passes over the output)
            use_fused_lora(base)
        if next(base.parameters()).device.type != "meta":
            # The backbone holds its weights (pretrained, or initialised by its own from_config) and LoRA
            # its PEFT init (B = 0): post_init must not initialise them again (the backbone's _init_weights
            # would draw LoRA B from a normal, so the untrained model would no longer be the backbone).
            for module in base.modules():
                module._is_hf_initialized = True
        if fs_config.prompt is not None or fs_config.head == "verbalizer":
            self._check_prompt_settings(config, built=True)
        self.backbone = base
        self.head = ClassificationHead(
            config.decoder_config.hidden_size,
            self.num_labels,
            kind=fs_config.head,
            hidden=fs_config.head_hidden_size,
            dropout=fs_config.head_dropout,
        ).to(torch.float32)  # trained, so fp32 on a bf16/fp16 backbone too, as PEFT keeps LoRA (autocast_adapter_dtype)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # Only what fsllm adds: the backbone has its own initialisation (or pretrained weights), and
        # PEFT initialises LoRA when it injects it.
        if isinstance(module, ClassificationHead):
            module.reset_parameters()
        elif module is self and hasattr(self, "fs_lambda_raw"):
            with torch.no_grad():
                self.fs_lambda_raw.fill_(_inverse_softplus(float(self.fs_config.decay_lambda)))

    @staticmethod
    def _check_prompt_settings(config: FSLLMConfig, built: bool) -> None:
        """A prompt and a verbalizer head are for sequence models, and (``built``) need their tokens in the config."""
        fs = config.fs_config
        what = "a prompt" if fs.prompt is not None else "head 'verbalizer'"
        if config.task != "sequence":
            raise ConfigError(f"{what} is for sequence tasks (a token model labels the text's own tokens)")
        if fs.head == "verbalizer" and config.problem_type == "regression":
            raise ConfigError("head 'verbalizer' scores label words: a regression model has none")
        if not built:
            return
        if fs.prompt is not None and not config.prompt_ids:
            raise ConfigError("the config has a prompt but no prompt_ids: build the model with from_backbone")
        if fs.head == "verbalizer":
            if not config.verbalizer_ids or len(config.verbalizer_ids) != config.num_labels:
                raise ConfigError("head 'verbalizer' needs one verbalizer_ids entry per label: build the model with "
                                  "from_backbone")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_backbone(
        cls,
        backbone: str | PreTrainedModel = "smollm2-135m",
        num_labels: int | None = None,
        fs_config: FSConfig | None = None,
        id2label: dict[int, str] | None = None,
        label2id: dict[str, int] | None = None,
        problem_type: str | None = None,
        tokenizer: Any = None,
        **load_kwargs: Any,
    ) -> FSModel:
        """Build an FS model on a backbone: a built-in name, a local folder, a hub name or a loaded model.

        ``problem_type`` is the config's (``"multi_label_classification"``, ``"regression"``; ``None``:
        single label). ``tokenizer``: the backbone's, to fix the tokens of ``fs_config.prompt`` and of the
        verbalizer's label words (default: loaded from the backbone's name). ``load_kwargs`` go to
        ``load_backbone`` (e.g. ``attn_implementation="eager"``).
        """
        if cls.task == "":
            raise TypeError("use FSForSequenceClassification or FSForTokenClassification")
        if num_labels is None:
            if id2label is None:
                raise ValueError("give num_labels or id2label")
            num_labels = len(id2label)
        id2label = {int(k): v for k, v in (id2label or {i: f"LABEL_{i}" for i in range(num_labels)}).items()}
        if len(id2label) != num_labels:
            raise ValueError(f"id2label has {len(id2label)} labels, num_labels is {num_labels}")
        if isinstance(backbone, str):
            ref = backbone
            backbone = load_backbone(backbone, **load_kwargs)
        else:
            # a multimodal wrapper's text config may not know the checkpoint it came from: the wrapper's does
            ref = getattr(backbone.config, "_name_or_path", "") or base_model_of(backbone).config._name_or_path
        base = base_model_of(backbone)
        quantized = is_quantized(base)
        impl = fs_attention.base_implementation_name(base.config._attn_implementation or "sdpa")
        config = FSLLMConfig(
            task=cls.task,
            fs=(fs_config or FSConfig()).to_dict(),
            backbone=portable_backbone_ref(ref) if ref else None,
            decoder_config=base.config,
            backbone_attn_implementation=impl,
            # a config sets its implementation on its sub-configs: left unset, it would reset the backbone's
            attn_implementation=impl,
            id2label=id2label,
            label2id=label2id or {v: k for k, v in id2label.items()},
            problem_type=problem_type,
            backbone_quantization=load_kwargs.get("quantize") if quantized else None,
            backbone_dtype=None if quantized else dtype_name(base),
        )
        fs = config.fs_config
        if fs.prompt is None and fs.head != "verbalizer":
            return cls(config, backbone=backbone)
        # the prompt's and the label words' tokens are fixed now, with the backbone's tokenizer, and saved
        cls._check_prompt_settings(config, built=False)
        if tokenizer is None:
            if not ref:
                raise ConfigError("a prompt or a verbalizer head needs the backbone's tokenizer: pass tokenizer=")
            tokenizer = load_tokenizer(ref)
        if fs.prompt is not None:
            config.prompt_ids = prompt_token_ids(tokenizer, fs.prompt)
        if fs.head == "verbalizer":
            config.verbalizer_ids = label_word_ids(tokenizer, id2label, fs.label_words)
        model = cls(config, backbone=backbone)
        if fs.head == "verbalizer":  # LoRA leaves the embeddings alone: the rows are the backbone's
            model.head.start_from_rows(output_embedding_rows(backbone, ref, config.verbalizer_ids))
        return model

    # ------------------------------------------------------------------ views of the config
    @property
    def id2label(self) -> dict[int, str]:
        return self.config.id2label

    @property
    def label2id(self) -> dict[str, int]:
        return self.config.label2id

    @property
    def backbone_ref(self) -> str | None:
        return self.config.backbone

    @property
    def base_attn_implementation(self) -> str:
        return self.config.backbone_attn_implementation

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
        repeated = None
        if self.fs_config.repeat > 1:  # sequence repetition: the backbone reads the text k times (fsllm.repetition)
            repeated = repeat_sequence(input_ids, attention_mask, self.fs_config.repeat)
            input_ids, attention_mask = repeated.input_ids, repeated.attention_mask
            self._check_repeated_length(input_ids.shape[1])
        # Positions count real tokens only, so left padding does not shift RoPE.
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        state = fs_attention.FSAttentionState(
            self._layer_modes,
            self.fs_lambdas,
            decay_horizon_bias=self.decay_horizon_bias,
            mask_observer=self._mask_observer,
        )
        if self.training and torch.is_grad_enabled():  # a checkpointed layer's recomputation must see the state too
            fs_attention.carry_state_into_checkpointing(self.backbone)
        # the state reaches attention through a context variable: no reliance on layers passing **kwargs down
        with fs_attention.active_state(state):
            out = self.backbone(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
            )
        # a layer that never saw the state computed causal attention: fail rather than train on it
        state.check_complete(self.num_layers, type(self._base_model()).__name__, lambda: decoder_layers(self.backbone))
        return out.last_hidden_state if repeated is None else last_copy(out.last_hidden_state, repeated)

    def _check_repeated_length(self, length: int) -> None:
        """Warn (once per model) when the repeated sequence runs past the positions the backbone was
        trained on: RoPE computes them, but what the model does there is untested."""
        limit = getattr(self.config.decoder_config, "max_position_embeddings", None)
        if limit and length > limit and not getattr(self, "_warned_repeat_length", False):
            self._warned_repeat_length = True
            warnings.warn(f"repeat={self.fs_config.repeat}: the repeated input has {length} tokens, more than the "
                          f"backbone's max_position_embeddings ({limit}); lower max_length or repeat", stacklevel=3)

    # ------------------------------------------------------------------ run-time attention
    def set_attention(
        self,
        mode: str | None = None,
        layers: str | list[int] | None = None,
        implementation: str | None = None,
        decay_horizon_bias: float | None = None,
    ) -> None:
        """Switch the attention of this model in place, on the same weights.

        Comparing attention variants (benchmarks, ablations at inference) on one set of weights
        would otherwise mean rebuilding the model per variant. ``mode`` (``"bidirectional"``,
        ``"causal"`` or ``"decay"``) goes to ``layers`` (``FSConfig.fs_layers``' forms: ``"all"``,
        ``"last:N"``, ``"first:N"`` or indices), every other layer becomes causal; ``None`` keeps
        the current mode or layers. ``implementation`` is the backbone kernel FS attention wraps
        (``"sdpa"``, ``"eager"``, ``"flex_attention"``). ``decay_horizon_bias`` is the flex
        path's decay horizon (``attention.decay_horizon``; ``math.inf``: every future key), and
        ``None`` keeps the current one.

        Only the forward changes: ``save_pretrained`` writes the attention the model was built
        with (its parameters, e.g. a decay model's lambdas, are those of that configuration), so
        switch back, or rebuild the model, before saving a variant. Decay needs lambdas: a model
        built without ``attention="decay"`` has none.
        """
        if mode is not None and mode not in ATTENTION_MODES:
            raise ConfigError(f"attention must be one of {ATTENTION_MODES}, got {mode!r}")
        if mode == "decay" and self.fs_lambdas is None:
            raise ConfigError("decay attention needs lambdas: build the model with FSConfig(attention='decay')")
        if decay_horizon_bias is not None and not decay_horizon_bias > 0:
            raise ConfigError(f"decay_horizon_bias must be > 0 (math.inf: no horizon), got {decay_horizon_bias!r}")
        if mode is not None or layers is not None:
            current = next((m for m in self._layer_modes if m != "causal"), self.fs_config.attention)
            ids = self.fs_layer_ids if layers is None else FSConfig(fs_layers=layers).resolve_layers(self.num_layers)
            modes = ["causal"] * self.num_layers
            for i in ids:
                modes[i] = mode or current
            self.fs_layer_ids, self._layer_modes = ids, modes
        if implementation is not None:
            name = fs_attention.fs_implementation_name(implementation)
            self._base_model().set_attn_implementation(name)
            self.config.backbone_attn_implementation = fs_attention.base_implementation_name(name)
        if decay_horizon_bias is not None:
            self.decay_horizon_bias = decay_horizon_bias

    @property
    def layer_modes(self) -> list[str]:
        """The attention mode of each decoder layer in the forward (a copy)."""
        return list(self._layer_modes)

    @contextlib.contextmanager
    def observe_masks(self, observer: Callable[[int | None, torch.Tensor | None], None]) -> Iterator[None]:
        """Within the block, every forward calls ``observer(layer_idx, mask)`` per layer (see
        ``FSAttentionState.mask_observer``): the way to count or measure the masks a forward builds."""
        previous, self._mask_observer = self._mask_observer, observer
        try:
            yield
        finally:
            self._mask_observer = previous

    # ------------------------------------------------------------------ parameters
    def trainable_parameters(self) -> tuple[int, int]:
        """``(trainable, total)`` parameter counts."""
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return trainable, total

    def print_trainable_parameters(self) -> None:
        """Print the trainable and total parameter counts, in PEFT's format."""
        trainable, total = self.trainable_parameters()
        print(f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}")

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **kwargs: Any) -> None:
        """Passed to the backbone, non-reentrant (the frozen embeddings give no input that requires grad).

        ``kwargs`` (``every_n_layers``, ``offload``) are those of ``activation_checkpointing_enable``:
        the Trainer of transformers >= 5 calls that, and it hands them to this override; without
        them ``TrainingArguments(gradient_checkpointing=True)`` failed with a TypeError.
        """
        base = self._base_model()
        ckpt_kwargs = gradient_checkpointing_kwargs or {"use_reentrant": False}
        if hasattr(base, "activation_checkpointing_enable"):
            base.activation_checkpointing_enable(activation_checkpointing_kwargs=ckpt_kwargs, **kwargs)
        else:  # transformers before activation_checkpointing_enable
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs, **kwargs)

    def _base_model(self) -> PreTrainedModel:
        return self.backbone.get_base_model() if isinstance(self.backbone, PeftModel) else self.backbone

class FSForSequenceClassification(FSModel):
    """Sentence-level classification: released attention -> pooling -> head.

    ``config.problem_type`` picks the loss: cross-entropy (single label), binary cross-entropy over
    multi-hot ``labels`` (multi-label), or MSE on standardised targets (regression, ``num_labels=1``).
    """

    task = "sequence"

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        **_: Any,
    ) -> SequenceClassifierOutput:
        """Logits ``[B, num_labels]`` (in the data's units for regression), and the loss when ``labels`` are given.

        The loss is the mean over this batch's label values, or, given ``num_items_in_batch`` (the
        ``Trainer``'s count of label values over every process and accumulated batch, see
        :func:`_reduce_loss`), their sum divided by that count.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if self.config.prompt_ids:  # the task prompt after each text (fsllm.prompting): pooled with it
            input_ids, attention_mask = append_prompt(input_ids, attention_mask, self.config.prompt_ids)
        # pooled in the head's dtype: a bf16 backbone's hidden states are summed in fp32 for the fp32 head
        hidden = self.encode(input_ids, attention_mask).to(self.head.out.weight.dtype)
        logits = self.head(pool(hidden, attention_mask, self.fs_config.pooling))
        problem = self.config.problem_type
        loss = None
        if problem == "regression":
            # The head learns the standardised target (a unit-scale output suits its initialisation
            # and the learning rate whatever the data's units); the logits are mapped back here, not
            # by the caller, so pipeline() and every other reader get values in the data's units.
            mean, std = float(self.config.target_mean), float(self.config.target_std)
            z = logits.float()
            if labels is not None:
                loss = _reduce_loss(F.mse_loss(z.squeeze(-1), (labels.float().reshape(-1) - mean) / std, reduction="sum"),
                                    labels.numel(), num_items_in_batch)
            logits = (z * std + mean).to(logits.dtype)
        elif labels is not None and problem == "multi_label_classification":
            loss = _reduce_loss(F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="sum"),
                                labels.numel(), num_items_in_batch)
        elif labels is not None:
            loss = _reduce_loss(F.cross_entropy(logits.float(), labels, reduction="sum"), labels.numel(), num_items_in_batch)
        return SequenceClassifierOutput(loss=loss, logits=logits)


class FSForTokenClassification(FSModel):
    """Token-level classification (NER): released attention -> per-token head."""

    task = "token"

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        **_: Any,
    ) -> TokenClassifierOutput:
        """Logits ``[B, L, num_labels]``, and the loss over the labelled positions (not -100) when ``labels`` are given.

        The loss is the mean over this batch's labelled tokens, or, given ``num_items_in_batch`` (the
        ``Trainer``'s count of labelled tokens over every process and accumulated batch), their sum
        divided by that count: every token then weighs the same whichever batch or process it is in.
        """
        hidden = self.encode(input_ids, attention_mask)
        logits = self.label_whitespace(input_ids, attention_mask,
                                       self.pipeline_logits(input_ids, attention_mask, self.head(hidden), labels))
        loss = None
        if labels is not None:
            flat = labels.reshape(-1)
            total = F.cross_entropy(logits.float().reshape(-1, self.num_labels), flat, ignore_index=-100, reduction="sum")
            loss = _reduce_loss(total, (flat != -100).sum(), num_items_in_batch)
        return TokenClassifierOutput(loss=loss, logits=logits)

    #: eval-mode logits ordered for pipeline() (``fsllm.decoding.pipeline_logits``); fsllm's own readers
    #: read the head's logits within ``fsllm.decoding.raw_logits`` (a per-thread switch, not this flag)
    pipeline_decoding: bool = True

    def pipeline_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, logits: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Eval mode: the logits with each word's decoded tag on top, so ``pipeline()`` finds fsllm's entities.

        The tag is the one the configured ``FSConfig.ner_decoding`` gives the word (see
        ``fsllm.decoding.pipeline_logits``). In training, with ``labels`` (a loss reads the head's own
        logits), and for fsllm's own readers, ``logits`` as they are."""
        from .decoding import pipeline_logits, reads_raw

        if self.training or labels is not None or reads_raw(self):
            return logits

        return pipeline_logits(self, input_ids, attention_mask, logits)

    def _bio_labels(self) -> tuple[torch.Tensor, int] | None:
        """``(is_inside per label, index of O)`` when the labels are BIO tags, else ``None``."""
        names = [self.id2label[i] for i in range(self.num_labels)]
        if "O" not in names or not all(n == "O" or n[:2] in ("B-", "I-") for n in names):
            return None
        return torch.tensor([n.startswith("I-") for n in names]), names.index("O")

    def label_whitespace(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, logits: torch.Tensor
    ) -> torch.Tensor:
        """Logits for the whitespace-only tokens (``config.whitespace_token_ids``) from the token after them.

        Such a token is the space between two words: it is inside an entity when the next word
        continues one (its ``I-`` tag is kept), else ``O`` (the next token's top label and ``O``
        swap places, so the score stays). No word owns these tokens, so this changes neither
        training nor fsllm's word labels; it makes ``pipeline()``'s words, one of which such a token
        is, carry the entities fsllm predicts. Without BIO labels or such ids, and in training, it
        returns ``logits``.
        """
        ids = self.config.whitespace_token_ids
        if self.training:  # the loss never reads these positions: spare training the work
            return logits
        bio = self._bio_labels() if ids and logits.shape[1] > 1 else None
        if bio is None:
            return logits
        inside, o = bio
        has_next = torch.ones_like(input_ids[:, 1:], dtype=torch.bool) if attention_mask is None else attention_mask[:, 1:].bool()
        here = torch.isin(input_ids[:, :-1], torch.tensor(ids, device=input_ids.device)) & has_next
        if not bool(here.any()):
            return logits
        nxt = logits[:, 1:]
        top = nxt.argmax(-1, keepdim=True)
        swapped = nxt.scatter(-1, top, nxt[..., o : o + 1]).index_copy(-1, torch.tensor([o], device=nxt.device),
                                                                       nxt.gather(-1, top))
        continues = inside.to(nxt.device)[top.squeeze(-1)]
        space = torch.where(continues.unsqueeze(-1), nxt, swapped)
        head = torch.where(here.unsqueeze(-1), space, logits[:, :-1])
        return torch.cat([head, logits[:, -1:]], dim=1)


MODEL_CLASSES.update(sequence=FSForSequenceClassification, token=FSForTokenClassification)


def load_model(folder: str | os.PathLike, **kwargs: Any) -> FSModel:
    """Load any saved FS model, whatever its task (a local folder or a Hub id)."""
    return FSModel.from_pretrained(folder, **kwargs)


def register_auto_classes() -> None:
    """Make ``AutoConfig``, ``AutoModelFor{Sequence,Token}Classification`` and ``pipeline()`` know fsllm folders."""
    AutoConfig.register(FSLLMConfig.model_type, FSLLMConfig, exist_ok=True)
    AutoModelForSequenceClassification.register(FSLLMConfig, FSForSequenceClassification, exist_ok=True)
    AutoModelForTokenClassification.register(FSLLMConfig, FSForTokenClassification, exist_ok=True)


register_auto_classes()
