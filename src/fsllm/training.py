"""Training: data -> features -> HF ``Trainer`` around an FS model -> one run folder.

We use the stock ``Trainer`` / ``TrainingArguments`` (so ``torchrun`` and
``accelerate launch`` give DDP without code changes, and resume, seeding,
schedulers and logging are the ones users know) and override only what an FS
model needs:

* a checkpoint is the model's small folder (LoRA adapter and head, not the 135M+ frozen
  backbone weights), which the stock ``_save`` writes through ``save_pretrained`` but the
  stock loaders do not read (``_load_from_checkpoint``, ``_load_best_model``);
* evaluation is the same word-level code path as ``fsllm eval`` (windows merged,
  strict span F1), not a token-level approximation (``evaluate``).

A run folder holds ``config.json``, ``checkpoints/``, ``model/`` (the best
checkpoint by the dev metric), ``metrics.json`` (dev and test), per-example
predictions, ``train_log.jsonl`` and ``plots/``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import (
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_pt_utils import (
    LengthGroupedSampler,
    get_length_grouped_indices,
)

from . import atomic
from .backbones import backbone_num_layers, load_tokenizer

# Moved to their own modules; still importable from here, where code outside the package finds them.
from .config import PRECISIONS, FSConfig, TrainConfig  # noqa: E402, F401
from .config import TRAIN_PROBLEM_TYPES as PROBLEM_TYPES  # noqa: E402, F401
from .data import load_any
from .errors import ConfigError, DataError, FSLLMError
from .inference import evaluate_examples
from .metrics import LOWER_IS_BETTER, METRIC_NAMES, multilabel_metrics, primary_metric
from .model_card import model_card_text
from .modeling import MODEL_CARD_NAME, FSForSequenceClassification, FSForTokenClassification, FSModel
from .plots import plot_confusion, plot_training
from .run import RunFolder, _truncate_log, checkpoint_step, last_complete_checkpoint  # noqa: E402, F401
from .tokenization import pair_features, sequence_features, token_classification_features

logger = logging.getLogger(__name__)


#: thresholds tried when choosing a multi-label decision threshold on dev
THRESHOLD_GRID = tuple(round(0.05 * k, 2) for k in range(1, 20))


@dataclass
class RunResult:
    """What ``train`` returns: where the run lives and what it measured."""

    run_dir: Path
    metrics: dict[str, Any]
    plots: list[Path]

    @property
    def model_dir(self) -> Path:
        return RunFolder(self.run_dir).model_dir


# ---------------------------------------------------------------------------------- labels


def build_label_maps(
    task: str, train: Sequence[dict], label_names: list[str] | None, problem_type: str | None = None
) -> dict[int, str]:
    """Label map from the training split (and the data set's canonical order when it has one).

    For NER every entity type seen in training gets both its B- and I- tag, so a small
    training subset that happens to lack, say, ``I-MISC`` still covers the dev split.
    Multi-label: every label of any training example; regression: one output, ``"score"``.
    """
    if problem_type == "regression":
        return {0: "score"}
    if problem_type == "multi_label_classification":
        seen_multi = {lab for ex in train for lab in ex["label"]}
        names = [n for n in (label_names or []) if n in seen_multi] + sorted(seen_multi - set(label_names or []))
        return dict(enumerate(names))
    if task == "token":
        types = sorted({t.split("-", 1)[1] for ex in train for t in ex["tags"] if t != "O"})
        tags = ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]
        if label_names:
            tags = [t for t in label_names if t in tags] + [t for t in tags if t not in label_names]
        return dict(enumerate(tags))
    seen = {ex["label"] for ex in train}
    names = [n for n in (label_names or []) if n in seen] + sorted(seen - set(label_names or []))
    return dict(enumerate(names))


def check_labels(task: str, split: str, examples: Sequence[dict], label2id: dict[str, int]) -> None:
    """An unknown label outside training is an error, with the split, example and known labels."""
    for n, ex in enumerate(examples):
        if isinstance(ex.get("label"), float):
            continue  # a regression target: any number goes
        values = ex["tags"] if task == "token" else ex["label"] if isinstance(ex["label"], list) else [ex["label"]]
        for v in values:
            if v not in label2id:
                raise DataError(
                    f"{split} example {n}: label {v!r} never occurs in the training split "
                    f"(training labels: {sorted(label2id)})"
                )


# ---------------------------------------------------------------------------------- features


def make_features(
    task: str, examples: Sequence[dict], tokenizer, label2id: dict[str, int], max_length: int,
    problem_type: str | None = None,
) -> tuple[list[dict], int]:
    """Model inputs for training; returns the features and the number of truncated/windowed examples.

    ``labels`` is the label id (single label), a multi-hot float vector (multi-label) or the raw
    target (regression: the model standardises it). An example with ``text_pair`` is a pair.
    """
    feats: list[dict] = []
    altered = 0
    for ex in examples:
        if task == "token":
            windows = token_classification_features(ex["tokens"], ex["tags"], tokenizer, label2id, max_length)
            altered += len(windows) > 1
            feats.extend({k: w[k] for k in ("input_ids", "attention_mask", "labels")} for w in windows)
        else:
            if ex.get("text_pair") is not None:
                f, truncated = pair_features(ex["text"], ex["text_pair"], tokenizer, max_length)
            else:
                f, truncated = sequence_features(ex["text"], tokenizer, max_length)
            altered += truncated
            if problem_type == "regression":
                f["labels"] = float(ex["label"])
            elif problem_type == "multi_label_classification":
                hot = [0.0] * len(label2id)
                for lab in ex["label"]:
                    hot[label2id[lab]] = 1.0
                f["labels"] = hot
            else:
                f["labels"] = label2id[ex["label"]]
            feats.append(f)
    return feats, altered


def make_collator(task: str, tokenizer, pad_to_length: int | None = None):
    """Batch collator: pads each batch to its longest example, or every batch to ``pad_to_length``.

    Fixed-length padding is the LS-LLaMA/BiLLM recipe, kept for the speed benchmark. Since FS
    attention masks padding keys and the loss ignores padded positions, both give the same loss
    and gradients; dynamic padding only computes less.
    """
    kw = dict(padding="max_length", max_length=pad_to_length) if pad_to_length else {}
    if task == "token":
        return DataCollatorForTokenClassification(tokenizer, **kw)
    return DataCollatorWithPadding(tokenizer, **kw)


def tokens_per_batch(features: Sequence[dict], batch_size: int) -> float:
    """Labelled tokens (labels other than -100) in an average batch of ``batch_size`` features."""
    labelled = sum(sum(1 for y in f["labels"] if y != -100) for f in features)
    return batch_size * labelled / max(1, len(features))


def seeded_subset(examples: list[dict], n: int | None, seed: int) -> list[dict]:
    """``n`` examples drawn with ``seed``, kept in file order (the same draw for every method compared)."""
    if n is None or n >= len(examples):
        return examples
    idx = list(range(len(examples)))
    random.Random(seed).shuffle(idx)
    return [examples[i] for i in sorted(idx[:n])]


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


class EvaluateAtEndCallback(TrainerCallback):
    """Evaluate and checkpoint at the last step too, so the final weights compete for "best on dev"
    (with step-based evaluation, a run whose length is not a multiple of ``eval_steps`` would skip them)."""

    def on_step_end(self, args, state, control, **kwargs):
        last = state.global_step >= state.max_steps
        if last and args.eval_strategy == "steps" and state.global_step % args.eval_steps != 0:
            control.should_evaluate = True
            control.should_save = True
        return control


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
    """``Trainer`` that saves only what training changes and evaluates at the word level."""

    def __init__(self, *args, fs_eval: tuple | None = None, tokens_per_batch: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fs_eval = fs_eval  # (tokenizer, dev examples, max_length, batch size)
        # labelled tokens in an average training batch: set for a length-balanced token loss
        self.tokens_per_batch = tokens_per_batch

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if self.tokens_per_batch and model.training:
            # mean over this batch's labelled tokens -> sum over them / the average batch's count
            loss = loss * ((inputs["labels"] != -100).sum() / self.tokens_per_batch)
        return (loss, outputs) if return_outputs else loss

    def _get_train_sampler(self, train_dataset=None):
        ds = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or ds is None:
            return super()._get_train_sampler(train_dataset)
        lengths = [len(x) for x in ds["input_ids"]]
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return EpochSeededLengthGroupedSampler(batch, lengths, self.args.data_seed or self.args.seed)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        (model or self.model).load_trained_weights(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        logger.info("best dev checkpoint: %s (%s)", self.state.best_model_checkpoint, self.state.best_metric)
        self.model.load_trained_weights(self.state.best_model_checkpoint)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        if self.fs_eval is None:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        tokenizer, examples, max_length, batch_size = self.fs_eval
        start = time.time()
        metrics, _ = evaluate_examples(self.model, tokenizer, examples, max_length, batch_size, progress="dev")
        out = {f"{metric_key_prefix}_{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        out[f"{metric_key_prefix}_runtime"] = round(time.time() - start, 2)
        self.log(out)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, out)
        return out


# ---------------------------------------------------------------------------------- entry point


def _default_run_dir(cfg: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = Path(str(cfg.data)).name.replace("/", "_")
    return Path("runs") / f"{name}-{cfg.fs.attention}-{stamp}"


def train(config: TrainConfig | None = None, *, resume: bool = False, callbacks: Sequence[TrainerCallback] = (), **overrides: Any) -> RunResult:
    """Train, select on dev, evaluate on test, and write a run folder.

    ``train(data="rt-polarity", epochs=2)`` or ``train(TrainConfig(...))``. With
    ``resume=True`` and the ``output_dir`` of an interrupted run, training continues
    from that run's last complete checkpoint with its saved configuration.
    """
    if resume:
        out = overrides.get("output_dir") or (config.output_dir if config else None)
        if not out:
            raise FSLLMError("--resume needs the run folder (--output)")
        folder = RunFolder(Path(out))
        if not folder.config_path.is_file():
            raise FSLLMError(f"{out}: nothing to resume (no {folder.config_path.name})")
        config = folder.load_config()
    else:
        config = config or TrainConfig()
        if overrides:
            config = dataclasses.replace(config, **overrides)
    cfg = config
    # explicit fs_layers are checked against the backbone's layer count (its config alone) before anything is written
    if isinstance(cfg.fs.fs_layers, list) and (num_layers := backbone_num_layers(cfg.model)) is not None:
        cfg.fs.resolve_layers(num_layers)
    if cfg.precision == "fp16" and not torch.cuda.is_available():
        raise FSLLMError("precision fp16 needs a CUDA GPU; on a CPU use bf16 or fp32")
    # Under torchrun / accelerate launch every process runs this function; process 0 alone
    # writes the run folder, and the Trainer (DDP) keeps the processes' weights in step.
    main_process = int(os.environ.get("RANK", "0")) == 0
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not cfg.output_dir:
        raise FSLLMError("with several processes, pass --output (each process must name the same run folder)")
    run_dir = Path(cfg.output_dir) if cfg.output_dir else _default_run_dir(cfg)
    cfg.output_dir = str(run_dir)
    folder = RunFolder(run_dir)
    if main_process and not resume and folder.holds_files():
        raise FSLLMError(f"{run_dir} already holds a run: pass --resume to continue it, or another --output")
    set_seed(cfg.seed)

    # ---- data
    data = load_any(cfg.data, task=cfg.task, text_column=cfg.text_column, label_column=cfg.label_column, repair=cfg.repair_tags,
                    problem_type=cfg.problem_type, text_pair_column=cfg.text_pair_column, label_separator=cfg.label_separator)
    task = data.task
    problem_type = data.problem_type if cfg.problem_type in (None, "single_label_classification") else cfg.problem_type
    if cfg.threshold_per_label and problem_type != "multi_label_classification":
        raise ConfigError("threshold_per_label applies to multi-label classification only")
    metric = cfg.selection_metric or primary_metric(task, problem_type)
    kind = "multi_label" if problem_type == "multi_label_classification" else problem_type or task
    # evaluation reports a loss for (multi-label) classification, not for regression or NER
    allowed = METRIC_NAMES[kind] + (("loss",) if kind in ("sequence", "multi_label") else ())
    if metric not in allowed:
        raise ConfigError(f"selection_metric {metric!r}: a {kind} model reports {', '.join(allowed)}")
    splits = {name: list(ds) for name, ds in data.splits.items()}
    if "train" not in splits or not splits["train"]:
        raise DataError(f"{cfg.data}: no training examples")
    train_ex = seeded_subset(splits["train"], cfg.train_subset, cfg.seed)
    dev_ex = seeded_subset(splits.get("validation", []), cfg.dev_subset, cfg.seed)
    test_ex = seeded_subset(splits.get("test", []), cfg.test_subset, cfg.seed)
    id2label = build_label_maps(task, train_ex, data.label_names, problem_type)
    label2id = {v: k for k, v in id2label.items()}
    for split, exs in (("dev", dev_ex), ("test", test_ex)):
        check_labels(task, split, exs, label2id)
    logger.info("data: %s train / %s dev / %s test (%s)", len(train_ex), len(dev_ex), len(test_ex), data.source)

    # ---- model
    tokenizer = load_tokenizer(cfg.model)
    model_cls = FSForTokenClassification if task == "token" else FSForSequenceClassification
    model: FSModel = model_cls.from_backbone(
        cfg.model, num_labels=len(id2label), fs_config=cfg.fs, id2label=id2label, label2id=label2id,
        attn_implementation=cfg.attn_implementation, problem_type=problem_type,
    )
    model.config.text_pair = bool(cfg.text_pair_column)
    if problem_type == "regression":
        # standardised on train only: dev and test must not shape what the model is fitted to
        targets = torch.tensor([float(ex["label"]) for ex in train_ex], dtype=torch.float64)
        std = float(targets.std()) if len(targets) > 1 else 0.0
        model.config.target_mean = float(targets.mean())
        model.config.target_std = std if math.isfinite(std) and std > 0 else 1.0
    trainable, total = model.trainable_parameters()

    feats, altered = make_features(task, train_ex, tokenizer, label2id, cfg.max_length, problem_type)
    if altered:
        what = "split into overlapping windows" if task == "token" else "truncated"
        logger.warning("%d of %d training examples longer than %d tokens were %s", altered, len(train_ex), cfg.max_length, what)
    train_ds = datasets.Dataset.from_list(feats)
    dev_ds = (datasets.Dataset.from_list(make_features(task, dev_ex, tokenizer, label2id, cfg.max_length, problem_type)[0])
              if dev_ex else None)
    collator = make_collator(task, tokenizer, cfg.pad_to_length)
    balanced = cfg.length_balanced_loss and task == "token"
    if cfg.length_balanced_loss and not balanced:
        logger.warning("length_balanced_loss weighs the tokens of token tasks; a %s task has one label per example, ignored", task)

    # The run folder is written only now that the data and the model have loaded: a bad file or
    # model name leaves nothing behind (a half-made folder would refuse the corrected rerun).
    if main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        folder.save_config(cfg)

    has_dev = bool(dev_ex)
    strategy = "no" if not has_dev else ("steps" if cfg.eval_steps else "epoch")
    args = TrainingArguments(
        output_dir=str(folder.checkpoints_dir),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_steps=float(cfg.warmup_ratio),  # a float in [0, 1) is a ratio of the total steps
        eval_strategy=strategy,
        eval_steps=cfg.eval_steps,
        save_strategy=strategy if has_dev else "epoch",
        save_steps=cfg.eval_steps,
        save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=has_dev,
        metric_for_best_model=metric if has_dev else None,
        greater_is_better=metric not in LOWER_IS_BETTER,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        seed=cfg.seed,
        data_seed=cfg.seed,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        report_to="none",
        dataloader_num_workers=0,
        remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(),
        bf16=cfg.precision == "bf16",
        fp16=cfg.precision == "fp16",
        # every trainable parameter gets a gradient, except the lambdas of causal layers
        ddp_find_unused_parameters=bool(cfg.fs.learnable_lambda),
        gradient_checkpointing=cfg.gradient_checkpointing,
        disable_tqdm=False,
    )
    cbs = [JsonlLogCallback(folder.log_path), EvaluateAtEndCallback(), *callbacks]
    if cfg.early_stopping_patience and has_dev:
        cbs.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    trainer = FSTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=dev_ds,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=cbs,
        fs_eval=(tokenizer, dev_ex, cfg.max_length, cfg.eval_batch_size) if has_dev else None,
        tokens_per_batch=tokens_per_batch(feats, cfg.batch_size) if balanced else None,
    )
    checkpoint = folder.last_complete_checkpoint() if resume else None
    if resume and main_process:
        folder.truncate_log(checkpoint_step(checkpoint) if checkpoint else 0)
        if checkpoint is None:
            logger.warning("%s: no complete checkpoint yet; starting from the beginning", run_dir)
        else:
            logger.info("resuming from %s", checkpoint)
    t0 = time.time()
    train_out = trainer.train(resume_from_checkpoint=checkpoint)
    train_seconds = time.time() - t0
    if not main_process:
        return RunResult(run_dir, {}, [])

    # ---- final model (best on dev), evaluation, artefacts; each written atomically, so a run killed
    # here leaves complete files (old or new) and --resume writes the report again
    thresholds = None
    if problem_type == "multi_label_classification" and dev_ex:
        thresholds = choose_thresholds(model, tokenizer, dev_ex, cfg.max_length, cfg.eval_batch_size, cfg.threshold_per_label)
    with atomic.replacing_dir(folder.model_dir) as tmp:
        model.save_pretrained(tmp, tokenizer=tokenizer)
    metrics: dict[str, Any] = {
        "task": task,
        "problem_type": problem_type,
        "data": cfg.data,
        "data_source": data.source,
        "primary_metric": metric,
        "sizes": {"train": len(train_ex), "dev": len(dev_ex), "test": len(test_ex)},
        "train_examples_altered": altered,
        "trainable_params": trainable,
        "total_params": total,
        "train": {
            "steps": trainer.state.global_step,
            "seconds": round(train_seconds, 1),
            "loss": train_out.training_loss,
            "best_checkpoint": trainer.state.best_model_checkpoint,
            "best_dev_metric": trainer.state.best_metric,
        },
    }
    if problem_type == "regression":
        metrics["target_mean"], metrics["target_std"] = model.config.target_mean, model.config.target_std
    if thresholds is not None:
        metrics["thresholds"] = thresholds
    plots: list[Path] = []
    for split, exs in (("dev", dev_ex), ("test", test_ex if cfg.evaluate_test else [])):
        if not exs:
            continue
        m, records = evaluate_examples(model, tokenizer, exs, cfg.max_length, cfg.eval_batch_size, progress=split)
        metrics[split] = m
        folder.write_predictions(split, records)
        cm = m.get("confusion_matrix")
        labels = m.get("labels") or m.get("confusion_labels")
        if cm and labels:
            plots.append(plot_confusion(cm, labels, folder.plots_dir / f"confusion_{split}.png", title=f"{split} confusion matrix"))
    plots = plot_training(trainer.state.log_history, folder.plots_dir, metric) + plots
    atomic.write_text(folder.model_dir / MODEL_CARD_NAME, model_card_text(model, metrics, dataset=str(cfg.data)))
    folder.write_metrics(metrics)
    return RunResult(run_dir, metrics, plots)
