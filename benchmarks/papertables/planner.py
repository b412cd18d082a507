"""What a table runs, in which order, and what is left: the shared budget, the cells, the plan.

A table is a list of cells (row, data set, training size, seed) trained under one :class:`Budget`.
Planning reads only the row registry and the cell JSONs already written (never a model), so
``--dry-run`` and the report can list the cells, their status and estimated cost without
training anything; the runner and the grid take their cells and file layout from here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from .rows import ALIASES, TABLE_DATA, TABLE_ROWS, Row

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "paper"
DEFAULT_RUNS = REPO / "runs" / "paper"
#: the budget's fields that say how a grid is planned (which rates, sizes and seeds it covers), not how
#: a run trains: members and cells that differ only there trained alike
GRID_PLAN_KEYS = ("lr_grid", "encoder_lr_grid", "grid_sizes", "grid_seed", "grid_seeds")


@dataclass
class Budget:
    """What every row of a table shares (stored in each cell JSON as ``settings``)."""

    model: str = "smollm2-135m"
    epochs: float = 3.0
    batch_size: int = 16
    lr: float = 1e-3
    encoder_lr: float = 5e-5
    max_length: int = 128
    dev_subset: int | None = 1000
    evals_per_epoch: int = 2
    it_evals_per_epoch: int = 1
    gen_tokens: int = 64
    max_steps: int = -1  # smoke runs only
    test_subset: int | None = None  # smoke runs only (the tables use the full test split)
    patience: int | None = None  # stop after N dev evaluations without a new best (None: train all epochs)
    lr_grid: tuple[float, ...] = ()  # learning rates tried on dev for the LoRA rows (empty: --lr)
    encoder_lr_grid: tuple[float, ...] = ()  # the same for the encoders (empty: --encoder-lr)
    grid_sizes: tuple[int, ...] = ()  # training sizes at which the grids run
    grid_seed: int = 0  # the seed the grids run with; fixed, so a later --seeds 1,2 reuses seed 0's grid
    grid_seeds: tuple[int, ...] = ()  # several grid seeds, chosen on their mean dev score (overrides grid_seed)
    precision: str = "fp32"  # autocast of every trained row: "fp32" or "bf16" (a row's own ``train`` wins)
    warmup_ratio: float = 0.0  # share of the steps warming the rate up, for FS, hf-native and encoders

    #: left out of a cell's settings while unset, so cells written before they existed still compare equal
    _OPTIONAL: ClassVar[dict] = {"patience": None, "lr_grid": (), "encoder_lr_grid": (), "grid_sizes": (),
                                 "grid_seeds": (), "precision": "fp32", "warmup_ratio": 0.0}

    @property
    def seeds_of_grid(self) -> tuple[int, ...]:
        """The seeds every rate of a grid trains with: ``grid_seeds`` if given, else ``grid_seed`` alone."""
        return tuple(self.grid_seeds) or (self.grid_seed,)

    def grid_for(self, row: Row) -> tuple[float, ...]:
        """The learning rates a row's grid tries (empty: no grid for this row)."""
        if row.kind == "encoder":
            return self.encoder_lr_grid
        return self.lr_grid if row.kind in ("fs", "hf-native", "instruction-tuned") else ()

    def grid_size_for(self, row: Row, size: int) -> int | None:
        """The grid size whose chosen rate a cell of ``size`` uses: the largest one not above it."""
        if not self.grid_for(row):
            return None
        below = [g for g in self.grid_sizes if g <= size]
        return max(below) if below else None

    def precision_for(self, row: Row) -> str:
        """The precision ``row`` trains at under this budget: its own (``fs-bf16``), else the budget's where the
        row takes it, else fp32 (the instruction-tuned and zero-shot rows)."""
        return row.train_overrides.get("precision", self.for_row(row).get("precision", "fp32"))

    def for_row(self, row: Row) -> dict:
        """The settings that matter to a row (compared before skipping a finished cell)."""
        d = dataclasses.asdict(self)
        for k, unset in self._OPTIONAL.items():
            if d[k] == unset or (isinstance(unset, tuple) and not d[k]):
                d.pop(k)
        if row.kind == "encoder":
            d.pop("lr"), d.pop("model"), d.pop("it_evals_per_epoch"), d.pop("gen_tokens"), d.pop("lr_grid", None)
        else:
            d.pop("encoder_lr"), d.pop("encoder_lr_grid", None)
            if row.kind in ("fs", "hf-native"):
                d.pop("it_evals_per_epoch"), d.pop("gen_tokens")
            else:  # the instruction-tuned row trains in fp32, without warm-up, whatever the budget says
                d.pop("precision", None), d.pop("warmup_ratio", None)
            if row.kind == "zero-shot":
                for k in ("epochs", "batch_size", "lr", "dev_subset", "evals_per_epoch", "it_evals_per_epoch", "max_steps",
                          "patience", "lr_grid", "grid_sizes", "precision", "warmup_ratio"):
                    d.pop(k, None)
        if row.adapt:
            d["adapt"] = dict(row.adapt)
        if row.lora:
            d["lora"] = dict(row.lora)
        if row.document_context:
            d["document_context"] = row.document_context
        if not self.grid_for(row):
            d.pop("grid_sizes", None), d.pop("grid_seed", None), d.pop("grid_seeds", None)
        elif self.grid_seeds:
            d.pop("grid_seed")
        for k in ("lr_grid", "encoder_lr_grid", "grid_sizes", "grid_seeds"):
            if k in d:
                d[k] = list(d[k])
        if row.kind == "fs":
            d["fs"] = row.fs_overrides
            if row.train:
                d["train"] = row.train_overrides
        return d


@dataclass(frozen=True)
class Cell:
    """One run of a table: a row on its data set at one training size and seed (or a grid member)."""

    table: str
    row: Row
    dataset: str
    size: int  # training examples actually used (0: no training)
    seed: int
    tier: int = 3
    lr: float | None = None  # a grid member: trained at this rate, scored on dev only

    @property
    def id(self) -> str:
        """The cell's name (:func:`cell_id`), with ``__lr<rate>`` for a grid member."""
        cid = cell_id(self.row.name, self.size, self.seed)
        return cid if self.lr is None else f"{cid}__lr{self.lr:g}"

    def grid_member(self, size: int, seed: int, lr: float) -> Cell:
        """The grid member of this cell's row at ``size`` and ``seed`` trained at ``lr``."""
        return dataclasses.replace(self, size=size, seed=seed, lr=lr)


def cell_id(row: str, size: int, seed: int) -> str:
    """A cell's name, the stem of its JSON and of its run folder."""
    return f"{row}__n{size}__s{seed}"


def cell_path(out: Path, table: str, cid: str) -> Path:
    """A cell's JSON; grid members (ids ending ``__lr<x>``) go under ``grid/``, out of the report."""
    if "__lr" in cid:
        return Path(out) / table / "grid" / f"{cid}.json"
    return Path(out) / table / f"{cid}.json"


def run_dir_of(runs: Path, table: str, cid: str) -> Path:
    """A cell's run folder (model, checkpoints, ``train_log.jsonl``)."""
    return Path(runs) / table / cid


def is_done(out: Path, cell: Cell) -> bool:
    """A cell is finished when its JSON exists (written last, atomically)."""
    return cell_path(out, cell.table, cell.id).is_file()


def training(settings: dict | None) -> dict:
    """The settings that say how a run trained: a cell's ``settings`` less the grid's plan (which rates, sizes
    and seeds it covers)."""
    return {k: v for k, v in (settings or {}).items() if k not in GRID_PLAN_KEYS}


def fixed_rate_twin(member: Cell, budget: Budget, source: Path) -> tuple[Path, dict | None, str]:
    """The cell of ``source`` (an ``--out`` of cells run at one fixed rate) that grid ``member`` already is:
    the same row, size and seed, trained at the member's rate with every other setting equal (the budget's
    rate and the grid's plan aside), chosen by no grid and not itself a copy. Returns its path, its record
    (None: not the member) and why a cell at the member's rate is not the member ("" where there is nothing
    to say: it is, or there is no cell, or the cell ran at another rate and is that rate's member)."""
    from fsllm.selection import rate_key

    src = cell_path(source, member.table, cell_id(member.row.name, member.size, member.seed))
    if not src.is_file():
        return src, None, ""
    rec = json.loads(src.read_text())
    if rec.get("lr") is None or member.lr is None or rate_key(rec["lr"]) != rate_key(member.lr):
        return src, None, ""
    mine = {k: v for k, v in training(json.loads(json.dumps(budget.for_row(member.row)))).items() if k != "lr"}
    theirs = {k: v for k, v in training(rec.get("settings")).items() if k != "lr"}
    diff = sorted(k for k in {*theirs, *mine} if theirs.get(k) != mine.get(k))
    if diff:
        return src, None, f"settings differ: {', '.join(diff)}"
    if rec.get("grid") or rec.get("reused_from") or rec.get("dev_metric") is None:
        return src, None, "chosen by a grid, reused or without dev"
    return src, rec, ""


def grid_extended(out: Path, cell: Cell, budget: Budget) -> bool:
    """Is ``cell`` finished under a learning-rate grid that lacks some of the budget's rates (a grid
    whose choice was its top or bottom rate, extended)? Then its grid runs the new members and the
    cell is kept if the choice stands (:func:`run_with_grid`)."""
    g = budget.grid_size_for(cell.row, cell.size)
    if g is None or not is_done(out, cell):
        return False
    grid = json.loads(cell_path(out, cell.table, cell.id).read_text()).get("grid") or {}
    return not {f"{lr:g}" for lr in budget.grid_for(cell.row)} <= set(grid.get("dev", {}))


def pending(cells: Sequence[Cell], out: Path, budget: Budget | None = None) -> list[Cell]:
    """Cells whose JSON does not exist yet and, given the ``budget``, cells of an extended grid (the
    rest are skipped)."""
    return [c for c in cells if not is_done(out, c) or (budget is not None and grid_extended(out, c, budget))]


_TRAIN_SIZES: dict[str, int] = {}


def train_size_of(dataset: str) -> int:
    """The size of a data set's training split (read once per process)."""
    if dataset not in _TRAIN_SIZES:
        from fsllm.data.catalog import load_named

        _TRAIN_SIZES[dataset] = len(load_named(dataset).splits["train"])
    return _TRAIN_SIZES[dataset]


def plan(table: str, sizes: Sequence[int], seeds: Sequence[int], only: Sequence[str] | None = None,
         n_train: int | None = None, budget: Budget | None = None,
         est: Callable[[Cell], float] | None = None) -> list[Cell]:
    """The cells of a table in run order.

    Order: (0) FS and causal rows at the smallest size and first seed; (1) encoders there;
    (2) the other multi-seed rows at the smallest size, every seed, and the other seeds of those above;
    (3) everything else.
    Cheapest first within a tier (by ``est(cell)``, seconds). Sizes larger than the training
    split become the whole split (and duplicates are dropped); zero-shot has one cell (size 0).
    """
    dataset = TABLE_DATA[table]
    rows = TABLE_ROWS[table]
    if only:
        known = {r.name for r in rows}
        bad = sorted(set(only) - known)
        if bad:
            raise SystemExit(f"--only: rows {bad} are not in table {table!r} (rows: {', '.join(r.name for r in rows)})")
        rows = [r for r in rows if r.name in set(only)]
    n_train = n_train if n_train is not None else train_size_of(dataset)
    real_sizes = []
    for s in sizes:
        s = min(int(s), n_train)
        if s not in real_sizes:
            real_sizes.append(s)
    smallest = min(real_sizes)
    first_seed = seeds[0]
    cells: list[Cell] = []
    for r in rows:
        if r.kind == "zero-shot":
            cells.append(Cell(table, r, dataset, 0, first_seed, 3))
            continue
        for size in real_sizes:
            for seed in (seeds if r.multi_seed else seeds[:1]):
                if size == smallest and seed == first_seed:
                    # a multi-seed row's first seed no later than its others (the tie goes to seed order)
                    tier = 0 if r.primary else (1 if r.kind == "encoder" else (2 if r.multi_seed else 3))
                elif size == smallest and r.multi_seed:
                    tier = 2
                else:
                    tier = 3
                cells.append(Cell(table, r, dataset, size, seed, tier))
    index = {id(c): k for k, c in enumerate(cells)}
    cost = est or (lambda c: 0.0)
    return sorted(cells, key=lambda c: (c.tier, cost(c), index[id(c)]))


@dataclass
class CostModel:
    """Rough wall-clock model for ``--dry-run`` (2-core CPU; see the README section)."""

    step_s: float = 1.5  # one FS training step, batch 16, CoNLL-length inputs
    conll_test_s: float = 80.0  # evaluating the FS model on the 3,453 CoNLL test sentences
    decode_step_s: float = 0.12  # one greedy decoding step of the causal LM, batch 16 (assumed)
    load_s: float = 10.0

    # average input tokens relative to a CoNLL sentence (22 SmolLM2 tokens), at max_length 128
    LEN: ClassVar[dict] = {"conll2003": 1.0, "rt-polarity": 1.15, "rt-5": 1.15, "tweets-3": 1.0, "bbc-news": 5.8}
    # prompt+answer tokens / input tokens for the causal-LM rows (chat template, instruction)
    PROMPT: ClassVar[dict] = {"conll2003": 6.4, "rt-polarity": 3.2, "rt-5": 3.4, "tweets-3": 3.6, "bbc-news": 1.5}
    # encoder step / eval cost relative to the FS model (full fine-tuning vs LoRA, parameters)
    ENC_TRAIN: ClassVar[dict] = {"minilm": 0.15, "mpnet": 1.2}
    ENC_EVAL: ClassVar[dict] = {"minilm": 0.1, "mpnet": 0.8}

    def input_scale(self, row: Row, budget: Budget, dataset: str) -> float:
        """A row's input tokens relative to the data's own: sequence repetition reads K copies, and document
        context adds up to N tokens a side (within max_length) to a CoNLL sentence of 22."""
        own = 22 * self.LEN.get(dataset, 1.0)
        context = dict(row.train).get("document_context") or row.document_context
        tokens = min(budget.max_length, own + 2 * context) if context else own
        return tokens / own * int(dict(row.fs).get("repeat", 1))

    def per_example_eval(self, dataset: str) -> float:
        """Seconds to evaluate the FS model on one example of ``dataset``."""
        return self.conll_test_s / 3453 * self.LEN.get(dataset, 1.0)

    def seconds(self, cell: Cell, budget: Budget, n_dev: int, n_test: int, n_labels: int) -> float:
        """Estimated wall-clock of one run of ``cell``: loading, training steps, dev evaluations, test."""
        ds, row = cell.dataset, cell.row
        scale = self.input_scale(row, budget, ds)
        lf = self.LEN.get(ds, 1.0) * scale
        e = self.per_example_eval(ds) * scale
        steps = math.ceil(cell.size / budget.batch_size) * budget.epochs
        if budget.max_steps > 0:
            steps = min(steps, budget.max_steps)
        if row.kind in ("fs", "hf-native"):  # hf-native: its step was 1.3x FS's (benchmarks/results/speed.md)
            evals = budget.epochs * max(1, budget.evals_per_epoch) + 1
            step = self.step_s * (1.3 if row.kind == "hf-native" else 1.0)
            return self.load_s + steps * step * lf + (evals * n_dev + n_test) * e
        if row.kind == "encoder":  # the selected dev evaluation is reused, not re-run
            evals = budget.epochs * max(1, budget.evals_per_epoch)
            return (self.load_s + steps * self.step_s * lf * self.ENC_TRAIN[row.encoder]
                    + (evals * n_dev + n_test) * e * self.ENC_EVAL[row.encoder])
        pf = self.PROMPT.get(ds, 3.0)
        if ds == "conll2003":  # generation: prefill + greedy decoding to the cap (batches wait for their longest)
            per = pf * e + budget.gen_tokens * self.decode_step_s / 16
        else:  # one forward per (example, label word)
            per = n_labels * pf * e
        if row.kind == "zero-shot":
            return self.load_s + n_test * per
        evals = budget.epochs * max(1, budget.it_evals_per_epoch)
        return self.load_s + steps * self.step_s * lf * pf * 1.25 + (evals * n_dev + n_test) * per

    def test_seconds(self, cell: Cell, budget: Budget, n_test: int) -> float:
        """Estimated wall-clock of loading a trained cell and scoring it on test alone (a finished grid's
        chosen member)."""
        e = self.per_example_eval(cell.dataset) * self.input_scale(cell.row, budget, cell.dataset)
        return self.load_s + n_test * e * (self.ENC_EVAL[cell.row.encoder] if cell.row.kind == "encoder" else 1.0)

    def estimator(self, budget: Budget, dataset: str, out: Path | None = None,
                  fixed_rate_cells: Path | None = None) -> Callable[[Cell], float]:
        """Seconds per cell of a table on ``dataset``: a grid-seed cell at a grid size pays for its grid.

        With ``out`` (the cells' folder) it pays only for the grid members not finished there nor to be adopted
        from ``fixed_rate_cells`` (:func:`fixed_rate_twin`), and once all are, for scoring the chosen one on
        test: what is left to run. Without it, the whole grid: the run order is planned on that, so that it
        does not move as members finish."""
        n_dev, n_test, n_labels = split_info(dataset)
        n_dev = min(n_dev, budget.dev_subset) if budget.dev_subset else n_dev
        n_test = min(n_test, budget.test_subset) if budget.test_subset else n_test

        def est(c: Cell) -> float:
            one = self.seconds(c, budget, n_dev, n_test, n_labels)
            g = budget.grid_size_for(c.row, c.size)
            if g is None or c.size != g or c.seed not in budget.seeds_of_grid:
                return one
            rates = budget.grid_for(c.row)  # its grid runs are charged to it
            if out is None:
                return one * len(rates)
            left = sum(not is_done(out, m) and not (fixed_rate_cells and fixed_rate_twin(m, budget, fixed_rate_cells)[1])
                       for m in (c.grid_member(g, c.seed, lr) for lr in rates))
            return one * left if left else self.test_seconds(c, budget, n_test)

        return est

    def calibrated(self, est: Callable[[Cell], float], budget: Budget, table: str,
                   out: Path, threads: int | None = None) -> tuple[Callable[[Cell], float], str]:
        """``est`` scaled by what the finished runs under ``out`` (cells and grid members) took against this
        model's estimate of each: a row by the median ratio of its own runs, a row with none by the median of
        the rows that read the same input (document context, repetition: the model's token count for them is
        the least certain part, e.g. a document's context is cut at its edges), and failing those by the median
        over all. With ``threads`` (the torch threads the runs to come will train on), only the runs recorded at that
        many threads count where there are any: a run on one thread takes about 1.7x one on two, which the
        median would otherwise mix in. The constants are for two idle threads and one row at a time: runs sharing
        the CPU take longer, and a row's input and eval costs are approximations. Shown estimates only: the run
        order stays the model's, so it does not move as cells finish. Returns the estimator and a line saying
        what it used."""
        dataset = TABLE_DATA[table]
        rows = {r.name: r for r in TABLE_ROWS[table]}
        ratios: dict[str, list[float]] = {}
        ratios_here: dict[str, list[float]] = {}  # the runs at ``threads``
        folder = Path(out) / table
        n_dev_all, n_test_all, n_labels = split_info(dataset)
        for f in sorted([*folder.glob("*.json"), *folder.glob("grid/*.json")]):
            try:
                rec = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            row, settings = rows.get(rec.get("method")), rec.get("settings") or {}
            if row is None or not rec.get("cell_seconds") or not rec.get("train_steps") or rec.get("reused_from"):
                continue
            ran = dataclasses.replace(budget, epochs=settings.get("epochs", budget.epochs),
                                      evals_per_epoch=settings.get("evals_per_epoch", budget.evals_per_epoch),
                                      batch_size=settings.get("batch_size", budget.batch_size),
                                      max_steps=rec["train_steps"])
            n_dev = min(n_dev_all, settings.get("dev_subset") or n_dev_all)
            n_test = min(n_test_all, settings.get("test_subset") or n_test_all)
            model = self.seconds(Cell(table, row, dataset, rec["train_size"], rec.get("seed", 0)), ran, n_dev,
                                 n_test, n_labels)
            ratios.setdefault(row.name, []).append(rec["cell_seconds"] / model)
            if threads is not None and (rec.get("machine") or {}).get("torch_threads") == threads:
                ratios_here.setdefault(row.name, []).append(rec["cell_seconds"] / model)
        if not ratios:
            return est, "not calibrated: no finished run in this folder"
        where = "here"
        if threads is not None:
            plural = "" if threads == 1 else "s"
            if ratios_here:
                ratios, where = ratios_here, f"here on {threads} torch thread{plural}, as the runs to come"
            else:
                where = f"here (none on {threads} torch thread{plural}, as the runs to come: every thread count)"
        overall = statistics.median(x for v in ratios.values() for x in v)
        by_row = {name: statistics.median(v) for name, v in ratios.items()}

        def input_of(row: Row) -> float:  # rows reading the same input share a scale
            return round(self.input_scale(row, budget, dataset), 6)

        by_input: dict[float, list[float]] = {}
        for name, v in ratios.items():
            by_input.setdefault(input_of(rows[name]), []).extend(v)

        def scaled(c: Cell) -> float:
            if c.row.name in by_row:
                return est(c) * by_row[c.row.name]
            alike = by_input.get(input_of(c.row))
            return est(c) * (statistics.median(alike) if alike else overall)

        n = sum(map(len, ratios.values()))
        return scaled, (f"calibrated on {n} finished runs {where}: x{overall:.2f} overall; by row "
                        + ", ".join(f"{k} x{v:.2f}" for k, v in sorted(by_row.items())))


_SPLIT_INFO: dict[str, tuple[int, int, int]] = {}


def split_info(dataset: str) -> tuple[int, int, int]:
    """(dev, test, number of labels) of a data set."""
    if dataset not in _SPLIT_INFO:
        from fsllm.data.catalog import load_named

        td = load_named(dataset)
        if td.task == "token":
            n_labels = len({t.split("-", 1)[-1] for t in (td.label_names or []) if t != "O"})
        else:
            n_labels = len(td.label_names or set(td.splits["train"]["label"]))
        _SPLIT_INFO[dataset] = (len(td.splits["validation"]), len(td.splits["test"]), n_labels)
    return _SPLIT_INFO[dataset]

def print_plan(table: str, cells: Sequence[Cell], todo: Sequence[Cell], out: Path, budget: Budget, cost: CostModel,
               est: Callable[[Cell], float], mpnet_missing: str, calibration: str = "") -> None:
    """``--dry-run``: the cells in run order with their status and estimate, and the hours left to run."""
    print(f"table {table} ({TABLE_DATA[table]}): {len(cells)} cells, {len(cells) - len(todo)} done, {len(todo)} to run")
    print(f"budget: {json.dumps(dataclasses.asdict(budget))}")
    print(f"estimates: {cost.step_s} s per FS step (batch 16), {cost.conll_test_s} s per FS pass over the CoNLL "
          f"test split, {cost.decode_step_s} s per decoding step (batch 16); rough"
          + (f"; {calibration}" if calibration else ""))
    print(f"{'#':>3} {'cell':<34} {'tier':>4} {'status':<7} {'est min':>8} {'cum h':>6}")
    cum = 0.0
    for k, c in enumerate(cells, 1):
        done = is_done(out, c)
        src = ALIASES.get((c.table, c.row.name))
        if not done and src and cell_path(out, src[0], cell_id(src[1], c.size, c.seed)).is_file():
            print(f"{k:>3} {c.id:<34} {c.tier:>4} {'reuse':<7} {0:>8.1f} {cum / 60:>6.1f}  (= {src[0]}/{src[1]})")
            continue
        note = ""
        skip = c.row.encoder == "mpnet" and bool(mpnet_missing)
        if skip:
            note = "  (will be skipped: MPNet not found)"
        m = est(c) / 60
        if not done and not skip:
            cum += m
        print(f"{k:>3} {c.id:<34} {c.tier:>4} {'done' if done else 'todo':<7} {m:>8.1f} {cum / 60:>6.1f}{note}")
    print(f"total to run: {cum / 60:.1f} h (estimate)")
    if mpnet_missing:
        print(f"MPNet: {mpnet_missing}")
