#!/usr/bin/env python
"""Load test of ``fsllm serve`` against a one-pipeline-call-per-request baseline endpoint.

    python benchmarks/bench_serve.py --model runs/conll2003/model [--levels 1,4,16,64] [--requests 200]
                                     [--texts texts.txt] [--name conll2003] [--out-dir benchmarks/results/serve]
                                     [--device auto|cpu|cuda]

Both servers are started here as subprocesses on free loopback ports, on the same model folder:

* ``fsllm``: ``fsllm serve FOLDER`` (dynamic batching, ``--max-batch-size``/``--max-wait-ms`` passed on);
* ``baseline``: a minimal FastAPI app that calls a ``transformers.pipeline`` once per request
  (:func:`build_baseline`), the way most hand-written model servers do.

At each concurrency level, ``--requests`` single-text requests are sent by that many concurrent
clients (one shared pool of texts, in a fixed order). Each answer is compared with the same server's
answer for that text alone (every distinct text sent once, one request at a time, before the levels):
labels equal and scores within ``--tol``; NER: the same (entity_group, start, end) spans and words. A
request is *correct*, *mismatched* (load or batching changed the answer) or an *error* (transport
error or non-200). Reported per server and level: requests/s, p50/p99/mean latency, the counts.
Separately: how many texts get identical answers from the two servers (sequence models: the same
logits, so all of them; NER: the pipeline's "simple" aggregation groups sub-tokens by their own
labels, fsllm labels whole words by their first sub-token, so spans can differ where a word is split
into sub-tokens). Results go to ``<out-dir>/<name>.json`` and ``<name>.md``.

The clients run in this process (asyncio + httpx): at high concurrency on a small machine the
client takes CPU from the server too, the same for both servers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
from pydantic import BaseModel
from timing import percentile

ROOT = Path(__file__).resolve().parents[1]

#: Default texts when no --texts file is given: short news-like sentences with names, places and organisations.
_NAMES = ["John Smith", "Mary Jones", "Angela Merkel", "Tim Cook", "Serena Williams", "Li Wei", "Ahmed Hassan"]
_PLACES = ["Paris", "London", "Berlin", "New York", "Tokyo", "Lagos", "Buenos Aires", "the Rhine valley"]
_ORGS = ["Google", "the European Union", "Reuters", "Apple", "the United Nations", "Bayern Munich", "Toyota"]
_TEMPLATES = [
    "{n} visited {p} on Monday.",
    "{o} said on Tuesday that {n} would lead its office in {p}.",
    "Shares of {o} fell 3 percent in {p} after {n} resigned.",
    "{n} , who joined {o} in 2019 , moved to {p} last year to open a research lab for the company.",
    "The film was a great success in {p} .",
    "A boring plot and awful actors: I hated every minute of it.",
    "Police in {p} arrested two men on Friday, a spokesman for {o} told reporters, adding that {n} was safe.",
    "{o} and {o2} agreed to merge, creating the largest group of its kind in {p} and beyond.",
]


def test_texts(data: str, n: int) -> list[str]:
    """The first ``n`` texts of a data set's test split; NER sentences are their words joined by spaces."""
    from fsllm.data import load_any

    split = list(load_any(data).splits["test"])[:n]
    return [" ".join(ex["tokens"]) if "tokens" in ex else ex["text"] for ex in split]


def default_texts(n: int = 64, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        t = rng.choice(_TEMPLATES)
        out.append(t.format(n=rng.choice(_NAMES), p=rng.choice(_PLACES), o=rng.choice(_ORGS), o2=rng.choice(_ORGS)))
    return out


# ------------------------------------------------------------------------------------------- baseline


def build_baseline(folder: str, device: str = "auto") -> tuple[str, Callable[[str], Any]]:
    """The baseline's model call: ``(task, fn)`` where ``fn(text)`` runs ``pipeline(task, model=folder)`` once.

    The pipeline loads the FS model from the same folder as ``fsllm serve`` (fsllm registers it with the
    Auto classes). NER uses ``aggregation_strategy="first"``: a word takes its first sub-token's label,
    as fsllm labels words. ``device`` is resolved as fsllm serve resolves it (``auto``: the GPU when there
    is one, which is also the pipeline's own default).
    """
    from transformers import AutoConfig, pipeline

    import fsllm  # noqa: F401  registers the FS models with the Auto classes
    from fsllm.config import resolve_device

    kind = {"sequence": ("text-classification", {"top_k": None}),
            "token": ("token-classification", {"aggregation_strategy": "first"})}
    model_dir = Path(folder) / "model" if (Path(folder) / "model").is_dir() else Path(folder)  # a run folder
    task = AutoConfig.from_pretrained(model_dir).task
    name, kw = kind[task]
    return task, pipeline(name, model=str(model_dir), device=resolve_device(device), **kw)


def _plain(x: Any) -> Any:
    """numpy scalars (the pipelines' scores) to JSON numbers."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_plain(v) for v in x]
    return x.item() if hasattr(x, "item") else x


class BaselineRequest(BaseModel):
    inputs: str


def baseline_app(folder: str, device: str = "auto"):
    """POST /predict ``{"inputs": text}`` -> the pipeline's answer for that text (one call per request)."""
    import threading

    from fastapi import FastAPI
    from fastapi.concurrency import run_in_threadpool
    task, pipe = build_baseline(folder, device)
    lock = threading.Lock()  # pipelines are not thread-safe; one call at a time, as a plain server does

    app = FastAPI()

    def call(text: str) -> Any:
        with lock:
            out = _plain(pipe(text))
        # text-classification with top_k=None answers [[{label, score}, ...]] for one text: TEI's shape is the inner list
        return out[0] if task == "sequence" and out and isinstance(out[0], list) else out

    @app.post("/predict")
    async def predict(req: BaselineRequest) -> Any:
        return await run_in_threadpool(call, req.inputs)

    @app.get("/health")
    def health() -> dict:
        import torch

        return {"status": "ok", "task": task, "torch_threads": torch.get_num_threads(), "device": str(pipe.device)}

    return app


# ------------------------------------------------------------------------------------------ load test


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], port: int, log: Path, timeout: float = 600) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[:4]} exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"{cmd[:4]} did not answer /health in {timeout:.0f} s; see {log}")


def stop(proc: subprocess.Popen) -> int | None:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


def same_answer(got: Any, want: Any, task: str, tol: float) -> bool:
    """Labels equal and scores within ``tol``; NER: the same spans, types and words once the spaces
    that the pipeline's byte-level BPE tokens carry are dropped (``parity.pipeline_entity_key``)."""
    from parity import pipeline_entity_key

    try:
        if task == "token":
            if len(got) != len(want):
                return False
            return all(
                pipeline_entity_key(g) == pipeline_entity_key(w) and abs(g["score"] - w["score"]) <= tol
                for g, w in zip(got, want)
            )
        g = {d["label"]: d["score"] for d in got}
        w = {d["label"]: d["score"] for d in want}
        return g.keys() == w.keys() and got[0]["label"] == want[0]["label"] and all(
            abs(g[k] - w[k]) <= tol for k in w)
    except (KeyError, TypeError, IndexError):
        return False


async def _load(url: str, texts: list[str], requests: int, concurrency: int, timeout: float) -> list[dict]:
    """``requests`` POSTs of one text each by ``concurrency`` clients; one record per request, in order."""
    import httpx

    records: list[dict] = [{} for _ in range(requests)]
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:

        async def worker() -> None:
            for i in counter:  # a shared iterator: each index is taken once; stops by itself
                text = texts[i % len(texts)]
                t0 = time.perf_counter()
                try:
                    r = await client.post("/predict", json={"inputs": text})
                    rec = {"status": r.status_code, "answer": r.json() if r.status_code == 200 else r.text[:200]}
                except (httpx.HTTPError, ValueError) as e:
                    rec = {"status": None, "answer": f"{type(e).__name__}: {e}"[:200]}
                rec["latency_s"] = time.perf_counter() - t0
                rec["text"] = i % len(texts)
                records[i] = rec

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return records


def batch_histogram(url: str) -> dict[str, float] | None:
    """The server's ``fsllm_batch_size`` histogram from ``/metrics``: cumulative count per bucket bound
    (``le``), plus ``sum`` and ``count``; None where the server has no such metric (the baseline)."""
    import httpx

    r = httpx.get(url + "/metrics", timeout=10)
    if r.status_code != 200:
        return None
    out: dict[str, float] = {}
    for line in r.text.splitlines():
        if line.startswith("fsllm_batch_size_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            le = le if le == "+Inf" else f"{float(le):g}"  # prometheus_client writes 1.0, the results say 1
            out[le] = float(line.rsplit(" ", 1)[1])
        elif line.startswith(("fsllm_batch_size_sum", "fsllm_batch_size_count")):
            key, val = line.split(" ", 1)
            out[key.rsplit("_", 1)[1]] = float(val)
    return out or None


def batch_delta(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, Any] | None:
    """Forwards, mean texts per forward and forwards per batch-size bucket between two scrapes."""
    if not before or not after:
        return None
    d = {k: after[k] - before.get(k, 0.0) for k in after}
    forwards = int(d.get("count", 0))
    bounds = [k for k in after if k not in ("sum", "count")]
    buckets, prev = {}, 0.0
    for le in bounds:  # cumulative -> per bucket ("<= 4" holds the batches of 3 and 4)
        n = int(d[le] - prev)
        prev = d[le]
        if n:
            buckets[le] = n
    return {"forwards": forwards, "mean_batch": round(d.get("sum", 0.0) / forwards, 2) if forwards else None,
            "forwards_by_batch_size_le": buckets}


def run_level(url: str, texts: list[str], requests: int, concurrency: int, reference: list[Any] | None, task: str,
              tol: float, timeout: float) -> tuple[dict, list[dict]]:
    before = batch_histogram(url)
    t0 = time.perf_counter()
    recs = asyncio.run(_load(url, texts, requests, concurrency, timeout))
    wall = time.perf_counter() - t0
    batches = batch_delta(before, batch_histogram(url))
    ok = [r for r in recs if r["status"] == 200]
    errors = len(recs) - len(ok)
    correct = sum(1 for r in ok if reference is None or same_answer(r["answer"], reference[r["text"]], task, tol))
    lat = [r["latency_s"] * 1000 for r in ok] or [float("nan")]
    row = {
        "concurrency": concurrency, "requests": len(recs), "ok": len(ok), "correct": correct,
        "mismatched": len(ok) - correct, "errors": errors, "wall_s": round(wall, 3),
        "requests_per_s": round(len(ok) / wall, 2), "p50_ms": round(percentile(lat, 0.50), 2),
        "p99_ms": round(percentile(lat, 0.99), 2), "mean_ms": round(statistics.fmean(lat), 2),
        "error_examples": [r["answer"] for r in recs if r["status"] != 200][:3],
    }
    if batches:
        row["batches"] = batches
    return row, recs


def markdown(res: dict) -> str:
    lines = [
        f"# fsllm serve vs one pipeline call per request: {res['name']}", "",
        f"Model `{res['model']}` ({res['task']}), {res['requests_per_level']} single-text requests per level, "
        f"{res['distinct_texts']} distinct texts; fsllm serve `--max-batch-size {res['fsllm_serve']['max_batch_size']} "
        f"--max-wait-ms {res['fsllm_serve']['max_wait_ms']}`; baseline: {res['baseline']}.", "",
        "Torch threads per server: " + ", ".join(f"{k} {v}" for k, v in res.get("torch_threads", {}).items())
        + " (`fsllm` is fsllm serve's default; `fsllm-tN` runs `--threads N`).", "",
        "Devices: " + ", ".join(f"{k} {v}" for k, v in res.get("devices", {}).items()) + ".", "",
        f"fsllm's answers identical to the baseline's (each text alone, tol {res['tol']}): "
        f"**{res['identical_outputs']}** ({res['identical_count']}/{res['distinct_texts']} texts)"
        + (" (NER: the pipeline aggregates sub-tokens, fsllm words; see the module docstring)."
           if res["task"] == "token" else "."), "",
        "*correct*: the answer under load equals the same server's answer for the text alone.", "",
        "*texts/forward*: fsllm's mean batch size over the level, from its `/metrics` histogram "
        "(the baseline runs one text per call).", "",
        "| server | concurrency | req/s | p50 ms | p99 ms | mean ms | correct | mismatched | errors | texts/forward |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in res["levels"]:
        lines.append(f"| {row['server']} | {row['concurrency']} | {row['requests_per_s']} | {row['p50_ms']} | "
                     f"{row['p99_ms']} | {row['mean_ms']} | {row['correct']} | {row['mismatched']} | {row['errors']} | "
                     f"{row['batches']['mean_batch'] if row.get('batches') else 1} |")
    for server, speed in res.get("speedups", {"fsllm": res.get("speedup_requests_per_s", {})}).items():
        if speed:
            lines += ["", f"{server} / baseline requests/s: " + ", ".join(f"c={c}: {v}x" for c, v in speed.items())]
    m = res["machine"]
    gpu = f", GPU {m['gpu']} ({m['gpu_memory_gib']} GiB, CUDA {m['cuda']})" if m.get("gpu") else ""
    lines += ["", f"Machine: {m['cpus']} CPUs{gpu}, load average at start {m['load_average_at_start']}; torch {m['torch']}, "
              f"transformers {m['transformers']}, python {m['python']}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="run or model folder (both servers load it)")
    p.add_argument("--levels", default="1,4,16,64", help="concurrency levels (default 1,4,16,64)")
    p.add_argument("--requests", type=int, default=200, help="requests per server and level (default 200)")
    p.add_argument("--texts", default=None, help="a file with one text per line (default: built-in sentences)")
    p.add_argument("--data", default=None,
                   help="use the first --num-texts texts of this data set's test split (NER: words joined by spaces)")
    p.add_argument("--num-texts", type=int, default=256, help="with --data (default 256)")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--fsllm-threads", default="default",
                   help="fsllm servers to run, comma-separated: 'default' (fsllm serve's own thread count) or N "
                        "(--threads N), e.g. 'default,2' (default: default)")
    p.add_argument("--device", default="auto",
                   help="both servers' device: auto (the GPU when torch sees one), cpu, cuda or cuda:N (default auto)")
    p.add_argument("--tol", type=float, default=1e-4, help="score tolerance for 'correct' (default 1e-4)")
    p.add_argument("--timeout", type=float, default=120.0, help="per request, seconds")
    p.add_argument("--name", default=None, help="results file stem (default: the model folder's name)")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results" / "serve"))
    p.add_argument("--baseline-server", action="store_true", help=argparse.SUPPRESS)  # internal: run the baseline
    p.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a.baseline_server:
        import uvicorn

        uvicorn.run(baseline_app(a.model, a.device), host="127.0.0.1", port=a.port, log_level="warning", access_log=False)
        return 0

    levels = [int(x) for x in a.levels.split(",")]
    if a.data:
        texts = test_texts(a.data, a.num_texts)
    elif a.texts:
        texts = [ln for ln in Path(a.texts).read_text().splitlines() if ln.strip()]
    else:
        texts = default_texts()
    name = a.name or Path(a.model).resolve().name
    out_dir = Path(a.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fs_port, base_port = _free_port(), _free_port()
    py = sys.executable
    servers = {
        "baseline": ([py, str(Path(__file__).resolve()), "--model", a.model, "--baseline-server", "--port",
                      str(base_port), "--device", a.device], base_port),
    }
    for variant in [v.strip() for v in a.fsllm_threads.split(",") if v.strip()]:
        extra = [] if variant == "default" else ["--threads", str(int(variant))]
        servers["fsllm" if variant == "default" else f"fsllm-t{int(variant)}"] = (
            [py, "-m", "fsllm.cli", "serve", a.model, "--port", str(fs_port), "--log-level", "warning",
             "--max-batch-size", str(a.max_batch_size), "--max-wait-ms", str(a.max_wait_ms),
             "--max-queue", str(max(256, 2 * max(levels))), "--device", a.device, *extra], fs_port)
    fsllm_servers = [k for k in servers if k != "baseline"]
    res: dict[str, Any] = {
        "name": name, "model": a.model, "requests_per_level": a.requests, "distinct_texts": len(texts), "tol": a.tol,
        "fsllm_serve": {"max_batch_size": a.max_batch_size, "max_wait_ms": a.max_wait_ms},
        "baseline": "FastAPI + transformers.pipeline, one pipeline call per request (build_baseline: pipeline(task, model=folder))",
        "machine": {"cpus": os.cpu_count(), **common.machine_info()},
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "commit": common.git_commit(),
        "levels": [],
    }
    alone: dict[str, list[Any]] = {}
    for server in servers:  # one server at a time: they would compete for the CPUs
        cmd, port = servers[server]
        proc = start(cmd, port, Path(tempfile.gettempdir()) / f"bench_serve-{name}-{server}.log")
        url = f"http://127.0.0.1:{port}"
        try:
            import httpx

            if server == "baseline":
                health = httpx.get(url + "/health", timeout=5).json()
                res["task"] = health["task"]
                res.setdefault("torch_threads", {})[server] = health.get("torch_threads")
                res.setdefault("devices", {})[server] = health.get("device")
            else:
                info = httpx.get(url + "/info", timeout=5).json()
                res.setdefault("torch_threads", {})[server] = info.get("torch_threads")
                res.setdefault("devices", {})[server] = info.get("device")
            # the reference: every distinct text once, one request at a time
            recs = asyncio.run(_load(url, texts, len(texts), 1, a.timeout))
            failed = [r for r in recs if r["status"] != 200]
            if failed:
                raise RuntimeError(f"{server} failed on a text sent alone: {failed[0]}")
            alone[server] = [r["answer"] for r in recs]
            for c in levels:
                row, _ = run_level(url, texts, a.requests, c, alone[server], res["task"], a.tol, a.timeout)
                res["levels"].append({"server": server, **row})
                print(f"{server:8s} c={c:<3d} {row['requests_per_s']:8.2f} req/s  p50 {row['p50_ms']:8.2f} ms  "
                      f"p99 {row['p99_ms']:8.2f} ms  correct {row['correct']}/{row['requests']}  errors {row['errors']}",
                      flush=True)
        finally:
            res.setdefault("exit_status", {})[server] = stop(proc)
    first = fsllm_servers[0]  # the identity check and the headline ratio use the first fsllm server
    same = [same_answer(f, b, res["task"], a.tol) for f, b in zip(alone[first], alone["baseline"])]
    res["identical_count"] = sum(same)
    res["identical_outputs"] = all(same)
    res["mismatch_examples"] = [
        {"text": texts[i], "fsllm": alone[first][i], "baseline": alone["baseline"][i]}
        for i, s in enumerate(same) if not s][:3]
    by = {(r["server"], r["concurrency"]): r["requests_per_s"] for r in res["levels"]}
    res["speedups"] = {
        server: {c: round(by[(server, c)] / by[("baseline", c)], 2) for c in levels if by.get(("baseline", c))}
        for server in fsllm_servers}
    res["speedup_requests_per_s"] = res["speedups"][first]
    common.write_json(out_dir / f"{name}.json", res, newline=True)
    (out_dir / f"{name}.md").write_text(markdown(res))
    print(markdown(res))
    print(f"wrote {out_dir / (name + '.json')} and {out_dir / (name + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
