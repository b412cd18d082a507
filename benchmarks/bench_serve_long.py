#!/usr/bin/env python
"""Small requests' latency while one NER request at the input limit is in flight.

    python benchmarks/bench_serve_long.py (--model NER_MODEL_FOLDER | --backbone smollm2-135m) --tokens 4096
        [--small 16] [--clients 4] [--serve-args "--max-input-tokens 4096"] [--src DIR] [--name NAME]
        [--out-dir benchmarks/results/serve]

``--backbone``: serve an untrained FS NER model on that backbone (the CoNLL-2003 labels, saved to a temporary
folder): a forward costs what a trained one costs, which is all this measures.

Starts ``fsllm serve`` (from ``--src``, default this checkout's ``src/``, so an older checkout's server can be
measured with the same script) on a free loopback port, then:

1. *idle*: ``--small`` one-sentence requests from ``--clients`` concurrent clients, nothing else running;
2. *long*: one request whose text has exactly ``--tokens`` sub-tokens (counted with the model's tokenizer
   as the server counts them: words split as ``fsllm predict`` splits them), and, one second after it
   was sent, the same ``--small`` requests from ``--clients`` clients.

Reported: p50 / p99 / max latency of the small requests in each phase, how many of them were answered
before the long request, and the long request's time and status. Results go to ``<out-dir>/<name>.json``
and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import common
from bench_serve import _free_port, default_texts, stop
from timing import percentile

ROOT = Path(__file__).resolve().parents[1]

_FILLER = ("The committee met in Geneva on Thursday , and Maria Lopez of the World Health Organization said that "
           "the report from Nairobi would reach Brussels before the summit in Tokyo next spring .").split()


def untrained_ner_model(backbone: str, out: Path) -> str:
    """An FS token classifier on ``backbone`` with the CoNLL-2003 labels, untrained, saved with its tokenizer."""
    from fsllm import FSConfig, FSForTokenClassification
    from fsllm.backbones import load_tokenizer

    labels = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    model = FSForTokenClassification.from_backbone(backbone, fs_config=FSConfig(), id2label=dict(enumerate(labels)))
    model.save_pretrained(out, tokenizer=load_tokenizer(backbone), merged=True)
    return str(out)


def text_of_tokens(model: str, tokens: int) -> str:
    """A news-like text of exactly ``tokens`` sub-tokens for ``model``'s tokenizer (or the fewest above it)."""
    from fsllm.backbones import load_tokenizer
    from fsllm.serving import encode_ner

    tok = load_tokenizer(model)

    def count(n_words: int) -> int:
        text = " ".join(_FILLER[i % len(_FILLER)] for i in range(n_words))
        return encode_ner(tok, text, 512, 10**9).n_tokens

    lo, hi = 1, tokens  # every word has at least one sub-token
    while lo < hi:  # the most words with at most ``tokens`` sub-tokens
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if count(mid) <= tokens else (lo, mid - 1)
    return " ".join(_FILLER[i % len(_FILLER)] for i in range(lo))


def small_phase(url: str, texts: list[str], clients: int, long_done: threading.Event | None = None) -> dict:
    import httpx

    lat, before_long, errors = [], 0, 0
    lock = threading.Lock()

    def one(text: str) -> None:
        nonlocal before_long, errors
        t = time.perf_counter()
        r = httpx.post(url + "/ner", json={"inputs": text}, timeout=1800)
        dt = time.perf_counter() - t
        with lock:
            lat.append(dt)
            errors += r.status_code != 200
            before_long += long_done is not None and not long_done.is_set()

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, texts))
    out = {"n": len(lat), "errors": errors, "p50_s": round(percentile(lat, 0.5), 3),
           "p99_s": round(percentile(lat, 0.99), 3),
           "max_s": round(max(lat), 3)}
    if long_done is not None:
        out["answered_before_long"] = before_long
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a token (NER) model or run folder with its tokenizer")
    src.add_argument("--backbone", help="serve an untrained NER model on this backbone (e.g. smollm2-135m)")
    ap.add_argument("--tokens", type=int, default=4096, help="sub-tokens of the long request's text")
    ap.add_argument("--small", type=int, default=16, help="one-sentence requests per phase")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients sending them")
    ap.add_argument("--serve-args", default="", help="more fsllm serve options, e.g. \"--max-input-tokens 4096\"")
    ap.add_argument("--src", default=str(ROOT / "src"), help="the fsllm source tree whose server is measured")
    ap.add_argument("--name", default="long-ner")
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results" / "serve"))
    a = ap.parse_args(argv)

    import httpx

    if a.backbone:
        a.model = untrained_ner_model(a.backbone, Path(tempfile.mkdtemp(prefix="bench-serve-long-")))
    long_text = text_of_tokens(a.model, a.tokens)
    small = default_texts(a.small, seed=1)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "fsllm.cli", "serve", a.model, "--port", str(port), "--log-level", "warning",
           *shlex.split(a.serve_args)]
    log = Path(a.out_dir) / f"{a.name}.server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": a.src}
    import subprocess

    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not come up; see {log}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        info = httpx.get(url + "/info", timeout=10).json()
        httpx.post(url + "/ner", json={"inputs": small[0]}, timeout=600)  # warm-up
        load_before = os.getloadavg()
        idle = small_phase(url, small, a.clients)
        done = threading.Event()
        result: dict = {}

        def long_request() -> None:
            t = time.perf_counter()
            r = httpx.post(url + "/ner", json={"inputs": long_text}, timeout=3600)
            result.update(status=r.status_code, seconds=round(time.perf_counter() - t, 2),
                          body=r.text[:300] if r.status_code != 200 else None)
            done.set()

        th = threading.Thread(target=long_request)
        th.start()
        time.sleep(1.0)
        busy = small_phase(url, small, a.clients, done)
        th.join()
        load_after = os.getloadavg()
    finally:
        stop(proc)
        log.unlink(missing_ok=True)
        if a.backbone:
            shutil.rmtree(a.model, ignore_errors=True)
    res = {
        "command": "python benchmarks/bench_serve_long.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:])),
        "model": a.backbone and f"untrained NER head on {a.backbone}" or a.model, "long_tokens": a.tokens, "long_chars": len(long_text), "small_requests": a.small,
        "clients": a.clients, "serve_args": a.serve_args, "src": a.src,
        "server": {k: info.get(k) for k in ("version", "max_input_length", "max_batch_tokens", "max_batch_size",
                                            "torch_threads", "device", "model_dtype")},
        "idle": idle, "with_long_request": busy, "long_request": result,
        "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "machine": common.machine_info(), "commit": common.git_commit(),
    }
    common.write_json(Path(a.out_dir) / f"{a.name}.json", res)
    md = [f"# Small requests while one NER request of {a.tokens} tokens is in flight: {a.name}", "",
          f"`{res['command']}`", "",
          f"Server: {res['server']}; load average (1 min) before / after: {res['load_average_before_after']}", "",
          "| phase | small requests | p50 s | p99 s | max s | answered before the long one |",
          "|---|---:|---:|---:|---:|---:|",
          f"| idle | {idle['n']} | {idle['p50_s']} | {idle['p99_s']} | {idle['max_s']} | - |",
          f"| long request in flight | {busy['n']} | {busy['p50_s']} | {busy['p99_s']} | {busy['max_s']} | "
          f"{busy['answered_before_long']} |", "",
          f"Long request: status {result.get('status')}, {result.get('seconds')} s, {len(long_text)} characters."]
    (Path(a.out_dir) / f"{a.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
