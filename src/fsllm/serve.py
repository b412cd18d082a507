"""``fsllm serve``: an HTTP server for a trained model, speaking Text Embeddings Inference's ``/predict`` schema.

FastAPI + uvicorn because they are a maintained ASGI stack, validate request bodies with pydantic and
give the OpenAPI page (``/docs``) for free; a hand-rolled ``http.server`` would need all three written.
uvloop and httptools (dependencies) give uvicorn its compiled event loop and HTTP parser, as in the
usual ``uvicorn[standard]`` deployment (on 2 cores the load test could not tell them from its noise).

How a request flows, and why:

* The body is validated and (sequence tasks) tokenised before it is queued (large bodies in a thread,
  off the event loop), so a bad or over-long input is answered at once (422 / 413) and never takes a
  place in the queue.
* Each text becomes one item in a bounded queue (``max_queue`` texts). A full queue answers 503 with
  ``Retry-After`` instead of letting latency grow without bound: a load balancer can then try a replica.
* One worker thread takes up to ``max_batch_size`` texts, runs the model once and resolves each text's
  future. Before a forward it waits for more texts at most ``max_wait_ms`` after the oldest one arrived,
  and only while other requests are already being read and tokenised: a lone request is not delayed
  for company that is not coming, and texts that queued up during the last forward go at once.
  One thread, because a forward already uses every core (two concurrent forwards only fight over
  them) and torch releases the GIL while it computes, so the event loop keeps accepting requests
  meanwhile. FS models mask padding keys and pool over real tokens only, so a text's answer does not
  depend on what it was batched with.
* NER texts go through ``Predictor.predict``, the raw-text path of ``fsllm predict``: words are split
  with character offsets and a text longer than the model's input length is split into overlapping
  windows (never truncated), so entities carry offsets into the text that was sent.
* The server is stateless: scale it with ``--workers`` (processes on one machine) or replicas behind
  a load balancer; see docs/serving.md.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import FSLLMError
from .inference import labels_over_threshold, scores_of

#: Environment variables read by :func:`app_from_env` (how ``--workers N`` hands options to each process).
ENV_MODEL = "FSLLM_SERVE_MODEL"
ENV_MAX_BATCH_SIZE = "FSLLM_SERVE_MAX_BATCH_SIZE"
ENV_MAX_WAIT_MS = "FSLLM_SERVE_MAX_WAIT_MS"
ENV_MAX_QUEUE = "FSLLM_SERVE_MAX_QUEUE"
ENV_TORCH_THREADS = "FSLLM_SERVE_TORCH_THREADS"
ENV_DEVICE = "FSLLM_SERVE_DEVICE"
ENV_PRECISION = "FSLLM_SERVE_PRECISION"
ENV_NER_DECODING = "FSLLM_SERVE_NER_DECODING"
ENV_WORD_SCORES = "FSLLM_SERVE_WORD_SCORES"

#: Inputs longer than this (characters, whole request) are tokenised off the event loop.
_THREADPOOL_CHARS = 20_000


# ---------------------------------------------------------------------------------------------- errors


class ServeError(Exception):
    """An error answered as TEI does: ``{"error": message, "error_type": kind}`` with an HTTP status."""

    def __init__(self, status: int, message: str, error_type: str = "validation", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.headers = headers


class QueueFull(Exception):
    """The batcher's queue has no room for all texts of a request."""


def _error_response(status: int, message: str, error_type: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "error_type": error_type}, status_code=status, headers=headers)


# ------------------------------------------------------------------------------------- dynamic batching


class _Item:
    __slots__ = ("payload", "future", "enqueued")

    def __init__(self, payload: Any):
        self.payload = payload
        self.future: Future = Future()
        self.enqueued = time.monotonic()


class DynamicBatcher:
    """Group texts of concurrent requests into one model call.

    ``run_batch(payloads)`` returns one result per payload; a result that is an ``Exception`` fails that
    payload's future only (one bad text must not fail the requests it was batched with). Admission is
    all-or-nothing per request so a request is never half queued when the queue fills up.
    """

    def __init__(
        self,
        run_batch: Callable[[list[Any]], list[Any]],
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 256,
        on_batch: Callable[[int], None] | None = None,
    ):
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1, max_wait_ms >= 0")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._items: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._arriving = 0  # requests announced (being read, tokenised) but not submitted yet
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="fsllm-batcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is queued, then end the worker (requests still waiting get their answers)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def depth(self) -> int:
        return len(self._items)

    def announce(self) -> None:
        """A request is on its way: a forward about to start may wait (``max_wait_ms`` at most) for it."""
        with self._cond:
            self._arriving += 1

    def withdraw(self) -> None:
        """An announced request will not be submitted (it failed validation)."""
        with self._cond:
            self._arriving = max(0, self._arriving - 1)
            self._cond.notify_all()

    def submit(self, payloads: Sequence[Any], announced: bool = False) -> list[Future]:
        """Queue a request's payloads (all or none); ``announced``: it was announced with :meth:`announce`."""
        items = [_Item(p) for p in payloads]
        with self._cond:
            if announced:
                self._arriving = max(0, self._arriving - 1)
                self._cond.notify_all()
            if self._stopping or not self.alive:
                raise QueueFull("the server is shutting down")
            if len(self._items) + len(items) > self.max_queue:
                raise QueueFull(f"queue full ({len(self._items)} of {self.max_queue} texts waiting)")
            self._items.extend(items)
            self._cond.notify()
        return [it.future for it in items]

    def _next_batch(self) -> list[_Item] | None:
        with self._cond:
            while not self._items:
                if self._stopping:
                    return None
                self._cond.wait()
            # Wait from the oldest text's arrival: texts that queued up during the last forward go at once.
            deadline = self._items[0].enqueued + self.max_wait
            while len(self._items) < self.max_batch_size and self._arriving > 0 and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            n = min(self.max_batch_size, len(self._items))
            return [self._items.popleft() for _ in range(n)]

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            live = [it for it in batch if it.future.set_running_or_notify_cancel()]  # drop disconnected clients
            if not live:
                continue
            if self.on_batch is not None:
                self.on_batch(len(live))
            try:
                results = self.run_batch([it.payload for it in live])
                if len(results) != len(live):
                    raise RuntimeError(f"run_batch returned {len(results)} results for {len(live)} inputs")
            except Exception as e:  # the whole forward failed: every text in it fails
                for it in live:
                    it.future.set_exception(e)
                continue
            for it, r in zip(live, results):
                if isinstance(r, Exception):
                    it.future.set_exception(r)
                else:
                    it.future.set_result(r)


# ------------------------------------------------------------------------------------------------ metrics

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class _Histogram:
    def __init__(self, buckets: Sequence[float]):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # last one: +Inf
        self.sum = 0.0
        self.n = 0

    def observe(self, v: float) -> None:
        i = next((k for k, b in enumerate(self.buckets) if v <= b), len(self.buckets))
        self.counts[i] += 1
        self.sum += v
        self.n += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out, acc = [], 0
        for b, c in zip((*self.buckets, "+Inf"), self.counts):
            acc += c
            le = b if isinstance(b, str) else f"{b:g}"
            out.append(f'{name}_bucket{{{labels}{sep}le="{le}"}} {acc}')
        brace = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{brace} {self.sum:.6f}", f"{name}_count{brace} {self.n}"]
        return out


class Metrics:
    """Counters and histograms in Prometheus' text exposition format, written by hand (no extra dependency)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.latency: dict[str, _Histogram] = {}
        self.batch_size = _Histogram(BATCH_BUCKETS)
        self.texts = 0
        self.in_flight = 0

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(route, status)] += 1
            self.latency.setdefault(route, _Histogram(LATENCY_BUCKETS)).observe(seconds)

    def observe_batch(self, size: int) -> None:
        with self._lock:
            self.batch_size.observe(size)
            self.texts += size

    def render(self, queue_depth: int) -> str:
        with self._lock:
            lines = [
                "# HELP fsllm_requests_total HTTP requests by route and status code.",
                "# TYPE fsllm_requests_total counter",
            ]
            for (route, status), n in sorted(self.requests.items()):
                lines.append(f'fsllm_requests_total{{route="{route}",status="{status}"}} {n}')
            lines += [
                "# HELP fsllm_request_duration_seconds Time from request received to response sent, by route.",
                "# TYPE fsllm_request_duration_seconds histogram",
            ]
            for route in sorted(self.latency):
                lines += self.latency[route].lines("fsllm_request_duration_seconds", f'route="{route}"')
            lines += [
                "# HELP fsllm_batch_size Texts per model forward (dynamic batching).",
                "# TYPE fsllm_batch_size histogram",
                *self.batch_size.lines("fsllm_batch_size"),
                "# HELP fsllm_texts_total Texts run through the model.",
                "# TYPE fsllm_texts_total counter",
                f"fsllm_texts_total {self.texts}",
                "# HELP fsllm_queue_depth Texts waiting for a forward.",
                "# TYPE fsllm_queue_depth gauge",
                f"fsllm_queue_depth {queue_depth}",
                "# HELP fsllm_requests_in_flight Requests being handled.",
                "# TYPE fsllm_requests_in_flight gauge",
                f"fsllm_requests_in_flight {self.in_flight}",
            ]
        return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ schema


class PredictRequest(BaseModel):
    """TEI's ``PredictRequest``. Unknown fields (``parameters`` from ``huggingface_hub``) are ignored, as TEI does."""

    model_config = ConfigDict(extra="ignore")

    inputs: str | list[str | list[str]] = Field(
        description="A text, a batch of texts ``[text, ...]``, or TEI's batch form ``[[text], [text_a, text_b], ...]`` "
        "(two-element rows are text pairs, for models trained on pairs; they must then send pairs only).",
        examples=["John lives in Paris.", [["a great film"], ["a boring plot"]]],
    )
    raw_scores: bool = Field(False, description="return the logits instead of softmax probabilities")
    truncate: bool | None = Field(False, description="cut over-long inputs instead of answering 413 (sequence tasks)")
    truncation_direction: Literal["Left", "Right"] = Field("Right", description="which end `truncate` cuts")

    @field_validator("truncation_direction", mode="before")
    @classmethod
    def _direction_any_case(cls, v: Any) -> Any:
        return v.capitalize() if isinstance(v, str) else v


def parse_inputs(
    inputs: str | list[str | list[str]], pairs: bool = False
) -> tuple[list[str | tuple[str, str]], bool]:
    """The texts of a request and whether it was a batch.

    TEI's batch rows are ``[text]`` or ``[text_a, text_b]`` (a pair). With ``pairs`` (a model trained on
    text pairs) every input must be a pair and comes back as a ``(text, text_pair)`` tuple; otherwise a
    pair is a 422 that says why, since a model that never saw pairs would answer one without meaning.
    """
    if isinstance(inputs, str):
        rows: list[str | list[str]] = [inputs]
        batch = False
    else:
        rows, batch = list(inputs), True
        if pairs and len(rows) == 2 and all(isinstance(r, str) for r in rows):
            # TEI's single pair: ``"inputs": ["text_a", "text_b"]``
            rows, batch = [list(rows)], False
    if not rows:
        raise ServeError(422, "`inputs` cannot be empty")
    texts: list[str | tuple[str, str]] = []
    for n, row in enumerate(rows):
        if isinstance(row, list):
            if len(row) == 2:
                if not pairs:
                    raise ServeError(422, f"input {n}: this model was not trained on text pairs; send single texts "
                                          "([text] rows), or serve a model trained with --text-pair-column")
                a, b = row
                if not a.strip() or not b.strip():
                    raise ServeError(422, f"input {n}: empty text in the pair")
                texts.append((a, b))
                continue
            if len(row) != 1:
                raise ServeError(422, f"input {n}: a batch row must be [text] or [text_a, text_b] (got {len(row)} strings)")
            row = row[0]
        if pairs:
            raise ServeError(422, f"input {n}: this model reads text pairs; send [text_a, text_b] rows")
        if not row.strip():
            raise ServeError(422, f"input {n}: empty text")
        texts.append(row)
    return texts, batch


def encode_pair(tokenizer, pair: tuple[str, str], max_length: int, truncate: bool, index: int = 0) -> list[int]:
    """Input ids of a text pair as the model was trained on them (``fsllm.tokenization.pair_ids``);
    over ``max_length`` is a 413 unless ``truncate`` (then cut longest-first, as in training)."""
    from .tokenization import pair_ids

    ids, _ = pair_ids(pair[0], pair[1], tokenizer)
    if len(ids) <= max_length:
        return ids
    if not truncate:
        raise ServeError(413, f"input {index}: {len(ids)} tokens, more than the model's max input length "
                              f"{max_length}; send truncate=true to cut it")
    return pair_ids(pair[0], pair[1], tokenizer, max_length)[0]


def encode_sequence(
    tokenizer, text: str, max_length: int, truncate: bool, direction: str = "Right", index: int = 0
) -> list[int]:
    """Input ids of one text with the tokenizer's special tokens; over ``max_length`` is a 413 unless ``truncate``.

    Truncation is ``fsllm.tokenization.sequence_ids``' (as in training): the special tokens stay,
    the text is cut from ``direction``'s end.
    """
    ids = list(tokenizer(text)["input_ids"])
    if len(ids) <= max_length:
        return ids
    if not truncate:
        raise ServeError(413, f"input {index}: {len(ids)} tokens, more than the model's max input length "
                              f"{max_length}; send truncate=true to cut it")
    from .tokenization import sequence_ids  # the truncation rule of training and evaluation

    return sequence_ids(text, tokenizer, max_length, direction)[0]


def label_scores(logits: np.ndarray, id2label: dict[int, str], raw_scores: bool, config: Any = None) -> list[dict]:
    """Every label with its score, best first (TEI's order): softmax probabilities, or the logits.

    With the model's ``config``: a regression model answers ``[{"label", "score": value}]`` (the value
    in the data's units, as TEI answers a one-output model); a multi-label model answers every label
    whose sigmoid reaches its threshold (the config's, chosen on dev), best first, or, with
    ``raw_scores``, every label's logit.
    """
    x = np.asarray(logits, dtype=np.float64)
    if not np.isfinite(x).all():  # TEI answers this as a backend error too; NaN is not valid JSON
        raise ServeError(500, "the model returned a non-finite score", "backend")
    problem = getattr(config, "problem_type", None)
    if problem == "regression":
        return [{"label": id2label[0], "score": float(x[0])}]
    if problem == "multi_label_classification" and not raw_scores:
        return labels_over_threshold(config, scores_of(config, x))
    if not raw_scores:
        x = scores_of(config, x)  # softmax: what fsllm predict and pipeline() report
    order = np.argsort(-x, kind="stable")
    return [{"label": id2label[int(i)], "score": float(x[i])} for i in order]


# ---------------------------------------------------------------------------------------------------- app


def _versions() -> dict[str, str]:
    import torch
    import transformers

    from . import __version__

    return {"fsllm_version": __version__, "transformers_version": transformers.__version__, "torch_version": torch.__version__}


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _run_batch_fn(predictor, max_batch_size: int) -> Callable[[list[Any]], list[Any]]:
    """The batcher's model call: ids -> logits (sequence tasks) or texts -> entities (token tasks)."""
    from .errors import DataError
    from .inference import batched_logits

    if predictor.task == "token":

        def run(texts: list[str]) -> list[Any]:
            try:
                return predictor.predict(texts)
            except DataError:  # find the text the tokenizer cannot handle; answer the others
                out: list[Any] = []
                for t in texts:
                    try:
                        out.extend(predictor.predict([t]))
                    except DataError as e:
                        out.append(ServeError(422, str(e)))
                return out

        return run

    pad = predictor.tokenizer.pad_token_id or 0

    def run(ids: list[list[int]]) -> list[Any]:
        feats = [{"input_ids": x, "attention_mask": [1] * len(x)} for x in ids]
        return batched_logits(predictor.model, feats, batch_size=max_batch_size, pad_id=pad)

    return run


def create_app(
    predictor_or_path: Any,
    *,
    max_batch_size: int = 32,
    max_wait_ms: float = 5.0,
    max_queue: int = 256,
    model_id: str | None = None,
    precision: str = "fp32",
    device: str | None = "auto",
    ner_decoding: str | None = None,
    word_scores: str | None = None,
) -> FastAPI:
    """The FastAPI app serving one model: a :class:`~fsllm.inference.Predictor` or a run/model folder to load
    (at ``precision``, on ``device``, decoding NER tags as ``ner_decoding`` / ``word_scores`` say, ``None``:
    as the folder says; see :class:`~fsllm.inference.Predictor`)."""
    from .inference import Predictor

    if isinstance(predictor_or_path, (str, os.PathLike)):
        model_id = model_id or str(predictor_or_path)
        predictor = Predictor.from_pretrained(predictor_or_path, precision=precision, device=device,
                                              ner_decoding=ner_decoding, word_scores=word_scores)
    else:
        predictor = predictor_or_path
    task = predictor.task
    paired = task == "sequence" and bool(getattr(predictor.model.config, "text_pair", False))
    id2label = {int(k): v for k, v in predictor.model.id2label.items()}
    metrics = Metrics()
    batcher = DynamicBatcher(_run_batch_fn(predictor, max_batch_size), max_batch_size, max_wait_ms, max_queue,
                             on_batch=metrics.observe_batch)
    info = {
        "model_id": model_id,
        "model_path": str(Path(model_id).resolve()) if model_id and Path(model_id).exists() else model_id,
        "task": task,
        "model_type": {"classifier" if task == "sequence" else "token_classifier": {
            "id2label": {str(k): v for k, v in id2label.items()}, "label2id": {v: k for k, v in id2label.items()}}},
        "labels": [id2label[i] for i in sorted(id2label)],
        "problem_type": getattr(predictor.model.config, "problem_type", None) if task == "sequence" else None,
        "text_pairs": paired,
        "ner_decoding": dict(zip(("ner_decoding", "word_scores"), predictor.decoding)) if task == "token" else None,
        "max_input_length": predictor.max_length,
        "truncation": "413 unless truncate=true" if task == "sequence" else "none: long texts are split into windows",
        "max_batch_size": max_batch_size,
        "max_wait_ms": max_wait_ms,
        "max_queue": max_queue,
        "max_client_batch_size": max_queue,
        "model_dtype": str(next(predictor.model.parameters()).dtype).removeprefix("torch."),
        "device": str(next(predictor.model.parameters()).device),
        "torch_threads": _torch_threads(),
        "backbone": getattr(predictor.model, "backbone_ref", None)
        or getattr(getattr(predictor.model, "config", None), "_name_or_path", None),
        **_versions(),
    }
    info["version"] = info["fsllm_version"]

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await run_in_threadpool(batcher.stop)  # after uvicorn let in-flight requests finish

    app = FastAPI(
        title="fsllm", version=info["fsllm_version"], lifespan=lifespan,
        description=f"Serving a {task} model ({model_id or 'in-process'}) with TEI's /predict schema.",
    )
    app.state.predictor = predictor
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.info = info
    known_routes = {"/", "/predict", "/ner", "/invocations", "/health", "/ping", "/info", "/metrics", "/docs",
                    "/openapi.json"}

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        start = time.perf_counter()
        metrics.in_flight += 1
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            metrics.in_flight -= 1
            path = request.url.path
            metrics.observe_request(path if path in known_routes else "other", status, time.perf_counter() - start)

    @app.exception_handler(ServeError)
    async def _serve_error(_: Request, e: ServeError):
        return _error_response(e.status, e.message, e.error_type, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, e: RequestValidationError):
        parts = []
        for err in e.errors()[:5]:
            loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
        return _error_response(422, "malformed request: " + "; ".join(parts), "validation")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, e: Exception):  # anything else still answers in TEI's error shape
        return _error_response(500, f"internal error: {type(e).__name__}: {e}", "backend")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, e: StarletteHTTPException):
        return _error_response(e.status_code, str(e.detail), "validation" if e.status_code < 500 else "backend",
                               getattr(e, "headers", None))

    async def _predict(req: PredictRequest, want: str | None = None) -> JSONResponse:
        if want is not None and task != want:
            raise ServeError(424, f"this model is a {task} classifier; use POST /predict", "backend")
        batcher.announce()
        try:
            texts, is_batch = parse_inputs(req.inputs, pairs=paired)
            if len(texts) > max_queue:
                raise ServeError(413, f"batch of {len(texts)} inputs is larger than the server's queue ({max_queue}); "
                                      "split it")
            if task == "sequence":
                def encode() -> list[list[int]]:
                    if paired:
                        return [encode_pair(predictor.tokenizer, t, predictor.max_length, bool(req.truncate), n)
                                for n, t in enumerate(texts)]
                    return [encode_sequence(predictor.tokenizer, t, predictor.max_length, bool(req.truncate),
                                            req.truncation_direction, n) for n, t in enumerate(texts)]

                big = sum(len(t) if isinstance(t, str) else len(t[0]) + len(t[1]) for t in texts) >= _THREADPOOL_CHARS
                payloads: list[Any] = await run_in_threadpool(encode) if big else encode()
            else:
                payloads = texts
        except BaseException:
            batcher.withdraw()
            raise
        try:
            futures = batcher.submit(payloads, announced=True)
        except QueueFull as e:
            raise ServeError(503, f"model is overloaded: {e}", "overloaded", {"Retry-After": "1"}) from None
        try:
            results = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        except ServeError:
            raise
        except Exception as e:  # any failure of the forward is the backend's
            raise ServeError(500, f"inference failed: {type(e).__name__}: {e}", "backend") from e
        if task == "sequence":
            results = [label_scores(lg, id2label, req.raw_scores, predictor.model.config) for lg in results]
        return JSONResponse(results if is_batch else results[0])

    ok = {200: {"description": "sequence model: `[{label, score}, ...]` per input (all labels, best first); "
                               "token model: `[{entity_group, score, word, start, end}, ...]` per input. "
                               "A batch input answers a list of those."}}

    @app.post("/predict", responses=ok, summary="Classify texts (TEI schema); NER entities for token models")
    async def predict(req: PredictRequest) -> JSONResponse:
        return await _predict(req)

    @app.post("/", responses=ok, include_in_schema=False)
    async def predict_root(req: PredictRequest) -> JSONResponse:
        """TEI and Inference Endpoints clients (``huggingface_hub.InferenceClient``) post to the root URL."""
        return await _predict(req)

    @app.post("/invocations", responses=ok, include_in_schema=False)
    async def predict_sagemaker(req: PredictRequest) -> JSONResponse:
        return await _predict(req)

    @app.post("/ner", responses=ok, summary="NER entities (transformers pipeline schema, aggregation 'simple')")
    async def ner(req: PredictRequest) -> JSONResponse:
        return await _predict(req, want="token")

    def health() -> JSONResponse:
        if not batcher.alive:
            return _error_response(503, "unhealthy", "unhealthy")
        return JSONResponse({"status": "ok"})

    app.get("/health", summary="200 when the model is loaded and the batch worker runs")(health)
    app.get("/", include_in_schema=False)(health)
    app.get("/ping", include_in_schema=False)(health)

    @app.get("/info", summary="Model, limits and versions")
    def get_info() -> dict:
        return info

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    def get_metrics() -> Response:
        return Response(metrics.render(batcher.depth()), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def app_from_env() -> FastAPI:
    """App factory for ``uvicorn --factory fsllm.serve:app_from_env`` (what ``--workers N`` starts in each process)."""
    model = os.environ.get(ENV_MODEL)
    if not model:
        raise FSLLMError(f"set {ENV_MODEL} to the run or model folder to serve")
    threads = os.environ.get(ENV_TORCH_THREADS)
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    return create_app(
        model,
        max_batch_size=int(os.environ.get(ENV_MAX_BATCH_SIZE, 32)),
        max_wait_ms=float(os.environ.get(ENV_MAX_WAIT_MS, 5)),
        max_queue=int(os.environ.get(ENV_MAX_QUEUE, 256)),
        precision=os.environ.get(ENV_PRECISION, "fp32"),
        device=os.environ.get(ENV_DEVICE, "auto"),
        ner_decoding=os.environ.get(ENV_NER_DECODING) or None,
        word_scores=os.environ.get(ENV_WORD_SCORES) or None,
    )


def forward_threads(threads: int | None = None, workers: int = 1) -> int | None:
    """Torch threads for each server process's forward: ``threads`` when given; ``None`` (keep torch's own)
    when ``OMP_NUM_THREADS`` is set; otherwise the cores torch would use, less one, shared by the workers.

    Why one core less: the event loop (HTTP parsing, JSON, tokenising, NER post-processing) runs beside
    the forward, and a forward holding every core starves it; on 2 cores, one forward thread served
    more requests per second at 4 and 16 clients than two (docs/serving.md quotes the load test).
    """
    if threads is not None:
        if threads < 1:
            raise FSLLMError(f"--threads must be >= 1, got {threads}")
        return threads
    if "OMP_NUM_THREADS" in os.environ:
        return None
    import torch

    return max(1, (torch.get_num_threads() - 1) // max(1, workers))


def _exit_cleanly(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def serve(
    model: str,
    host: str = "127.0.0.1",
    port: int = 8080,
    max_batch_size: int = 32,
    max_wait_ms: float = 5.0,
    max_queue: int = 256,
    workers: int = 1,
    log_level: str = "info",
    precision: str = "fp32",
    threads: int | None = None,
    device: str | None = "auto",
    ner_decoding: str | None = None,
    word_scores: str | None = None,
) -> int:
    """Run the server until SIGTERM/SIGINT; in-flight requests finish first (uvicorn's graceful shutdown).

    uvicorn re-raises the signal it caught once it has shut down; a SIGTERM handler that exits with
    status 0 makes a requested stop (Kubernetes, systemd, docker stop) read as success, not as a crash.
    """
    import uvicorn

    if not Path(model).exists():
        raise FSLLMError(f"{model}: no such run or model folder")
    if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0 or workers < 1:
        raise FSLLMError("--max-batch-size, --max-queue and --workers must be >= 1, --max-wait-ms >= 0")
    from .config import resolve_device

    resolve_device(device)  # a GPU that is not there fails here, once, not in every worker
    n_threads = forward_threads(threads, workers)
    signal.signal(signal.SIGTERM, _exit_cleanly)
    common = dict(host=host, port=port, log_level=log_level, timeout_graceful_shutdown=None)
    if workers == 1:
        if n_threads is not None:
            import torch

            torch.set_num_threads(n_threads)
        app = create_app(model, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_queue=max_queue,
                         precision=precision, device=device, ner_decoding=ner_decoding, word_scores=word_scores)
        uvicorn.run(app, **common)
    else:
        os.environ.update({
            ENV_MODEL: str(model), ENV_MAX_BATCH_SIZE: str(max_batch_size), ENV_MAX_WAIT_MS: str(max_wait_ms),
            ENV_MAX_QUEUE: str(max_queue), ENV_PRECISION: precision, ENV_DEVICE: device or "auto",
            ENV_NER_DECODING: ner_decoding or "", ENV_WORD_SCORES: word_scores or "",
        })
        if n_threads is not None:  # N processes share the cores instead of each taking all
            os.environ[ENV_TORCH_THREADS] = str(n_threads)
        # Each process loads the model before it reports ready; uvicorn's default 5 s for that restarts
        # workers in a loop while a large model is still loading.
        uvicorn.run("fsllm.serve:app_from_env", factory=True, workers=workers, timeout_worker_healthcheck=600, **common)
    return 0
