"""The main job (the README's first command, ``fsllm train`` on its packaged recipe), timed whole.

Runs it once per precision (and variant), one after the other, each in a fresh process as a user
would, and records the wall clock of the whole command (loading, training, dev evaluations, the test
split) with the run's test and dev F1, so a change of default is judged on the command users run:

    python benchmarks/bench_main_job.py --precisions fp32,auto --runs /tmp/main-job-runs \\
        --out benchmarks/results/main_job/precision.json

A variant is the recipe with flags on top, e.g. a recipe against the one it replaced, in one run:

    python benchmarks/bench_main_job.py --precisions auto --variant recipe= \\
        --variant "rank8=--lora-r 8 --no-use-rslora" --runs /tmp/mj --out benchmarks/results/main_job/x.json

Run it on an otherwise idle machine. Results: a JSON file and a markdown summary next to it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import common
from timing import timed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--precisions", default="fp32,auto", help="comma-separated --precision values, run in this order")
    p.add_argument("--runs", type=Path, required=True, help="folder for the run folders (one per precision)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "main_job" / "precision.json")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS",
                   help="the recipe with these fsllm train flags on top (repeatable); none: the recipe alone")
    a = p.parse_args(argv)
    variants = {}
    for v in a.variant:
        name, sep, flags = v.partition("=")
        if not sep or not name.strip():
            p.error(f"--variant takes NAME=FLAGS, got {v!r}")
        variants[name.strip()] = shlex.split(flags)

    res = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "commit": common.git_commit(),
        "machine": common.machine_info(),
        "runs": {},
    }
    precisions = [x.strip() for x in a.precisions.split(",") if x.strip()]
    # a run's name: its precision, or variant/precision where variants are given
    plan = [(precision, flags, f"{name}/{precision}" if name else precision)
            for name, flags in (variants or {"": []}).items() for precision in precisions]
    for precision, flags, key in plan:
        run = a.runs / f"main-{key.replace('/', '-')}"
        args = ["train", "--precision", precision, *flags, "--output", str(run)]
        _, seconds = timed(lambda args=args: subprocess.run([sys.executable, "-m", "fsllm.cli", *args], check=True))
        metrics = json.loads((run / "metrics.json").read_text())
        config = json.loads((run / "config.json").read_text())
        log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines() if x.strip()]
        dev_evals = sum(r["eval_runtime"] for r in log if "eval_runtime" in r)
        loop = metrics["train"]["seconds"]
        res["runs"][key] = {
            "command": shlex.join(["fsllm", *args]),
            "precision_used": config["precision"],
            "wall_seconds": round(seconds, 1),
            "train_seconds": round(loop, 1),  # the Trainer's loop: steps and dev evaluations
            # where the wall clock goes: the loop without its dev evaluations (optimizer steps), the
            # dev evaluations, and the rest (start-up, loading, the test split, saving, plots)
            "phases_seconds": {"steps": round(loop - dev_evals, 1), "dev_evaluations": round(dev_evals, 1),
                               "outside_the_loop": round(seconds - loop, 1)},
            "test_f1": round(metrics["test"]["f1"], 4),
            "dev_f1": round(metrics["dev"]["f1"], 4),
        }
        common.write_json(a.out, res, newline=True)
    names = list(res["runs"])
    if len(names) == 2:
        x, y = (res["runs"][n] for n in names)
        res["speedup"] = {f"{names[1]}_over_{names[0]}": round(x["wall_seconds"] / y["wall_seconds"], 3)}
        res["speedup_by_phase"] = {k: round(x["phases_seconds"][k] / y["phases_seconds"][k], 3)
                                   for k in x["phases_seconds"] if y["phases_seconds"][k]}
        common.write_json(a.out, res, newline=True)
    title = "# The main job by variant and precision" if variants else "# The main job by precision"
    lines = [title, "", f"`{res['command']}`", "",
             f"commit {res['commit']}; {res['machine']['cpu_model']}, {res['machine']['torch_threads']} torch threads", "",
             "| run | ran as | wall clock | training loop | steps | dev evaluations | outside the loop "
             "| test F1 | dev F1 |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for n, r in res["runs"].items():
        ph = r["phases_seconds"]
        lines.append(f"| {n} | {r['precision_used']} | {r['wall_seconds'] / 60:.1f} min | {r['train_seconds']} s | "
                     f"{ph['steps']} s | {ph['dev_evaluations']} s | {ph['outside_the_loop']} s | "
                     f"{r['test_f1']} | {r['dev_f1']} |")
    if "speedup" in res:
        lines += ["", "Wall-clock ratio: " + ", ".join(f"{k} {v}x" for k, v in res["speedup"].items())
                  + "; by phase: " + ", ".join(f"{k} {v}x" for k, v in res["speedup_by_phase"].items())]
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
