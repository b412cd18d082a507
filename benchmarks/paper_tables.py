"""Reproduce the paper's tables at CPU scale: FS rows, causal ("w/o FS"), zero-shot ("w/o LS"),
instruction tuning and encoder baselines, on the offline data sets.

    python benchmarks/paper_tables.py ner --dry-run          # the cells, in run order, with estimates
    python benchmarks/paper_tables.py ner                    # run them (skips finished cells)
    python benchmarks/paper_tables.py ner --only fs-bidirectional,causal --max-cells 2
    python benchmarks/paper_tables.py report                 # benchmarks/results/paper/REPORT.md

A table is a list of cells (row, data set, training size, seed). A finished cell writes
``<out>/<table>/<cell-id>.json``; a rerun skips cells whose JSON exists, so an interrupted table
loses at most the cell in progress (FS cells even resume from their last checkpoint). Run
folders go under ``runs/paper/<table>/<cell-id>`` (git-ignored).

Every trained row of a table gets the same budget: epochs, batch size, max length, learning
rate (LoRA rows ``--lr``; encoders, trained in full, ``--encoder-lr``), the same seeded training
and dev subsets (``fsllm.training.seeded_subset``), dev-subset selection, the full test split.

Fair selection (``--lr-grid`` / ``--encoder-lr-grid`` with ``--grid-sizes``): at each grid size,
the grid seed (``--grid-seed``, 0) of a row trains once per learning rate of the grid with its test evaluation
deferred (``<out>/<table>/grid/<cell>__lr<x>.json``, dev only); the rate with the best dev score
is chosen, the chosen run alone is scored on test and becomes the cell, and the other seeds and
the larger sizes train at the chosen rate (of the largest grid size not above theirs). Every cell
records the grid's dev scores and the chosen rate. Where one seed's dev noise could flip a close
grid, ``--grid-seeds 0,1,2`` trains every rate with each of those seeds and chooses on the mean dev
score; each grid seed's cell is then its own chosen member (use its own ``--out``: the choice can
differ from a one-seed grid's; ``--fixed-rate-cells`` adopts the members that finished fixed-rate cells of
another ``--out`` already are, instead of training them again). The choice is ``fsllm train --lr A,B,...``'s (``fsllm.selection.choose_rate``). ``--patience N`` stops a run after N dev
evaluations without a new best (the same rule for every row), so ``--epochs`` is a ceiling.

    python benchmarks/paper_tables.py ner --out benchmarks/results/tuned --runs runs/tuned \
        --only fs-bidirectional,hf-native --sizes 1000 --seeds 0,1,2 --epochs 6 --patience 2 \
        --evals-per-epoch 1 --dev-subset 500 --lr-grid 2e-4,5e-4,1e-3 --grid-sizes 1000

This file is the command line only; the machinery is the package ``papertables`` beside it: the rows
(``rows``), the budget, cells, run order and estimates (``planner``), the machine a cell records
(``machine``), running a cell (``runner``), the learning-rate grids (``grid``) and the report (``report``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import baselines
import torch
from papertables.grid import run_with_grid
from papertables.machine import code_commit
from papertables.planner import DEFAULT_OUT, DEFAULT_RUNS, Budget, CostModel, cell_path, pending, plan, print_plan
from papertables.report import fmt, write_report
from papertables.rows import DEFAULT_SIZES, TABLE_DATA, TABLES
from papertables.runner import Skip, run_cell, try_reuse

from fsllm.config import emulated_bf16
from fsllm.errors import TrainingInterrupted
from fsllm.threads import apply_omp_threads, omp_threads

logger = logging.getLogger("paper")


def _floats(s: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from None


def _ints(s: str) -> list[int]:
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The command line: a table (or ``report``), what to run, the budget and the estimates' constants."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table", choices=[*TABLES, "report"])
    p.add_argument("--seeds", type=_ints, default=[0, 1, 2], help="seeds of the multi-seed rows (others: the first) [0,1,2]")
    p.add_argument("--sizes", type=_ints, default=None, help="training sizes (default 1000,4000; ablation 1000)")
    p.add_argument("--dry-run", action="store_true", help="list the cells in run order with estimates; run nothing")
    p.add_argument("--only", default=None, help="comma-separated rows to run")
    p.add_argument("--max-cells", type=int, default=None, help="run at most N pending cells")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="cell JSONs and REPORT.md [benchmarks/results/paper]")
    p.add_argument("--runs", type=Path, default=DEFAULT_RUNS, help="run folders [runs/paper]")
    p.add_argument("--fixed-rate-cells", type=Path, default=None,
                   help="an --out of cells that ran at one fixed rate (e.g. benchmarks/results/paper): a grid member "
                        "that one of its cells already is (same row, size, seed, settings, at the member's rate) is "
                        "adopted from it instead of trained again")
    b = p.add_argument_group("budget (the same for every row of a table)")
    b.add_argument("--model", default="smollm2-135m", help="decoder backbone [smollm2-135m]")
    b.add_argument("--epochs", type=float, default=3.0, help="[3]")
    b.add_argument("--batch-size", type=int, default=16, help="[16]")
    b.add_argument("--lr", type=float, default=1e-3, help="learning rate of the LoRA rows (FS, causal, instruction-tuned) [1e-3]")
    b.add_argument("--encoder-lr", type=float, default=5e-5, help="learning rate of the fully fine-tuned encoders [5e-5]")
    b.add_argument("--max-length", type=int, default=128, help="tokens per input [128]")
    b.add_argument("--dev-subset", type=int, default=1000, help="dev examples for selection (0: all) [1000]")
    b.add_argument("--evals-per-epoch", type=int, default=2, help="dev evaluations per epoch (FS, encoders) [2]")
    b.add_argument("--it-evals-per-epoch", type=int, default=1,
                   help="dev evaluations per epoch of instruction tuning (generation is slow) [1]")
    b.add_argument("--gen-tokens", type=int, default=64, help="max new tokens of a generated NER answer [64]")
    b.add_argument("--max-steps", type=int, default=-1, help="cap training steps (smoke runs only)")
    b.add_argument("--test-subset", type=int, default=None, help="evaluate on N test examples (smoke runs only)")
    b.add_argument("--patience", type=int, default=None,
                   help="stop a run after N dev evaluations without a new best (every trained row) [off]")
    b.add_argument("--lr-grid", type=_floats, default=(), help="learning rates the LoRA rows try on dev, e.g. 2e-4,5e-4,1e-3")
    b.add_argument("--encoder-lr-grid", type=_floats, default=(), help="learning rates the encoders try on dev")
    b.add_argument("--grid-sizes", type=_ints, default=[], help="training sizes at which the grids run")
    b.add_argument("--grid-seed", type=int, default=0,
                   help="the seed the grids run with; cells of other seeds reuse its choice, so more seeds can be "
                        "added later without a new grid [0]")
    b.add_argument("--grid-seeds", type=_ints, default=None,
                   help="several grid seeds instead, e.g. 0,1,2: every rate trains with each, the best mean dev "
                        "wins, and each grid seed's cell is its own chosen member (costs one grid per seed)")
    b.add_argument("--warmup-ratio", type=float, default=0.0,
                   help="share of the steps warming the learning rate up (FS, causal, hf-native, encoders) [0]")
    b.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="autocast of the FS, causal, hf-native and encoder rows (bf16: where the CPU or GPU has bf16 "
                        "matmuls, ~1.7x faster steps; the instruction-tuned row stays fp32) [fp32]")
    b.add_argument("--allow-emulated-bf16", action="store_true",
                   help="run bf16 cells on a machine without bf16 matmul hardware (refused otherwise: emulated bf16 "
                        "trains tens of times slower than fp32 on an AVX2 CPU, and the cells record that time)")
    b.add_argument("--mpnet-dir", default=None, help="folder of all-mpnet-base-v2 (config.json + weights)")
    e = p.add_argument_group("estimates (--dry-run)")
    e.add_argument("--step-seconds", type=float, default=1.5, help="one FS training step of batch 16 [1.5]")
    e.add_argument("--test-eval-seconds", type=float, default=80.0, help="FS evaluation of the CoNLL test split [80]")
    return p


def budget_from(a: argparse.Namespace) -> Budget:
    """The table's :class:`~papertables.planner.Budget` from the parsed command line."""
    return Budget(model=a.model, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, encoder_lr=a.encoder_lr,
                  max_length=a.max_length, dev_subset=a.dev_subset or None, evals_per_epoch=a.evals_per_epoch,
                  it_evals_per_epoch=a.it_evals_per_epoch, gen_tokens=a.gen_tokens, max_steps=a.max_steps,
                  test_subset=a.test_subset, patience=a.patience, lr_grid=tuple(a.lr_grid),
                  encoder_lr_grid=tuple(a.encoder_lr_grid), grid_sizes=tuple(a.grid_sizes),
                  grid_seed=a.grid_seeds[0] if a.grid_seeds else a.grid_seed, grid_seeds=tuple(a.grid_seeds or ()),
                  precision=a.precision,
                  warmup_ratio=a.warmup_ratio)


def main(argv: Sequence[str] | None = None) -> int:
    """Write the report, print the plan (``--dry-run``) or run a table's pending cells; the exit status."""
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if a.table == "report":
        path = write_report(a.out, a.seeds)
        print(f"wrote {path}")
        return 0
    code_commit()  # pin the commit of the code this process imports, before any cell runs
    budget = budget_from(a)
    cost = CostModel(step_s=a.step_seconds, conll_test_s=a.test_eval_seconds)
    est = cost.estimator(budget, TABLE_DATA[a.table])
    only = [x.strip() for x in a.only.split(",")] if a.only else None
    cells = plan(a.table, a.sizes or DEFAULT_SIZES[a.table], a.seeds, only, budget=budget, est=est)
    todo = pending(cells, a.out, budget)
    for c in cells:  # a finished cell is kept even if the budget changed: say so
        if c not in todo:
            rec = json.loads(cell_path(a.out, c.table, c.id).read_text())
            if rec.get("settings") != json.loads(json.dumps(budget.for_row(c.row))):
                logger.warning("%s/%s exists with other settings %s; kept (use another --out to run this budget)",
                               c.table, c.id, rec.get("settings"))
    mpnet_missing = baselines.mpnet_dir(a.mpnet_dir)[1] if any(c.row.encoder == "mpnet" for c in todo) else ""
    command = shlex.join(["python", "benchmarks/paper_tables.py", *(argv if argv is not None else sys.argv[1:])])
    # the threads the runs will train on (apply_omp_threads below), for the estimates shown
    threads = omp_threads() or torch.get_num_threads()
    # shown: what is left of each cell (a grid's finished members are not charged again), calibrated
    shown, calibration = cost.calibrated(cost.estimator(budget, TABLE_DATA[a.table], out=a.out,
                                                        fixed_rate_cells=a.fixed_rate_cells), budget, a.table,
                                         a.out, threads)
    if a.dry_run:
        print_plan(a.table, cells, todo, a.out, budget, cost, shown, mpnet_missing, calibration)
        return 0
    if a.max_cells is not None:
        todo = todo[: a.max_cells]
    bf16_cells = [c.id for c in todo if budget.precision_for(c.row) == "bf16"]
    if bf16_cells and not a.allow_emulated_bf16 and (slow := emulated_bf16("--precision bf16")):
        # before any cell starts: a lane goes on to its next command, whose cells may be fp32 ones
        logger.error("%s; not run: %s (--allow-emulated-bf16 runs them anyway)", slow, ", ".join(bf16_cells))
        return 2
    apply_omp_threads()  # torch takes MKL_NUM_THREADS over OMP_NUM_THREADS: a lane trains on the threads it is given
    logger.info("table %s: %d cells, %d to run now", a.table, len(cells), len(todo))
    failed, skipped = [], []
    for k, c in enumerate(todo, 1):
        if try_reuse(c, budget, a.out):
            continue
        logger.info("[%d/%d] %s/%s (estimate %.1f min)", k, len(todo), a.table, c.id, shown(c) / 60)
        err = cell_path(a.out, a.table, c.id).with_suffix(".error.txt")
        try:
            if budget.grid_size_for(c.row, c.size) is not None:
                rec = run_with_grid(c, budget, a.out, a.runs, mpnet_dir=a.mpnet_dir, command=command,
                                    fixed_rate_cells=a.fixed_rate_cells)
            else:
                rec = run_cell(c, budget, a.out, a.runs, mpnet_dir=a.mpnet_dir, command=command)
        except Skip as s:
            logger.warning("%s: skipped: %s", c.id, s)
            skipped.append(c.id)
            continue
        except TrainingInterrupted as e:  # SIGTERM / Ctrl-C: the cell's run saved a checkpoint where it stopped
            logger.warning("%s: %s; finished cells are kept, rerun to continue", c.id, e)
            return 128 + e.signum
        except KeyboardInterrupt:
            logger.warning("interrupted during %s; finished cells are kept, rerun to continue", c.id)
            return 130
        except Exception:  # noqa: BLE001 - one failing cell must not stop the table
            tb = traceback.format_exc()
            logger.error("%s failed:\n%s", c.id, tb)
            err.parent.mkdir(parents=True, exist_ok=True)
            err.write_text(f"{command}\n\n{tb}")
            failed.append(c.id)
            continue
        if err.exists():
            err.unlink()
        logger.info("%s: dev %s %s, test %s %s, %.1f min", c.id, rec["primary_metric"], fmt(rec["dev_metric"]),
                    rec["primary_metric"], fmt((rec["test"] or {}).get(rec["primary_metric"])), rec["cell_seconds"] / 60)
    if skipped:
        logger.warning("skipped: %s", ", ".join(skipped))
    if failed:
        logger.error("failed: %s (tracebacks in %s/*.error.txt)", ", ".join(failed), a.out / a.table)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
