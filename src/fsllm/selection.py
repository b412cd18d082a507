"""Learning-rate selection: train a grid of rates (times grid seeds), choose on dev, score test once.

``fsllm train --lr 5e-4,1e-3,2e-3 [--grid-seeds 0,1,2]`` (or ``train(learning_rate=[...])``) trains
one member per rate and grid seed, each a plain run folder with its test split left alone, chooses
the rate whose dev score, averaged over the grid seeds, is best (a tie goes to the rate written
first), keeps the chosen rate's member of ``--seed`` as the run's model and scores test with it,
once. The same rule chooses the rate in ``benchmarks/paper_tables.py``, whose grids
(``benchmarks/papertables/grid.py``) call :func:`choose_rate`.

Layout of a grid run folder (everything else of a run folder is :mod:`fsllm.run`'s)::

    RUN/config.json               the grid's TrainConfig (learning_rate a list, grid_seeds)
    RUN/grid/lr<rate>-seed<s>/    one member: a complete run folder trained with --no-test
    RUN/grid.json                 every member's dev score, each rate's mean, the chosen rate and member
    RUN/model/                    a copy of the chosen member's model (its card with the test score)
    RUN/metrics.json              the chosen member's metrics, ``test``, and ``grid`` (grid.json's content)
    RUN/predictions_{dev,test}.jsonl, RUN/plots/   the chosen member's dev, the test scored here

``metrics.json`` is written last: a grid run that has one is finished, and ``--resume`` returns it
without touching test again. A member is finished when its own ``metrics.json`` exists;
``--resume`` skips finished members, continues a started one from its last checkpoint and trains
the rest.

Not built on Optuna's ``GridSampler`` or ``Trainer.hyperparameter_search``: neither chooses on a
mean over seeds or keeps a member to score on test, and a killed trial stays "running" in Optuna's
storage (the grid skips it), so they would add a dependency and keep all of this code. Each member
is a plain ``TrainConfig`` (its ``config.json``), which any scheduler can run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import math
import shutil
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from transformers import TrainerCallback

from . import atomic
from .backbones import is_quantized, load_tokenizer
from .config import TrainConfig, torch_dtype
from .errors import FSLLMError, TrainingInterrupted
from .evaluation import evaluate_examples
from .metrics import LOWER_IS_BETTER
from .model_card import model_card_text
from .modeling import MODEL_CARD_NAME, load_model
from .plots import plot_confusion
from .prepare import prepare_data
from .run import RunFolder, RunResult, is_main_process

logger = logging.getLogger(__name__)

GRID_DIR = "grid"
GRID_FILE = "grid.json"
#: a member folder holds this when finished (written last by ``write_report``)
MEMBER_DONE_FILE = "metrics.json"


def is_grid(cfg: TrainConfig) -> bool:
    """Does ``cfg`` ask for a learning-rate grid (several rates)?"""
    return isinstance(cfg.learning_rate, list)


def rate_key(lr: float) -> str:
    """A rate as the grid's files name it (``5e-4`` -> ``"0.0005"``, Python's ``g`` format)."""
    return f"{lr:g}"


def member_name(lr: float, seed: int) -> str:
    """The folder name of a grid member under ``RUN/grid/``."""
    return f"lr{rate_key(lr)}-seed{seed}"


def grid_seeds(cfg: TrainConfig) -> list[int]:
    """The seeds every rate trains with: ``grid_seeds``, else the run's ``seed`` alone."""
    return list(cfg.grid_seeds) if cfg.grid_seeds else [cfg.seed]


def member_config(cfg: TrainConfig, lr: float, seed: int) -> TrainConfig:
    """A member's configuration: the grid's, at one rate and seed, test left alone, in its own folder."""
    return dataclasses.replace(
        cfg, learning_rate=lr, seed=seed, grid_seeds=None, evaluate_test=False,
        output_dir=str(Path(cfg.output_dir) / GRID_DIR / member_name(lr, seed)), fs=dataclasses.replace(cfg.fs),
    )


def choose_rate(
    dev: Mapping[float, Sequence[float | None]], greater_is_better: bool = True,
) -> tuple[float, dict[float, float | None]]:
    """The chosen rate and each rate's score, from each rate's dev scores (one per grid seed).

    A rate's score is the mean of its seeds' dev scores (one seed's noise can flip a close grid);
    a missing or non-finite score makes the rate's score ``None``, which never wins. The best score
    wins; a tie goes to the rate that comes first in ``dev`` (grids are written from the smallest rate
    up, so the smaller rate).
    """
    if not dev:
        raise FSLLMError("a learning-rate grid needs at least one rate")
    scores: dict[float, float | None] = {}
    for lr, values in dev.items():
        ok = bool(values) and all(v is not None and math.isfinite(v) for v in values)
        scores[lr] = statistics.fmean(values) if ok else None
    sign = 1.0 if greater_is_better else -1.0
    order = list(dev)

    def rank(lr: float) -> tuple[float, int]:
        s = scores[lr]
        return (sign * s if s is not None else -math.inf, -order.index(lr))

    return max(order, key=rank), scores


def _member_state(path: Path) -> str:
    """``done`` (its report written), ``started`` (its config written: resume it) or ``new``."""
    folder = RunFolder(path)
    if (path / MEMBER_DONE_FILE).is_file() and folder.has_model():
        return "done"
    return "started" if folder.config_path.is_file() else "new"


def train_grid(cfg: TrainConfig, folder: RunFolder, *, resume: bool = False,
               callbacks: Sequence[TrainerCallback] = (), train_one: Callable[..., RunResult]) -> RunResult:
    """Train every member not finished yet, choose the rate on dev, keep its model, score test once.

    Called by :func:`fsllm.training.train` when ``cfg.learning_rate`` is a list, with the
    configuration and folder :func:`~fsllm.training.resolve_config` checked, and itself as ``train_one``
    (each member is a plain run of it: handed in, so this module sits below the trainer, not beside it).
    """
    train = train_one
    if resume and folder.metrics_path.is_file():
        metrics = json.loads(folder.metrics_path.read_text())
        if "grid" in metrics:
            logger.info("%s: the grid run is finished; its test score stands (scored once)", folder.path)
            return RunResult(folder.path, metrics, sorted(folder.plots_dir.glob("*.png")))
    seeds = grid_seeds(cfg)
    rates = list(cfg.learning_rate)
    members = [(lr, s, member_config(cfg, lr, s)) for s in seeds for lr in rates]
    # every state is read before any training, so that every process of a multi-process run agrees
    states = {member_name(lr, s): _member_state(Path(m.output_dir)) for lr, s, m in members}
    data = prepare_data(members[0][2])  # the data's errors before anything is written; dev to choose on
    if not data.dev:
        raise FSLLMError(f"{cfg.data}: no dev split, and a learning-rate grid chooses its rate on dev")
    created = not folder.path.exists()
    if is_main_process():
        folder.path.mkdir(parents=True, exist_ok=True)
        folder.save_config(cfg)
    for k, (lr, s, mcfg) in enumerate(members, 1):
        name = member_name(lr, s)
        state = states[name]
        if state == "done":
            logger.info("grid member %d/%d %s: finished, skipped", k, len(members), name)
            _check_member(mcfg)
            continue
        logger.info("grid member %d/%d %s: %s", k, len(members), name, "resuming" if state == "started" else "training")
        try:
            if state == "started":
                _check_member(mcfg)
                train(resume=True, output_dir=mcfg.output_dir, callbacks=callbacks)
            else:
                if is_main_process() and Path(mcfg.output_dir).exists():  # files, but no config: nothing to keep
                    shutil.rmtree(mcfg.output_dir)
                train(mcfg, callbacks=callbacks)
            gc.collect()  # the member's model and Trainer are gone: free their memory before the next one
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except TrainingInterrupted as e:  # the member saved its checkpoint: the grid, not the member, resumes
            raise TrainingInterrupted(e.signum, e.step, e.checkpoint,
                                      f"continue the grid with `fsllm train --resume --output {folder.path}`") from None
        except Exception:
            # a model that does not load leaves nothing behind, as a plain run does
            if created and k == 1 and not Path(mcfg.output_dir).exists() and is_main_process():
                shutil.rmtree(folder.path, ignore_errors=True)
            raise
    if not is_main_process():
        return RunResult(folder.path, {}, [])
    return _finish(cfg, folder, members, data.metric)


def _check_member(mcfg: TrainConfig) -> None:
    """A member folder found on resume must hold the run this grid would train there (wherever the
    folders were when it ran: the output folder is not compared)."""
    def settings(c: TrainConfig) -> dict:
        return json.loads(json.dumps({k: v for k, v in c.to_dict().items() if k != "output_dir"}))

    if settings(RunFolder(Path(mcfg.output_dir)).load_config()) != settings(mcfg):
        raise FSLLMError(f"{mcfg.output_dir}: holds a run with other settings than this grid's member; "
                         "remove it to train it again")


def _finish(cfg: TrainConfig, folder: RunFolder, members: list, metric: str) -> RunResult:
    """Choose on dev, write grid.json, keep the chosen member's model and score it on test."""
    greater = metric not in LOWER_IS_BETTER
    reports = {member_name(lr, s): json.loads((Path(m.output_dir) / MEMBER_DONE_FILE).read_text())
               for lr, s, m in members}
    dev = {lr: [(reports[member_name(lr, s)].get("dev") or {}).get(metric) for s in grid_seeds(cfg)]
           for lr in cfg.learning_rate}
    chosen, scores = choose_rate(dev, greater)
    kept = member_name(chosen, cfg.seed)
    grid = {
        "metric": metric,
        "greater_is_better": greater,
        "rates": list(cfg.learning_rate),
        "seeds": grid_seeds(cfg),
        "members": [{"lr": lr, "seed": s, "dir": f"{GRID_DIR}/{member_name(lr, s)}",
                     "dev": (reports[member_name(lr, s)].get("dev") or {}).get(metric),
                     "steps": (reports[member_name(lr, s)].get("train") or {}).get("steps")} for lr, s, _ in members],
        "mean_dev": {rate_key(lr): v for lr, v in scores.items()},
        "chosen_lr": chosen,
        "chosen_member": f"{GRID_DIR}/{kept}",
    }
    logger.info("grid dev %s: %s -> lr %s (member %s)", metric,
                ", ".join(f"{rate_key(lr)} {v if v is None else round(v, 4)}" for lr, v in scores.items()),
                rate_key(chosen), kept)
    atomic.write_text(folder.path / GRID_FILE, json.dumps(grid, indent=2))
    member = RunFolder(Path(folder.path) / GRID_DIR / kept)
    with atomic.replacing_dir(folder.model_dir) as tmp:
        shutil.copytree(member.model_dir, tmp, dirs_exist_ok=True)
    metrics = dict(reports[kept])
    plots = _copy_plots(member, folder)
    if member.predictions_path("dev").is_file():
        shutil.copyfile(member.predictions_path("dev"), folder.predictions_path("dev"))
    mcfg = member.load_config()
    data = prepare_data(mcfg)
    model = load_model(folder.model_dir)
    if data.test and cfg.evaluate_test:
        t0 = time.time()
        m, records = _score(model, load_tokenizer(mcfg.model), data.test, mcfg)
        m["seconds"] = round(time.time() - t0, 1)  # as a plain run records its splits' inference time
        metrics["test"] = m
        folder.write_predictions("test", records)
        labels = m.get("labels") or m.get("confusion_labels")
        if m.get("confusion_matrix") and labels:
            plots.append(plot_confusion(m["confusion_matrix"], labels, folder.plots_dir / "confusion_test.png",
                                        title="test confusion matrix"))
    metrics["grid"] = grid
    atomic.write_text(folder.model_dir / MODEL_CARD_NAME, model_card_text(model.config, metrics, dataset=str(cfg.data)))
    folder.write_metrics(metrics)
    return RunResult(folder.path, metrics, plots)


def _score(model, tokenizer, examples: Sequence[dict], cfg: TrainConfig) -> tuple[dict, list[dict]]:
    """Evaluate as the member's own report would have: on the Trainer's device, under its autocast."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not is_quantized(model.backbone):
        model.to(device)
    model.eval()
    # the run's resolved precision (fp32: no autocast), through the config's own dtype names
    fp32 = cfg.precision == "fp32"
    ctx = contextlib.nullcontext() if fp32 else torch.autocast(device.type, dtype=torch_dtype(cfg.precision))
    with ctx:
        return evaluate_examples(model, tokenizer, examples, cfg.max_length, cfg.eval_batch_size, progress="test",
                                 all_decodings=True)


def _copy_plots(member: RunFolder, folder: RunFolder) -> list[Path]:
    """The chosen member's training and dev plots, copied into the grid run's ``plots/``."""
    if not member.plots_dir.is_dir():
        return []
    folder.plots_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for p in sorted(member.plots_dir.glob("*.png")):
        shutil.copyfile(p, folder.plots_dir / p.name)
        out.append(folder.plots_dir / p.name)
    return out
