"""The run folder: its layout, its saved ``TrainConfig``, its checkpoints and its report.

Every name inside a run folder is defined here, so the code that writes a run (``training``),
resumes it and reads it (``inference``, ``fsllm eval`` / ``predict`` / ``serve``) agrees on one
layout. A change of layout is an edit here plus a bump of :data:`RUN_FORMAT`, which
``config.json`` records so that an older fsllm refuses a newer folder in one clear line
instead of misreading it.

A run folder holds ``config.json`` (the ``TrainConfig``: everything needed to resume or
repeat the run), ``checkpoints/`` (``checkpoint-N`` folders written by the Trainer),
``model/`` (the best checkpoint by the dev metric), ``metrics.json`` (dev and test),
``predictions_<split>.jsonl``, ``train_log.jsonl`` (appended as training goes) and ``plots/``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import atomic
from .errors import FSLLMError
from .filenames import CONFIG_NAME, HEAD_NAME

if TYPE_CHECKING:
    from .config import TrainConfig

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
TRAIN_LOG_FILE = "train_log.jsonl"
MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"
PLOTS_DIR = "plots"
CHECKPOINT_PREFIX = "checkpoint-"
#: written by the Trainer last into a checkpoint: its presence marks the checkpoint complete
TRAINER_STATE_FILE = "trainer_state.json"

#: layout version of a run folder, saved in ``config.json`` under :data:`RUN_FORMAT_KEY`; folders
#: written before it was recorded have none and are format 1
RUN_FORMAT = 1
RUN_FORMAT_KEY = "run_format"


def predictions_file(split: str) -> str:
    """File name of a split's per-example predictions."""
    return f"predictions_{split}.jsonl"


def checkpoint_step(path: str | Path) -> int | None:
    """The step ``N`` of a ``checkpoint-N`` folder (``None`` for any other name)."""
    name = Path(path).name
    rest = name[len(CHECKPOINT_PREFIX):]
    return int(rest) if name.startswith(CHECKPOINT_PREFIX) and rest.isdigit() else None


def check_format(saved: dict[str, Any], where: str | Path) -> None:
    """Refuse a run configuration whose format this fsllm does not know (a newer fsllm wrote it)."""
    version = saved.get(RUN_FORMAT_KEY, 1)
    if not (isinstance(version, int) and not isinstance(version, bool) and 1 <= version <= RUN_FORMAT):
        raise FSLLMError(
            f"{where}: run folder format {version!r} is unknown to this fsllm (it reads formats 1..{RUN_FORMAT}); "
            "upgrade fsllm to read it"
        )


def last_complete_checkpoint(folder: Path) -> str | None:
    """Newest ``checkpoint-N`` whose trainer state and weights were fully written.

    A run killed while writing a checkpoint leaves one without ``trainer_state.json``
    (written last); resuming skips it instead of failing on it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    # the head of a small folder, or the whole model of a fully fine-tuned one (FSConfig.full_finetune)
    weights = (HEAD_NAME, "model.safetensors", "model.safetensors.index.json")
    found = []
    for d in folder.iterdir():
        step = checkpoint_step(d)
        if step is not None and (d / TRAINER_STATE_FILE).is_file() and any((d / w).is_file() for w in weights):
            found.append((step, d))
    return str(max(found)[1]) if found else None


def _truncate_log(path: Path, step: int) -> None:
    """Drop log records written after ``step`` (the killed run went on past its last checkpoint), and the
    summary (``train_runtime``, ...) of a call that a signal stopped: the resumed call writes the whole run's.

    A run killed in the middle of an append leaves a partial last line: it is dropped with the rest
    of what came after the checkpoint. A record that does not parse anywhere else means the file was
    damaged otherwise, and resuming on it would hide that: one clear error.
    """
    if not path.is_file():
        return
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    keep = []
    for n, ln in enumerate(lines):
        try:
            record = json.loads(ln)
        except json.JSONDecodeError:
            if n == len(lines) - 1:
                logger.warning("%s: dropped a partial last record (the run was killed while writing it)", path)
                break
            raise FSLLMError(f"{path}: line {n + 1} is not a JSON record; repair or delete the log to resume") from None
        if isinstance(record, dict) and record.get("step", 0) <= step and "train_runtime" not in record:
            keep.append(ln)
    atomic.write_lines(path, keep)


def load_config_file(path: str | Path, where: str | Path | None = None) -> TrainConfig:
    """A ``TrainConfig`` from a JSON file: a run's ``config.json`` or any subset of its fields (the rest
    default). Its format is checked; every error is one line naming ``where`` (default: the file)."""
    from .config import TrainConfig

    path = Path(path)
    where = path if where is None else where
    try:
        saved = json.loads(path.read_text())
    except OSError as e:
        raise FSLLMError(f"{path}: {e.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FSLLMError(f"{path}: not a readable training configuration ({e})".splitlines()[0]) from None
    if not isinstance(saved, dict):
        raise FSLLMError(f"{path}: a training configuration is a JSON object")
    check_format(saved, where)
    try:
        return TrainConfig.from_dict({k: v for k, v in saved.items() if k != RUN_FORMAT_KEY})
    except FSLLMError as e:
        raise FSLLMError(f"{path}: {e}") from None


def several_processes() -> bool:
    """Under torchrun / accelerate launch with more than one process: each must then be given the same
    output folder (a default one is named by the clock, which the processes do not share)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """Under torchrun / accelerate launch every process runs ``train``; process 0 alone writes the run
    folder, and the Trainer (DDP) keeps the processes' weights in step."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass
class RunResult:
    """What ``train`` returns: where the run lives and what it measured."""

    run_dir: Path
    metrics: dict[str, Any]
    plots: list[Path]

    @property
    def model_dir(self) -> Path:
        return RunFolder(self.run_dir).model_dir


@dataclass(frozen=True)
class RunFolder:
    """One run folder: the paths inside it and the reads and writes of its files."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def log_path(self) -> Path:
        return self.path / TRAIN_LOG_FILE

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL_DIR

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def plots_dir(self) -> Path:
        return self.path / PLOTS_DIR

    def predictions_path(self, split: str) -> Path:
        return self.path / predictions_file(split)

    def holds_files(self) -> bool:
        """Anything in the folder already (a new run must not write over it)."""
        return self.path.exists() and any(self.path.iterdir())

    def has_model(self) -> bool:
        """A run folder with its best model saved (the model's own ``config.json`` is in ``model/``)."""
        return (self.model_dir / CONFIG_NAME).is_file()

    # ---- config

    def save_config(self, cfg: TrainConfig) -> None:
        """Write ``config.json``: the run folder format (:data:`RUN_FORMAT`), then every field of ``cfg``."""
        atomic.write_text(self.config_path, json.dumps({RUN_FORMAT_KEY: RUN_FORMAT, **cfg.to_dict()}, indent=2))

    def load_config(self) -> TrainConfig:
        """The run's ``TrainConfig`` as saved."""
        if not self.config_path.is_file():
            raise FSLLMError(f"{self.path}: not a run folder (no {CONFIG_FILE})")
        return load_config_file(self.config_path, where=self.path)

    # ---- checkpoints

    def last_complete_checkpoint(self) -> str | None:
        return last_complete_checkpoint(self.checkpoints_dir)

    def truncate_log(self, step: int) -> None:
        _truncate_log(self.log_path, step)

    # ---- report

    def write_predictions(self, split: str, records: Iterable[dict]) -> Path:
        path = self.predictions_path(split)
        atomic.write_lines(path, [json.dumps(r) for r in records])
        return path

    def write_metrics(self, metrics: dict[str, Any]) -> Path:
        atomic.write_text(self.metrics_path, json.dumps(metrics, indent=2))
        return self.metrics_path
