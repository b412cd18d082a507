"""One change of budget against the tuned cells, seed by seed: ``paper_tables.py`` cells written to
another ``--out`` with one setting changed (say ``--warmup-ratio 0.1``) are paired with the cells of
the same table, row, size and seed under ``--base``, and their dev and test differences written out.

The report of one ``--out`` compares rows under one budget; this compares one row under two budgets,
which is how a default is tested before it changes (the dev difference says whether selection on dev
would have picked the change; the test difference what it is worth).

    python benchmarks/paired_budgets.py --out benchmarks/results/warmup --base benchmarks/results/tuned
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from papertables.planner import GRID_PLAN_KEYS, REPO  # noqa: E402
from papertables.report import load_records  # noqa: E402
from papertables.rows import TABLES  # noqa: E402

#: how a grid was planned, not how a cell trained (the rate it trained at is compared as ``lr``)
PLAN_KEYS = ("lr", "encoder_lr", *GRID_PLAN_KEYS)


def changed_settings(new: dict, old: dict) -> dict:
    """How two cells trained differently, ``{key: (old, new)}``: their settings and the rate each
    trained at (a cell's ``lr``, chosen by its grid or given), leaving out how grids were planned."""
    keys = {*new.get("settings", {}), *old.get("settings", {})} - set(PLAN_KEYS)
    diff = {k: (old["settings"].get(k), new["settings"].get(k)) for k in sorted(keys)
            if new["settings"].get(k) != old["settings"].get(k)}
    if new.get("lr") != old.get("lr"):
        diff["lr"] = (old.get("lr"), new.get("lr"))
    return diff


def paired(out: Path, base: Path) -> list[dict]:
    """One entry per cell of ``out`` that has a counterpart in ``base``, with both scores."""
    pairs = []
    for table in TABLES:
        mine = {r["cell_id"]: r for r in load_records(out, table)}
        theirs = {r["cell_id"]: r for r in load_records(base, table)}
        for cid, r in sorted(mine.items()):
            b = theirs.get(cid)
            if b is None:
                continue
            metric = r.get("primary_metric") or "f1"
            pairs.append({
                "table": table, "method": r["method"], "size": r["train_size"], "seed": r["seed"],
                "metric": metric, "lr": r.get("lr"), "base_lr": b.get("lr"),
                "dev": r.get("dev_metric"), "base_dev": b.get("dev_metric"),
                "test": (r.get("test") or {}).get(metric), "base_test": (b.get("test") or {}).get(metric),
                "changed": changed_settings({"settings": {}, **r}, {"settings": {}, **b}),
            })
    return pairs


def _g(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _pm(d: list[float]) -> str:
    if len(d) < 2:
        return f"{d[0] * 100:+.2f}" if d else "—"
    return f"{statistics.fmean(d) * 100:+.2f} ± {statistics.stdev(d) / math.sqrt(len(d)) * 100:.2f}"


def report(out: Path, base: Path) -> str:
    pairs = paired(out, base)
    lines = [f"# `{out.name}` against `{base.name}`, paired by seed", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M')} by `python benchmarks/paired_budgets.py --out {out} "
             f"--base {base}`. Each line: one row at one size, the cells of `{out}` minus those of `{base}` with "
             "the same seed (mean ± standard error; then per seed, base → new); `changed` is how the two trained "
             "differently (their settings and, where it differs, the learning rate).", ""]
    groups: dict[tuple, list[dict]] = {}
    for p in pairs:
        groups.setdefault((p["table"], p["method"], p["size"], p["lr"], p["base_lr"]), []).append(p)
    if not groups:
        return "\n".join([*lines, "No cell of the one folder has a counterpart in the other yet.", ""])
    lines += ["| table | row | n | seeds | changed | dev new − base | test new − base | per seed (test: base → new) |",
              "|---|---|---|---|---|---|---|---|"]

    def order(key: tuple) -> tuple:  # per row and size, the pairs at one rate first
        table, method, size, lr, base_lr = key
        return table, method, size, lr != base_lr, str(lr), str(base_lr)

    for (table, method, size, _, _), ps in sorted(groups.items(), key=lambda kv: order(kv[0])):
        changed = {k: v for p in ps for k, v in p["changed"].items()}
        what = ", ".join(f"{k} {_g(o)}→{_g(n)}" for k, (o, n) in changed.items()) or "nothing"
        dev = [p["dev"] - p["base_dev"] for p in ps if p["dev"] is not None and p["base_dev"] is not None]
        test = [p["test"] - p["base_test"] for p in ps if p["test"] is not None and p["base_test"] is not None]
        per = ", ".join(f"s{p['seed']}: {p['base_test'] * 100:.1f} → {p['test'] * 100:.1f}" for p in ps
                        if p["test"] is not None and p["base_test"] is not None)
        lines.append(f"| {table} | {method} | {size} | {','.join(str(p['seed']) for p in ps)} | {what} | "
                     f"{_pm(dev)} | {_pm(test)} | {per} |")
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="cells with the changed budget")
    p.add_argument("--base", type=Path, default=REPO / "benchmarks/results/tuned", help="the cells they pair with")
    p.add_argument("--write", type=Path, default=None, help="markdown file [OUT/PAIRED.md]")
    a = p.parse_args(argv)
    text = report(a.out, a.base)
    path = a.write or a.out / "PAIRED.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
