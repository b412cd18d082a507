"""Stop a training run cleanly on SIGTERM or Ctrl-C: finish the step, save a checkpoint, exit.

Why: a run checkpoints only at its dev evaluations (the best-model selection needs the save steps to be
a multiple of the evaluation steps), so a kill costs everything trained since the last one, up to a whole
evaluation interval: hours for a large training set on a CPU. A batch scheduler (Slurm at its time limit,
Kubernetes on eviction) and ``kill`` send SIGTERM and wait before they kill; a user presses Ctrl-C. On
either, :class:`StopOnSignal` lets the step that runs finish, has the Trainer save a checkpoint there and
stop; the caller then raises :class:`~fsllm.errors.TrainingInterrupted` (``fsllm train`` and ``fsllm
adapt`` exit with 128 + the signal's number, as a process killed by it would) and ``--resume`` continues
from that step exactly as from any other checkpoint. A second signal stops at once, as the signal alone
would have. Under ``torchrun`` / ``accelerate launch`` the processes agree at each step's end (a maximum
over them), so a signal that reached one process stops all of them at the same step: a process that
stopped alone would leave the others waiting for it in the next gradient reduction.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from .errors import TrainingInterrupted

logger = logging.getLogger(__name__)

#: the signals that stop a run at the end of its step (SIGTERM: schedulers and ``kill``; SIGINT: Ctrl-C)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopOnSignal(TrainerCallback):
    """On SIGTERM or SIGINT during training: save a checkpoint at the end of the running step and stop.

    The handlers are installed when training begins and the previous ones restored when it ends (and by
    :func:`train_stopping_on_signal` when a training raises, which never reaches its end), so a signal
    before training (while the data loads) or after it (during the report) acts as it always did.
    Signal handlers can only be set from the main thread: elsewhere (training run from a worker thread)
    the callback does nothing. Train through :func:`train_stopping_on_signal`. ``signum`` is the signal
    that stopped the run (on every process), or None.
    """

    def __init__(self) -> None:
        self.received: int | None = None  # the signal this process received
        self.signum: int | None = None  # the signal that stopped the run (agreed over the processes)
        self._previous: dict[int, Any] = {}
        self._group = None  # a gloo group of the processes, for the agreement (see on_train_begin)

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None:  # the second signal: stop now, as the signal would have without us
            self.restore()
            signal.raise_signal(signum)
            return
        self.received = signum
        logger.warning("%s: stopping at the end of this step with a checkpoint (send it again to stop at once)",
                       signal.Signals(signum).name)

    def restore(self) -> None:
        """Put back the handlers training replaced (idempotent)."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def _agreed_signal(self) -> int | None:
        """The signal any process received (the largest number, where they received different ones)."""
        received = self.received or 0
        if self._group is not None:
            flag = torch.tensor([received])
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self._group)
            received = int(flag.item())
        return received or None

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            # the agreement runs over gloo on CPU tensors, whatever the training's backend: a flag on the GPU
            # would make every step wait for the device (nccl's all-reduce is on the training's stream)
            self._group = torch.distributed.new_group(backend="gloo")

    def on_step_end(self, args, state, control, **kwargs):
        self.signum = self._agreed_signal()
        if self.signum is not None:
            control.should_save = True
            control.should_training_stop = True
            # the Trainer deletes every checkpoint but the best at the end of training under save_total_limit=1:
            # this one must stay for the resume (the next save of the resumed run rotates them again)
            args.save_total_limit = None

    def on_epoch_end(self, args, state, control, **kwargs):
        # Stopped within an epoch: none of the epoch-end evaluation, save or log an epoch strategy asks for,
        # which the uninterrupted run would not make at this step (its end of an epoch: all of them, as usual)
        if self.signum is not None and state.epoch != round(state.epoch):
            control.should_evaluate = control.should_save = control.should_log = False

    def on_train_end(self, args, state, control, **kwargs):
        self.restore()
        if self._group is not None:  # every process ends training together (the same steps, the same stop)
            torch.distributed.destroy_process_group(self._group)
            self._group = None


def wait_for_every_process() -> None:
    """Under torchrun (a process group of several), wait until every process has reached this point: what
    process 0 writes before it is then there for the others to read."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()


def train_stopping_on_signal(trainer, resume_from_checkpoint: str | None, resume_hint: str):
    """``trainer.train(...)``, with the handlers of its ``StopOnSignal`` (if it has one) given back even when
    training raises, and :class:`TrainingInterrupted` raised when a signal stopped it: the stop checkpoint is
    ``checkpoint-<step>`` in the Trainer's output folder. The one place train, adapt and the baselines call."""
    stop = next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, StopOnSignal)), None)
    try:
        out = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    finally:
        if stop is not None:
            stop.restore()
    if stop is not None and stop.signum is not None:
        # no process exits before process 0 has written the checkpoint (torchrun ends the others as soon as one
        # exits with a failure)
        wait_for_every_process()
        step = trainer.state.global_step
        saved = Path(trainer.args.output_dir) / f"checkpoint-{step}"
        raise TrainingInterrupted(stop.signum, step, str(saved) if saved.is_dir() else None, resume_hint)
    return out
