"""The model card (``README.md``) of a saved FS model: Hub metadata plus a short usage note.

The metadata block is built with ``huggingface_hub.ModelCardData`` so the Hub reads it as it
reads any card: ``library_name``, ``base_model``, ``pipeline_tag``, ``datasets`` and, when the
training run passes them, the dev/test metrics as ``model-index`` results.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import EvalResult, ModelCardData

from .backbones import BUILTIN_MODELS

if TYPE_CHECKING:
    from .config import FSLLMConfig

PIPELINE_TAGS = {"sequence": "text-classification", "token": "token-classification"}


def _base_model(ref: str | None) -> str | None:
    if ref is None:
        return None
    if ref in BUILTIN_MODELS:
        return BUILTIN_MODELS[ref].hub_id
    return None if os.path.isabs(ref) else ref  # a local path is no Hub id


def _dataset_names(dataset: str | None) -> tuple[str | None, str | None]:
    """``(name shown in results, Hub id for the datasets metadata)`` of a run's ``data``."""
    if not dataset:
        return None, None
    from .data import list_datasets

    hub_ids = {row["name"]: row["hub_id"] for row in list_datasets()}
    if dataset in hub_ids:
        return dataset, hub_ids[dataset]
    if os.path.exists(dataset):
        return Path(dataset).name, None  # a local file or folder has no Hub id
    return dataset, dataset if dataset.count("/") == 1 else None


def model_card_text(config: FSLLMConfig, metrics: dict[str, Any] | None = None, dataset: str | None = None) -> str:
    """The card of the model ``config`` describes (a model's ``config``); ``metrics`` is a run's
    ``metrics.json`` (dev/test results), ``dataset`` its data. A config, not a model: the card says what
    the config says, and this module stays below the model's in the import graph."""
    fs = config.fs_config
    task = config.task
    metric_name = (metrics or {}).get("primary_metric")
    dataset, dataset_id = _dataset_names(dataset)
    results = []
    for split in ("test", "dev"):
        value = (metrics or {}).get(split, {}).get(metric_name) if metric_name else None
        if value is not None:
            results.append(
                EvalResult(
                    task_type=PIPELINE_TAGS[task],
                    dataset_type=dataset or "custom",
                    dataset_name=dataset or "custom",
                    dataset_split=split,
                    metric_type=metric_name,
                    metric_value=float(value),
                )
            )
    data = ModelCardData(
        library_name="fsllm",
        base_model=_base_model(config.backbone),
        pipeline_tag=PIPELINE_TAGS[task],
        datasets=[dataset_id] if dataset_id else None,
        tags=["fsllm", "fs-llms", "lora", task + "-classification"],
        model_name=f"fsllm-{task}-{dataset}" if results else None,  # the Hub needs a name for eval results
        eval_results=results or None,
    )
    labels = ", ".join(str(config.id2label[i]) for i in range(config.num_labels))
    lines = [
        "---",
        data.to_yaml(),
        "---",
        "",
        f"# fsllm {task} classifier",
        "",
        f"A decoder LLM (`{config.backbone}`) turned into a {PIPELINE_TAGS[task]} model by "
        f"[fsllm](https://pypi.org/project/fsllm/): `{fs.attention}` attention"
        + (f" (lambda {fs.decay_lambda})" if fs.attention == "decay" else "")
        + (f", {fs.pooling} pooling" if task == "sequence" else "")
        + (", a verbalizer head (its rows the label words' output embeddings, kept fixed)" if fs.head == "verbalizer"
           else f", an RMSNorm + {'SwiGLU' if fs.head == 'swiglu' else 'linear'} head")
        + _training_phrase(fs)
        + (f", the text read {fs.repeat} times (sequence repetition)" if fs.repeat > 1 else "")
        + (f", every text followed by the prompt {fs.prompt!r} (added by the model itself)" if fs.prompt else "")
        + (f", each sentence read with up to {config.document_context} sub-tokens of its document on each side "
           "(`Predictor.predict(words=..., documents=...)`)" if getattr(config, "document_context", 0) else "")
        + ".",
        "",
        f"Labels: {labels}.",
        "",
    ]
    if results:
        lines += ["| split | " + metric_name + " |", "|---|---|"]
        lines += [f"| {r.dataset_split} | {r.metric_value:.4f} |" for r in results]
        lines.append("")
    lines += [
        "```python",
        "import fsllm  # registers the fsllm model type with transformers",
        "from transformers import pipeline",
        "",
        f'clf = pipeline("{PIPELINE_TAGS[task]}", model="<this folder or repo id>"'
        + (', aggregation_strategy="first")' if task == "token" else ")"),
        "```",
        "",
    ]
    return "\n".join(lines)


def _training_phrase(fs) -> str:
    """How the backbone was trained, for the card's first sentence."""
    if fs.full_finetune:
        return ", every backbone weight fine-tuned"
    if not fs.use_lora:
        return ""
    variant = " (DoRA)" if fs.use_dora else " (rsLoRA)" if fs.use_rslora else ""
    return f", LoRA r={fs.lora_r}{variant}"
