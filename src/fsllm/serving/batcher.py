"""Dynamic batching: texts of concurrent requests share a forward, and a long request shares the worker.

A request is a *job*: its texts, each one or more *units* (a sequence text is one unit, its token ids; an
NER text is one unit per window). One worker thread builds each forward from the queued jobs round-robin,
one unit per job per pass, until the forward holds ``max_batch_size`` units or ``max_batch_tokens``
tokens; the jobs it served then go to the back of the line (new jobs join at the back too). So a long text's windows go through in bounded chunks, each forward also
carrying the units of every request that arrived meanwhile: a small request waits for about one
forward, not for the whole long one.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from typing import Any


class QueueFull(Exception):
    """The batcher's queue has no room for all texts of a request."""


class _Text:
    """One text of a job: its future and the results of its units as they come back."""

    __slots__ = ("future", "results", "left")

    def __init__(self, n_units: int):
        self.future: Future = Future()
        self.results: list[Any] = [None] * n_units
        self.left = n_units

    def fail(self, e: BaseException) -> None:
        self.left = -1  # its other units are dropped
        try:
            self.future.set_exception(e)
        except InvalidStateError:  # cancelled meanwhile (the client went away)
            pass

    def done(self, k: int, r: Any, whole: bool) -> None:
        if self.left < 0:
            return
        self.results[k] = r
        self.left -= 1
        if self.left == 0:
            try:
                self.future.set_result(self.results if whole else self.results[0])
            except InvalidStateError:
                pass


class _Job:
    """One request's texts; ``pending`` holds ``(text, unit index, payload, tokens)`` not yet taken."""

    __slots__ = ("texts", "pending", "enqueued", "parts")

    def __init__(self, texts: list[_Text], pending: deque, parts: bool):
        self.texts = texts
        self.pending = pending
        self.enqueued = time.monotonic()
        self.parts = parts


class DynamicBatcher:
    """Group the texts of concurrent requests into model calls, sharing the worker fairly between requests.

    ``run_batch(payloads)`` returns one result per payload; a result that is an ``Exception`` fails that
    text's future only (one bad text must not fail the requests it was batched with). Admission is
    all-or-nothing per request so a request is never half queued when the queue fills up; ``max_queue``
    counts texts, not windows, so a long NER text does not take the room of hundreds of small requests.
    ``size_of(payload)``: its tokens, for ``max_batch_tokens`` (``None``: no token budget).
    """

    def __init__(
        self,
        run_batch: Callable[[list[Any]], list[Any]],
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 256,
        on_batch: Callable[[int], None] | None = None,
        *,
        max_batch_tokens: int | None = None,
        size_of: Callable[[Any], int] | None = None,
        on_depth: Callable[[int], None] | None = None,
    ):
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0 or (max_batch_tokens is not None and max_batch_tokens < 1):
            raise ValueError("max_batch_size, max_queue and max_batch_tokens must be >= 1, max_wait_ms >= 0")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.max_batch_tokens = max_batch_tokens
        self.size_of = size_of
        self.on_batch = on_batch
        self.on_depth = on_depth
        self._jobs: deque[_Job] = deque()
        self._units = 0  # units waiting, all jobs
        self._texts = 0  # texts with units waiting (what max_queue bounds)
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
        """Texts waiting for (the rest of) their forwards."""
        return self._texts

    def announce(self) -> None:
        """A request is on its way: a forward about to start may wait (``max_wait_ms`` at most) for it."""
        with self._cond:
            self._arriving += 1

    def withdraw(self) -> None:
        """An announced request will not be submitted (it failed validation)."""
        with self._cond:
            self._arriving = max(0, self._arriving - 1)
            self._cond.notify_all()

    def submit(self, payloads: Sequence[Any], announced: bool = False, parts: bool = False) -> list[Future]:
        """Queue a request's texts (all or none); one future per text. ``announced``: it was announced with
        :meth:`announce`. ``parts``: each payload is a non-empty sequence of units (an NER text's windows)
        and its future's result is the list of their results, in order; otherwise a payload is one unit."""
        texts, pending = [], deque()
        for p in payloads:
            units = list(p) if parts else [p]
            if not units:
                raise ValueError("a text with no units")
            t = _Text(len(units))
            texts.append(t)
            for k, u in enumerate(units):
                pending.append((t, k, u, self.size_of(u) if self.size_of is not None else 0))
        with self._cond:
            if announced:
                self._arriving = max(0, self._arriving - 1)
                self._cond.notify_all()
            if self._stopping or not self.alive:
                raise QueueFull("the server is shutting down")
            if self._texts + len(texts) > self.max_queue:
                raise QueueFull(f"queue full ({self._texts} of {self.max_queue} texts waiting)")
            if texts:
                self._jobs.append(_Job(texts, pending, parts))
                self._units += len(pending)
                self._texts += len(texts)
                self._cond.notify()
            depth = self._texts
        if self.on_depth is not None:
            self.on_depth(depth)
        return [t.future for t in texts]

    def _take(self) -> list[tuple[_Text, int, Any, bool]]:
        """The next forward's units, round-robin over the jobs (called with the lock held).

        The jobs served in this forward then go to the back of the line, so the next forward starts with
        those it left out: when one long text's window fills ``max_batch_tokens`` alone, the requests
        behind it get the next forward instead of waiting for all of its windows.
        """
        batch: list[tuple[_Text, int, Any, bool]] = []
        served: list[_Job] = []
        tokens = 0
        full = False
        while not full:
            progressed = False
            for job in self._jobs:
                while job.pending and (job.pending[0][0].left < 0 or job.pending[0][0].future.cancelled()):
                    self._drop_head(job)  # a failed or cancelled text: its other units are not run
                if not job.pending:
                    continue
                t, k, u, n = job.pending[0]
                if batch and self.max_batch_tokens is not None and tokens + n > self.max_batch_tokens:
                    continue  # a shorter unit of another job may still fit
                job.pending.popleft()
                self._units -= 1
                if not job.pending or job.pending[0][0] is not t:
                    self._texts -= 1  # the text's last unit is taken
                batch.append((t, k, u, job.parts))
                if job not in served:  # identity: a _Job has no __eq__
                    served.append(job)
                tokens += n
                progressed = True
                if len(batch) >= self.max_batch_size:
                    full = True
                    break
            if not progressed:
                break
        waiting = [j for j in self._jobs if j.pending and j not in served]
        self._jobs = deque(waiting + [j for j in served if j.pending])
        return batch

    def _drop_head(self, job: _Job) -> None:
        t = job.pending.popleft()[0]
        self._units -= 1
        if not job.pending or job.pending[0][0] is not t:
            self._texts -= 1

    def _next_batch(self) -> list[tuple[_Text, int, Any, bool]] | None:
        with self._cond:
            while True:
                while not self._units:
                    if self._stopping:
                        return None
                    self._cond.wait()
                # Wait from the oldest job's arrival: texts that queued up during the last forward go at once.
                deadline = min(j.enqueued for j in self._jobs) + self.max_wait
                while self._units < self.max_batch_size and self._arriving > 0 and not self._stopping:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                batch = self._take()
                depth = self._texts
                if batch:
                    break
        if self.on_depth is not None:
            self.on_depth(depth)
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if self.on_batch is not None:
                self.on_batch(len(batch))
            try:
                results = self.run_batch([u for _, _, u, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} inputs")
            except Exception as e:  # the whole forward failed: every text in it fails
                for t, _, _, _ in batch:
                    t.fail(e)
                continue
            for (t, k, _, whole), r in zip(batch, results):
                if isinstance(r, Exception):
                    t.fail(r)
                else:
                    t.done(k, r, whole)
