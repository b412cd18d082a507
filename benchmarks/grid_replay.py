#!/usr/bin/env python
"""What skipping the members that cannot change a grid's choice would have saved on the finished grids.

    python benchmarks/grid_replay.py [--results benchmarks/results] [--out benchmarks/results/grid_replay.md]

Replays every finished multi-seed grid under ``benchmarks/results/*/<table>/grid/`` (the member JSONs, each
with its dev score and training time) through the rule the grids now follow (``fsllm.selection.next_to_train``):
the members it would train, in its order, and the ones it would skip. It checks that the
replay chooses the rate the whole grid chose, and adds up the skipped members' recorded time. The grids ran
before the rule, with every member, so their times are what the skipped members cost.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path

from common import git_commit

from fsllm.selection import choose_rate, next_to_train, rate_key

Member = tuple[float, int]


def replay(rates: tuple[float, ...], seeds: tuple[int, ...], dev: Mapping[Member, float]) -> list[Member]:
    """The members the rule trains, in order, given every member's dev score."""
    seen: dict[Member, float] = {}
    while (member := next_to_train(rates, seeds, seen)[0]) is not None:
        seen[member] = dev[member]
    return list(seen)


def grids(results: Path) -> dict[tuple[str, str, str, int], dict[Member, dict]]:
    """Each finished multi-seed grid's members, by (folder, table, row, size)."""
    found: dict[tuple[str, str, str, int], dict[Member, dict]] = {}
    for f in sorted(results.glob("*/*/grid/*.json")):
        m = json.loads(f.read_text())
        key = (f.parents[2].name, f.parents[1].name, m["method"], m["train_size"])
        found.setdefault(key, {})[(m["lr"], m["seed"])] = m
    complete = {}
    for key, members in found.items():
        rates = sorted({lr for lr, _ in members})
        seeds = sorted({s for _, s in members})
        if len(seeds) > 1 and len(members) == len(rates) * len(seeds):
            complete[key] = members
    return complete


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--out", type=Path, default=None, help="write the table here (markdown) as well as printing it")
    a = ap.parse_args(argv)
    lines = ["# Grid members that could not change the choice, on the finished grids", "",
             f"`python benchmarks/grid_replay.py` at commit {git_commit()}: every finished multi-seed grid under "
             "`benchmarks/results/` replayed through `fsllm.selection.next_to_train` (the grids ran "
             "every member; the time is what each skipped member took).", "",
             "| folder | table | row | size | members | skipped (rate, seed) | same choice | minutes skipped / all |",
             "|---|---|---|---:|---:|---|---|---:|"]
    total_skipped = total = 0.0
    for (folder, table, row, size), members in grids(a.results).items():
        rates = tuple(sorted({lr for lr, _ in members}))
        seeds = tuple(sorted({s for _, s in members}))
        dev = {k: m["dev_metric"] for k, m in members.items()}
        trained = replay(rates, seeds, dev)
        skipped = [k for k in members if k not in trained]
        whole = choose_rate({lr: [dev[lr, s] for s in seeds] for lr in rates})[0]
        part = choose_rate({lr: [dev.get((lr, s)) if (lr, s) in trained else None for s in seeds] for lr in rates})[0]
        minutes = sum(members[k]["cell_seconds"] for k in skipped) / 60
        all_minutes = sum(m["cell_seconds"] for m in members.values()) / 60
        total_skipped, total = total_skipped + minutes, total + all_minutes
        lines.append(f"| {folder} | {table} | {row} | {size} | {len(members)} | "
                     + (", ".join(f"{rate_key(lr)}, {s}" for lr, s in skipped) or "—")
                     + f" | {'yes' if whole == part else 'NO'} | {minutes:.0f} / {all_minutes:.0f} |")
        if whole != part:
            print(f"{folder}/{table}/{row}: the replay chose {part}, the grid {whole}", file=sys.stderr)
            return 1
    lines += ["", f"In all: {total_skipped:.0f} of {total:.0f} minutes of grid training skipped "
              f"({100 * total_skipped / max(total, 1e-9):.1f}%), every choice the same."]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        a.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
