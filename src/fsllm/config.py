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
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.trainer_utils import SchedulerType

from .attention import SUPPORTED_IMPLEMENTATIONS
from .backbones import QUANTIZATIONS
from .decoding import DEFAULT_DECODING, DEFAULT_WORD_SCORES, NER_DECODINGS, WORD_SCORES, check_decoding
from .errors import ConfigError, FSLLMError

ATTENTION_MODES = ("bidirectional", "causal", "decay")
TASKS = ("sequence", "token")
POOLINGS = ("mean", "max", "last", "first")
HEADS = ("swiglu", "linear", "verbalizer")
PROBLEM_TYPES = (None, "single_label_classification", "multi_label_classification", "regression")
#: how ``TrainConfig.lambda_schedule`` moves the decay lambda from ``lambda_start`` to ``FSConfig.decay_lambda``
LAMBDA_SCHEDULES = ("linear", "cosine")


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = None, **cli: Any) -> Any:
    """A dataclass field whose ``metadata`` carries its help text and command-line details.

    The field is the one place a setting is described: ``fsllm train`` builds its options from
    these (``flags``: other option names; ``choices``; ``negative``: a flag that sets a bool to
    False; ``shortcuts``: flags that set a given value; ``parse``: text -> value; ``metavar``),
    and ``trainer`` names the ``TrainingArguments`` that take a ``TrainConfig`` value as it is.
    """
    meta = {"help": help, **cli}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def parse_fs_layers(text: str) -> str | list[int]:
    """``fs_layers`` from the command line: ``all``, ``last:N``, ``first:N`` or comma-separated indices."""
    if text == "all" or ":" in text:
        return text
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"expected 'all', 'last:N', 'first:N' or integers, got {text!r}") from None


def parse_names(text: str) -> list[str]:
    """A comma-separated list of names."""
    return [x for x in text.split(",") if x]


def parse_prompt(text: str) -> str:
    """``prompt`` from the command line: ``\\n`` and ``\\t`` typed in a shell become a newline and a tab."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def parse_label_words(text: str) -> dict[str, str]:
    """``label_words`` from the command line: comma-separated ``label=word`` pairs."""
    pairs = [x for x in text.split(",") if x.strip()]
    if not pairs or not all("=" in x for x in pairs):
        raise ValueError(f"expected comma-separated label=word pairs (neg=terrible,pos=great), got {text!r}")
    return {k.strip(): v.strip() for k, v in (x.split("=", 1) for x in pairs)}


def parse_rates(text: str) -> float | list[float]:
    """``learning_rate`` from the command line: one number, or several comma-separated (a grid)."""
    parts = [x.strip() for x in text.split(",") if x.strip()]
    try:
        rates = [float(x) for x in parts]
    except ValueError:
        raise ValueError(f"expected a number or comma-separated numbers (5e-4,1e-3), got {text!r}") from None
    if not rates:
        raise ValueError(f"expected a number or comma-separated numbers (5e-4,1e-3), got {text!r}")
    return rates[0] if len(rates) == 1 and "," not in text else rates


def parse_ints(text: str) -> list[int]:
    """A comma-separated list of integers."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None


@dataclass
class FSConfig:
    """How to release global features and classify (every field's meaning is its ``help``)."""

    attention: str = setting(
        "bidirectional",
        "released mask: 'bidirectional' (every token sees every real token; the paper's main setting), "
        "'causal' (the backbone unchanged: the 'w/o FS' ablation; for a backbone bidirectional by its own "
        "config, e.g. Gemma 3 with use_bidirectional_attention=True, that bidirectional attention) or 'decay' "
        "(future keys at distance d get -decay_lambda * d added to their attention logit, i.e. weight exp(-lambda d))",
        choices=ATTENTION_MODES)
    decay_lambda: float = setting(0.0, "lambda of attention 'decay' (0 = bidirectional, large = causal)")
    learnable_lambda: bool = setting(
        False, "decay only: train one lambda per FS layer with the head, initialised at decay_lambda and kept >= 0 "
        "(stored as softplus of a free parameter)")
    fs_layers: str | list[int] | None = setting(
        None, "decoder layers that get the released mask; the others stay causal: 'all' (default), a list of "
        "indices (negative ones count from the end; on the command line comma-separated), 'last:N' or 'first:N'",
        parse=parse_fs_layers)
    pooling: str = setting(
        "mean", "sequence tasks only: 'mean' over real tokens, 'max', 'last' real token (whatever the padding "
        "side), 'first' real token", choices=POOLINGS)
    head: str = setting(
        "swiglu", "'swiglu' (RMSNorm -> SwiGLU FFN -> linear), 'linear' (RMSNorm -> linear) or 'verbalizer' (sequence "
        "tasks: a linear map of the backbone's final hidden state whose rows are the backbone's output embeddings of "
        "the label words, kept fixed (a bias per label trains), so the untrained model scores each label as the "
        "language model scores its word next; needs pooling 'last' and is meant with a prompt, see fsllm.prompting)", choices=HEADS)
    prompt: str | None = setting(
        None, "sequence tasks: text the model appends to every input inside its forward (after the text's last token), "
        "e.g. '\\nSentiment:'; its tokens are saved with the model, so pipeline(), predict and serve add it too. With "
        "pooling 'last' the pooled state is the backbone's reading of what comes next (see head 'verbalizer'). On the "
        "command line \\n is a newline", parse=parse_prompt)
    label_words: dict[str, str] | None = setting(
        None, "head 'verbalizer': the word each label starts from (default: the label name, '_' read as a space); on "
        "the command line comma-separated label=word pairs", parse=parse_label_words, metavar="LABEL=WORD,...")
    head_hidden_size: int | None = setting(None, "inner size of the SwiGLU FFN (default: the backbone's hidden size)")
    head_dropout: float = setting(0.1, "dropout before the head's final linear map")
    lora_r: int = setting(8, "LoRA rank (the paper's: 8)")
    lora_alpha: int = setting(32, "LoRA alpha (the paper's: 32)")
    lora_dropout: float = setting(0.1, "LoRA dropout (the paper's: 0.1)")
    lora_target_modules: list[str] | None = setting(
        None, "Linear module names to adapt, comma-separated on the command line (default: every Linear inside the "
        "decoder layers, i.e. the attention and MLP projections; never the head)",
        flags=("--lora-targets",), parse=parse_names)
    use_lora: bool = setting(True, "adapt the backbone with LoRA; off (--no-use-lora): train the head only, a frozen backbone probe")
    ner_decoding: str = setting(
        "viterbi", "token tasks: how word tags are read from the scores: 'greedy' (each word's best label; an I-X that "
        "follows neither B-X nor I-X then starts no entity, as strict IOB2 scoring reads it) or 'viterbi' (the best "
        "sequence of labels that is valid IOB2: no such stray I-X; the default: with word_scores 'mean', what dev "
        "chose for the default model on the NER levers screen, docs/design.md). A reading option: fsllm eval, predict "
        "and serve take --decoding to override what the model folder says", choices=NER_DECODINGS, flags=("--decoding",))
    word_scores: str = setting(
        "mean", "token tasks: a word's scores from its 'first' sub-token (the one training labels) or the 'mean' "
        "of its sub-tokens' log-probabilities. A reading option: fsllm eval, predict and serve take --word-scores",
        choices=WORD_SCORES)
    # capacity and sequence repetition (all off by default)
    repeat: int = setting(
        1, "sequence repetition: the backbone reads the text this many times in one forward (2: twice), positions "
        "counted over the whole, and the token labels and pooling read the last copy, whose tokens all see the whole "
        "text even under causal attention (--attention causal --repeat 2 is the published variant; any mode "
        "combines). Costs k times the tokens. 1: off (see fsllm.repetition)")
    full_finetune: bool = setting(
        False, "train every backbone weight with the head, no LoRA (use_lora and the lora_* settings are then unused); "
        "the model is saved as a merged folder holding every weight")
    use_rslora: bool = setting(
        False, "rank-stabilised LoRA (PEFT's use_rslora): the update is scaled by lora_alpha / sqrt(lora_r) instead of "
        "lora_alpha / lora_r, so a higher rank does not shrink it")
    use_dora: bool = setting(
        False, "DoRA (PEFT's use_dora): LoRA on the direction of each adapted weight plus a trained magnitude per "
        "output feature; slower steps than plain LoRA")

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_MODES:
            raise ConfigError(f"attention must be one of {ATTENTION_MODES}, got {self.attention!r}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.head not in HEADS:
            raise ConfigError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.head == "verbalizer" and self.pooling != "last":
            raise ConfigError("head 'verbalizer' reads the backbone's next-word scores at the last token: "
                              f"set pooling='last' (got {self.pooling!r})")
        if self.prompt is not None and (not isinstance(self.prompt, str) or not self.prompt.strip()):
            raise ConfigError(f"prompt must be a non-empty string or None, got {self.prompt!r}")
        if self.label_words is not None and (
                not isinstance(self.label_words, dict)
                or not all(isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in self.label_words.items())):
            raise ConfigError(f"label_words must map label names to non-empty words, got {self.label_words!r}")
        if self.label_words is not None and self.head != "verbalizer":
            raise ConfigError("label_words are the verbalizer head's: set head='verbalizer' or drop them")
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
        check_decoding(self.ner_decoding, self.word_scores)
        if isinstance(self.repeat, bool) or not isinstance(self.repeat, int) or self.repeat < 1:
            raise ConfigError(f"repeat must be an integer >= 1 (1: off, 2: the text twice), got {self.repeat!r}")
        variants = [name for name in ("use_rslora", "use_dora") if getattr(self, name)]
        if variants and (self.full_finetune or not self.use_lora):
            raise ConfigError(f"{' and '.join(variants)} change LoRA, which "
                              f"{'full_finetune' if self.full_finetune else 'use_lora=False'} turns off: drop one")
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
        """The fields as a JSON-ready dict (what a saved model's config holds as ``fs``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FSConfig:
        """Back from :meth:`to_dict`; an unknown field is an error, not silently dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown FSConfig fields: {sorted(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> FSConfig:
        """From JSON text or a file holding it."""
        p = Path(text_or_path) if not str(text_or_path).lstrip().startswith("{") else None
        text = p.read_text() if p is not None else str(text_or_path)
        return cls.from_dict(json.loads(text))


PRECISIONS = ("fp32", "bf16", "fp16", "auto")
#: what a trained model can be read in (``Predictor``, ``fsllm eval / predict / serve --precision``)
INFERENCE_PRECISIONS = ("fp32", "bf16", "auto")


def bf16_hardware() -> str | None:
    """What runs bf16 matmuls natively here (``None``: nothing does), whatever the environment says.

    A CUDA GPU that supports bf16, or a CPU with AMX or AVX512-BF16 (read from ``/proc/cpuinfo``);
    elsewhere bf16 is emulated: on an AVX2 CPU a bf16 matmul runs tens of times slower than fp32
    (benchmarks/results/bf16_emulation.json).
    """
    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)} supports bf16" if torch.cuda.is_bf16_supported() else None
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return None
    found = [name for flag, name in (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16")) if flag in flags]
    return f"the CPU has {found[0]}" if found else None


def native_bf16() -> str | None:
    """Why this machine runs bf16 matmuls natively (``None``: it does not), for ``precision="auto"``:
    :func:`bf16_hardware`, except that ``FSLLM_NATIVE_BF16=0`` in the environment answers ``None``
    whatever the hardware, so that ``auto`` means fp32 (runs that must match across machines; the
    test suite sets it)."""
    if os.environ.get("FSLLM_NATIVE_BF16", "").strip() == "0":
        return None
    return bf16_hardware()


def emulated_bf16(what: str) -> str | None:
    """A warning for ``what`` (e.g. ``"precision bf16"``) chosen explicitly where no hardware runs bf16
    matmuls, or ``None`` where it does: the choice is kept (a run must match its saved config), but a
    user should not find out from a step taking a minute instead of a second."""
    if bf16_hardware() is not None:
        return None
    return (f"{what}: no bf16 matmul hardware here (no AMX or AVX512-BF16 CPU, no bf16 GPU), so bf16 is emulated "
            "and much slower than fp32 (tens of times on an AVX2 CPU); 'auto' or 'fp32' would run in fp32")


def resolve_precision(precision: str) -> tuple[str, str]:
    """The precision a run uses and why: ``"auto"`` becomes bf16 where ``native_bf16`` finds hardware
    for it, fp32 elsewhere; any other value is kept."""
    if precision != "auto":
        return precision, "as configured"
    why = native_bf16()
    return ("bf16", why) if why else ("fp32", "no bf16 matmul hardware found")


#: what a backbone's frozen weights can be loaded in (``TrainConfig.backbone_dtype``); "auto" first
BACKBONE_DTYPES = ("auto", "fp32", "bf16", "fp16")
_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_backbone_dtype(name: str) -> tuple[str, str]:
    """The dtype a backbone's frozen weights load in and why: ``"auto"`` is bf16 where ``native_bf16``
    finds bf16 matmul hardware (``FSLLM_NATIVE_BF16=0`` says it does not), fp32 elsewhere, as for
    ``precision="auto"``; any other value is kept."""
    if name not in BACKBONE_DTYPES:
        raise ConfigError(f"backbone_dtype {name!r}: choose one of {', '.join(BACKBONE_DTYPES)}")
    if name != "auto":
        return name, "as configured"
    why = native_bf16()
    return ("bf16", why) if why else ("fp32", "no bf16 matmul hardware found")


def torch_dtype(name: str | None) -> torch.dtype:
    """The ``torch.dtype`` of a resolved ``backbone_dtype`` name (``None``, a folder without one: fp32)."""
    return _TORCH_DTYPES[name or "fp32"]


def dtype_name(model: torch.nn.Module) -> str | None:
    """The ``backbone_dtype`` name of a module's floating weights (``None``: another dtype, or none)."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    return next((name for name, d in _TORCH_DTYPES.items() if d == dtype), None)


def resolve_device(device: str | None = "auto") -> torch.device:
    """The ``torch.device`` that inference runs on: ``"auto"`` (or ``None``) is the first CUDA GPU when
    torch sees one and the CPU elsewhere, as ``transformers.pipeline`` chooses; ``"cpu"``, ``"cuda"``
    and ``"cuda:N"`` are taken as given, and a GPU that is not there is an error here rather than a
    CUDA error at the first forward."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise FSLLMError(f"device {device!r}: {e}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FSLLMError(f"device {device!r}: torch sees no CUDA GPU here (torch {torch.__version__}); use cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise FSLLMError(f"device {device!r}: only {torch.cuda.device_count()} CUDA GPU(s) here")
    elif dev.type != "cpu":
        raise FSLLMError(f"device {device!r}: fsllm runs on cpu or cuda")
    return dev


TRAIN_PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")


@dataclass
class TrainConfig:
    """Everything a run needs; saved as ``config.json`` in the run folder (``--resume`` and
    ``fsllm train --config`` read it back). Every field's meaning is its ``help``.

    Defaults are the paper's (lr 2e-4, batch 16, LoRA 8/32/0.1) except where CPU time
    forces a choice: ``epochs=1`` and the sizes of the subsets.
    """

    data: str = setting(
        "conll2003", "catalogue name (fsllm datasets), folder, file, or hub id (default: conll2003; fsllm train without "
        "--data or --config runs the main job, see the description)")
    model: str = setting("smollm2-135m", "backbone: built-in name (fsllm models), folder or hub id")
    output_dir: str | None = setting(None, "run folder (default runs/<data>-<attention>-<time>)", flags=("--output", "-o"))
    task: str | None = setting(None, "'sequence' or 'token'; only needed for ambiguous files", choices=TASKS)
    text_column: str | None = setting(None, "the text column of a table (default: found by name)")
    label_column: str | None = setting(None, "the label column of a table (default: found by name)")
    text_pair_column: str | None = setting(
        None, "a second text column: train on text pairs, read as text + EOS + text_pair (see tokenization.pair_ids)")
    problem_type: str | None = setting(
        None, "what the label column holds (default: the data's own: one label for files; a catalogue entry such as "
        "rt-score brings its own)", choices=TRAIN_PROBLEM_TYPES,
        shortcuts=(("--multi-label", "multi_label_classification",
                    "several labels per text: a JSON list, or separated by --label-separator in CSV/TSV"),
                   ("--regression", "regression", "a numeric target per text (MSE on targets standardised on train)")))
    label_separator: str = setting("|", "between the labels of a multi-label CSV/TSV cell")
    threshold_per_label: bool = setting(
        False, "multi-label: choose a decision threshold per label on dev, not only the global one")
    selection_metric: str | None = setting(
        None, "the dev metric that picks the best checkpoint (default: the task's: accuracy / f1 / micro_f1 / "
        "spearman); 'rmse' or 'mae' for regression select the lowest")
    repair_tags: bool = setting(False, "repair invalid IOB sequences instead of failing")
    fs: FSConfig = setting(help="the FS model: mask, pooling, head, LoRA", factory=FSConfig)
    epochs: float = setting(1.0, "training epochs (may be fractional; ignored when max_steps > 0)", trainer=("num_train_epochs",))
    max_steps: int = setting(-1, "train for this many steps (-1: train for epochs)", trainer=("max_steps",))
    batch_size: int = setting(16, "training batch size per device (the paper's: 16)", trainer=("per_device_train_batch_size",))
    eval_batch_size: int = setting(64, "batch size of evaluation and prediction", trainer=("per_device_eval_batch_size",))
    learning_rate: float | list[float] = setting(
        2e-4, "peak learning rate (the paper's: 2e-4). Several, comma-separated (5e-4,1e-3,2e-3): a grid, one run per "
        "rate (and grid seed) under RUN/grid/, the rate with the best dev score kept, test scored once "
        "(docs/selection.md)", flags=("--lr",), trainer=("learning_rate",), parse=parse_rates, metavar="LR[,LR...]")
    weight_decay: float = setting(0.0, "AdamW weight decay", trainer=("weight_decay",))
    warmup_ratio: float = setting(0.0, "share of the training steps spent warming the learning rate up, in [0, 1)")
    lr_scheduler_type: str = setting(
        "linear", "how the learning rate moves after warm-up (transformers' schedulers: linear decay to 0, cosine, "
        "constant, ...)", choices=tuple(t.value for t in SchedulerType), trainer=("lr_scheduler_type",))
    max_length: int = setting(128, "tokens per input (NER: longer sentences become overlapping windows)")
    document_context: int = setting(
        0, "NER: read each sentence with up to N sub-tokens of the sentences around it in its document on each side, "
        "within max_length (CoNLL -DOCSTART- lines separate documents; a file without them is one document). The "
        "context is read, never labelled or scored; the model keeps N, so eval and predict read documents the same "
        "way (default 0: each sentence alone)", metavar="N")
    train_subset: int | None = setting(None, "use N training examples (a seeded sample, the same for every method)")
    dev_subset: int | None = setting(None, "use N dev examples (seeded sample)")
    test_subset: int | None = setting(None, "use N test examples (seeded sample)")
    eval_steps: int | None = setting(None, "evaluate on dev (and checkpoint) every N steps (default: each epoch)", trainer=("eval_steps", "save_steps"))
    save_total_limit: int | None = setting(2, "checkpoints kept (the best one always among them); none: keep all", trainer=("save_total_limit",))
    early_stopping_patience: int | None = setting(
        None, "stop after PATIENCE dev evaluations without gain", flags=("--early-stopping",), metavar="PATIENCE")
    seed: int = setting(42, "seed of the subsets, the initialisation and the batch order", trainer=("seed", "data_seed"))
    attn_implementation: str = setting(
        "sdpa", "the backbone's attention kernel that FS attention wraps (flex_attention: GPU; for attention decay "
        "on long inputs it builds no L x L mask and skips far-future keys. torch has no flex_attention backward on a "
        "CPU, where it trains the head alone: --no-use-lora)", choices=SUPPORTED_IMPLEMENTATIONS)
    precision: str = setting(
        "auto", "'auto' (default): bf16 autocast where the GPU or CPU has bf16 matmul hardware (AMX / AVX512-BF16), "
        "else fp32; the run prints and saves what it chose (FSLLM_NATIVE_BF16=0 makes it fp32). 'bf16' / 'fp16': "
        "mixed precision through the Trainer (autocast; weights and LoRA stay fp32); fp16 needs a GPU; bf16 without "
        "that hardware is emulated, tens of times slower than fp32, and the run warns. 'fp32': no "
        "autocast. The run's dev evaluations and its test score run under the same autocast; fsllm eval and "
        "predict take their own --precision (fp32 by default)", choices=PRECISIONS)
    quantize: str | None = setting(
        None, "'4bit': load the backbone in NF4 with double quantisation and bf16 compute and train LoRA and the head "
        "on it (QLoRA; needs bitsandbytes: pip install 'fsllm[qlora]'). The saved folder stays small and loads the "
        "backbone in 4 bits again; the merged export is dequantised", choices=QUANTIZATIONS)
    logging_steps: int = setting(10, "log the training loss every N steps (train_log.jsonl)", trainer=("logging_steps",))
    evaluate_test: bool = setting(True, "evaluate the final model on the test split (--no-test: do not touch it)",
                                  negative=("--no-test",))
    group_by_length: bool = setting(True, "batches of examples of similar length: little padding")
    pad_to_length: int | None = setting(
        None, "pad every batch to this length (the LS-LLaMA/BiLLM recipe, for the speed benchmark; default: pad "
        "each batch to its longest example)")
    length_balanced_loss: bool = setting(
        False, "token tasks: the loss of a batch is the mean over its labelled tokens, so with length-grouped "
        "batches a token of a short sentence weighs more than one of a long sentence. This scales each batch's loss "
        "by its labelled tokens over the average batch's, so every token weighs the same wherever it falls, as with "
        "random batches (see FSTrainer.compute_loss)")
    gradient_checkpointing: bool = setting(
        False, "recompute each decoder layer's activations during backward instead of keeping them: the same loss "
        "and gradients for a second forward per layer, much less memory on long inputs (docs/scaling.md)",
        trainer=("gradient_checkpointing",))
    grid_seeds: list[int] | None = setting(
        None, "learning-rate grid only: train every rate with each of these seeds and choose the rate on the mean "
        "dev score (one seed's noise can flip a close grid; a member whose rate cannot win whatever it scores is "
        "not trained); must include --seed, whose member at the chosen rate is the model kept (default: --seed "
        "alone)", parse=parse_ints, metavar="SEED,SEED,...")
    # the dtype of the frozen backbone weights (recorded in the model folder as FSLLMConfig.backbone_dtype)
    backbone_dtype: str = setting(
        "fp32", "the dtype the backbone's frozen weights are loaded in: 'fp32' (default, as before the option "
        "existed), 'bf16' or 'fp16' (half the weight memory; the backbone then computes in that dtype even under "
        "--precision fp32), or 'auto' (bf16 where --precision auto would pick bf16: a GPU or CPU with bf16 matmul "
        "hardware; FSLLM_NATIVE_BF16=0 makes it fp32). LoRA weights and the head stay fp32 whatever it is. The "
        "default is fp32, not auto, because auto would change the results of runs on bf16 machines (the main job "
        "among them) before bf16 weights are measured to score as fp32 ones do. The model folder records it, and "
        "fsllm eval / predict / serve load the backbone in it again", choices=BACKBONE_DTYPES)
    # learning-rate and lambda schedules of parts of the model (all off by default)
    lambda_schedule: str | None = setting(
        None, "anneal the decay lambda during training, causal-like first and released at the end: 'linear' or "
        "'cosine' from lambda_start to the model's decay_lambda (FSConfig; 0 = bidirectional) over the first "
        "lambda_schedule_fraction of the steps, then kept there. Needs --attention decay without learnable_lambda; "
        "acts on the layers fs_layers releases (all by default). The saved model (best on dev) computes with the "
        "lambda of the step it was selected at, which its config records as decay_lambda",
        choices=LAMBDA_SCHEDULES)
    lambda_start: float = setting(
        10.0, "lambda_schedule: the decay lambda at the first step (10: a future key one token away weighs e^-10, "
        "almost causal)")
    lambda_schedule_fraction: float = setting(
        1.0, "lambda_schedule: the share of the training steps, in (0, 1], over which lambda moves from lambda_start "
        "to decay_lambda")
    head_learning_rate: float | None = setting(
        None, "peak learning rate of the classification head (default: --lr), on the same schedule; higher than "
        "the backbone's, as LoRA+ does for LoRA's B")
    lambda_learning_rate: float | None = setting(
        None, "peak learning rate of the learnable lambdas (learnable_lambda; default: --lr)")
    loraplus_lr_ratio: float | None = setting(
        None, "LoRA+ (Hayou et al. 2024): LoRA's B matrices learn at this multiple of --lr, the A matrices at --lr "
        "(the authors use 2 to 16); none: one rate for both. Not measured on fsllm's tables yet (docs/levers.md)")

    def __post_init__(self) -> None:
        # A bad value fails here, before a run folder exists (``--epochs -1`` used to train zero
        # steps and then score dev and test as if it had trained).
        if not isinstance(self.fs, FSConfig):
            raise ConfigError(f"fs must be an FSConfig, got {type(self.fs).__name__}")
        if self.problem_type not in (None, *TRAIN_PROBLEM_TYPES):
            raise ConfigError(f"problem_type {self.problem_type!r}: choose one of {', '.join(TRAIN_PROBLEM_TYPES)}")
        if not isinstance(self.label_separator, str) or not self.label_separator:
            raise ConfigError("label_separator must be a non-empty string")
        if self.quantize is not None and self.quantize not in QUANTIZATIONS:
            raise ConfigError(f"quantize {self.quantize!r}: choose one of {', '.join(QUANTIZATIONS)} (or none)")
        if self.backbone_dtype not in BACKBONE_DTYPES:
            raise ConfigError(f"backbone_dtype {self.backbone_dtype!r}: choose one of {', '.join(BACKBONE_DTYPES)}")
        if self.quantize is not None and self.backbone_dtype not in ("auto", "fp32"):
            raise ConfigError(f"backbone_dtype {self.backbone_dtype} with quantize {self.quantize}: a quantised backbone "
                              "has its own weight format; leave backbone_dtype at fp32")
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
        if isinstance(self.learning_rate, (list, tuple)):  # a grid (fsllm.selection)
            self.learning_rate = list(self.learning_rate)
            if len(self.learning_rate) < 2 or len(set(self.learning_rate)) < len(self.learning_rate):
                raise ConfigError(f"a learning-rate grid needs two or more different rates, got {self.learning_rate!r}")
        for lr in self.learning_rate if isinstance(self.learning_rate, list) else [self.learning_rate]:
            if not (_is_number(lr) and math.isfinite(lr) and lr > 0):
                raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if self.grid_seeds is not None:
            self.grid_seeds = list(self.grid_seeds)
            if not isinstance(self.learning_rate, list):
                raise ConfigError("grid_seeds applies to a learning-rate grid (--lr A,B,...); with one rate, "
                                  "train each seed as a run of its own")
            if not self.grid_seeds or not all(_is_int(s) for s in self.grid_seeds) \
                    or len(set(self.grid_seeds)) < len(self.grid_seeds):
                raise ConfigError(f"grid_seeds must be different integers, got {self.grid_seeds!r}")
            if self.seed not in self.grid_seeds:
                raise ConfigError(f"grid_seeds {self.grid_seeds} lacks seed {self.seed}: the model kept is the chosen "
                                  f"rate's member of --seed; add {self.seed} to --grid-seeds or pass --seed "
                                  f"{self.grid_seeds[0]}")
        if not (_is_number(self.weight_decay) and math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not (_is_number(self.warmup_ratio) and 0 <= self.warmup_ratio < 1):
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.lr_scheduler_type not in (schedulers := [t.value for t in SchedulerType]):
            raise ConfigError(f"lr_scheduler_type {self.lr_scheduler_type!r}: choose one of {', '.join(schedulers)}")
        for name in ("batch_size", "eval_batch_size", "max_length", "logging_steps"):
            if not (_is_int(getattr(self, name)) and getattr(self, name) > 0):
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not (_is_int(self.document_context) and self.document_context >= 0):
            raise ConfigError(f"document_context must be an integer >= 0, got {self.document_context!r}")
        for name in ("train_subset", "dev_subset", "test_subset", "eval_steps", "save_total_limit",
                     "early_stopping_patience", "pad_to_length"):
            value = getattr(self, name)
            if value is not None and not (_is_int(value) and value > 0):
                raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")
        self._check_levers()

    def _check_levers(self) -> None:
        """The lambda schedule and the per-part learning rates: values and the model settings they need."""
        if self.lambda_schedule is not None:
            if self.lambda_schedule not in LAMBDA_SCHEDULES:
                raise ConfigError(f"lambda_schedule {self.lambda_schedule!r}: choose one of {', '.join(LAMBDA_SCHEDULES)}")
            if self.fs.attention != "decay" or self.fs.learnable_lambda:
                raise ConfigError("lambda_schedule sets the decay lambda of each step: it needs --attention decay "
                                  "and no --learnable-lambda")
        if not (_is_number(self.lambda_start) and math.isfinite(self.lambda_start) and self.lambda_start >= 0):
            raise ConfigError(f"lambda_start must be a finite number >= 0, got {self.lambda_start!r}")
        if not (_is_number(self.lambda_schedule_fraction) and 0 < self.lambda_schedule_fraction <= 1):
            raise ConfigError(f"lambda_schedule_fraction must be in (0, 1], got {self.lambda_schedule_fraction!r}")
        for name in ("head_learning_rate", "lambda_learning_rate"):
            value = getattr(self, name)
            if value is not None and not (_is_number(value) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be > 0 (or None: --lr), got {value!r}")
        if self.loraplus_lr_ratio is not None:
            if not (_is_number(self.loraplus_lr_ratio) and math.isfinite(self.loraplus_lr_ratio)
                    and self.loraplus_lr_ratio > 0):
                raise ConfigError(f"loraplus_lr_ratio must be > 0 (or None: off), got {self.loraplus_lr_ratio!r}")
            if not self.fs.use_lora or self.fs.full_finetune:
                raise ConfigError("loraplus_lr_ratio sets the rate of LoRA's B matrices: it needs LoRA "
                                  "(not --no-use-lora or --full-finetune)")
        if self.lambda_learning_rate is not None and not self.fs.learnable_lambda:
            raise ConfigError("lambda_learning_rate is the learning rate of learnable lambdas: it needs --learnable-lambda")
        if self.fs.full_finetune and self.quantize is not None:
            raise ConfigError("full_finetune trains the backbone's weights, which a quantized backbone cannot: "
                              "drop --quantize or use LoRA")

    def to_dict(self) -> dict[str, Any]:
        """Every field as a JSON-ready dict (a run folder's ``config.json`` adds its format version:
        ``fsllm.run.RunFolder.save_config``)."""
        d = dataclasses.asdict(self)
        d["fs"] = self.fs.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Back from :meth:`to_dict`; an unknown field is an error. A run's ``config.json`` is read with
        ``fsllm.run.load_config_file``, which checks and removes its format version first."""
        d = dict(d)
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


#: the newest model-folder format this fsllm reads (``FSLLMConfig.fsllm_format``)
FSLLM_FORMAT = 4


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
        fsllm_format: the folder's format: 2; 3 where ``document_context`` is set, so that an fsllm that
            predates the field refuses the folder instead of reading each sentence alone; 4 where the model
            appends a prompt or has a verbalizer head (``prompt_ids``, ``verbalizer_ids``), so that an fsllm
            that predates them says "upgrade" instead of failing on an unknown field; this fsllm reads
            formats up to ``FSLLM_FORMAT``.
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
        backbone_quantization: ``"4bit"`` when LoRA and the head were trained on an NF4 backbone
            (``TrainConfig.quantize``): a small folder then loads its backbone in 4 bits again.
        whitespace_token_ids: token models only: the tokenizer's ids that are whitespace alone (SmolLM2
            writes the space before a digit as one). They belong to no word, so training never labels
            them; ``forward`` gives each the label the space before its next word has in BIO terms
            (inside the entity when that word continues one, else ``O``), so that ``pipeline()``,
            whose word heuristic takes such a token for a word, finds the entities fsllm finds.
        word_starts: token models only: which tokens begin a word as ``pipeline()`` splits words
            (``fsllm.decoding.word_start_table``, saved with the tokenizer), so that ``forward`` can give
            each word's first token the tag fsllm decodes (``FSConfig.ner_decoding``) as its top label.
        max_length: the tokens per input the model was trained and selected at (``TrainConfig.max_length``):
            longer texts are truncated and longer NER sentences cut into windows at this length by
            ``Predictor``, ``fsllm eval / predict / serve`` unless told otherwise. ``None`` in a folder
            written before the field existed: those read 256 tokens (``inference.DEFAULT_MAX_LENGTH``),
            as they always did, unless the run folder around them says otherwise (its ``config.json``).
        document_context: token models only: the sub-tokens of its document's neighbouring sentences read on
            each side of a sentence (``TrainConfig.document_context``); ``Predictor`` and ``fsllm eval / predict``
            read documents so when they are given them (CoNLL ``-DOCSTART-`` documents, ``documents=``). 0 (also in
            folders written before the field): each sentence alone.
        prompt_ids: sequence models with ``FSConfig.prompt``: its token ids under the backbone's tokenizer,
            fixed when the model was built; ``forward`` appends them to every input (``fsllm.prompting``).
        verbalizer_ids: sequence models with ``FSConfig.head = "verbalizer"``: the token each label's word
            begins with, whose output-embedding row the head's row started from (a record of the start).
        backbone_dtype: the dtype the backbone's frozen weights were loaded in for training
            (``TrainConfig.backbone_dtype``: ``"fp32"``, ``"bf16"`` or ``"fp16"``); a small folder loads its
            backbone in it again, so predictions use the weights that were evaluated. LoRA and the head
            are fp32 whatever it is. ``None`` (older folders): fp32.
    """

    model_type = "fsllm"
    sub_configs_defaults = {"decoder_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    task: str = "sequence"
    fs: dict | None = None
    backbone: str | None = None
    decoder_config: dict | PreTrainedConfig | None = None
    backbone_attn_implementation: str = "sdpa"
    merged: bool = False
    fsllm_format: int = 2  # 3 with document_context, 4 with a prompt or verbalizer (see to_dict); FSLLM_FORMAT: newest read
    multi_label_threshold: float = 0.5
    label_thresholds: dict | None = None
    target_mean: float = 0.0
    target_std: float = 1.0
    text_pair: bool = False
    backbone_quantization: str | None = None
    whitespace_token_ids: list | None = None
    word_starts: dict | None = None
    # how the model reads its inputs, as trained (``TrainConfig``): None in folders written before the fields
    max_length: int | None = None
    document_context: int = 0
    backbone_dtype: str | None = None
    prompt_ids: list | None = None
    verbalizer_ids: list | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        # validated, every field present; a saved ``fs`` without the decoding fields was written before they
        # existed, and selected on dev under the reading of that time (not today's FSConfig default)
        legacy = {"ner_decoding": DEFAULT_DECODING, "word_scores": DEFAULT_WORD_SCORES} if self.fs else {}
        self.fs = FSConfig.from_dict({**legacy, **self.fs} if self.fs else {}).to_dict()
        if self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"problem_type must be one of {PROBLEM_TYPES}, got {self.problem_type!r}")
        if self.problem_type is not None and self.task != "sequence":
            raise ValueError(f"problem_type {self.problem_type!r} applies to sequence models only")
        if not (isinstance(self.target_std, (int, float)) and math.isfinite(self.target_std) and self.target_std > 0):
            raise ValueError(f"target_std must be a finite number > 0, got {self.target_std!r}")
        if not 0 < float(self.multi_label_threshold) < 1:
            raise ValueError(f"multi_label_threshold must be in (0, 1), got {self.multi_label_threshold!r}")
        if self.max_length is not None and not (_is_int(self.max_length) and self.max_length > 0):
            raise ValueError(f"max_length must be a positive integer or None, got {self.max_length!r}")
        if not (_is_int(self.document_context) and self.document_context >= 0):
            raise ValueError(f"document_context must be an integer >= 0, got {self.document_context!r}")
        for name in ("prompt_ids", "verbalizer_ids"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, list) and value and all(_is_int(t) and t >= 0 for t in value)):
                raise ValueError(f"{name} must be a non-empty list of token ids or None, got {value!r}")
        if self.backbone_dtype is not None and self.backbone_dtype not in BACKBONE_DTYPES[1:]:
            raise ValueError(f"backbone_dtype must be one of {', '.join(BACKBONE_DTYPES[1:])} or None, "
                             f"got {self.backbone_dtype!r}")

    def to_dict(self) -> dict[str, Any]:
        """The saved config, as format 3 where document context is set, 4 with a prompt or a verbalizer.

        An fsllm that predates the fields refuses such a folder ("written by a newer fsllm") instead of
        reading each sentence alone without a word, or failing on an unknown field."""
        d = super().to_dict()
        fmt = int(d.get("fsllm_format") or 2)
        if d.get("document_context"):
            fmt = max(fmt, 3)
        if d.get("prompt_ids") or d.get("verbalizer_ids"):
            fmt = max(fmt, 4)
        d["fsllm_format"] = fmt
        return d

    def threshold_of(self, label: str) -> float:
        """The decision threshold of one label of a multi-label model (its own one, else the global one)."""
        return float((self.label_thresholds or {}).get(label, self.multi_label_threshold))

    @property
    def fs_config(self) -> FSConfig:
        return FSConfig.from_dict(self.fs or {})
