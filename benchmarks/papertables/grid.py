"""A row's learning-rate grid at table level: members trained on dev only, the rate chosen on dev,
the chosen member scored on test once, and the chosen rate handed to the row's other cells.

The choice is the library's: :func:`fsllm.selection.choose_rate` (best mean dev over the grid
seeds, the first rate on a tie), with its rate keys (:func:`fsllm.selection.rate_key`), so
``fsllm train --lr A,B,...`` and the tables choose alike. The members are this module's own:
``fsllm.selection.train_grid`` cannot express the table's protocol, since it grids one FS
``TrainConfig`` inside one run folder, while a table's grid also covers hf-native, encoder and
instruction-tuned rows, keeps each member as a cell JSON and run folder of its own (resumable,
checked against the budget), and hands its chosen rate to the cells of other sizes and seeds.

A member that cannot change the choice is not run (:func:`fsllm.selection.beaten_rates`, the library's rule
too): a rate whose mean dev would stay below a finished rate's even if its remaining members scored a perfect
100 is out whatever they score. Nor is a member that a finished fixed-rate cell already is (``--fixed-rate-cells``,
:func:`adopt_fixed_rate_cells`): the same row, size and seed trained at the member's rate under the same settings,
e.g. a table's cells at the one rate it fixed, which a grid over that rate and others would otherwise train again.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

import baselines
from common import write_json

from .planner import Budget, Cell, cell_path, fixed_rate_twin, is_done, run_dir_of, training
from .runner import cell_command, loss_curves, run_cell, scalars, score_fs_test

logger = logging.getLogger("paper")


def grid_members(cell: Cell, budget: Budget) -> list[Cell]:
    """The members a cell's rate is chosen from: each rate of its row's grid, at the grid size its
    size maps to, for each grid seed (seed by seed, rates in the grid's order)."""
    g = budget.grid_size_for(cell.row, cell.size)
    assert g is not None
    return [cell.grid_member(g, s, lr) for s in budget.seeds_of_grid for lr in budget.grid_for(cell.row)]


def train_members(cell: Cell, members: list[Cell], budget: Budget, out: Path, runs: Path, *,
                  mpnet_dir: str | None, command: str) -> tuple[dict[str, dict], dict[str, dict]]:
    """Run the members not finished yet that can still change the choice (dev only; a member is finished
    when its JSON exists); return every finished member's record by cell id and the beaten rates
    (:func:`fsllm.selection.beaten_rates`, keyed by rate key), whose remaining members were not run."""
    from fsllm.selection import cannot_win_reason, cannot_win_record, next_to_train, rate_key

    rates, seeds = budget.grid_for(cell.row), budget.seeds_of_grid
    by_rate_seed = {(m.lr, m.seed): m for m in members}
    while True:
        done = {m.id: json.loads(cell_path(out, cell.table, m.id).read_text()) for m in members if is_done(out, m)}
        dev = {(m.lr, m.seed): done[m.id].get("dev_metric") for m in members if m.id in done}
        member, beaten = next_to_train(rates, seeds, dev)  # dev scores are fractions: at most 1, as the library's
        if member is None:
            break
        m = by_rate_seed[member]
        logger.info("  grid %d/%d: %s/%s", members.index(m) + 1, len(members), cell.table, m.id)
        run_cell(m, budget, out, runs, mpnet_dir=mpnet_dir, command=command)
    for lr, why in beaten.items():
        logger.info("  grid %s/%s: rate %s cannot win (%s): seeds %s not run", cell.table, cell.id, rate_key(lr),
                    cannot_win_reason(why), ",".join(map(str, why["seeds_not_run"])))
    return done, cannot_win_record(beaten)


def adopt_fixed_rate_cells(cell: Cell, members: list[Cell], budget: Budget, out: Path, source: Path) -> list[str]:
    """Write the JSON of each unfinished member that a finished cell of ``source`` (an ``--out`` of cells run at
    one fixed rate) already is (:func:`~papertables.planner.fixed_rate_twin`): the same training, not run twice.
    The member keeps the cell's dev record, run folder and cost, refers to it (``fixed_rate_cell``, relative to
    ``out``) and holds no test scores, like every member (they come back from that cell if the grid chooses the
    member). Returns the ids adopted; a cell that differs is left alone and logged with what differs."""
    adopted = []
    for m in members:
        if is_done(out, m):
            continue
        src, rec, why = fixed_rate_twin(m, budget, source)
        if rec is None:
            if why:
                logger.info("  grid %s/%s: %s not adopted (%s)", cell.table, m.id, src, why)
            continue
        member = {**rec, "cell_id": m.id, "settings": budget.for_row(cell.row), "test": None,
                  "fixed_rate_cell": os.path.relpath(src, out), "adopted_at": time.strftime("%Y-%m-%d %H:%M:%S")}
        for k in ("sizes", "test_ms_per_sentence", "test_seconds"):
            member.pop(k, None)
        write_json(cell_path(out, cell.table, m.id), member)
        logger.info("  grid %s/%s: the fixed-rate cell %s, adopted (dev %s)", cell.table, m.id, src, rec["dev_metric"])
        adopted.append(m.id)
    return adopted


def check_members(cell: Cell, members: list[Cell], done: dict[str, dict], budget: Budget, out: Path) -> None:
    """Refuse a member that trained under another budget: a grid compares members trained alike, and
    one from another budget would bias the choice (the grid's own plan, which rates and sizes it
    covers, does not change how a member trained)."""
    mine = training(json.loads(json.dumps(budget.for_row(cell.row))))
    for m in (m for m in members if m.id in done):
        if training(done[m.id].get("settings")) != mine:
            theirs = training(done[m.id].get("settings"))
            diff = sorted(k for k in {*theirs, *mine} if theirs.get(k) != mine.get(k))
            raise SystemExit(f"{cell_path(out, cell.table, m.id)}: this grid member ran with other settings "
                             f"(differing: {', '.join(diff)}); remove it or write to another --out")


def choose(cell: Cell, done: dict[str, dict], budget: Budget, beaten: Mapping[str, dict] | None = None) -> dict:
    """The grid's record for the cell JSON: its size and seed(s), each rate's dev score and the chosen rate.

    fsllm train's rule (:func:`fsllm.selection.choose_rate`): a rate is scored by its mean dev over the
    grid seeds (one seed's noise can flip a close grid), and the first rate of the grid wins a tie (the
    grid is written from the smallest rate up). A beaten rate (``beaten``, :func:`train_members`) has
    members not run: no mean, and it is recorded under ``cannot_win`` with its bound."""
    from fsllm.selection import choose_rate, rate_key

    beaten = dict(beaten or {})
    g = budget.grid_size_for(cell.row, cell.size)
    seeds = budget.seeds_of_grid
    rates = budget.grid_for(cell.row)
    ids = {(lr, s): cell.grid_member(g, s, lr).id for lr in rates for s in seeds}
    missing = sorted(ids[k] for k in ids if ids[k] not in done and rate_key(k[0]) not in beaten)
    assert not missing, f"grid members neither finished nor beaten: {missing}"
    per_seed = {rate_key(lr): {str(s): done[ids[lr, s]]["dev_metric"] for s in seeds if ids[lr, s] in done}
                for lr in rates}
    chosen, means = choose_rate({lr: [done[ids[lr, s]]["dev_metric"] if ids[lr, s] in done else None for s in seeds]
                                 for lr in rates})
    scores = {rate_key(lr): means[lr] for lr in rates}
    grid = {"size": g, "seed": seeds[0], "dev": scores, "chosen_lr": chosen}
    if len(seeds) > 1:
        grid.update(seeds=list(seeds), dev_per_seed=per_seed)
    if beaten:
        grid["cannot_win"] = beaten
    return grid


def run_with_grid(cell: Cell, budget: Budget, out: Path, runs: Path, *, mpnet_dir: str | None = None,
                  command: str = "", fixed_rate_cells: Path | None = None) -> dict:
    """Run a cell whose row has a learning-rate grid: the grid first (dev only, resumable member by
    member; members that a cell of ``fixed_rate_cells`` already is adopted, :func:`adopt_fixed_rate_cells`),
    then the cell at the chosen rate. A grid-seed cell at a grid size is its chosen member
    itself, scored on test once (:func:`score_chosen_member`); other cells, and instruction-tuned
    cells (whose runs save no model), train at the chosen rate."""
    members = grid_members(cell, budget)
    if fixed_rate_cells is not None:
        adopt_fixed_rate_cells(cell, members, budget, out, Path(fixed_rate_cells))
    done, beaten = train_members(cell, members, budget, out, runs, mpnet_dir=mpnet_dir, command=command)
    check_members(cell, members, done, budget, out)
    grid = choose(cell, done, budget, beaten)
    chosen = grid["chosen_lr"]
    logger.info("%s/%s: grid dev %s -> lr %g", cell.table, cell.id, grid["dev"], chosen)
    earlier = json.loads(cell_path(out, cell.table, cell.id).read_text()) if is_done(out, cell) else None
    replaced = None
    if earlier is not None:  # the grid was extended after this cell ran
        if earlier.get("lr") == chosen:  # the choice stands: the cell is what it would be, its record updated
            earlier.update(grid=grid, settings=budget.for_row(cell.row), cell_command=cell_command(cell, budget, out, runs),
                           grid_extended_at=time.strftime("%Y-%m-%d %H:%M:%S"))
            write_json(cell_path(out, cell.table, cell.id), earlier)
            logger.info("%s/%s: the extended grid chose the same rate; cell kept", cell.table, cell.id)
            return earlier
        # a new choice: the cell runs again and says what it replaces (its test score was seen)
        replaced = {"lr": earlier.get("lr"), "dev_metric": earlier.get("dev_metric"), "test": earlier.get("test"),
                    "grid_dev": (earlier.get("grid") or {}).get("dev")}
    # an instruction-tuned run keeps no model to score later: its grid-seed cell trains again at the chosen rate
    if cell.size != grid["size"] or cell.seed not in budget.seeds_of_grid or cell.row.kind == "instruction-tuned":
        rec = run_cell(cell, budget, out, runs, mpnet_dir=mpnet_dir, command=command, lr=chosen, grid=grid)
        if replaced is not None:
            rec["replaces"] = replaced
            write_json(cell_path(out, cell.table, cell.id), rec)
        return rec
    return score_chosen_member(cell, budget, out, runs, grid, done, replaced, mpnet_dir=mpnet_dir, command=command)


def score_chosen_member(cell: Cell, budget: Budget, out: Path, runs: Path, grid: dict, done: dict[str, dict],
                        replaced: dict | None, *, mpnet_dir: str | None, command: str) -> dict:
    """A grid-seed cell at its grid size is its seed's chosen member: score the member's saved model on
    test, once, and write the member's record as the cell's (``replaced``: the record of a cell an
    extended grid chose another rate for)."""
    g, chosen = grid["size"], grid["chosen_lr"]
    best = cell.grid_member(g, cell.seed, chosen)
    rec = dict(done[best.id])
    if rec.get("fixed_rate_cell"):
        return adopted_cell(cell, budget, out, runs, grid, done, best, replaced, command=command)
    run_dir = run_dir_of(runs, cell.table, best.id)
    if not (run_dir / "model").is_dir() or not (run_dir / "metrics.json").is_file():
        # Its JSON survived but its run folder did not (another machine, a cleaned runs/): train the
        # member again with the same settings and seed; its dev score of this run is the one kept.
        logger.warning("%s: the chosen member's run folder %s is gone; training it again", cell.id, run_dir)
        first = rec
        rec = run_cell(best, budget, out, runs, mpnet_dir=mpnet_dir, command=command)
        rec["retrained_for_test"] = {"first_dev_metric": first["dev_metric"], "first_cell_seconds": first["cell_seconds"],
                                     "first_finished_at": first.get("finished_at")}
        # The member's JSON is the evidence the choice was made on: the other seeds read it to find the
        # rate, so a retrained run (another machine's kernels score differently) must not rewrite it.
        first = {**first, "retrained": {"dev_metric": rec["dev_metric"], "finished_at": rec.get("finished_at"),
                                        "machine": rec.get("machine")}}
        write_json(cell_path(out, cell.table, best.id), first)
        done[best.id] = rec
        grid["dev_retrained"] = rec["dev_metric"]
    t0 = time.time()
    if cell.row.kind == "fs":
        metrics = score_fs_test(cell, budget, run_dir)
    else:
        kind = "encoder" if cell.row.kind == "encoder" else "hf-native"
        metrics = baselines.score_saved_test(kind, cell.dataset, run_dir, model_name=budget.model,
                                             test_subset=budget.test_subset, seed=cell.seed,
                                             max_length=budget.max_length)
    rec.update(cell_id=cell.id, test=scalars(metrics.get("test")), sizes=metrics.get("sizes"), grid=grid,
               loss_curves=loss_curves(run_dir / "train_log.jsonl"),
               test_seconds=round(time.time() - t0, 1), cell_command=cell_command(cell, budget, out, runs),
               chosen_member=str(cell_path(out, cell.table, best.id).relative_to(out)),
               finished_at=time.strftime("%Y-%m-%d %H:%M:%S"), **({"replaces": replaced} if replaced is not None else {}))
    rec["cell_seconds"] = round(own_members_seconds(cell, budget, g, done) + rec["test_seconds"], 1)
    write_json(cell_path(out, cell.table, cell.id), rec)
    return rec


def own_members_seconds(cell: Cell, budget: Budget, g: int, done: dict[str, dict]) -> float:
    """The members of the cell's own seed, charged to it (each grid seed's cell pays for its own runs)."""
    return sum(done[m]["cell_seconds"] for m in (cell.grid_member(g, cell.seed, lr).id for lr in budget.grid_for(cell.row))
               if m in done)


def adopted_cell(cell: Cell, budget: Budget, out: Path, runs: Path, grid: dict, done: dict[str, dict], best: Cell,
                 replaced: dict | None, *, command: str) -> dict:
    """The cell when its chosen member is an adopted fixed-rate cell: that cell's record, whose test scores
    were taken once, from this very model, when it ran (nothing is scored again), with the grid's record and
    ``command`` (the grid's, which wrote this cell; the member keeps the command that trained the model)."""
    member = done[best.id]
    fixed = json.loads((Path(out) / member["fixed_rate_cell"]).read_text())
    rec = {**fixed, "table": cell.table, "cell_id": cell.id, "settings": budget.for_row(cell.row), "grid": grid,
           "fixed_rate_cell": member["fixed_rate_cell"], "test_seconds": 0.0, "command": command,
           "cell_command": cell_command(cell, budget, out, runs),
           "chosen_member": str(cell_path(out, cell.table, best.id).relative_to(out)),
           "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"), **({"replaces": replaced} if replaced is not None else {})}
    rec["cell_seconds"] = round(own_members_seconds(cell, budget, grid["size"], done), 1)
    write_json(cell_path(out, cell.table, cell.id), rec)
    return rec
