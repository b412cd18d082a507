"""Learning-rate selection: train a grid of rates (times grid seeds), choose on dev, score test once.

``fsllm train --lr 5e-4,1e-3,2e-3 [--grid-seeds 0,1,2]`` (or ``train(learning_rate=[...])``) trains
one member per rate and grid seed, each a plain run folder with its test split left alone, chooses
the rate whose dev score, averaged over the grid seeds, is best (a tie goes to the rate written
first), keeps the chosen rate's member of ``--seed`` as the run's model and scores test with it,
once. A member that cannot change the choice is not trained (:func:`beaten_rates`): the seeds train in
order, the leading rate first within each, and a rate that could not reach a finished rate's mean even if
its remaining members scored the metric's best is out. The same rules choose the rate in
``benchmarks/paper_tables.py``, whose grids (``benchmarks/papertables/grid.py``) call these functions.

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
from .interruption import wait_for_every_process
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


def best_possible(greater_is_better: bool = True) -> float:
    """The best score a grid's selection metric can take: 1 for the greater-is-better ones (accuracy, F1,
    Spearman: every primary metric), 0 for the lower-is-better ones (rmse, mae)."""
    return 1.0 if greater_is_better else 0.0


def beaten_rates(
    rates: Sequence[float], seeds: Sequence[int], dev: Mapping[tuple[float, int], float | None],
    greater_is_better: bool = True,
) -> dict[float, dict]:
    """The rates whose members not trained yet cannot change :func:`choose_rate`'s choice, and why.

    ``dev`` holds the finished members' dev scores by ``(rate, seed)``. A rate is beaten when its mean
    would stay worse than the mean of a rate whose members have all finished even if each of its
    remaining members scored :func:`best_possible` (strictly: a tie could still go to it), or when one of
    its finished members has no score (its rate never wins). Its remaining members need not train: the
    choice is the one the whole grid would make. Each entry: ``seeds_not_run``, and ``bound`` (the best
    mean it could reach), ``leader`` and ``leader_dev``, or a ``reason``.
    """
    sign = 1.0 if greater_is_better else -1.0
    if any(v is not None and sign * v > sign * best_possible(greater_is_better) for v in dev.values()):
        return {}  # a score past the metric's best (a percentage, say): the bound does not hold, nothing is skipped
    complete = {lr: [dev[lr, s] for s in seeds] for lr in rates if all((lr, s) in dev for s in seeds)}
    leader, means = choose_rate(complete, greater_is_better) if complete else (None, {})
    best = means.get(leader) if leader is not None else None
    beaten: dict[float, dict] = {}
    for lr in rates:
        pending = [s for s in seeds if (lr, s) not in dev]
        if not pending:
            continue
        finished = [dev[lr, s] for s in seeds if (lr, s) in dev]
        if not all(v is not None and math.isfinite(v) for v in finished):
            beaten[lr] = {"seeds_not_run": pending, "reason": "a finished member has no dev score"}
            continue
        bound = (sum(finished) + best_possible(greater_is_better) * len(pending)) / len(seeds)
        if best is not None and sign * bound < sign * best:
            beaten[lr] = {"seeds_not_run": pending, "bound": bound, "leader": leader, "leader_dev": best}
    return beaten


def next_member(
    todo: Sequence[tuple[float, int]], rates: Sequence[float], seeds: Sequence[int],
    dev: Mapping[tuple[float, int], float | None], greater_is_better: bool = True,
) -> tuple[float, int]:
    """The ``(rate, seed)`` member of ``todo`` to train next: the earliest grid seed first and, within it, the
    rate with the best mean dev so far (the grid's order where none is known), so that on the last seed the
    leading rate finishes first and the others can be found beaten (:func:`beaten_rates`). The order
    changes what is trained, never what a member scores."""
    sign = 1.0 if greater_is_better else -1.0
    first = min(seeds.index(s) for _, s in todo)

    def so_far(member: tuple[float, int]) -> tuple[float, int]:
        got = [v for (lr, _), v in dev.items() if lr == member[0] and v is not None and math.isfinite(v)]
        return (sign * statistics.fmean(got) if got else -math.inf, -rates.index(member[0]))

    return max((m for m in todo if seeds.index(m[1]) == first), key=so_far)


def next_to_train(
    rates: Sequence[float], seeds: Sequence[int], dev: Mapping[tuple[float, int], float | None],
    greater_is_better: bool = True,
) -> tuple[tuple[float, int] | None, dict[float, dict]]:
    """One step of a grid that skips what cannot change its choice: the ``(rate, seed)`` member to train next
    (:func:`next_member`; None when every member is finished or beaten) and the beaten rates
    (:func:`beaten_rates`), given the finished members' dev scores."""
    beaten = beaten_rates(rates, seeds, dev, greater_is_better)
    todo = [(lr, s) for s in seeds for lr in rates if (lr, s) not in dev and lr not in beaten]
    return (next_member(todo, rates, seeds, dev, greater_is_better) if todo else None), beaten


def cannot_win_record(beaten: Mapping[float, dict]) -> dict[str, dict]:
    """:func:`beaten_rates` as a grid's JSON records it (``cannot_win``): rates as :func:`rate_key` writes them."""
    return {rate_key(lr): {**why, **({"leader": rate_key(why["leader"])} if "leader" in why else {})}
            for lr, why in beaten.items()}


def cannot_win_reason(why: Mapping, metric: str = "") -> str:
    """Why :func:`beaten_rates` ruled a rate out, for a log line: its bound against the leader's mean, or the reason."""
    if "bound" not in why:
        return why["reason"]
    return (f"its mean dev {metric + ' ' if metric else ''}can reach {why['bound']:.4f} at best, "
            f"rate {rate_key(why['leader'])} has {why['leader_dev']:.4f}")


def _member_state(path: Path) -> str:
    """``done`` (its report written), ``started`` (its config written: resume it) or ``new``."""
    folder = RunFolder(path)
    if (path / MEMBER_DONE_FILE).is_file() and folder.has_model():
        return "done"
    return "started" if folder.config_path.is_file() else "new"


def train_grid(cfg: TrainConfig, folder: RunFolder, *, resume: bool = False,
               callbacks: Sequence[TrainerCallback] = (), train_one: Callable[..., RunResult]) -> RunResult:
    """Train every member not finished yet that can still change the choice, choose the rate on dev, keep
    its model, score test once.

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
    greater = data.metric not in LOWER_IS_BETTER
    configs = {(lr, s): mcfg for lr, s, mcfg in members}
    dev = {(lr, s): _member_dev(mcfg, data.metric) for lr, s, mcfg in members if states[member_name(lr, s)] == "done"}
    for lr, s, mcfg in members:
        if states[member_name(lr, s)] == "done":
            logger.info("grid member %s: finished, kept", member_name(lr, s))
            _check_member(mcfg)
    while True:
        member, beaten = next_to_train(rates, seeds, dev, greater)
        if member is None:
            break
        lr, s = member
        mcfg, name = configs[lr, s], member_name(lr, s)
        state = states[name]
        logger.info("grid member %d/%d %s: %s", len(dev) + 1, len(members), name,
                    "resuming" if state == "started" else "training")
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
            if created and not dev and not Path(mcfg.output_dir).exists() and is_main_process():
                shutil.rmtree(folder.path, ignore_errors=True)
            raise
        # every process reads the member's score once process 0 has written it, so all choose the same next one
        wait_for_every_process()
        dev[lr, s] = _member_dev(mcfg, data.metric)
    for lr, why in beaten.items():
        logger.info("grid rate %s cannot win (%s): seeds %s not trained", rate_key(lr),
                    cannot_win_reason(why, data.metric), ",".join(map(str, why["seeds_not_run"])))
    if not is_main_process():
        return RunResult(folder.path, {}, [])
    return _finish(cfg, folder, [m for m in members if (m[0], m[1]) in dev], data.metric, beaten)


def _member_dev(mcfg: TrainConfig, metric: str) -> float | None:
    """A finished member's dev score, from its report."""
    report = json.loads((Path(mcfg.output_dir) / MEMBER_DONE_FILE).read_text())
    return (report.get("dev") or {}).get(metric)


def _check_member(mcfg: TrainConfig) -> None:
    """A member folder found on resume must hold the run this grid would train there (wherever the
    folders were when it ran: the output folder is not compared)."""
    def settings(c: TrainConfig) -> dict:
        return json.loads(json.dumps({k: v for k, v in c.to_dict().items() if k != "output_dir"}))

    if settings(RunFolder(Path(mcfg.output_dir)).load_config()) != settings(mcfg):
        raise FSLLMError(f"{mcfg.output_dir}: holds a run with other settings than this grid's member; "
                         "remove it to train it again")


def _finish(cfg: TrainConfig, folder: RunFolder, members: list, metric: str,
            beaten: Mapping[float, dict]) -> RunResult:
    """Choose on dev, write grid.json, keep the chosen member's model and score it on test. ``members``: the
    members trained; the others belong to ``beaten`` rates (:func:`beaten_rates`), which have no mean."""
    greater = metric not in LOWER_IS_BETTER
    reports = {member_name(lr, s): json.loads((Path(m.output_dir) / MEMBER_DONE_FILE).read_text())
               for lr, s, m in members}

    def score(lr: float, s: int) -> float | None:
        report = reports.get(member_name(lr, s))
        return None if report is None else (report.get("dev") or {}).get(metric)

    dev = {lr: [score(lr, s) for s in grid_seeds(cfg)] for lr in cfg.learning_rate}
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
    if beaten:  # the members not trained, and the bound that ruled each rate out
        grid["cannot_win"] = cannot_win_record(beaten)
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
