"""The FastAPI app: routes, TEI's error mapping, ``/info``, and the app factory each worker process runs."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ConfigError, FSLLMError
from ..evaluation import document_context_of
from .batcher import DynamicBatcher, QueueFull
from .metrics import CONTENT_TYPE, Metrics
from .schema import (
    PredictRequest,
    Sentence,
    ServeError,
    encode_ner,
    encode_ner_words,
    encode_pair,
    encode_sequence,
    error_response,
    label_scores,
    ner_entities,
    parse_inputs,
    pre_split_sentences,
)

#: Environment variables read by :func:`app_from_env` (how ``--workers N`` hands options to each process).
ENV_MODEL = "FSLLM_SERVE_MODEL"
ENV_MAX_BATCH_SIZE = "FSLLM_SERVE_MAX_BATCH_SIZE"
ENV_MAX_BATCH_TOKENS = "FSLLM_SERVE_MAX_BATCH_TOKENS"
ENV_MAX_INPUT_TOKENS = "FSLLM_SERVE_MAX_INPUT_TOKENS"
ENV_MAX_WAIT_MS = "FSLLM_SERVE_MAX_WAIT_MS"
ENV_MAX_QUEUE = "FSLLM_SERVE_MAX_QUEUE"
ENV_TORCH_THREADS = "FSLLM_SERVE_TORCH_THREADS"
ENV_DEVICE = "FSLLM_SERVE_DEVICE"
ENV_PRECISION = "FSLLM_SERVE_PRECISION"
ENV_NER_DECODING = "FSLLM_SERVE_NER_DECODING"
ENV_WORD_SCORES = "FSLLM_SERVE_WORD_SCORES"

#: :func:`create_app`'s options that ``--workers N`` hands each process: the variable each travels in and
#: how :func:`app_from_env` reads it back. One table for both sides, so an option cannot reach one and not the other.
_ENV_OPTIONS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "max_batch_size": (ENV_MAX_BATCH_SIZE, int),
    "max_wait_ms": (ENV_MAX_WAIT_MS, float),
    "max_queue": (ENV_MAX_QUEUE, int),
    "max_batch_tokens": (ENV_MAX_BATCH_TOKENS, int),
    "max_input_tokens": (ENV_MAX_INPUT_TOKENS, int),
    "precision": (ENV_PRECISION, str),
    "device": (ENV_DEVICE, str),
    "ner_decoding": (ENV_NER_DECODING, str),
    "word_scores": (ENV_WORD_SCORES, str),
}

#: Inputs longer than this (characters, whole request) are tokenised (and NER answers decoded) off the event loop.
_THREADPOOL_CHARS = 20_000


def _chars(item: str | tuple[str, str] | Sentence) -> int:
    """The characters of one input (a text, a pair, a pre-split sentence), to tell a large request."""
    if isinstance(item, str):
        return len(item)
    if isinstance(item, Sentence):
        return sum(len(w) + 1 for w in item.tokens)
    return len(item[0]) + len(item[1])


#: Defaults of the limits (``fsllm serve --help`` and docs/serving.md say the same).
DEFAULT_MAX_INPUT_TOKENS = 32768
GPU_MAX_BATCH_TOKENS = 16384  # TEI's default
CPU_MAX_BATCH_TOKENS = 512


def default_max_batch_tokens(device: str, max_length: int, repeat: int = 1) -> int:
    """TEI's 16,384 tokens a forward on a GPU; on a CPU, 512 or one window (``max_length``, times the
    model's ``FSConfig.repeat``: a repeating model's forward reads each text that many times) if longer.

    Why so few on a CPU: there a forward's time grows with its tokens (a 256-token window of a 135M-parameter
    model takes seconds on one core), and a request queued behind a long text's chunk waits for that
    forward; batching short texts gains little past a few hundred tokens, since it saves the per-call
    cost and the padding, not the arithmetic (docs/serving.md).
    """
    return GPU_MAX_BATCH_TOKENS if device.startswith("cuda") else max(CPU_MAX_BATCH_TOKENS, max_length * repeat)


def _versions() -> dict[str, str]:
    import torch
    import transformers

    from .. import __version__

    return {"fsllm_version": __version__, "transformers_version": transformers.__version__, "torch_version": torch.__version__}


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _run_batch_fn(predictor, max_batch_size: int) -> Callable[[list[Any]], list[Any]]:
    """The batcher's model call: token ids (sequence tasks) or windows (token tasks) -> logits."""
    from ..decoding import raw_logits
    from ..inference import batched_logits

    pad = predictor.tokenizer.pad_token_id or 0
    if predictor.task == "token":

        def run_windows(windows: list[dict]) -> list[Any]:
            with raw_logits(predictor.model):  # the head's own logits, which fsllm decodes (not pipeline()'s order)
                return batched_logits(predictor.model, windows, batch_size=max_batch_size, pad_id=pad)

        return run_windows

    def run(ids: list[list[int]]) -> list[Any]:
        feats = [{"input_ids": x} for x in ids]
        return batched_logits(predictor.model, feats, batch_size=max_batch_size, pad_id=pad)

    return run


def _tei_info(predictor, *, model_id: str, id2label: dict[int, str], max_input_length: int, max_batch_tokens: int,
              max_queue: int) -> dict[str, Any]:
    """Every field of TEI's ``Info`` (null where it does not apply).

    ``model_type`` is ``classifier`` for NER models too: TEI has no token-classifier type and its clients
    accept only ``classifier``, ``embedding`` or ``reranker``; here its labels are the tags each word gets
    (``task``, an fsllm field, says ``token``).
    """
    labels = {"id2label": {str(k): v for k, v in id2label.items()}, "label2id": {v: k for k, v in id2label.items()}}
    return {
        "model_id": model_id,
        "model_sha": None,  # a local folder, not a Hub revision
        "model_dtype": str(next(predictor.model.parameters()).dtype).removeprefix("torch."),
        "served_model_name": model_id,
        "model_type": {"classifier": labels},
        "max_concurrent_requests": max_queue,  # each waiting request holds at least one of the queue's texts
        "max_input_length": max_input_length,
        "max_batch_tokens": max_batch_tokens,
        "max_batch_requests": None,  # a forward is bounded in texts (max_batch_size), not in requests
        "max_client_batch_size": max_queue,
        "auto_truncate": False,
        "tokenization_workers": 1,  # each process tokenises on its event loop (long inputs on its thread pool)
        "version": _versions()["fsllm_version"],
        "sha": None,
        "docker_label": None,
    }


def create_app(
    predictor_or_path: Any,
    *,
    max_batch_size: int = 32,
    max_wait_ms: float = 5.0,
    max_queue: int = 256,
    max_batch_tokens: int | None = None,
    max_input_tokens: int | None = None,
    model_id: str | None = None,
    precision: str = "fp32",
    device: str | None = "auto",
    ner_decoding: str | None = None,
    word_scores: str | None = None,
) -> FastAPI:
    """The FastAPI app serving one model: a :class:`~fsllm.inference.Predictor` or a run/model folder to load
    (at ``precision``, on ``device``, decoding NER tags as ``ner_decoding`` / ``word_scores`` say, ``None``:
    as the folder says; see :class:`~fsllm.inference.Predictor`).

    ``max_batch_tokens``: most tokens in one forward (a long NER text's windows go in chunks of it,
    between other requests' texts; default :func:`default_max_batch_tokens`), counted as the model reads them
    (a model with ``FSConfig.repeat = K`` reads each text K times). ``max_input_tokens``: token (NER) models only, most sub-tokens in one
    input (default :data:`DEFAULT_MAX_INPUT_TOKENS`); a sequence model's limit is its max input length.
    """
    from ..inference import Predictor

    if (max_batch_tokens is not None and max_batch_tokens < 1) or (max_input_tokens is not None and max_input_tokens < 1):
        raise ConfigError("--max-batch-tokens and --max-input-tokens must be >= 1")
    if isinstance(predictor_or_path, (str, os.PathLike)):
        model_id = model_id or str(predictor_or_path)
        predictor = Predictor.from_pretrained(predictor_or_path, precision=precision, device=device,
                                              ner_decoding=ner_decoding, word_scores=word_scores)
    else:
        predictor = predictor_or_path
    task = predictor.task
    if task == "sequence" and max_input_tokens is not None:
        raise ConfigError("--max-input-tokens applies to token (NER) models; a sequence model's max input length "
                          f"is the one it was trained with ({predictor.max_length} tokens)")
    max_input = predictor.max_length if task == "sequence" else (max_input_tokens or DEFAULT_MAX_INPUT_TOKENS)
    device_name = str(next(predictor.model.parameters()).device)
    # the tokens a forward holds: a model that repeats its input (FSConfig.repeat) reads each text k times
    repeat = predictor.model.fs_config.repeat
    if max_batch_tokens is None:
        max_batch_tokens = default_max_batch_tokens(device_name, predictor.max_length, repeat)
    paired = task == "sequence" and bool(getattr(predictor.model.config, "text_pair", False))
    id2label = {int(k): v for k, v in predictor.model.id2label.items()}
    metrics = Metrics()
    batcher = DynamicBatcher(
        _run_batch_fn(predictor, max_batch_size), max_batch_size, max_wait_ms, max_queue, on_batch=metrics.observe_batch,
        max_batch_tokens=max_batch_tokens,
        size_of=(lambda w: repeat * len(w["input_ids"])) if task == "token" else (lambda t: repeat * len(t)),
        on_depth=metrics.queue_depth.set,
    )
    backbone = getattr(predictor.model, "backbone_ref", None) or getattr(
        getattr(predictor.model, "config", None), "_name_or_path", None)
    served = model_id or backbone or "fsllm"
    info = {
        **_tei_info(predictor, model_id=served, id2label=id2label, max_input_length=max_input,
                    max_batch_tokens=max_batch_tokens, max_queue=max_queue),
        # fsllm's own fields
        "model_path": str(Path(model_id).resolve()) if model_id and Path(model_id).exists() else model_id,
        "task": task,
        "labels": [id2label[i] for i in sorted(id2label)],
        "problem_type": getattr(predictor.model.config, "problem_type", None) if task == "sequence" else None,
        "text_pairs": paired,
        "ner_decoding": dict(zip(("ner_decoding", "word_scores"), predictor.decoding)) if task == "token" else None,
        # sub-tokens of context a side a pre-split sentence that names its document is read with (0: alone)
        "document_context": document_context_of(predictor.model) if task == "token" else None,
        "truncation": "413 unless truncate=true" if task == "sequence" else "none: long texts are split into windows",
        "max_batch_size": max_batch_size,
        "max_wait_ms": max_wait_ms,
        "max_queue": max_queue,
        "device": device_name,
        "torch_threads": _torch_threads(),
        "backbone": backbone,
        "pid": os.getpid(),  # which process answered (``--workers N`` runs several)
        **_versions(),
    }

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await run_in_threadpool(batcher.stop)  # after uvicorn let in-flight requests finish
        metrics.close()

    app = FastAPI(
        title="fsllm", version=info["fsllm_version"], lifespan=lifespan,
        description=f"Serving a {task} model ({served}) with TEI's /predict schema.",
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
        metrics.in_flight.inc()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            metrics.in_flight.dec()
            path = request.url.path
            metrics.observe_request(path if path in known_routes else "other", status, time.perf_counter() - start)

    @app.exception_handler(ServeError)
    async def _serve_error(_: Request, e: ServeError):
        return error_response(e.status, e.message, e.error_type, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, e: RequestValidationError):
        parts = []
        for err in e.errors()[:5]:
            loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
        return error_response(422, "malformed request: " + "; ".join(parts), "validation")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, e: Exception):  # anything else still answers in TEI's error shape
        return error_response(500, f"internal error: {type(e).__name__}: {e}", "backend")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, e: StarletteHTTPException):
        return error_response(e.status_code, str(e.detail), "validation" if e.status_code < 500 else "backend",
                              getattr(e, "headers", None))

    def encode(texts: list, req: PredictRequest) -> list[Any]:
        """Model inputs per text; a bad or over-long text is a 422 / 413 before anything is queued."""
        tok, n = predictor.tokenizer, predictor.max_length
        if texts and isinstance(texts[0], Sentence):
            return encode_ner_words(tok, texts, n, max_input, document_context_of(predictor.model))
        if task == "token":
            return [encode_ner(tok, t, n, max_input, k) for k, t in enumerate(texts)]
        if paired:
            return [encode_pair(tok, t, n, bool(req.truncate), k) for k, t in enumerate(texts)]
        return [encode_sequence(tok, t, n, bool(req.truncate), req.truncation_direction, k) for k, t in enumerate(texts)]

    async def _predict(req: PredictRequest, want: str | None = None) -> JSONResponse:
        if want is not None and task != want:
            raise ServeError(424, f"this model is a {task} classifier; use POST /predict", "backend")
        batcher.announce()
        try:
            sentences = pre_split_sentences(req.inputs)
            if sentences is not None and task != "token":
                raise ServeError(422, "pre-split sentences ({\"tokens\": [...]}) apply to token-classification (NER) "
                                      "models; send texts")
            texts, is_batch = (sentences, True) if sentences is not None else parse_inputs(req.inputs, pairs=paired)
            if len(texts) > max_queue:
                raise ServeError(413, f"batch of {len(texts)} inputs is larger than the server's queue ({max_queue}); "
                                      "split it")
            big = sum(_chars(t) for t in texts) >= _THREADPOOL_CHARS
            encoded = await run_in_threadpool(encode, texts, req) if big else encode(texts, req)
        except BaseException:
            batcher.withdraw()
            raise
        try:
            if task == "token":
                futures = batcher.submit([e.windows for e in encoded], announced=True, parts=True)
            else:
                futures = batcher.submit(encoded, announced=True)
        except QueueFull as e:
            raise ServeError(503, f"model is overloaded: {e}", "overloaded", {"Retry-After": "1"}) from None
        try:
            results = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        except ServeError:
            raise
        except Exception as e:  # any failure of the forward is the backend's
            raise ServeError(500, f"inference failed: {type(e).__name__}: {e}", "backend") from e
        metrics.texts.inc(len(texts))
        if task == "token":
            def decode() -> list:
                return [ner_entities(e, lg, predictor.model, predictor.tokenizer) for e, lg in zip(encoded, results)]

            answers = await run_in_threadpool(decode) if big else decode()
        else:
            answers = [label_scores(lg, id2label, req.raw_scores, predictor.model.config) for lg in results]
        return JSONResponse(answers if is_batch else answers[0])

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
            return error_response(503, "unhealthy", "unhealthy")
        return JSONResponse({"status": "ok"})

    app.get("/health", summary="200 when the model is loaded and the batch worker runs")(health)
    app.get("/", include_in_schema=False)(health)
    app.get("/ping", include_in_schema=False)(health)

    @app.get("/info", summary="TEI's Info (every field) plus fsllm's: model, labels, limits and versions")
    def get_info() -> dict:
        return info

    @app.get("/metrics", summary="Prometheus metrics (all worker processes)", response_class=PlainTextResponse)
    def get_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app


def worker_env(model: str | os.PathLike, threads: int | None, **options: Any) -> dict[str, str | None]:
    """The environment that hands ``model``, the torch thread count and :func:`create_app`'s ``options`` to
    :func:`app_from_env` in each worker process. ``None`` values mean unset, so that a variable left in the
    caller's environment is not taken for an option; an option left out gets :func:`create_app`'s default."""
    unknown = sorted(set(options) - set(_ENV_OPTIONS))
    if unknown:
        raise TypeError(f"worker_env: unknown create_app options {unknown}")
    env: dict[str, str | None] = {ENV_MODEL: str(model), ENV_TORCH_THREADS: None if threads is None else str(threads)}
    env.update({_ENV_OPTIONS[k][0]: None if v is None else str(v) for k, v in options.items()})
    return env


def app_from_env() -> FastAPI:
    """App factory for ``uvicorn --factory fsllm.serving:app_from_env`` (what ``--workers N`` starts in each process)."""
    model = os.environ.get(ENV_MODEL)
    if not model:
        raise FSLLMError(f"set {ENV_MODEL} to the run or model folder to serve")
    threads = os.environ.get(ENV_TORCH_THREADS)
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    # an unset (or empty) variable: create_app's default
    options = {k: read(os.environ[var]) for k, (var, read) in _ENV_OPTIONS.items() if os.environ.get(var)}
    return create_app(model, **options)
