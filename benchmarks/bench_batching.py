"""What a batch of mixed-length inputs costs, and what splitting it by length saves.

A served batch holds whatever requests arrived together, so its lengths are random; padded to
the longest, most of it is padding. ``fsllm.evaluation.length_chunks`` splits such a batch into
the sub-batches of least padded work under a cost model of ``overhead + size * longest``
token-steps per forward. This script measures that model's two numbers on a trained model (the
forward's time by batch shape) and, on random draws of real test sentences, the padded work of
one batch against the split, at the batch sizes a server sees:

    python benchmarks/bench_batching.py --model RUN/model --data conll2003 --out benchmarks/results/batching.json

Run it on an otherwise idle machine: it times forwards. Results: a JSON file and a markdown
summary next to it.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

import common
import torch
from timing import time_repeats

from fsllm.data import load_any
from fsllm.evaluation import FORWARD_OVERHEAD_TOKENS, length_chunks
from fsllm.inference import Predictor
from fsllm.tokenization import sequence_features

SHAPES = [(1, 8), (1, 24), (1, 64), (4, 24), (16, 24), (16, 64), (32, 24)]


def forward_seconds(model, n: int, length: int, repeats: int) -> float:
    """Median time of one forward of ``n`` inputs of ``length`` random tokens (after one warm-up)."""
    torch.manual_seed(0)
    ids = torch.randint(100, 1000, (n, length))
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        return time_repeats(lambda: model(input_ids=ids, attention_mask=mask), repeats, warmup=1).median


def padded_work(lengths: list[int], batch_size: int) -> tuple[int, int, int]:
    """Token-steps of one padded batch and of the ``length_chunks`` split (each with the model's
    per-forward overhead), and the number of sub-batches."""
    s = sorted(lengths)
    chunks = length_chunks(s, batch_size)
    one = FORWARD_OVERHEAD_TOKENS + len(s) * s[-1]
    split = sum(FORWARD_OVERHEAD_TOKENS + (e - b) * s[e - 1] for b, e in chunks)
    return one, split, len(chunks)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="a model folder written by fsllm (RUN/model)")
    p.add_argument("--data", default="conll2003", help="data set whose test texts are drawn (default conll2003)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "batching.json")
    p.add_argument("--repeats", type=int, default=5, help="timed forwards per shape (median)")
    p.add_argument("--draws", type=int, default=200, help="random batches per batch size")
    a = p.parse_args(argv)

    pred = Predictor.from_pretrained(a.model)
    res = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "commit": common.git_commit(),
        "machine": common.machine_info(),
        "model": str(a.model),
        "forward_overhead_tokens_in_length_chunks": FORWARD_OVERHEAD_TOKENS,
    }
    rows = []
    for n, length in SHAPES:
        t = forward_seconds(pred.model, n, length, a.repeats)
        rows.append({"batch": n, "length": length, "ms": round(1000 * t, 1), "ms_per_token": round(1000 * t / (n * length), 3)})
    res["forward"] = rows
    # the cost model's two numbers: the time of one more token at batch 1, and the rest of a forward
    by = {(r["batch"], r["length"]): r["ms"] for r in rows}
    per_token = (by[(1, 64)] - by[(1, 24)]) / 40
    res["fitted"] = {"ms_per_token_at_batch_1": round(per_token, 3), "ms_per_forward": round(by[(1, 24)] - 24 * per_token, 1),
                     "overhead_in_tokens": round((by[(1, 24)] - 24 * per_token) / per_token, 1)}

    test = list(load_any(a.data, task=pred.task).splits["test"])
    texts = [" ".join(ex["tokens"]) if pred.task == "token" else ex["text"] for ex in test]
    lengths = [len(sequence_features(t, pred.tokenizer, pred.max_length)[0]["input_ids"]) for t in texts]
    rng = random.Random(0)
    split_rows = []
    for size in (4, 16, 32):
        batches = [rng.sample(lengths, size) for _ in range(a.draws)]
        draws = [padded_work(b, size) for b in batches]
        split_rows.append({
            "batch": size,
            "real_tokens_share_of_one_padded_batch": round(statistics.fmean(sum(b) / (size * max(b)) for b in batches), 3),
            "one_batch_over_split_work": round(statistics.fmean(one / split for one, split, _ in draws), 2),
            "mean_sub_batches": round(statistics.fmean(k for _, _, k in draws), 1),
        })
    res["split"] = {"data": a.data, "test_texts": len(texts), "mean_tokens": round(statistics.fmean(lengths), 1),
                    "max_tokens": max(lengths), "rows": split_rows}
    common.write_json(a.out, res, newline=True)

    lines = [f"# Batch cost and the length split ({a.data}, {a.model})", "", f"`{res['command']}`", "",
             f"commit {res['commit']}; {res['machine']['cpu_model']}, {res['machine']['torch_threads']} torch threads", "",
             "| batch | length | forward ms | ms per token |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['batch']} | {r['length']} | {r['ms']} | {r['ms_per_token']} |" for r in rows]
    f = res["fitted"]
    lines += ["", f"At batch 1 one more token costs {f['ms_per_token_at_batch_1']} ms and the rest of a forward "
              f"{f['ms_per_forward']} ms, about {f['overhead_in_tokens']} tokens' worth (`length_chunks` assumes "
              f"{FORWARD_OVERHEAD_TOKENS}).", "",
              f"Random batches of {a.data} test texts (mean {res['split']['mean_tokens']} tokens, max "
              f"{res['split']['max_tokens']}), {a.draws} draws per size:", "",
              "| batch | real tokens / one padded batch | one batch's work / the split's | sub-batches |",
              "|---:|---:|---:|---:|"]
    lines += [f"| {r['batch']} | {r['real_tokens_share_of_one_padded_batch']} | {r['one_batch_over_split_work']}x | "
              f"{r['mean_sub_batches']} |" for r in split_rows]
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
