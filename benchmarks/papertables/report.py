"""``REPORT.md`` of a results folder and its figures, rendered from the cell JSONs alone.

The report trains nothing and reads no run folder: every number it prints is in a cell's JSON
(which records its settings, machine and commit), so it can be rebuilt anywhere from the
committed results, and it plans each table only to list the cells not run yet.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import baselines

from .machine import machine_info
from .planner import REPO, plan, train_size_of
from .rows import DEFAULT_SIZES, TABLE_DATA, TABLE_METRIC, TABLE_ROWS, TABLES, paper_number

logger = logging.getLogger("paper")


def fmt(v: float | None, scale: float = 100.0) -> str:
    """A score in % with two decimals ("—" when missing)."""
    return "—" if v is None else f"{v * scale:.2f}"


def _mean_std(vals: list[float]) -> tuple[float | None, float | None]:
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def _ms(vals: list[float]) -> str:
    m, s = _mean_std(vals)
    if m is None:
        return "—"
    return f"{m * 100:.2f} ± {s * 100:.2f}" if s is not None else f"{m * 100:.2f}"


#: the rows each table's FS row is compared with seed by seed (where both share seeds)
PAIRED_ROWS = {"ner": ["causal", "hf-native", "fs-bf16", "fs-linear", "fs-decay-0.1", "minilm", "mpnet",
                       # the accuracy levers (docs/levers.md), each alone against the default
                       "fs-repeat2-causal", "fs-repeat2", "fs-lambda-schedule", "fs-lambda-schedule-0.3", "fs-dora",
                       "fs-r16-rslora", "fs-adapt", "fs-full", "fs-doc64", "fs-doc16", "fs-r16-rslora-repeat2-causal",
                       "hf-native-r16-rslora", "fs-alpha64", "fs-r16-rslora-lambda-schedule-0.3"],
               "ablation": ["fs-linear-mean", "fs-swiglu-last", "fs-swiglu-max"]}


#: further pairs: the combined levers against each of their parts, and the capacity lever (rank 16, rsLoRA)
#: against the commodity path given the same capacity and the best encoder (the 4,000 / sentence confirmations)
_R16_PAIRS = [("fs-r16-rslora", o) for o in ("hf-native-r16-rslora", "hf-native")]
COMBINED_PAIRS = {
    "ner": [("fs-r16-rslora-repeat2-causal", o) for o in
            ("fs-r16-rslora", "fs-repeat2-causal", "hf-native-r16-rslora", "hf-native", "mpnet")]
    + _R16_PAIRS + [("fs-r16-rslora", "mpnet"),  # fs-bidirectional − fs-r16-rslora is a PAIRED_ROWS pair
                    ("fs-r16-rslora", "fs-alpha64"),  # rank 16 against its update scale alone
                    ("fs-doc64", "fs-r16-rslora"), ("fs-doc64", "fs-doc16"),  # document context: against rank 16, its size
                    # the scheduled release with rank 16: against each of its parts
                    *[("fs-r16-rslora-lambda-schedule-0.3", o) for o in ("fs-r16-rslora", "fs-lambda-schedule-0.3")]]
    # and its confirmation: against rank 16 alone and the rows given the same context
    + [("fs-r16-rslora-doc64", o) for o in ("fs-r16-rslora", "hf-native-r16-rslora-doc64", "mpnet-doc64")],
    **{t: [*_R16_PAIRS, ("fs-r16-rslora", "fs-bidirectional"), ("fs-r16-rslora", "minilm"),
           *[(f"fs-r16-rslora-{p}", o) for p in ("max", "last", "repeat2-causal")
             for o in ("fs-r16-rslora", "hf-native-r16-rslora")],
           # the verbalizer: against the default it changes, the rows of the sentence confirmation, its variants
           *[("fs-verbalizer", o) for o in ("fs-bidirectional", "fs-r16-rslora", "hf-native-r16-rslora", "minilm",
                                            "fs-verbalizer-lambda-schedule-0.3", "fs-verbalizer-causal")],
           *[(v, "fs-bidirectional") for v in ("fs-verbalizer-lambda-schedule-0.3", "fs-verbalizer-causal")],
           # both steady verbalizers (scheduled release, causal mask) against the paper table's other rows
           *[(v, o) for v in ("fs-verbalizer-lambda-schedule-0.3", "fs-verbalizer-causal")
             for o in ("causal-last", "hf-native", "minilm", "fs-r16-rslora", "hf-native-r16-rslora")]]
       for t in ("rt-polarity", "rt-5", "bbc-news", "tweets-3")},
}


def paired_lines(table: str, recs: list[dict], metric: str) -> list[str]:
    """Paired differences, FS row minus each other row, over the seeds both ran at one size.

    The seed draws the training subset and the dev subset too, so a paired difference removes that
    shared noise: its mean ± standard error says more than two means ± std side by side."""
    fs_row = "fs-swiglu-mean" if table == "ablation" else "fs-bidirectional"
    others = PAIRED_ROWS.get(table, ["causal-last", "causal-mean", "hf-native", "minilm"])
    pairs = [(fs_row, o) for o in others] + COMBINED_PAIRS.get(table, [])
    vals: dict[tuple[str, int, int], tuple[float | None, float | None]] = {}
    for r in recs:
        test = (r.get("test") or {}).get(metric)
        vals[(r["method"], r["train_size"], r["seed"])] = (test, r.get("dev_metric"))
    lines = []
    for size in sorted({k[1] for k in vals}):
        for fs_row, other in pairs:
            seeds = sorted(s for (m, n, s) in vals if m == other and n == size and (fs_row, size, s) in vals)
            if len(seeds) < 2:
                continue
            cols = []
            for i, what in ((0, f"test {metric}"), (1, "dev")):
                d = [vals[(fs_row, size, s)][i] - vals[(other, size, s)][i] for s in seeds
                     if vals[(fs_row, size, s)][i] is not None and vals[(other, size, s)][i] is not None]
                if len(d) < 2:
                    continue
                sem = statistics.stdev(d) / math.sqrt(len(d))
                cols.append(f"{what} {statistics.fmean(d) * 100:+.2f} ± {sem * 100:.2f} "
                            f"({', '.join(f'{x * 100:+.1f}' for x in d)})")
            if cols:
                lines.append(f"- n={size}, {fs_row} − {other}, seeds {','.join(map(str, seeds))}: " + "; ".join(cols) + ".")
    if not lines:
        return []
    return ["**Paired by seed** (FS row minus the other; mean ± standard error, then per seed)", "", *lines, ""]


def entity_type_lines(recs: list[dict]) -> list[str]:
    """Test F1 per entity type, each row's mean over its seeds: where a gap between two rows lies.

    The cells' own scoring (their test F1's reading); the types are those the cells scored. A row
    whose cells did not record per-type scores is left out."""
    per: dict[tuple[str, int], list[dict]] = {}
    for r in recs:
        pt = (r.get("test") or {}).get("per_type")
        if pt:
            per.setdefault((r["method"], r["train_size"]), []).append(pt)
    if not per:
        return []
    types = sorted({t for cells in per.values() for pt in cells for t in pt})
    order = {r.name: i for i, r in enumerate(TABLE_ROWS["ner"])}
    lines = ["**Test F1 per entity type** (mean over seeds; precision / recall beside it; the cells' own reading)", "",
             "| row | train size | n | " + " | ".join(types) + " |", "|---|---|---|" + "---|" * len(types)]
    for (row, size), cells in sorted(per.items(), key=lambda kv: (kv[0][1], order.get(kv[0][0], len(order)), kv[0][0])):
        cols = []
        for t in types:
            got = [pt[t] for pt in cells if t in pt]
            if len(got) < len(cells):
                cols.append("—")
                continue
            f1, p, rc = (statistics.fmean(g[k] for g in got) * 100 for k in ("f1", "precision", "recall"))
            cols.append(f"{f1:.1f} ({p:.1f} / {rc:.1f})")
        lines.append(f"| {row} | {size} | {len(cells)} | " + " | ".join(cols) + " |")
    return [*lines, ""]


def beaten_score(why: dict) -> str:
    """A grid rate that could not win (``fsllm.selection.beaten_rates``): the bound that ruled it out."""
    n = len(why["seeds_not_run"])
    bound = f"≤ {fmt(why['bound'])}" if "bound" in why else "no score"
    return f"{bound} (cannot win: {n} member{'s' if n != 1 else ''} not run)"


def grid_lines(recs: list[dict]) -> list[str]:
    """Each row's learning-rate grid as its cells recorded it: dev score per rate, the chosen one bold."""
    grids = {}
    for r in recs:
        g = r.get("grid")
        if g and g.get("dev"):
            grids[(r["method"], g["size"], tuple(g.get("seeds") or [g["seed"]]))] = g
    if not grids:
        return []
    skipped = any(g.get("cannot_win") for g in grids.values())
    lines = ["**Learning-rate grids** (dev score per rate at the grid's size and seed; the chosen rate, in bold, "
             "trains every seed of the row; only the chosen member meets the test split"
             + ("; a rate whose mean could not reach a finished rate's even at 100 on its remaining seeds has those "
                "members not run" if skipped else "") + ")", ""]
    for (row, size, seed), g in sorted(grids.items()):
        beaten = g.get("cannot_win") or {}
        scores = {lr: beaten_score(beaten[lr]) if lr in beaten else fmt(v) for lr, v in g["dev"].items()}
        cells = [f"**{lr}: {scores[lr]}**" if float(lr) == g["chosen_lr"] else f"{lr}: {scores[lr]}"
                 for lr in sorted(g["dev"], key=float)]
        edge = sorted(float(x) for x in g["dev"])
        warn = " (the chosen rate is the grid's edge)" if g["chosen_lr"] in (edge[0], edge[-1]) else ""
        which = f"seed {seed[0]}" if len(seed) == 1 else f"seeds {','.join(map(str, seed))} (mean)"
        lines.append(f"- {row}, n={size}, {which}: " + ", ".join(cells) + warn)
    return [*lines, ""]


def grids_under_way_lines(table: str, recs: list[dict], out: Path) -> list[str]:
    """The grid members finished so far of each row whose grid has not yet chosen (no cell of that row and size):
    dev score per seed and rate, so a grid that takes a day is read as it goes. Members of finished grids are in
    their cells' ``grid`` (``grid_lines``)."""
    folder = Path(out) / table / "grid"
    if not folder.is_dir():
        return []
    chosen = {(r["method"], r["train_size"]) for r in recs}
    under_way: dict[tuple[str, int], dict[int, dict[float, float]]] = {}
    for f in sorted(folder.glob("*.json")):
        m = json.loads(f.read_text())
        if (m["method"], m["train_size"]) not in chosen and m.get("dev_metric") is not None:
            under_way.setdefault((m["method"], m["train_size"]), {}).setdefault(m["seed"], {})[m["lr"]] = m["dev_metric"]
    if not under_way:
        return []
    lines = ["**Grids under way** (dev score per rate of each member finished so far, by seed; no rate chosen yet)", ""]
    for (row, size), seeds in sorted(under_way.items()):
        parts = [f"seed {seed}: " + ", ".join(f"{lr:g}: {fmt(v)}" for lr, v in sorted(rates.items()))
                 for seed, rates in sorted(seeds.items())]
        n = sum(len(r) for r in seeds.values())
        lines.append(f"- {row}, n={size} ({n} member{'s' if n != 1 else ''}): " + "; ".join(parts))
    return [*lines, ""]


#: the NER readings of one forward (``fsllm.evaluation.decoding_scores``), the cells' own reading first
READINGS = ("greedy/first", "greedy/mean", "viterbi/first", "viterbi/mean")


def cell_decodings(rec: dict, out: Path, split: str) -> tuple[dict[str, float] | None, str]:
    """A NER cell's F1 under each reading on ``split`` ("dev" or "test") and where it comes from: the cell's
    own record (its dev subset, its test split), else a later ``ner_decoding.py`` scoring of its model
    under ``out/decoding/`` (whose dev is the full validation split)."""
    own = (rec.get(split) or {}).get("decodings")
    if own:
        return {k: v["f1"] for k, v in own.items()}, "cell"
    f = Path(out) / "decoding" / f"{rec['cell_id']}_{'validation' if split == 'dev' else 'test'}.json"
    if f.is_file():
        return {k: v["f1"] for k, v in json.loads(f.read_text())["results"].items()}, "decoding/"
    return None, ""


def choose_reading(devs: Sequence[dict[str, float]]) -> str:
    """The NER reading with the best mean dev F1 over a row's cells (each a dict reading -> dev F1)."""
    return max(READINGS, key=lambda k: statistics.fmean(d[k] for d in devs))


Scored = dict[tuple[str, int], list[tuple[int, dict, dict | None, str]]]


def reading_choices(table: str, recs: list[dict], out: Path) -> tuple[Scored, dict[tuple[str, int], str]]:
    """NER: the cells scored on test under every reading, ``(row, size) -> [(seed, test, dev, source)]``, and
    the reading each such row's mean dev F1 chooses, where every one of its scored cells has dev under them all.
    The one rule behind both the decodings table and the targets."""
    scored: Scored = {}
    if TABLE_METRIC.get(table) != "f1":
        return scored, {}
    for r in recs:
        test, src = cell_decodings(r, out, "test")
        if test and all(k in test for k in READINGS):
            dev, _ = cell_decodings(r, out, "dev")
            scored.setdefault((r["method"], r["train_size"]), []).append((r["seed"], test, dev, src))
    chosen = {}
    for key, cells in scored.items():
        devs = [c[2] for c in cells if c[2] and all(k in c[2] for k in READINGS)]
        if len(devs) == len(cells):
            chosen[key] = choose_reading(devs)
    return scored, chosen


def decoding_lines(table: str, recs: list[dict], out: Path) -> list[str]:
    """NER: each row's test F1 under every decoding, mean over the seeds scored under all of them, the
    reading its dev scores choose in bold; then each lever row paired by seed with fs-bidirectional
    under the reading dev chooses for both."""
    scored, chosen = reading_choices(table, recs, out)
    if not scored:
        return []
    order = {r.name: i for i, r in enumerate(TABLE_ROWS[table])}
    lines = ["**NER decodings** (test F1 of the same trained models under each reading: greedy or IOB2-constrained "
             "Viterbi, a word's scores from its first sub-token or the mean of its sub-tokens; mean over seeds; "
             "bold: the reading with the best mean dev F1, chosen without the test split)", "",
             "| row | train size | seeds | " + " | ".join(READINGS) + " | dev chose | source |",
             "|---|---|---|" + "---|" * len(READINGS) + "---|---|"]
    for key in sorted(scored, key=lambda k: (order.get(k[0], len(order)), k[1])):
        cells = sorted(scored[key], key=lambda c: c[0])
        pick = chosen.get(key)
        vals = [fmt(statistics.fmean(c[1][k] for c in cells)) for k in READINGS]
        vals = [f"**{v}**" if k == pick else v for k, v in zip(READINGS, vals)]
        srcs = sorted({c[3] for c in cells})
        lines.append(f"| {key[0]} | {key[1]} | {','.join(str(c[0]) for c in cells)} | " + " | ".join(vals)
                     + f" | {pick or '—'} | {', '.join(srcs)} |")
    lines += ["", "Dev is the cell's own dev subset where the cell scored its decodings, the full validation split "
              "where `decoding/` did (see its README).", ""]
    paired = []
    pairs = sorted({(row, "fs-bidirectional") for row, _ in scored if row != "fs-bidirectional"})
    for size in sorted({n for _, n in scored}):
        for row, other in pairs + COMBINED_PAIRS.get(table, []):
            if (row, size) not in chosen or (other, size) not in chosen:
                continue
            base = {c[0]: c[1] for c in scored[(other, size)]}
            cells = [c for c in scored[(row, size)] if c[0] in base]
            if len(cells) < 2:
                continue
            mine, theirs = chosen[(row, size)], chosen[(other, size)]
            d = [c[1][mine] - base[c[0]][theirs] for c in cells]
            sem = statistics.stdev(d) / math.sqrt(len(d))
            paired.append(f"- n={size}, {row} ({mine}) − {other} ({theirs}), seeds {','.join(str(c[0]) for c in cells)}: "
                          f"test F1 {statistics.fmean(d) * 100:+.2f} ± {sem * 100:.2f} "
                          f"({', '.join(f'{x * 100:+.1f}' for x in d)}).")
    if paired:
        lines += ["**Paired by seed, each under the decoding its dev chose** (mean ± standard error, then per seed)",
                  "", *paired, ""]
    return lines


#: the rows the targets are checked for: fsllm's default and the candidates for its next default
TARGET_ROWS = ("fs-bidirectional", "fs-r16-rslora", "fs-r16-rslora-doc64", "fs-r16-rslora-repeat2-causal")
#: NER at 4,000: the rows a target row is held against, the encoder and the commodity path (first: the same
#: capacity); a row with document context against the rows given the same context
NER_RIVALS = {"fs-r16-rslora-doc64": ("mpnet-doc64", ("hf-native-r16-rslora-doc64",))}
NER_RIVALS_DEFAULT = ("mpnet", ("hf-native-r16-rslora", "hf-native"))
#: NER: test F1 the full training set must reach (above MPNet's 90.7; the 210M decoder record is 91.7); at
#: 4,000: at least MPNet's mean and hf-native's at the same capacity + this, paired by seed
FULL_SET_F1, HF_NATIVE_MARGIN = 0.910, 0.010
CONLL_TRAIN = 14041  # sentences in CoNLL-2003's training split: the full-set cells' size
#: a sentence cell whose test accuracy is within this of always answering the majority class has collapsed
COLLAPSE_MARGIN = 0.10


def tests_under_dev_choice(table: str, recs: list[dict], out: Path) -> dict[tuple[str, int], tuple[str | None, dict[int, float]]]:
    """``(row, size) -> (reading, {seed: test metric})``: for NER under the reading the row's mean dev F1
    chooses when every cell scored them all (:func:`reading_choices`), else each cell's own test score."""
    metric = TABLE_METRIC.get(table, "accuracy")
    scored, chosen = reading_choices(table, recs, out)
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in recs:
        groups.setdefault((r["method"], r["train_size"]), []).append(r)
    got = {}
    for key, cells in groups.items():
        # a row some of whose cells lack a reading is read as each cell scored itself
        reading = chosen.get(key) if len(scored.get(key, ())) == len(cells) else None
        if reading:
            vals = {seed: test[reading] for seed, test, _, _ in scored[key]}
        else:
            vals = {c["seed"]: (c.get("test") or {}).get(metric) for c in cells}
        got[key] = (reading, {s: v for s, v in vals.items() if v is not None})
    return got


def collapsed(rec: dict) -> bool:
    """A sentence cell that learned next to nothing: test accuracy within :data:`COLLAPSE_MARGIN` of the
    majority class's share of the test split."""
    test = rec.get("test") or {}
    support = [v.get("support", 0) for v in (test.get("per_label") or {}).values() if isinstance(v, dict)]
    if "accuracy" not in test or not support or not sum(support):
        return False
    return test["accuracy"] <= max(support) / sum(support) + COLLAPSE_MARGIN


def target_lines(table: str, recs: list[dict], out: Path) -> list[str]:
    """Each target the FS rows are held to, measured: met, or missed by how much."""
    got = tests_under_dev_choice(table, recs, out)

    def mean(key):
        vals = got.get(key, (None, {}))[1]
        return statistics.fmean(vals.values()) if vals else None

    def verdict(value: float, target: float) -> str:
        return "**met**" if value >= target else f"**missed by {(target - value) * 100:.2f}**"

    def reading(key) -> str:
        return f" ({got[key][0]})" if got.get(key, (None,))[0] else ""

    lines = []
    for fs in TARGET_ROWS:
        if table == "ner":
            if (m := mean((fs, CONLL_TRAIN))) is not None:
                lines.append(f"- {fs}, full training set{reading((fs, CONLL_TRAIN))}: {fmt(m)} over seeds "
                             f"{','.join(map(str, sorted(got[(fs, CONLL_TRAIN)][1])))} against {fmt(FULL_SET_F1)}: "
                             f"{verdict(m, FULL_SET_F1)}.")
            if (m := mean((fs, 4000))) is not None:
                encoder, commodity = NER_RIVALS.get(fs, NER_RIVALS_DEFAULT)
                if (mp := mean((encoder, 4000))) is not None:
                    lines.append(f"- {fs}, 4,000{reading((fs, 4000))}: {fmt(m)} against {encoder} {fmt(mp)}: "
                                 f"{verdict(m, mp)}.")
                for other in commodity:
                    mine, theirs = got[(fs, 4000)][1], got.get((other, 4000), (None, {}))[1]
                    seeds = sorted(set(mine) & set(theirs))
                    if len(seeds) >= 2:
                        d = statistics.fmean(mine[s] - theirs[s] for s in seeds)
                        lines.append(f"- {fs}, 4,000: {d * 100:+.2f} paired over seeds {','.join(map(str, seeds))} "
                                     f"against {other}{reading((other, 4000))}, target {HF_NATIVE_MARGIN * 100:+.1f}: "
                                     f"{verdict(d, HF_NATIVE_MARGIN)}.")
        elif table in ("rt-polarity", "tweets-3") and (m := mean((fs, 1000))) is not None:
            # the other methods: FS's own variants (fs-*, the levers screened beside it) are candidates, not rivals
            others = {k[0]: mean(k) for k in got if k[1] == 1000 and not k[0].startswith("fs-")}
            if others:
                best = max(others, key=others.get)
                lines.append(f"- {fs}, 1,000: {fmt(m)} against the best other row in this folder, {best} {fmt(others[best])}: "
                             f"{verdict(m, others[best])}.")
            bad = sorted(r["seed"] for r in recs if r["method"] == fs and r["train_size"] == 1000 and collapsed(r))
            lines.append(f"- {fs}, 1,000: " + (f"collapsed seeds {', '.join(map(str, bad))}: **missed**." if bad
                                               else "no collapsed seed: **met**."))
    if not lines:
        return []
    return ["**Targets** (test score under the reading dev chose where NER cells scored every reading; a sentence "
            f"seed has collapsed when its accuracy is within {COLLAPSE_MARGIN * 100:.0f} points of the majority class)",
            "", *lines, ""]


def partly_timed(rec: dict) -> bool:
    """A resumed cell whose training time covers its last part only: one trained before fsllm's training clock
    (``train.seconds_before_resume``) carried the time before a resume across it."""
    resumed = rec.get("resumed") or "train_resumed_from_step" in rec
    return bool(resumed) and "train_seconds_before_resume" not in rec


def torch_threads(rec: dict) -> int | None:
    """The torch threads the cell's (last) process trained with, as its machine record says."""
    return (rec.get("machine") or {}).get("torch_threads")


def load_records(out: Path, table: str) -> list[dict]:
    """The finished cells of a table under ``out`` (grid members, under ``grid/``, left out)."""
    folder = Path(out) / table
    if not folder.is_dir():
        return []
    recs = []
    for p in sorted(folder.glob("*.json")):
        try:
            recs.append(json.loads(p.read_text()))
        except json.JSONDecodeError:
            logger.warning("%s: not valid JSON, ignored", p)
    return recs


def split_stale(recs: list[dict]) -> tuple[list[dict], list[dict]]:
    """Cells that ran before their row's grid was extended (their grid lacks rates another cell of the
    row has, from a grid at the same size) are stale until they run again: kept out of the means,
    listed apart. Grids at different sizes are separate choices and never make each other stale."""
    def key(r: dict) -> tuple[str, object]:
        return r["method"], (r.get("grid") or {}).get("size")

    grids = [set((r.get("grid") or {}).get("dev") or {}) for r in recs]
    rates: dict[tuple[str, object], set] = {}
    for r, mine in zip(recs, grids):
        rates.setdefault(key(r), set()).update(mine)
    fresh, stale = [], []
    for r, mine in zip(recs, grids):
        (stale if mine and mine < rates[key(r)] else fresh).append(r)
    return fresh, stale


def _verdict(table: str, size: int, by: dict, fs_row: str, causal_rows: Sequence[str], metric: str) -> list[str]:
    lines = []
    fs_vals = by.get((fs_row, size), [])
    for c in causal_rows:
        cv = by.get((c, size), [])
        if not fs_vals and not cv:
            continue
        if not fs_vals or not cv:
            lines.append(f"- n={size}: {fs_row} vs {c}: not comparable yet (runs: {len(fs_vals)} vs {len(cv)}).")
            continue
        fm, fsd = _mean_std(fs_vals)
        cm, csd = _mean_std(cv)
        diff = (fm - cm) * 100
        noise = max(fsd or 0.0, csd or 0.0) * 100
        seeds = f"{len(fs_vals)} vs {len(cv)} seed(s)"
        if diff > 0:
            tag = f"**FS beats {c}** by {diff:+.2f} points"
            if noise and diff <= noise:
                tag += f" (within the seed spread, std up to {noise:.2f})"
        else:
            tag = f"**FS does NOT beat {c}** ({diff:+.2f} points)"
        lines.append(f"- n={size}: {fs_row} {_ms(fs_vals)} vs {c} {_ms(cv)} test {metric} ({seeds}): {tag}.")
    return lines


#: rows drawn in the figure of test metric against training size (those a user chooses between)
SIZE_FIGURE_ROWS = ("fs-bidirectional", "hf-native", "causal", "causal-last", "minilm", "mpnet")


def size_points(recs: Sequence[dict], row: str, metric: str) -> list[tuple[int, float, float, int]]:
    """``(size, mean, std, seeds)`` of a row's test ``metric`` per training size (std 0 for one seed)."""
    by: dict[int, list[float]] = {}
    for r in recs:
        if r["method"] == row and (r.get("test") or {}).get(metric) is not None:
            by.setdefault(r["train_size"], []).append(r["test"][metric])
    return [(n, statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v)) for n, v in sorted(by.items())]


def _axes(size: tuple[float, float] = (6.4, 4.2)):
    """A figure (Agg canvas, no pyplot state) and its one axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=120)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _log_ticks(ax) -> None:
    """A log x axis with round 1-2-5 ticks and no minor ones."""
    from matplotlib.ticker import LogLocator, StrMethodFormatter

    ax.set_xscale("log")
    ax.minorticks_off()
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))


def _save(fig, ax, path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    """Label, grid and legend the axes the same way in every figure, and write it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path


def size_figure(rows: dict[str, list[tuple[int, float, float, int]]], path: Path, metric: str, title: str) -> Path:
    """One line per row through its mean at each size, error bars of one standard deviation."""
    fig, ax = _axes()
    for name, pts in rows.items():
        seeds = [p[3] for p in pts]
        ax.errorbar([p[0] for p in pts], [100 * p[1] for p in pts], yerr=[100 * p[2] for p in pts], marker="o",
                    capsize=3, label=f"{name} ({'/'.join(map(str, seeds))} seed{'' if seeds == [1] else 's'})")
    ax.set_xscale("log")
    ax.minorticks_off()
    sizes = sorted({p[0] for pts in rows.values() for p in pts})
    ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
    return _save(fig, ax, path, "training sentences", f"test {metric} (%)", title)


def latency_figure(rows: dict[str, list[tuple[int, float, float, int]]], latency: dict, path: Path,
                   metric: str) -> Path | None:
    """Each row's test metric at every training size against its inference cost per sentence
    (batched), one marker per size; ``None`` when no row has both."""
    cost_of = {"causal": "fs-bidirectional"}  # the same forward, another mask
    fig, ax = _axes()
    drawn = 0
    for name, pts in rows.items():
        cost = latency["rows"].get(cost_of.get(name, name), {}).get("ms_per_sentence_batched")
        if cost is None:
            continue
        ax.errorbar([cost] * len(pts), [100 * p[1] for p in pts], yerr=[100 * p[2] for p in pts], marker="o",
                    linestyle="none", capsize=3, label=f"{name} ({cost:.3g} ms)")
        left = drawn % 2 == 1  # rows of similar cost label their sizes on opposite sides
        for n, mean, _, _ in pts:
            ax.annotate(f"{n:,}", (cost, 100 * mean), textcoords="offset points", xytext=(-5 if left else 5, -3),
                        ha="right" if left else "left", fontsize=7)
        drawn += 1
    if not drawn:
        return None
    _log_ticks(ax)  # round ticks; the rows' own costs are in the legend (close costs' ticks would overlap)
    return _save(fig, ax, path, "inference ms per sentence (batches of 64, CPU)", f"test {metric} (%)",
                 f"test {metric} (labels: training sentences) against inference cost")


def time_points(recs: Sequence[dict], metric: str) -> dict[tuple[str, int], tuple[float, float, float, int]]:
    """``(row, size) -> (mean train minutes, mean test metric, its std, seeds)`` over the cells that have both
    (a cell timed over its last part only, resumed before the training clock, is left out: :func:`partly_timed`)."""
    by: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for r in recs:
        test = (r.get("test") or {}).get(metric)
        if test is not None and r.get("train_seconds") and r["train_size"] and not partly_timed(r):
            by.setdefault((r["method"], r["train_size"]), []).append((r["train_seconds"] / 60, test))
    return {k: (statistics.fmean(m for m, _ in v), statistics.fmean(t for _, t in v),
                statistics.stdev(t for _, t in v) if len(v) > 1 else 0.0, len(v)) for k, v in by.items()}


def time_figure(points: dict[tuple[str, int], tuple[float, float, float, int]], path: Path, metric: str,
                title: str) -> Path:
    """Accuracy and training cost together: each row and size at its mean training minutes and mean test
    metric (error bars: one std over seeds), one marker shape per training size, rows named beside them."""
    fig, ax = _axes((7.2, 4.8))
    shapes = dict(zip(sorted({n for _, n in points}), "os^Dv<>p"))
    for n, shape in shapes.items():
        pts = {row: p for (row, size), p in points.items() if size == n}
        ax.errorbar([p[0] for p in pts.values()], [100 * p[1] for p in pts.values()],
                    yerr=[100 * p[2] for p in pts.values()], marker=shape, linestyle="none", capsize=3,
                    label=f"{n:,} training sentences")
        for row, p in pts.items():
            ax.annotate(f"{row} ({p[3]})", (p[0], 100 * p[1]), textcoords="offset points", xytext=(4, 3), fontsize=6)
    _log_ticks(ax)
    return _save(fig, ax, path, "training wall-clock, minutes (mean over seeds; log scale)", f"test {metric} (%)", title)


def figure_lines(table: str, recs: list[dict], real_sizes: Sequence[int], metric: str,
                 out: Path) -> tuple[list[str], dict[str, list]]:
    """Draw a table's figures beside the report (dev metric and losses against step, first seed of each
    row and size; test metric against training size and, for NER, against inference cost) and return
    the markdown lines that show them, with the dev-curve series."""
    from fsllm.plots import plot_curves

    lines: list[str] = []
    curve_rows = {"ner": ["fs-bidirectional", "causal", "hf-native"],
                  "ablation": [r.name for r in TABLE_ROWS["ablation"]]}.get(
        table, ["fs-bidirectional", "causal-last", "causal-mean", "hf-native"])
    series: dict[str, list] = {}
    for row_name in curve_rows:
        for size in real_sizes:
            cands = sorted((r for r in recs if r["method"] == row_name and r["train_size"] == size and r.get("dev_curve")),
                           key=lambda r: r["seed"])
            if cands:
                series[f"{row_name} n={size} (seed {cands[0]['seed']})"] = [tuple(p) for p in cands[0]["dev_curve"]]
    if series:
        png = Path(out) / f"dev_curves_{table}.png"
        plot_curves(series, png, xlabel="training step", ylabel=f"dev {metric}", title=f"{table}: dev {metric} vs step")
        lines += [f"![dev curves]({png.name})", ""]
    for which in ("train", "dev"):  # the losses of the same runs, where the cells recorded them
        losses: dict[str, list] = {}
        for row_name in curve_rows:
            for size in real_sizes:
                cands = sorted((r for r in recs if r["method"] == row_name and r["train_size"] == size
                                and (r.get("loss_curves") or {}).get(which)), key=lambda r: r["seed"])
                if cands:
                    losses[f"{row_name} n={size} (seed {cands[0]['seed']})"] = [tuple(p) for p in cands[0]["loss_curves"][which]]
        if losses:
            png = Path(out) / f"{which}_loss_{table}.png"
            plot_curves(losses, png, xlabel="training step", ylabel=f"{which} loss", title=f"{table}: {which} loss vs step")
            lines += [f"![{which} loss]({png.name})", ""]
    # test metric against the training-set size, one line per row, the seeds' spread as error bars
    sized = {name: pts for name in SIZE_FIGURE_ROWS if (pts := size_points(recs, name, metric))}
    if sized:
        png = Path(out) / f"{metric}_vs_size_{table}.png"
        size_figure(sized, png, metric, title=f"{table}: test {metric} against training sentences")
        lines += [f"![test {metric} against training size]({png.name})", ""]
    timed = time_points(recs, metric)
    if timed:
        png = Path(out) / f"{metric}_vs_train_time_{table}.png"
        time_figure(timed, png, metric, title=f"{table}: test {metric} against training time")
        lines += [f"![test {metric} against training time]({png.name})", "",
                  "Training time is each cell's own wall-clock on the machine and threads it records, over every "
                  "process that trained it (in parentheses beside a row: its seeds; a cell resumed before fsllm kept "
                  "the time before a resume, timed over its last part only, is left out); cells that shared the "
                  "machine with other work ran slower.", ""]
    latency = REPO / "benchmarks" / "results" / "latency.json"
    if table == "ner" and latency.is_file() and sized:
        png = Path(out) / f"{metric}_vs_latency_{table}.png"
        if latency_figure(sized, json.loads(latency.read_text()), png, metric):
            lines += [f"![test {metric} against inference cost]({png.name})",
                      "", f"Inference cost: `{json.loads(latency.read_text())['command']}` "
                      "([latency.json](../latency.json)); causal runs the FS model's forward.", ""]
    return lines, series


RESULTS_DIR = "benchmarks/results/"


def portable(command: str) -> str:
    """``command`` as run from a checkout's root: an absolute ``--out`` (or ``--fixed-rate-cells``) inside a
    checkout's ``benchmarks/results/`` is written from there. A cell records the path its process was given,
    absolute where a lane ran from one checkout and wrote into another; the cell keeps it, the report shows what
    a reader would type."""
    parts = shlex.split(command)
    for k in range(len(parts) - 1):
        if parts[k] in ("--out", "--fixed-rate-cells") and parts[k + 1].startswith("/") and f"/{RESULTS_DIR}" in parts[k + 1]:
            parts[k + 1] = RESULTS_DIR + parts[k + 1].rsplit(f"/{RESULTS_DIR}", 1)[1]
    return shlex.join(parts)


def command_lines(recs: list[dict]) -> list[str]:
    """The commands that produced a table's cells, then one command per cell (and its ``fsllm train``)."""
    lines: list[str] = []
    cmds = sorted({portable(r["command"]) for r in recs if r.get("command")})
    if cmds:
        lines += ["Commands that produced these cells (run from the repository's root):", "", "```"] + cmds + ["```", ""]
        lines += ["<details><summary>one command per cell</summary>", "", "```"]
        lines += [f"# {r['cell_id']}\n{portable(r.get('cell_command', ''))}"
                  + (f"\n# = {r['fsllm_command']}" if r.get("fsllm_command") else "")
                  for r in sorted(recs, key=lambda r: r["cell_id"])]
        lines += ["```", "", "</details>", ""]
    return lines


def table_report(table: str, out: Path, seeds: Sequence[int], sizes: Sequence[int] | None = None) -> tuple[list[str], dict]:
    """Markdown lines of one table, and its dev-curve series."""
    recs, stale = split_stale(load_records(out, table))
    dataset = TABLE_DATA[table]
    try:
        n_train = train_size_of(dataset)
    except Exception:  # noqa: BLE001 - data package missing: plan from the records only
        n_train = 10**9
    # a folder that ran some rows of a table at some sizes (a screen, a confirmation) plans those rows at those
    # sizes only; the other rows are named once below the table rather than as "not run" lines and entries. A
    # folder with none of the usual sizes (the full set alone) plans the sizes it ran, not the usual ones
    ran = [*recs, *stale]
    ran_sizes = ([n for n in DEFAULT_SIZES[table] if any(r["train_size"] == n for r in ran)]
                 or sorted({r["train_size"] for r in ran if r["train_size"]}))
    planned = plan(table, sizes or ran_sizes or DEFAULT_SIZES[table], seeds, n_train=n_train)
    present = {r["method"] for r in ran}
    absent = [row.name for row in TABLE_ROWS[table] if present and row.name not in present]
    planned = [c for c in planned if not present or c.row.name in present]
    done = {(r["method"], r["train_size"], r["seed"]) for r in recs}
    metric = TABLE_METRIC.get(table, "accuracy")
    lines = [f"## {table} ({dataset})", ""]
    if not recs:
        lines += ["Not run: no finished cells.", ""]
    # values per (row, size)
    by: dict[tuple[str, int], list[float]] = {}
    by_macro: dict[tuple[str, int], list[float]] = {}
    by_dev: dict[tuple[str, int], list[float]] = {}
    by_sec: dict[tuple[str, int], list[float]] = {}
    by_threads: dict[tuple[str, int], set] = {}
    for r in recs:
        key = (r["method"], r["train_size"])
        test = r.get("test") or {}
        if metric in test:
            by.setdefault(key, []).append(test[metric])
        if "macro_f1" in test and table != "ner":
            by_macro.setdefault(key, []).append(test["macro_f1"])
        if r.get("dev_metric") is not None:
            by_dev.setdefault(key, []).append(r["dev_metric"])
        if r.get("train_seconds") is not None and not partly_timed(r):
            by_sec.setdefault(key, []).append(r["train_seconds"])
            by_threads.setdefault(key, set()).add(torch_threads(r))
    usual_threads = statistics.mode([torch_threads(r) for r in recs]) if recs else None
    planned_keys: dict[tuple[str, int], int] = {}
    for c in planned:
        planned_keys[(c.row.name, c.size)] = planned_keys.get((c.row.name, c.size), 0) + 1
    keys = list(planned_keys)
    for r in recs:
        k = (r["method"], r["train_size"])
        if k not in planned_keys:
            keys.append(k)
            planned_keys[k] = 0
    order = {r.name: i for i, r in enumerate(TABLE_ROWS[table])}
    keys.sort(key=lambda k: (order.get(k[0], len(order)), k[1]))
    smoke = {(r["method"], r["train_size"]) for r in recs
             if (r.get("settings") or {}).get("test_subset") or ((r.get("settings") or {}).get("max_steps") or -1) > 0}
    head = f"| row | train size | test {metric} (mean ± std) | n |"
    sep = "|---|---|---|---|"
    if table != "ner":
        head += " test macro-F1 |"
        sep += "---|"
    head += " dev (selected) | train wall-clock (mean) | paper (analogue) |"
    sep += "---|---|---|"
    intro = (f"Test {metric} in %, mean ± sample std over seeds (n = finished seeds / planned). "
             "Paper numbers are LLaMA-2-7B on the analogous data set: context, not a target.")
    lines += [intro, "", head, sep]
    for row_name, size in keys:
        k = (row_name, size)
        n_done = len(by.get(k, []))
        size_s = "0 (no training)" if size == 0 else str(size)
        if n_done == 0:
            why = ""
            if row_name == "mpnet":
                why = " (MPNet not installed: see below)" if baselines.mpnet_dir(None)[0] is None else ""
            cols = f"| {row_name} | {size_s} | not run{why} | 0/{planned_keys[k]} |"
            if table != "ner":
                cols += " — |"
            cols += f" — | — | {paper_number(table, row_name)} |"
            lines.append(cols)
            continue
        secs = by_sec.get(k, [])
        wall = f"{statistics.fmean(secs) / 60:.1f} min" if secs and statistics.fmean(secs) > 0 else "—"
        if len(secs) < n_done:
            wall += f" ({len(secs)} of {n_done}: partly timed cells left out)" if secs else " (partly timed)"
        threads = by_threads.get(k, set())
        if threads and threads != {usual_threads}:  # a time from another thread count is no time to compare
            wall += f" (on {' and '.join(str(t) for t in sorted(threads, key=str))} torch thread{'' if threads == {1} else 's'})"
        mark = " †" if k in smoke else ""
        cols = f"| {row_name}{mark} | {size_s} | {_ms(by[k])} | {n_done}/{planned_keys[k] or n_done} |"
        if table != "ner":
            cols += f" {_ms(by_macro.get(k, []))} |"
        cols += f" {_ms(by_dev.get(k, []))} | {wall} | {paper_number(table, row_name)} |"
        lines.append(cols)
    lines.append("")
    if absent:
        lines += [f"Rows of the {table} table with no cell in this folder: {', '.join(absent)}.", ""]
    if smoke:
        lines += ["† smoke settings (test subset or capped training steps): not comparable with the other rows.", ""]
    # FS vs causal
    real_sizes = sorted({c.size for c in planned if c.size} | {r["train_size"] for r in recs if r["train_size"]})
    if table == "ner":
        comps = [("fs-bidirectional", ["causal"])]
    elif table == "ablation":
        comps = [("fs-swiglu-mean", ["fs-linear-mean", "fs-swiglu-last", "fs-swiglu-max"])]
    else:
        comps = [("fs-bidirectional", ["causal-last", "causal-mean"])]
    lines.append("**FS vs causal**" if table != "ablation" else "**Default head/pooling vs the alternatives**")
    lines.append("")
    verdicts = [v for fs_row, others in comps for size in real_sizes for v in _verdict(table, size, by, fs_row, others, metric)]
    lines += verdicts or ["- not run yet."]
    lines.append("")
    lines += paired_lines(table, recs, metric)
    if table == "ner":
        lines += entity_type_lines(recs)
    lines += decoding_lines(table, recs, out)
    lines += target_lines(table, recs, out)
    lines += grid_lines(recs)
    lines += grids_under_way_lines(table, recs, out)
    # learned lambdas
    lam = [r for r in recs if r.get("learned_lambdas")]
    for r in lam:
        v = r["learned_lambdas"]
        lines.append(f"- {r['cell_id']}: learned lambda per layer min {min(v):.3f}, mean {statistics.fmean(v):.3f}, "
                     f"max {max(v):.3f} (init 0.5).")
    if lam:
        lines.append("")
    # failed and not run
    errors = sorted(p.name[: -len(".error.txt")] for p in (Path(out) / table).glob("*.error.txt")) if (Path(out) / table).is_dir() else []
    if errors:
        lines += [f"Failed (traceback in `{table}/<cell>.error.txt`): " + ", ".join(errors) + ".", ""]
    if stale:
        lines += ["Stale (trained at the rate of a grid since extended; not in the means until they run again): "
                  + ", ".join(f"{r['cell_id']} (lr {r.get('lr'):g}, test {fmt((r.get('test') or {}).get(metric))})"
                              for r in stale) + ".", ""]
    missing = [c for c in planned if (c.row.name, c.size, c.seed) not in done]
    if missing:
        lines.append(f"Not run ({len(missing)} of {len(planned)} planned cells): "
                     + ", ".join(c.id for c in missing) + ".")
        lines.append("")
    fig_lines, series = figure_lines(table, recs, real_sizes, metric, out)
    lines += fig_lines
    lines += command_lines(recs)
    return lines, series


def backbones_of(all_recs: dict[str, list[dict]]) -> str:
    """The decoder backbone(s) the cells trained (their budget's ``model``; SmolLM2 where none ran yet), as
    fsllm's built-in model list describes them."""
    from fsllm.backbones import BUILTIN_MODELS

    names = sorted({(r.get("settings") or {}).get("model") for recs in all_recs.values() for r in recs} - {None})
    return "; ".join(BUILTIN_MODELS[n].description if n in BUILTIN_MODELS else n for n in names or ["smollm2-135m"])


def seeds_sentence(all_recs: dict[str, list[dict]]) -> str:
    """Which rows ran several seeds and which one, as the cells say (rows are multi-seed by choice, and a
    focused folder runs its own selection of them)."""
    by_row: dict[str, set[int]] = {}
    for recs in all_recs.values():
        for r in recs:
            by_row.setdefault(r["method"], set()).add(r["seed"])
    groups: dict[tuple[int, ...], list[str]] = {}
    for row, seeds in by_row.items():
        groups.setdefault(tuple(sorted(seeds)), []).append(row)
    parts = [f"{len(k)} ({', '.join(map(str, k))}) for {', '.join(sorted(v))}"
             for k, v in sorted(groups.items(), key=lambda kv: (-len(kv[0]), kv[0]))]
    return "Seeds in the cells: " + ("; ".join(parts) if parts else "none yet") + "."


def write_report(out: Path, seeds: Sequence[int]) -> Path:
    """Write ``out/REPORT.md`` and its figures beside it: every table, from the cell JSONs under ``out``."""
    out = Path(out)
    all_recs = {t: load_records(out, t) for t in TABLES}
    lines = [
        "# Paper tables at CPU scale",
        "",
        (f"Generated {time.strftime('%Y-%m-%d %H:%M')} by `python benchmarks/paper_tables.py report` from the cell "
         f"JSONs under `{os.path.relpath(out, REPO) if str(out).startswith(str(REPO)) else out}`."),
        "",
        (f"Backbone: {backbones_of(all_recs)} for the FS, causal, hf-native, zero-shot and "
         "instruction-tuned rows; encoders all-MiniLM-L6-v2 / all-mpnet-base-v2. The paper used LLaMA-2-7B on "
         "SST-2/SST-5/AGNews/Twitter-Fin/CoNLL-2003/OntoNotes with full training sets; we use the offline "
         "stand-ins (rt-polarity ~ SST-2, rt-5 ~ SST-5, bbc-news ~ AGNews (topic), tweets-3 ~ Twitter-Fin, "
         "CoNLL-2003 itself) and 1,000/4,000 training examples, so the paper column is context only."),
        "",
        (f"{seeds_sentence(all_recs)} The seed picks the training subset as well as the initialisation. Zero-shot "
         "is deterministic (greedy / likelihood scoring) and has no dev selection."),
        "",
    ]
    settings = {json.dumps(r.get("settings"), sort_keys=True) for recs in all_recs.values() for r in recs}
    if settings:
        lines += ["Budgets found in the cells (per row kind):", ""]
        for s in sorted(settings):
            lines.append(f"- `{s}`")
        lines.append("")
    # one line per machine set-up; the commits that ran on it (each cell JSON has its own) listed after it
    machines: dict[str, set[str]] = {}
    recorded = [r["machine"] for recs in all_recs.values() for r in recs if r.get("machine")]
    for d in recorded or [machine_info()]:
        line = (f"{d.get('cpu')}, {d.get('cores')} cores ({d.get('torch_threads')} torch threads)"
                + (f", GPU {d['gpu']}" if d.get("gpu") else "")
                + f"; Python {d.get('python')}, torch {d.get('torch')}, transformers {d.get('transformers')}, "
                f"peft {d.get('peft')}; {d.get('platform')}")
        machines.setdefault(line, set()).update([d["fsllm_commit"]] if d.get("fsllm_commit") else [])
    lines += ["Machine(s) the cells ran on:", ""]
    for line, commits in sorted(machines.items()):
        lines.append(f"- {line}" + (f" (fsllm commits {', '.join(sorted(commits))})" if commits else ""))
    lines.append("")
    total = sum((r.get("cell_seconds") or 0) for recs in all_recs.values() for r in recs)
    lines += [f"Total compute in finished cells: {total / 3600:.1f} h.", ""]
    empty = [t for t in TABLES if not all_recs[t]]
    if len(empty) < len(TABLES):  # a folder of some tables (a screen, a confirmation): the others named once
        lines += [f"Tables with no cell in this folder: {', '.join(empty)}.", ""] if empty else []
    for t in TABLES:
        if t in empty and len(empty) < len(TABLES):
            continue
        tl, _ = table_report(t, out, seeds)
        lines += tl
    if baselines.mpnet_dir(None)[0] is None:
        lines += ["## MPNet", "", baselines.MPNET_INSTALL, ""]
    path = out / "REPORT.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
