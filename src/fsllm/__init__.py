"""fsllm: turn any decoder-only LLM into a classifier by releasing its global features.

The public API is small; everything else lives in one module per concern:
``attention`` (the released mask), ``heads`` (pooling, RMSNorm+SwiGLU head),
``config`` (``FSConfig`` and the transformers config ``FSLLMConfig``), ``modeling`` (the FS
models, registered with transformers' Auto classes on import), ``model_card``,
``backbones`` (loading models), ``data`` (readers and
the data set catalogue), ``tokenization``, ``prepare`` (data for a run), ``training``,
``evaluation``, ``run`` (the run folder), ``metrics``, ``inference``, ``adaptation`` (``fsllm adapt``:
unsupervised adaptation of a backbone to released attention before training) and ``cli``.
"""

import logging as _logging

# bitsandbytes, which peft imports whenever it is installed, warns on every start on CPUs with
# AVX512-BF16 that an optional kernel from the Hub is missing; it then uses its own, so the
# warning says nothing a user can act on. Its real errors still show.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)

from .backbones import BUILTIN_MODELS, load_backbone, load_tokenizer  # noqa: E402
from .config import FSConfig, FSLLMConfig
from .errors import ConfigError, DataError, FSLLMError, MissingPackageError, ModelFolderError, TrainingInterrupted
from .modeling import (
    FSForSequenceClassification,
    FSForTokenClassification,
    FSModel,
    load_model,
)

__version__ = "0.1.0"

_LAZY = {
    "adapt": ("adaptation", "adapt"),
    "AdaptConfig": ("adaptation", "AdaptConfig"),
    "train": ("training", "train"),
    "TrainConfig": ("training", "TrainConfig"),
    "RunResult": ("run", "RunResult"),
    "Predictor": ("inference", "Predictor"),
}


def __getattr__(name: str):
    # The pipeline pulls in datasets, matplotlib and the Trainer: load it on first use only.
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AdaptConfig",
    "BUILTIN_MODELS",
    "ConfigError",
    "DataError",
    "FSConfig",
    "FSLLMConfig",
    "FSForSequenceClassification",
    "FSForTokenClassification",
    "FSLLMError",
    "TrainingInterrupted",
    "FSModel",
    "MissingPackageError",
    "Predictor",
    "RunResult",
    "TrainConfig",
    "ModelFolderError",
    "adapt",
    "load_backbone",
    "load_model",
    "load_tokenizer",
    "train",
]
