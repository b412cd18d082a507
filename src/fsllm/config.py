"""The configs: of an FS model (``FSConfig``, ``FSLLMConfig``) and of a training run (``TrainConfig``).

``FSConfig`` is what the FS method adds to a backbone (mask, pooling, head, LoRA): a plain
dataclass (PEFT style) so it prints, compares and round-trips through JSON; validation
happens in ``__post_init__`` so a bad value fails where it is written, not deep inside a
forward pass.

``FSLLMConfig`` is the transformers ``PreTrainedConfig`` (``model_type = "fsllm"``) that a
saved model folder carries as its ``config.json``: the ``FSConfig``, the task, the label maps
in the standard ``id2label`` / ``label2id`` fields, the backbone's reference and its full
config (so a merged folder builds without network). It is what lets ``AutoConfig``,
``AutoModelFor*Classification`` and ``pipeline()`` load an fsllm folder.

``TrainConfig`` is everything a training run needs, saved as the run folder's ``config.json``
(see ``fsllm.run``); the ``fsllm train`` options are generated from its fields and the
``FSConfig``'s, so a field is the one place a setting is defined.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .attention import SUPPORTED_IMPLEMENTATIONS
from .errors import ConfigError, FSLLMError

ATTENTION_MODES = ("bidirectional", "causal", "decay")
TASKS = ("sequence", "token")
POOLINGS = ("mean", "max", "last", "first")
HEADS = ("swiglu", "linear")
PROBLEM_TYPES = (None, "single_label_classification", "multi_label_classification", "regression")


@dataclass
class FSConfig:
    """How to release global features and classify.

    Attributes:
        attention: ``"bidirectional"`` (every token sees every real token; the paper's
            main setting), ``"causal"`` (the backbone unchanged: the "w/o FS" ablation; for a
            backbone bidirectional by its own config, e.g. Gemma 3 with
            ``use_bidirectional_attention=True``, that bidirectional attention) or
            ``"decay"`` (future keys at distance d get ``-decay_lambda * d`` added to their
            attention logit, i.e. weight ``exp(-lambda d)``).
        decay_lambda: lambda of ``decay`` mode (0 = bidirectional, large = causal).
        learnable_lambda: train one lambda per FS layer with the head, initialised at
            ``decay_lambda`` and kept >= 0 (stored as softplus of a free parameter).
        fs_layers: decoder layers that get the released mask; the others stay causal.
            ``None``/``"all"`` for all, a list of indices (negative ones count from the
            end), or ``"last:N"`` / ``"first:N"``.
        pooling: sequence tasks only: ``mean`` over real tokens, ``max``, ``last`` real
            token (whatever the padding side), ``first`` real token.
        head: ``swiglu`` (RMSNorm -> SwiGLU FFN -> linear) or ``linear`` (RMSNorm -> linear).
        head_hidden_size: inner size of the SwiGLU FFN (default: backbone hidden size).
        head_dropout: dropout before the final linear map.
        lora_r, lora_alpha, lora_dropout: LoRA settings (paper: 8, 32, 0.1).
        lora_target_modules: Linear module names to adapt; default (``None``) is every
            Linear inside the decoder layers (attention and MLP projections).
        use_lora: ``False`` trains the head only (a frozen backbone probe).
    """

    attention: str = "bidirectional"
    decay_lambda: float = 0.0
    learnable_lambda: bool = False
    fs_layers: Any = None
    pooling: str = "mean"
    head: str = "swiglu"
    head_hidden_size: int | None = None
    head_dropout: float = 0.1
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    lora_target_modules: list[str] | None = None
    use_lora: bool = True

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_MODES:
            raise ConfigError(f"attention must be one of {ATTENTION_MODES}, got {self.attention!r}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.head not in HEADS:
            raise ConfigError(f"head must be one of {HEADS}, got {self.head!r}")
        if not isinstance(self.decay_lambda, (int, float)) or not math.isfinite(self.decay_lambda) or self.decay_lambda < 0:
            # inf would give inf * 0 = NaN on the current key, NaN every logit
            raise ConfigError(f"decay_lambda must be a finite number >= 0, got {self.decay_lambda}")
        for name in ("lora_r", "lora_alpha"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"{name} must be > 0, got {value!r}")
        if self.head_hidden_size is not None and not (isinstance(self.head_hidden_size, int) and self.head_hidden_size > 0):
            raise ConfigError(f"head_hidden_size must be a positive int, got {self.head_hidden_size!r}")
        if self.learnable_lambda and self.attention != "decay":
            raise ConfigError("learnable_lambda needs attention='decay'")
        if not 0 <= self.head_dropout < 1 or not 0 <= self.lora_dropout < 1:
            raise ConfigError("dropouts must be in [0, 1)")
        if isinstance(self.fs_layers, str) and self.fs_layers != "all":
            if not re.fullmatch(r"(last|first):\d+", self.fs_layers):
                raise ConfigError(f"fs_layers must be 'all', 'last:N', 'first:N' or a list of ints, got {self.fs_layers!r}")
        elif isinstance(self.fs_layers, (list, tuple)):
            if not all(isinstance(i, int) for i in self.fs_layers):
                raise ConfigError(f"fs_layers list must hold ints, got {self.fs_layers!r}")
            self.fs_layers = list(self.fs_layers)

    def resolve_layers(self, num_layers: int) -> list[int]:
        """Indices of the layers that get the released mask, for a backbone with ``num_layers``."""
        spec = self.fs_layers
        if spec is None or spec == "all":
            return list(range(num_layers))
        if isinstance(spec, str):
            side, n = spec.split(":")
            n = min(int(n), num_layers)
            return list(range(num_layers - n, num_layers)) if side == "last" else list(range(n))
        outside = [i for i in spec if not -num_layers <= i < num_layers]
        if outside:
            raise ConfigError(f"fs_layers {spec}: {outside} out of range for a {num_layers}-layer backbone")
        resolved = [i % num_layers for i in spec]
        duplicates = sorted({i for i in resolved if resolved.count(i) > 1})
        if duplicates:
            raise ConfigError(f"fs_layers {spec}: duplicate layer {duplicates} (negative indices count from the end)")
        return sorted(resolved)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FSConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown FSConfig fields: {sorted(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> FSConfig:
        p = Path(text_or_path) if not str(text_or_path).lstrip().startswith("{") else None
        text = p.read_text() if p is not None else str(text_or_path)
        return cls.from_dict(json.loads(text))


PRECISIONS = ("fp32", "bf16", "fp16")
TRAIN_PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")


@dataclass
class TrainConfig:
    """Everything a run needs; saved as ``config.json`` in the run folder (``--resume`` reads it back).

    Defaults are the paper's (lr 2e-4, batch 16, LoRA 8/32/0.1) except where CPU time
    forces a choice: ``epochs=1`` and the sizes of the subsets.
    """

    data: str = "conll2003"
    model: str = "smollm2-135m"
    output_dir: str | None = None
    task: str | None = None
    text_column: str | None = None
    label_column: str | None = None
    # a second text column: the model reads ``text + EOS + text_pair`` (see tokenization.pair_ids)
    text_pair_column: str | None = None
    # None: the data's own (single label for files; rt-score is regression); or one of
    # "single_label_classification", "multi_label_classification", "regression"
    problem_type: str | None = None
    label_separator: str = "|"  # between the labels of a multi-label CSV/TSV cell
    # multi-label: choose one decision threshold per label on dev, not only the global one
    threshold_per_label: bool = False
    # the dev metric that picks the best checkpoint; None: the task's (accuracy / f1 / micro_f1 /
    # spearman); "rmse" (or "mae") for regression selects the lowest
    selection_metric: str | None = None
    repair_tags: bool = False
    fs: FSConfig = field(default_factory=FSConfig)
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 16
    eval_batch_size: int = 64
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    max_length: int = 128
    train_subset: int | None = None
    dev_subset: int | None = None
    test_subset: int | None = None
    eval_steps: int | None = None  # None: evaluate on dev at the end of each epoch
    save_total_limit: int | None = 2
    early_stopping_patience: int | None = None
    seed: int = 42
    attn_implementation: str = "sdpa"
    # "bf16" / "fp16": mixed precision (autocast; weights and LoRA stay fp32) through the Trainer.
    # bf16 is the usual choice on GPUs; on CPUs it pays only where matmuls have bf16 hardware
    # (AMX / AVX512-BF16), and fp16 needs a GPU. Evaluation and prediction run in fp32.
    precision: str = "fp32"
    logging_steps: int = 10
    evaluate_test: bool = True
    group_by_length: bool = True  # batches of similar length: little padding
    pad_to_length: int | None = None  # pad every batch to this length (the LS-LLaMA/BiLLM recipe); None = dynamic
    # Token tasks: the loss of a batch is the mean over its labelled tokens, so with length-grouped
    # batches a token of a short sentence weighs as much as a whole long sentence's worth of tokens
    # (a batch of eight 3-token headlines counts as much as one of eight 40-token sentences). True
    # scales each batch's loss by its labelled tokens over the average batch's, so every token weighs
    # the same wherever it falls, as with random batches (see ``FSTrainer.compute_loss``).
    length_balanced_loss: bool = False
    # recompute each decoder layer's activations during backward instead of keeping them: the same
    # loss and gradients for a second forward per layer, much less memory on long inputs
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        # A bad value fails here, before a run folder exists (``--epochs -1`` used to train zero
        # steps and then score dev and test as if it had trained).
        if not isinstance(self.fs, FSConfig):
            raise ConfigError(f"fs must be an FSConfig, got {type(self.fs).__name__}")
        if self.problem_type not in (None, *TRAIN_PROBLEM_TYPES):
            raise ConfigError(f"problem_type {self.problem_type!r}: choose one of {', '.join(TRAIN_PROBLEM_TYPES)}")
        if not isinstance(self.label_separator, str) or not self.label_separator:
            raise ConfigError("label_separator must be a non-empty string")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.attn_implementation not in SUPPORTED_IMPLEMENTATIONS:
            raise ConfigError(
                f"attn_implementation {self.attn_implementation!r}: choose one of {', '.join(SUPPORTED_IMPLEMENTATIONS)}"
            )
        if not (_is_int(self.max_steps) and (self.max_steps > 0 or self.max_steps == -1)):
            raise ConfigError(f"max_steps must be > 0 (or -1: train for epochs), got {self.max_steps!r}")
        if self.max_steps == -1 and not (_is_number(self.epochs) and math.isfinite(self.epochs) and self.epochs > 0):
            raise ConfigError(f"epochs must be > 0 (unless max_steps > 0), got {self.epochs!r}")
        if not (_is_number(self.learning_rate) and math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if not (_is_number(self.weight_decay) and math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not (_is_number(self.warmup_ratio) and 0 <= self.warmup_ratio < 1):
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        for name in ("batch_size", "eval_batch_size", "max_length", "logging_steps"):
            if not (_is_int(getattr(self, name)) and getattr(self, name) > 0):
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("train_subset", "dev_subset", "test_subset", "eval_steps", "save_total_limit",
                     "early_stopping_patience", "pad_to_length"):
            value = getattr(self, name)
            if value is not None and not (_is_int(value) and value > 0):
                raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """What ``config.json`` of a run folder holds: the run folder format, then every field."""
        from .run import RUN_FORMAT, RUN_FORMAT_KEY

        d = {RUN_FORMAT_KEY: RUN_FORMAT, **dataclasses.asdict(self)}
        d["fs"] = self.fs.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Back from :meth:`to_dict` (or a run's ``config.json``); a format newer than this fsllm's is refused."""
        from .run import RUN_FORMAT_KEY, check_format

        check_format(d, "training configuration")
        d = {k: v for k, v in d.items() if k != RUN_FORMAT_KEY}
        fs = FSConfig.from_dict(d.pop("fs", {}))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise FSLLMError(f"unknown training options {sorted(unknown)}")
        return cls(fs=fs, **d)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class FSLLMConfig(PreTrainedConfig):
    """``config.json`` of a saved FS model: the transformers side of an ``FSConfig``.

    Attributes:
        task: ``"sequence"`` (one label per text) or ``"token"`` (one label per word).
        fs: the ``FSConfig`` as a dict (``fs_config`` gives it back as an ``FSConfig``).
        backbone: where the backbone weights come from: a built-in name (``fsllm models``), a hub
            id, or an absolute local path, so the folder loads from any working directory.
        decoder_config: the backbone's full config, so the model can be built without the
            backbone's files (a merged folder holds the weights; the small folder loads them from
            ``backbone``).
        backbone_attn_implementation: the backbone kernel FS attention wraps (``sdpa``, ``eager``
            or ``flex_attention``).
        merged: the folder holds the whole model with LoRA merged into the backbone weights
            (``model.safetensors``), instead of a LoRA adapter and a backbone reference.
        problem_type: the standard transformers field: ``"single_label_classification"`` (softmax +
            cross-entropy; ``None`` means the same), ``"multi_label_classification"`` (one sigmoid per
            label, binary cross-entropy) or ``"regression"`` (``num_labels=1``, MSE). ``pipeline()``
            reads it to pick softmax, sigmoid or the raw value.
        multi_label_threshold: multi-label only: a label is predicted when its sigmoid is at least this
            (chosen on dev by ``fsllm train``; kept here so every reader of the folder applies the same one).
        label_thresholds: multi-label only, optional: one threshold per label name (``--threshold-per-label``),
            overriding ``multi_label_threshold`` for the labels it names.
        target_mean, target_std: regression only: training targets are standardised with these (the
            training split's mean and standard deviation) and ``forward`` maps the head's output back, so
            the logits are in the data's own units for every caller, ``pipeline()`` included.
        text_pair: the model was trained on text pairs (``text`` + ``text_pair``, see
            ``fsllm.tokenization.pair_features``); predicting it needs pairs and vice versa.
    """

    model_type = "fsllm"
    sub_configs_defaults = {"decoder_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    task: str = "sequence"
    fs: dict | None = None
    backbone: str | None = None
    decoder_config: dict | PreTrainedConfig | None = None
    backbone_attn_implementation: str = "sdpa"
    merged: bool = False
    fsllm_format: int = 2
    multi_label_threshold: float = 0.5
    label_thresholds: dict | None = None
    target_mean: float = 0.0
    target_std: float = 1.0
    text_pair: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        self.fs = FSConfig.from_dict(self.fs or {}).to_dict()  # validated, every field present
        if self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"problem_type must be one of {PROBLEM_TYPES}, got {self.problem_type!r}")
        if self.problem_type is not None and self.task != "sequence":
            raise ValueError(f"problem_type {self.problem_type!r} applies to sequence models only")
        if not (isinstance(self.target_std, (int, float)) and math.isfinite(self.target_std) and self.target_std > 0):
            raise ValueError(f"target_std must be a finite number > 0, got {self.target_std!r}")
        if not 0 < float(self.multi_label_threshold) < 1:
            raise ValueError(f"multi_label_threshold must be in (0, 1), got {self.multi_label_threshold!r}")

    def threshold_of(self, label: str) -> float:
        """The decision threshold of one label of a multi-label model (its own one, else the global one)."""
        return float((self.label_thresholds or {}).get(label, self.multi_label_threshold))

    @property
    def fs_config(self) -> FSConfig:
        return FSConfig.from_dict(self.fs or {})
