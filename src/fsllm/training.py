"""Training: configuration -> data -> model -> HF ``Trainer`` around an FS model -> report, in one run folder.

``train`` composes one function per stage: :func:`resolve_config`, :func:`fsllm.prepare.prepare_data`
and :func:`~fsllm.prepare.prepare_features`, :func:`build_model`, :func:`build_trainer` and
:func:`fit`, :func:`write_report`. The run folder's layout is :mod:`fsllm.run`'s.

We use the stock ``Trainer`` / ``TrainingArguments`` (so ``torchrun`` and
``accelerate launch`` give DDP without code changes, and resume, seeding,
schedulers and logging are the ones users know) and override only what an FS
model needs:

* a checkpoint is the model's small folder (LoRA adapter and head, not the 135M+ frozen
  backbone weights), which the stock ``_save`` writes through ``save_pretrained`` but the
  stock loaders do not read (``_load_from_checkpoint``, ``_load_best_model``);
* evaluation is the same word-level code path as ``fsllm eval`` (windows merged,
  strict span F1), not a token-level approximation (``evaluate``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    EarlyStoppingCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_callback import ExportableState
from transformers.trainer_pt_utils import (
    LengthGroupedSampler,
    get_length_grouped_indices,
)

from . import atomic
from .backbones import backbone_num_layers, load_tokenizer, resolve_backbone_path
from .config import TrainConfig, emulated_bf16, resolve_backbone_dtype, resolve_precision, torch_dtype
from .errors import FSLLMError
from .evaluation import collapse_message, evaluate_examples
from .interruption import StopOnSignal, train_stopping_on_signal
from .metrics import LOWER_IS_BETTER, multilabel_metrics
from .model_card import model_card_text
from .modeling import MODEL_CARD_NAME, FSForSequenceClassification, FSForTokenClassification, FSModel
from .plots import plot_confusion, plot_training
from .prepare import Features, PreparedData, prepare_data, prepare_features
from .run import RunFolder, RunResult, checkpoint_step, is_main_process, several_processes
from .selection import train_grid
from .tokenization import whitespace_token_ids

logger = logging.getLogger(__name__)

# Moved to their own modules (config, prepare, run); still importable from here, where code outside
# the package (the benchmarks, users' scripts) imports them from.
from .config import PRECISIONS, FSConfig  # noqa: E402, F401
from .config import TRAIN_PROBLEM_TYPES as PROBLEM_TYPES  # noqa: E402, F401
from .prepare import (  # noqa: E402, F401
    build_label_maps,
    check_labels,
    make_collator,
    make_features,
    seeded_subset,
    tokens_per_batch,
)
from .run import _truncate_log, last_complete_checkpoint  # noqa: E402, F401

#: thresholds tried when choosing a multi-label decision threshold on dev
THRESHOLD_GRID = tuple(round(0.05 * k, 2) for k in range(1, 20))


def choose_thresholds(
    model: FSModel, tokenizer, dev: Sequence[dict], max_length: int, batch_size: int, per_label: bool = False
) -> dict[str, Any]:
    """Choose the multi-label decision threshold(s) on dev and store them in ``model.config``.

    The global threshold is the one of :data:`THRESHOLD_GRID` with the best dev micro F1 (ties: the
    one closest to 0.5, the untuned default). With ``per_label`` each label then gets the grid value
    with the best F1 *of that label* (same tie rule); a label absent from dev keeps the global one,
    as there is nothing to tune it on. Stored in the config (``multi_label_threshold``,
    ``label_thresholds``), the thresholds travel with the folder, so ``fsllm predict``, the server and
    anyone who reads the config apply the same decision. Dev scores after this are optimistic (tuned
    on dev); test scores are not.
    """
    from .inference import sequence_probabilities

    labels = [model.id2label[i] for i in range(model.num_labels)]
    probs = sequence_probabilities(model, tokenizer, dev, max_length, batch_size)
    gold = [list(ex["label"]) for ex in dev]

    def decide(th: list[float]) -> list[list[str]]:
        return [[lab for k, lab in enumerate(labels) if p[k] >= th[k]] for p in probs]

    def best(score) -> float:
        return max(THRESHOLD_GRID, key=lambda t: (round(score(t), 12), -abs(t - 0.5)))

    glob = best(lambda t: multilabel_metrics(gold, decide([t] * len(labels)), labels)["micro_f1"])
    model.config.multi_label_threshold = float(glob)
    model.config.label_thresholds = None
    if per_label:
        chosen: dict[str, float] = {}
        for k, lab in enumerate(labels):
            if not any(lab in g for g in gold):
                continue
            th = [glob] * len(labels)

            def f1_of(t: float, k: int = k, lab: str = lab, th: list[float] = th) -> float:
                th[k] = t
                return multilabel_metrics(gold, decide(th), labels)["per_label"][lab]["f1"]

            chosen[lab] = float(best(f1_of))
        model.config.label_thresholds = chosen
    return {"global": model.config.multi_label_threshold, "per_label": model.config.label_thresholds}


# ---------------------------------------------------------------------------------- trainer


class JsonlLogCallback(TrainerCallback):
    """Append every log record to ``train_log.jsonl`` as it happens (survives a crash)."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")


class TrainingClock(TrainerCallback, ExportableState):
    """The training wall-clock of a run over every process that trained it.

    Why: a resumed run's own wall-clock covers only its last part, and a cost figure needs the whole. The
    seconds so far are saved with each checkpoint (the Trainer's ``ExportableState``) and restored on resume;
    the work a killed process did after its last checkpoint is done again, and counted once.
    """

    def __init__(self, seconds_before: float = 0.0, restored: bool = False):
        self.seconds_before = float(seconds_before)  # up to the checkpoint this process resumed from
        self.restored = restored  # True once the Trainer restored it from a checkpoint
        self._started: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._started = time.time()
        # a checkpoint written before the clock existed has no entry for it, and the Trainer's save expects one
        state.stateful_callbacks.setdefault(type(self).__name__, {})

    @property
    def seconds(self) -> float:
        return self.seconds_before + (time.time() - self._started if self._started is not None else 0.0)

    def state(self) -> dict:
        return {"args": {"seconds_before": round(self.seconds, 3), "restored": True}, "attributes": {}}


def train_timing(trainer: Trainer, seconds_this_call: float, checkpoint: str | Path | None) -> dict[str, Any]:
    """The ``train`` entries on time of a run's metrics: ``seconds`` over the whole run (every process that
    trained it, through :class:`TrainingClock`) and, for a resumed run, the step it resumed from and the
    seconds before it. A checkpoint written before the clock existed cannot say: ``seconds`` is then this
    call's alone and ``seconds_before_resume`` is absent."""
    if checkpoint is None:
        return {"seconds": round(seconds_this_call, 1)}
    timing: dict[str, Any] = {"resumed_from_step": checkpoint_step(Path(checkpoint))}
    clock = next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, TrainingClock)), None)
    if clock is not None and clock.restored:
        timing["seconds_before_resume"] = round(clock.seconds_before, 1)
        timing["seconds"] = round(clock.seconds_before + seconds_this_call, 1)
    else:
        timing["seconds"] = round(seconds_this_call, 1)
    return timing


class EvaluateAtEndCallback(TrainerCallback):
    """Evaluate and checkpoint at the last step too, so the final weights compete for "best on dev"
    (with step-based evaluation, a run whose length is not a multiple of ``eval_steps`` would skip them)."""

    def on_step_end(self, args, state, control, **kwargs):
        last = state.global_step >= state.max_steps
        if last and args.eval_strategy == "steps" and state.global_step % args.eval_steps != 0:
            control.should_evaluate = True
            control.should_save = True
        return control


class LambdaScheduleCallback(TrainerCallback):
    """Anneal the decay lambda of the released layers during training (``TrainConfig.lambda_schedule``).

    Causal-like first, released at the end: lambda moves from ``start`` at step 0 to ``end`` (the
    model's ``decay_lambda``) at ``fraction`` of the steps, linearly or along a half cosine, then
    stays. The value of step ``t`` is set before that step's forward and again after it, so an
    evaluation or checkpoint after ``t`` steps sees lambda(t) and a resumed run continues the curve
    where it stopped. Each checkpoint's config carries the lambda of its step; at the end, the
    Trainer having restored the best checkpoint's weights, the model gets that checkpoint's lambda
    too, so the saved model computes what was selected on dev.
    """

    def __init__(self, schedule: str, start: float, end: float, fraction: float):
        self.schedule, self.start, self.end, self.fraction = schedule, float(start), float(end), float(fraction)

    def value(self, step: int, max_steps: int) -> float:
        """lambda at ``step`` of ``max_steps``."""
        span = max(1.0, self.fraction * max_steps)
        t = min(step / span, 1.0)
        if self.schedule == "cosine":
            return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * t))
        return self.start + (self.end - self.start) * t

    @staticmethod
    def apply(model: FSModel, value: float) -> None:
        """Set every layer's decay lambda (the causal layers have no use for theirs) and the config's."""
        with torch.no_grad():
            model.fs_lambda_const.fill_(value)
        model.fs_config.decay_lambda = value
        model.config.fs = {**model.config.fs, "decay_lambda": value}

    def _set(self, state, model) -> None:
        if model is not None and state.max_steps:
            self.apply(model, self.value(state.global_step, state.max_steps))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._set(state, model)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self._set(state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._set(state, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        best = state.best_model_checkpoint
        if model is not None and best and (Path(best) / "config.json").is_file():
            saved = json.loads((Path(best) / "config.json").read_text()).get("fs", {})
            if "decay_lambda" in saved:
                self.apply(model, float(saved["decay_lambda"]))


def lever_callbacks(cfg: TrainConfig) -> list[TrainerCallback]:
    """The callbacks a run's optional training levers need (the lambda schedule)."""
    if cfg.lambda_schedule is None:
        return []
    return [LambdaScheduleCallback(cfg.lambda_schedule, cfg.lambda_start, cfg.fs.decay_lambda,
                                   cfg.lambda_schedule_fraction)]


def part_learning_rates(cfg: TrainConfig) -> dict[str, float]:
    """Peak learning rates of parts of the model that differ from ``--lr``: ``head``, ``lambda`` and, under
    LoRA+, ``lora_B`` (``loraplus_lr_ratio`` times ``--lr``; a grid's members each have one rate)."""
    lora_b = None
    if cfg.loraplus_lr_ratio is not None and not isinstance(cfg.learning_rate, list):
        lora_b = cfg.learning_rate * cfg.loraplus_lr_ratio
    rates = {"head": cfg.head_learning_rate, "lambda": cfg.lambda_learning_rate, "lora_B": lora_b}
    return {part: lr for part, lr in rates.items() if lr is not None}


def _part_of(name: str) -> str:
    """Which part a parameter name belongs to, for ``part_learning_rates``."""
    if name.startswith("head."):
        return "head"
    if name == "fs_lambda_raw":
        return "lambda"
    if ".lora_B." in name:  # PEFT's names: ...q_proj.lora_B.default.weight
        return "lora_B"
    return "backbone"


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped order drawn from ``seed + epoch`` alone.

    The stock sampler draws from the global RNG, whose state at the start of an epoch
    is not what a resumed run restores (it restores the state of the checkpoint, mid
    epoch), so a resumed run would see other batches than the uninterrupted one.
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=g))


class FSTrainer(Trainer):
    """``Trainer`` that saves only what training changes and evaluates at the word level.

    An FS model's run passes ``fs_eval`` (its dev split, scored by :func:`fsllm.evaluation.evaluate_examples`).
    Any other model (a PEFT-wrapped ``AutoModelFor...``, a plain encoder) may use it too: ``evaluator``
    scores the model on dev and returns its metrics, and a model without ``load_trained_weights``
    saves, resumes and reloads its best checkpoint the stock ``Trainer`` way.
    """

    def __init__(self, *args, fs_eval: tuple | None = None, evaluator: Callable[[Any], dict] | None = None,
                 tokens_per_batch: float | None = None, epoch_seeded_order: bool = True, **kwargs):  # noqa: F811 (the re-exported function of that name is not used here)
        if fs_eval is not None and evaluator is not None:
            raise ValueError("FSTrainer takes fs_eval or evaluator, not both")
        super().__init__(*args, **kwargs)
        self.fs_eval = fs_eval  # (tokenizer, dev examples, max_length, batch size)
        #: the model -> its dev metrics (numbers are logged and selected on; the whole dict is kept by step)
        self.evaluator = evaluator if evaluator is not None else (self._word_level_evaluation if fs_eval is not None else None)
        #: this process's dev evaluations by step, as the evaluator returned them (a resumed run has the later ones)
        self.evaluations: dict[int, dict] = {}
        # labelled tokens in an average training batch: set for a length-balanced token loss
        self.tokens_per_batch = tokens_per_batch
        # False: the stock length-grouped order, drawn from the global RNG (not reproduced by a resume)
        self.epoch_seeded_order = epoch_seeded_order

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The stock loss (the model sums it over the step's ``num_items_in_batch`` labelled tokens, see
        ``fsllm.modeling._reduce_loss``), or with a length-balanced loss the sum over this batch's labelled
        tokens divided by the average batch's count, as many times as batches make the optimizer step."""
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if self.tokens_per_batch and model.training:
            if num_items_in_batch is None:
                # a mean over this batch's labelled tokens; the Trainer divides it by the accumulation steps
                loss = loss * ((inputs["labels"] != -100).sum() / self.tokens_per_batch)
            else:
                # a sum over this batch's tokens / the step's count, which the Trainer then multiplies by the
                # processes (DDP averages their gradients) and does not divide by the accumulation steps
                processes = self.accelerator.num_processes // self.get_tp_size() if self.args.average_tokens_across_devices else 1
                batches = self.current_gradient_accumulation_steps * processes
                loss = loss * (num_items_in_batch / (self.tokens_per_batch * batches))
        return (loss, outputs) if return_outputs else loss

    #: peak learning rates of parts of the model other than ``--lr`` (see ``part_learning_rates``)
    part_learning_rates: dict[str, float] | None = None

    def create_optimizer(self, model=None):
        """The stock optimizer, with the parts named in ``part_learning_rates`` moved to groups of their own
        learning rate (their weight decay kept); the scheduler scales every group alike."""
        optimizer = super().create_optimizer(model)
        if not self.part_learning_rates:
            return optimizer
        opt_model = self.model if model is None else model
        rate_of = {id(p): self.part_learning_rates[part] for n, p in opt_model.named_parameters()
                   if (part := _part_of(n)) in self.part_learning_rates}
        extra = []
        for group in list(optimizer.param_groups):
            moved: dict[float, list] = {}
            for p in group["params"]:
                if id(p) in rate_of:
                    moved.setdefault(rate_of[id(p)], []).append(p)
            if moved:
                group["params"] = [p for p in group["params"] if id(p) not in rate_of]
                settings = {k: v for k, v in group.items() if k != "params"}
                extra += [{**settings, "params": ps, "lr": lr} for lr, ps in moved.items()]
        for group in extra:
            optimizer.add_param_group(group)
        return optimizer

    def _get_train_sampler(self, train_dataset=None):
        ds = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or ds is None or not self.epoch_seeded_order:
            return super()._get_train_sampler(train_dataset)
        lengths = [len(x) for x in ds["input_ids"]]
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return EpochSeededLengthGroupedSampler(batch, lengths, self.args.data_seed or self.args.seed)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        target = model or self.model
        if not hasattr(target, "load_trained_weights"):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        target.load_trained_weights(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        if not hasattr(self.model, "load_trained_weights"):
            return super()._load_best_model()
        logger.info("best dev checkpoint: %s (%s)", self.state.best_model_checkpoint, self.state.best_metric)
        self.model.load_trained_weights(self.state.best_model_checkpoint)

    def _word_level_evaluation(self, model) -> dict:
        """The evaluator of ``fs_eval``: ``fsllm eval``'s code path, with a warning when the model has collapsed."""
        tokenizer, examples, max_length, batch_size = self.fs_eval
        metrics, records = evaluate_examples(model, tokenizer, examples, max_length, batch_size, progress="dev")
        if (collapsed := collapse_message(records)) is not None:
            logger.warning("step %d: %s; the model has collapsed to one answer. If later evaluations say the same, "
                           "train again with a lower learning rate (--lr; the default is 2e-4) or another --seed",
                           self.state.global_step, collapsed)
        return metrics

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        if self.evaluator is None:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        start = time.time()
        metrics = self.evaluator(self.model)
        self.evaluations[self.state.global_step] = metrics
        out = {f"{metric_key_prefix}_{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        out[f"{metric_key_prefix}_runtime"] = round(time.time() - start, 2)
        self.log(out)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, out)
        return out


# ---------------------------------------------------------------------------------- stages


def _default_run_dir(cfg: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = Path(str(cfg.data)).name.replace("/", "_")
    return Path("runs") / f"{name}-{cfg.fs.attention}-{stamp}"


#: the settings a resumed run may change: how it evaluates, reports and saves, and the memory a step takes,
#: not what it learns (``gradient_checkpointing`` gives the same loss and gradients)
RESUME_CHANGEABLE = ("eval_batch_size", "evaluate_test", "gradient_checkpointing", "save_total_limit")


FSDP_REFUSED = (
    "fsllm train does not run under FSDP: its end of run (saving and evaluating the best model) runs on "
    "process 0 alone, which a sharded model cannot do without the other processes, so the run would hang; "
    "launch it as DDP (torchrun, or accelerate launch without the FSDP config; see docs/scaling.md)"
)


def fsdp_launch() -> bool:
    """Does this launch ask accelerate for FSDP on GPUs (``accelerate launch`` with an FSDP config)?

    Accelerate shards the model when ``ACCELERATE_USE_FSDP`` is set and the processes run on an
    accelerator; on a CPU (the ``Trainer`` runs ``use_cpu`` there, see :func:`training_arguments`) it
    ignores the setting and runs DDP over gloo, which ``fsllm train`` completes (docs/scaling.md).
    """
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and torch.cuda.is_available()


def flex_backward_here() -> bool:
    """Whether torch's ``flex_attention`` has a backward on the device this process trains on.

    torch 2.13 has none on a CPU: the first backward through it raises ``NotImplementedError``. Asked
    of torch's own device check on a tiny tensor (nothing runs), so a torch that adds one is believed.
    """
    if torch.cuda.is_available():
        return True
    try:
        from torch.nn.attention.flex_attention import _validate_device
    except ImportError:  # the check moved: let the first step say
        return True
    t = torch.zeros(1, 1, 1, 8, requires_grad=True)
    try:
        _validate_device(t, t, t)
    except NotImplementedError:
        return False
    return True


def resolve_config(config: TrainConfig | None, resume: bool, overrides: dict[str, Any]) -> tuple[TrainConfig, RunFolder]:
    """The configuration to train with and its run folder, every check done before anything is written.

    An FSDP launch is refused here (:data:`FSDP_REFUSED`), before a model is loaded or a file written.
    Resuming reads the run's own ``config.json``, so the continued run is the one that was started; of
    the ``overrides`` it applies those of :data:`RESUME_CHANGEABLE` (and saves them) and refuses any
    other, which would make the continued run another one than the one its checkpoints come from.
    """
    if fsdp_launch():
        raise FSLLMError(FSDP_REFUSED)
    if resume:
        out = overrides.get("output_dir") or (config.output_dir if config else None)
        if not out:
            raise FSLLMError("--resume needs the run folder (--output)")
        folder = RunFolder(Path(out))
        if not folder.config_path.is_file():
            raise FSLLMError(f"{out}: nothing to resume (no {folder.config_path.name})")
        cfg = folder.load_config()
        # a setting given again with its saved value changes nothing and is no reason to refuse
        changes = {k: v for k, v in overrides.items() if k != "output_dir" and getattr(cfg, k, object()) != v}
        refused = sorted(k for k in changes if k not in RESUME_CHANGEABLE)
        if refused:
            raise FSLLMError(
                f"--resume continues the run as {folder.config_path} says and cannot change {', '.join(refused)} "
                f"(it applies only {', '.join(RESUME_CHANGEABLE)}); to change them, start a new run "
                f"with --config {folder.config_path} and another --output"
            )
        if changes:
            logger.warning("resume: applying %s", ", ".join(f"{k}={v!r}" for k, v in sorted(changes.items())))
            cfg = dataclasses.replace(cfg, **changes)
    else:
        cfg = config or TrainConfig()
        if overrides:
            cfg = dataclasses.replace(cfg, **overrides)
    # explicit fs_layers are checked against the backbone's layer count (its config alone) before anything is written
    if isinstance(cfg.fs.fs_layers, list) and (num_layers := backbone_num_layers(cfg.model)) is not None:
        cfg.fs.resolve_layers(num_layers)
    if cfg.precision == "auto":  # resolved once, so config.json says what the run used
        cfg.precision, why = resolve_precision("auto")
        logger.warning("precision auto: %s (%s)", cfg.precision, why)
    if cfg.backbone_dtype == "auto":  # resolved once too; a quantised backbone keeps its own format
        cfg.backbone_dtype, why = ("fp32", "quantised backbone") if cfg.quantize else resolve_backbone_dtype("auto")
        logger.warning("backbone_dtype auto: %s (%s)", cfg.backbone_dtype, why)
    for what, value in (("precision", cfg.precision), ("backbone_dtype", cfg.backbone_dtype)):
        if value == "bf16" and (slow := emulated_bf16(f"{what} bf16")):
            logger.warning(slow)
    if cfg.attn_implementation == "flex_attention" and (cfg.fs.use_lora or cfg.fs.learnable_lambda) \
            and not flex_backward_here():
        # else the first backward fails deep in torch, after the run folder and the model are made
        raise FSLLMError(
            f"attn_implementation flex_attention: torch {torch.__version__} has no flex_attention backward on a CPU, "
            "and LoRA (or a learnable lambda) trains through the attention; train with sdpa (the same model), on a "
            "GPU, or the head alone (--no-use-lora)")
    if cfg.precision == "fp16" and not torch.cuda.is_available():
        raise FSLLMError("precision fp16 needs a CUDA GPU; on a CPU use bf16 or fp32")
    if cfg.backbone_dtype == "fp16" and not torch.cuda.is_available():
        raise FSLLMError("backbone_dtype fp16 needs a CUDA GPU; on a CPU use bf16 or fp32")
    if several_processes() and not cfg.output_dir:
        raise FSLLMError("with several processes, pass --output (each process must name the same run folder)")
    run_dir = Path(cfg.output_dir) if cfg.output_dir else _default_run_dir(cfg)
    cfg.output_dir = str(run_dir)
    folder = RunFolder(run_dir)
    if is_main_process() and not resume and folder.holds_files():
        raise FSLLMError(f"{run_dir} already holds a run: pass --resume to continue it, or another --output")
    return cfg, folder


def build_model(cfg: TrainConfig, data: PreparedData) -> tuple[FSModel, Any]:
    """The FS model on its backbone with the run's label maps, and the backbone's tokenizer.

    Regression targets are standardised with the training split's mean and deviation alone: dev and
    test must not shape what the model is fitted to.
    """
    tokenizer = load_tokenizer(cfg.model)
    model_cls = FSForTokenClassification if data.task == "token" else FSForSequenceClassification
    model: FSModel = model_cls.from_backbone(
        cfg.model, num_labels=len(data.id2label), fs_config=cfg.fs, id2label=data.id2label, label2id=data.label2id,
        attn_implementation=cfg.attn_implementation, problem_type=data.problem_type, quantize=cfg.quantize,
        dtype=torch_dtype(cfg.backbone_dtype), tokenizer=tokenizer,
    )
    model.config.text_pair = bool(cfg.text_pair_column)
    # the folder reads its inputs at the length it was trained and selected at (Predictor, eval, serve)
    model.config.max_length = cfg.max_length
    if data.task == "token":
        model.config.whitespace_token_ids = whitespace_token_ids(tokenizer)
        model.config.document_context = cfg.document_context  # read so again by eval, predict and the test score
    if data.problem_type == "regression":
        targets = torch.tensor([float(ex["label"]) for ex in data.train], dtype=torch.float64)
        std = float(targets.std()) if len(targets) > 1 else 0.0
        model.config.target_mean = float(targets.mean())
        model.config.target_std = std if math.isfinite(std) and std > 0 else 1.0
    return model, tokenizer


#: the arguments this transformers' ``TrainingArguments`` takes
TRAINING_ARGUMENT_NAMES = frozenset(f.name for f in dataclasses.fields(TrainingArguments))


def training_arguments(cfg: TrainConfig, folder: RunFolder, metric: str, has_dev: bool) -> TrainingArguments:
    """The stock ``TrainingArguments`` for a run: every Trainer setting the ``TrainConfig`` decides."""
    strategy = "no" if not has_dev else ("steps" if cfg.eval_steps else "epoch")
    # fields marked trainer=(...) go to those arguments unchanged: a new one needs no edit here
    passed = {arg: getattr(cfg, f.name) for f in dataclasses.fields(cfg) for arg in f.metadata.get("trainer", ())}
    if "activation_checkpointing" in TRAINING_ARGUMENT_NAMES:  # its new name: the old warns on every run, even False
        passed["activation_checkpointing"] = passed.pop("gradient_checkpointing")
    return TrainingArguments(
        output_dir=str(folder.checkpoints_dir),
        **passed,
        warmup_steps=float(cfg.warmup_ratio),  # a float in [0, 1) is a ratio of the total steps
        eval_strategy=strategy,
        save_strategy=strategy if has_dev else "epoch",
        load_best_model_at_end=has_dev,
        metric_for_best_model=metric if has_dev else None,
        greater_is_better=metric not in LOWER_IS_BETTER,
        # a resumed run continues early stopping's count of evaluations without a new best from the checkpoint
        restore_callback_states_from_checkpoint=True,
        logging_first_step=True,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        report_to="none",
        dataloader_num_workers=0,
        remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(),
        bf16=cfg.precision == "bf16",
        fp16=cfg.precision == "fp16",
        # every trainable parameter gets a gradient, except the lambdas of causal layers
        ddp_find_unused_parameters=bool(cfg.fs.learnable_lambda),
        disable_tqdm=False,
    )


def build_trainer(
    cfg: TrainConfig, folder: RunFolder, model: FSModel, tokenizer, data: PreparedData, features: Features,
    callbacks: Sequence[TrainerCallback],
) -> FSTrainer:
    """The ``FSTrainer`` with the run's callbacks: the log written as training goes, a last evaluation at
    the final step, a checkpoint and a stop on SIGTERM / Ctrl-C (``StopOnSignal``), early stopping when asked
    for (and there is a dev split to stop on)."""
    has_dev = bool(data.dev)
    cbs = [JsonlLogCallback(folder.log_path), EvaluateAtEndCallback(), TrainingClock(), StopOnSignal(),
           *lever_callbacks(cfg), *callbacks]
    if cfg.early_stopping_patience and has_dev:
        cbs.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    trainer = FSTrainer(
        model=model,
        args=training_arguments(cfg, folder, data.metric, has_dev),
        train_dataset=features.train,
        eval_dataset=features.dev,
        data_collator=features.collator,
        processing_class=tokenizer,
        callbacks=cbs,
        fs_eval=(tokenizer, data.dev, cfg.max_length, cfg.eval_batch_size) if has_dev else None,
        tokens_per_batch=features.tokens_per_batch,
    )
    trainer.part_learning_rates = part_learning_rates(cfg)
    return trainer


def fit(trainer: FSTrainer, folder: RunFolder, resume: bool) -> tuple[Any, dict[str, Any]]:
    """Run the Trainer (from the last complete checkpoint when resuming); the output and its timing
    (:func:`train_timing`: the whole run's seconds, resumed or not). A run stopped by SIGTERM or Ctrl-C
    saves a checkpoint at the end of its step and raises ``TrainingInterrupted`` (``fsllm.interruption``).

    A resumed run drops the log records its killed predecessor wrote after that checkpoint, so the log
    reads as one uninterrupted run.
    """
    checkpoint = folder.last_complete_checkpoint() if resume else None
    if resume and is_main_process():
        folder.truncate_log(checkpoint_step(checkpoint) if checkpoint else 0)
        if checkpoint is None:
            logger.warning("%s: no complete checkpoint yet; starting from the beginning", folder.path)
        else:
            logger.info("resuming from %s", checkpoint)
    if is_main_process() and trainer.args.device.type == "cpu":  # torch takes MKL_NUM_THREADS over OMP_NUM_THREADS
        logger.info("training on %d torch threads", torch.get_num_threads())
    t0 = time.time()
    out = train_stopping_on_signal(trainer, checkpoint, f"continue with `fsllm train --resume --output {folder.path}`")
    return out, train_timing(trainer, time.time() - t0, checkpoint)


def write_report(
    cfg: TrainConfig, folder: RunFolder, model: FSModel, tokenizer, data: PreparedData, features: Features,
    trainer: FSTrainer, train_out: Any, timing: dict[str, Any],
) -> RunResult:
    """Save the final model (best on dev), evaluate dev and test, write metrics, predictions and plots.

    Each file is written atomically, so a run killed here leaves complete files (old or new) and
    ``--resume`` writes the report again.
    """
    thresholds = None
    if data.problem_type == "multi_label_classification" and data.dev:
        thresholds = choose_thresholds(model, tokenizer, data.dev, cfg.max_length, cfg.eval_batch_size, cfg.threshold_per_label)
    with atomic.replacing_dir(folder.model_dir) as tmp:
        model.save_pretrained(tmp, tokenizer=tokenizer)
    trainable, total = model.trainable_parameters()
    metrics: dict[str, Any] = {
        "task": data.task,
        "problem_type": data.problem_type,
        "data": cfg.data,
        "data_source": data.source,
        "primary_metric": data.metric,
        "sizes": {"train": len(data.train), "dev": len(data.dev), "test": len(data.test)},
        "train_examples_altered": features.altered,
        "trainable_params": trainable,
        "total_params": total,
        "train": {
            "steps": trainer.state.global_step,
            **timing,
            "loss": train_out.training_loss,
            "best_checkpoint": trainer.state.best_model_checkpoint,
            "best_dev_metric": trainer.state.best_metric,
        },
    }
    if data.problem_type == "regression":
        metrics["target_mean"], metrics["target_std"] = model.config.target_mean, model.config.target_std
    if thresholds is not None:
        metrics["thresholds"] = thresholds
    plots: list[Path] = []
    for split, exs in (("dev", data.dev), ("test", data.test if cfg.evaluate_test else [])):
        if not exs:
            continue
        t0 = time.time()
        m, records = evaluate_examples(model, tokenizer, exs, cfg.max_length, cfg.eval_batch_size, progress=split,
                                        all_decodings=True)
        # the inference cost of the split, as the baselines record it (the extra decodings are not part of it)
        m["seconds"] = round(time.time() - t0 - m.pop("decodings_seconds", 0.0), 1)
        metrics[split] = m
        folder.write_predictions(split, records)
        cm = m.get("confusion_matrix")
        labels = m.get("labels") or m.get("confusion_labels")
        if cm and labels:
            plots.append(plot_confusion(cm, labels, folder.plots_dir / f"confusion_{split}.png", title=f"{split} confusion matrix"))
    plots = plot_training(trainer.state.log_history, folder.plots_dir, data.metric) + plots
    atomic.write_text(folder.model_dir / MODEL_CARD_NAME, model_card_text(model.config, metrics, dataset=str(cfg.data)))
    folder.write_metrics(metrics)
    return RunResult(folder.path, metrics, plots)


# ---------------------------------------------------------------------------------- entry point


def train(config: TrainConfig | None = None, *, resume: bool = False, callbacks: Sequence[TrainerCallback] = (), **overrides: Any) -> RunResult:
    """Train, select on dev, evaluate on test, and write a run folder.

    ``train(data="rt-polarity", epochs=2)`` or ``train(TrainConfig(...))``. With
    ``resume=True`` and the ``output_dir`` of an interrupted run, training continues
    from that run's last complete checkpoint with its saved configuration; other overrides
    may change only ``RESUME_CHANGEABLE`` (how it evaluates and saves), any other is refused.
    A list of learning rates trains a grid and keeps the rate best on dev (``fsllm.selection``).
    """
    cfg, folder = resolve_config(config, resume, overrides)
    resolve_backbone_path(cfg.model)  # a missing model folder is named now, not after the data has loaded
    if isinstance(cfg.learning_rate, list):  # a learning-rate grid: one run (this function) per rate, chosen on dev
        return train_grid(cfg, folder, resume=resume, callbacks=callbacks, train_one=train)
    set_seed(cfg.seed)
    data = prepare_data(cfg)
    model, tokenizer = build_model(cfg, data)
    features = prepare_features(cfg, data, tokenizer)
    # The run folder is written only now that the data and the model have loaded: a bad file or
    # model name leaves nothing behind (a half-made folder would refuse the corrected rerun).
    if is_main_process():
        folder.path.mkdir(parents=True, exist_ok=True)
        folder.save_config(cfg)
    trainer = build_trainer(cfg, folder, model, tokenizer, data, features, callbacks)
    if trainer.is_fsdp_enabled:  # accelerate's own decision, should it shard where fsdp_launch did not foresee it
        raise FSLLMError(FSDP_REFUSED)
    train_out, timing = fit(trainer, folder, resume)
    if not is_main_process():
        return RunResult(folder.path, {}, [])
    return write_report(cfg, folder, model, tokenizer, data, features, trainer, train_out, timing)
