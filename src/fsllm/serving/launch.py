"""Starting the server: one process, or ``--workers N`` processes under uvicorn's process manager."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

from ..errors import FSLLMError
from ..threads import omp_threads
from .app import create_app, worker_env
from .metrics import MULTIPROC_ENV


def forward_threads(threads: int | None = None, workers: int = 1) -> int | None:
    """Torch threads for each server process's forward: ``threads`` when given; ``OMP_NUM_THREADS`` when it is
    set (applied explicitly: torch would take ``MKL_NUM_THREADS`` over it when both are set; ``None``, torch's
    own handling, when it is not a positive number); otherwise the cores torch would use, less one, shared by
    the workers.

    Why one core less: the event loop (HTTP parsing, JSON, tokenising, NER post-processing) runs beside
    the forward, and a forward holding every core starves it; on 2 cores, one forward thread served
    more requests per second at 4 and 16 clients than two (docs/serving.md quotes the load test).
    """
    if threads is not None:
        if threads < 1:
            raise FSLLMError(f"--threads must be >= 1, got {threads}")
        return threads
    if "OMP_NUM_THREADS" in os.environ:
        return omp_threads()
    import torch

    return max(1, (torch.get_num_threads() - 1) // max(1, workers))


def _set_env(values: dict[str, str | None]) -> None:
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _saved_task(model: str) -> str | None:
    """The task in a run or model folder's saved config (``None`` where it cannot be read cheaply)."""
    import json

    from ..run import RunFolder

    run = RunFolder(Path(model))
    folder = run.model_dir if run.has_model() else Path(model)
    try:
        return json.loads((folder / "config.json").read_text()).get("task")
    except (OSError, ValueError, AttributeError):
        return None


def exit_cleanly_on_sigterm() -> Any:
    """Make SIGTERM end the process with status 0; returns the handler it replaced.

    For the server's entry point (``fsllm serve``), not for :func:`serve`: a library call must leave its
    caller's signal handlers alone. uvicorn re-raises the signal it caught once it has shut down; this
    handler makes a requested stop (Kubernetes, systemd, docker stop) read as success, not as a crash.
    """

    def _exit_cleanly(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    return signal.signal(signal.SIGTERM, _exit_cleanly)


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
    max_batch_tokens: int | None = None,
    max_input_tokens: int | None = None,
    ner_decoding: str | None = None,
    word_scores: str | None = None,
) -> int:
    """Run the server until SIGTERM/SIGINT; in-flight requests finish first (uvicorn's graceful shutdown).

    ``workers > 1``: the options reach each process through ``FSLLM_SERVE_*`` environment variables, and
    the processes share a fresh ``PROMETHEUS_MULTIPROC_DIR`` (unless one is set) so a scrape of
    ``/metrics`` counts every worker's requests; the folder is removed when the server stops.
    """
    import uvicorn

    if not Path(model).exists():
        raise FSLLMError(f"{model}: no such run or model folder")
    if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0 or workers < 1 or any(
            v is not None and v < 1 for v in (max_batch_tokens, max_input_tokens)):
        raise FSLLMError("--max-batch-size, --max-queue, --max-batch-tokens, --max-input-tokens and --workers must "
                         "be >= 1, --max-wait-ms >= 0")
    if max_input_tokens is not None and _saved_task(model) == "sequence":  # before N workers each fail on it
        raise FSLLMError("--max-input-tokens applies to token (NER) models; a sequence model's max input length is "
                         "the one it was trained with")
    from ..config import resolve_device

    resolve_device(device)  # a GPU that is not there fails here, once, not in every worker
    n_threads = forward_threads(threads, workers)
    common = dict(host=host, port=port, log_level=log_level, timeout_graceful_shutdown=None)
    options = dict(max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_queue=max_queue,
                   max_batch_tokens=max_batch_tokens, max_input_tokens=max_input_tokens, precision=precision,
                   device=device, ner_decoding=ner_decoding, word_scores=word_scores)
    if workers == 1:
        if n_threads is not None:
            import torch

            torch.set_num_threads(n_threads)
        app = create_app(model, **options)
        uvicorn.run(app, **common)
        return 0
    env = worker_env(model, n_threads, **options)  # N processes share the cores instead of each taking all
    own_dir = None
    if not os.environ.get(MULTIPROC_ENV):
        own_dir = env[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="fsllm-metrics-")
    saved = {k: os.environ.get(k) for k in env}
    _set_env(env)  # the worker processes inherit this process's environment
    try:
        # Each process loads the model before it reports ready; uvicorn's default 5 s for that restarts
        # workers in a loop while a large model is still loading.
        uvicorn.run("fsllm.serving:app_from_env", factory=True, workers=workers, timeout_worker_healthcheck=600,
                    **common)
    finally:
        _set_env(saved)  # a library call leaves its caller's environment as it was
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)
    return 0
