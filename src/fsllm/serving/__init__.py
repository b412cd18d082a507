"""``fsllm serve``: an HTTP server for a trained model, speaking Text Embeddings Inference's ``/predict`` schema.

FastAPI + uvicorn because they are a maintained ASGI stack, validate request bodies with pydantic and
give the OpenAPI page (``/docs``) for free; a hand-rolled ``http.server`` would need all three written.
uvloop and httptools (dependencies) give uvicorn its compiled event loop and HTTP parser, as in the
usual ``uvicorn[standard]`` deployment (on 2 cores the load test could not tell them from its noise).

The modules, one concern each:

* :mod:`~fsllm.serving.batcher`: the dynamic batcher (one worker thread, a bounded queue, fair between requests);
* :mod:`~fsllm.serving.schema`: TEI's request, error and ``/info`` schema, inputs to model inputs, outputs to answers;
* :mod:`~fsllm.serving.metrics`: Prometheus metrics (``prometheus_client``, multiprocess across workers);
* :mod:`~fsllm.serving.app`: the FastAPI app, its error mapping and the per-process app factory;
* :mod:`~fsllm.serving.launch`: :func:`serve`, one process or ``--workers N``.

How a request flows, and why:

* The body is validated and tokenised before it is queued (large bodies in a thread, off the event
  loop), so a bad or over-long input is answered at once (422 / 413) and never takes a place in the queue.
* Each text becomes one queued item (``max_queue`` texts at most); an NER text is cut into its windows
  here. A full queue answers 503 with ``Retry-After`` instead of letting latency grow without bound:
  a load balancer can then try a replica.
* One worker thread builds each forward from the queued requests round-robin, up to ``max_batch_size``
  inputs and ``max_batch_tokens`` tokens, runs the model once and resolves each text's future when
  its last input is done. A long NER text thus goes through in bounded chunks with other requests'
  texts in every forward, and a small request waits about one forward, not for the long one.
  Before a forward it waits for more texts at most ``max_wait_ms`` after the oldest one arrived, and
  only while other requests are already being read and tokenised: a lone request is not delayed for
  company that is not coming, and texts that queued up during the last forward go at once.
  One thread, because a forward already uses every core (two concurrent forwards only fight over
  them) and torch releases the GIL while it computes, so the event loop keeps accepting requests
  meanwhile. FS models mask padding keys and pool over real tokens only, so a text's answer does not
  depend on what it was batched with.
* NER texts are split into words with character offsets as ``fsllm predict`` splits them, and a text
  longer than the model's input length into overlapping windows (never truncated), so entities carry
  offsets into the text that was sent; a text over ``max_input_tokens`` sub-tokens is a 413.
* The server is stateless: scale it with ``--workers`` (processes on one machine) or replicas behind
  a load balancer; see docs/serving.md.
"""

from .app import (
    DEFAULT_MAX_INPUT_TOKENS,
    ENV_DEVICE,
    ENV_MAX_BATCH_SIZE,
    ENV_MAX_BATCH_TOKENS,
    ENV_MAX_INPUT_TOKENS,
    ENV_MAX_QUEUE,
    ENV_MAX_WAIT_MS,
    ENV_MODEL,
    ENV_NER_DECODING,
    ENV_PRECISION,
    ENV_TORCH_THREADS,
    ENV_WORD_SCORES,
    app_from_env,
    create_app,
    default_max_batch_tokens,
)
from .batcher import DynamicBatcher, QueueFull
from .launch import exit_cleanly_on_sigterm, forward_threads, serve
from .metrics import BATCH_BUCKETS, LATENCY_BUCKETS, Metrics
from .schema import (
    NerInput,
    PredictRequest,
    ServeError,
    encode_ner,
    encode_pair,
    encode_sequence,
    error_response,
    label_scores,
    ner_entities,
    parse_inputs,
)

__all__ = [
    "BATCH_BUCKETS", "DEFAULT_MAX_INPUT_TOKENS", "ENV_DEVICE", "ENV_MAX_BATCH_SIZE",
    "ENV_MAX_BATCH_TOKENS", "ENV_MAX_INPUT_TOKENS", "ENV_MAX_QUEUE", "ENV_MAX_WAIT_MS", "ENV_MODEL", "ENV_NER_DECODING",
    "ENV_PRECISION", "ENV_TORCH_THREADS", "ENV_WORD_SCORES", "LATENCY_BUCKETS", "DynamicBatcher", "Metrics", "NerInput", "PredictRequest", "QueueFull",
    "ServeError", "app_from_env", "create_app", "default_max_batch_tokens", "encode_ner", "encode_pair", "encode_sequence", "error_response",
    "exit_cleanly_on_sigterm", "forward_threads", "label_scores", "ner_entities", "parse_inputs", "serve",
]
