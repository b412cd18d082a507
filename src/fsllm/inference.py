"""The ``Predictor`` used by ``fsllm predict`` and ``fsllm serve``: raw texts in, labels or entities out.

Scoring itself (batched logits sorted by length so each batch pads little, under
``torch.inference_mode``; evaluation of a labelled split) is ``fsllm.evaluation``, shared with
training. The ``Predictor`` merges LoRA into the backbone weights so a forward costs what the
plain backbone costs; given a model, it does so on its own copy.
"""

from __future__ import annotations

import copy as copy_module
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel

from .backbones import is_quantized, load_tokenizer
from .config import INFERENCE_PRECISIONS, emulated_bf16, resolve_device, resolve_precision
from .decoding import check_decoding, decoding_of, entities_from_tags, set_decoding
from .errors import DataError, FSLLMError, ModelFolderError

# Scoring lives in fsllm.evaluation; these names stay importable from here.
from .evaluation import (  # noqa: F401
    _sigmoid,
    _softmax,
    batched_logits,
    document_context_of,
    evaluate_examples,
    example_contexts,
    example_features,
    labels_over_threshold,
    predict_word_tags,
    scores_of,
    sequence_probabilities,
)
from .modeling import FSModel, load_model
from .run import MODEL_DIR, RunFolder
from .segmentation import segment
from .tokenization import join_words, with_document_context

logger = logging.getLogger(__name__)

#: the best model's folder inside a training run folder (kept here for code that imports it from here)
RUN_MODEL_DIR = MODEL_DIR
#: tokens per input for a model whose folder records no ``max_length`` (written before
#: ``FSLLMConfig.max_length`` existed) and that no run folder or caller gives one
DEFAULT_MAX_LENGTH = 256


def words_result(words: list[str], tags: list[str], scores: list[float]) -> dict:
    """The answer for one pre-split sentence (``Predictor.predict(words=...)``, ``fsllm predict --pre-split``,
    the server): its words, tags and scores, and its entities with offsets into ``" ".join(words)``."""
    text, spans = join_words(words)
    return {"tokens": words, "tags": tags, "scores": [round(x, 4) for x in scores],
            "entities": entities_from_tags(tags, scores, spans, text)}


class Predictor:
    """Load a trained model (a run folder or a saved model folder) and predict raw texts.

    >>> p = Predictor.from_pretrained("runs/conll2003")        # doctest: +SKIP
    >>> p.predict(["John lives in Paris."])                      # doctest: +SKIP
    [[{'entity_group': 'PER', 'score': 0.98, 'word': 'John', 'start': 0, 'end': 4}, ...]]
    """

    def __init__(
        self, model: FSModel, tokenizer, max_length: int | None = None, batch_size: int = 64, merge: bool = True,
        precision: str = "fp32", device: str | None = "auto", ner_decoding: str | None = None,
        word_scores: str | None = None, *, copy: bool = True,
    ):
        """``max_length``: tokens per input (longer texts are truncated, longer NER sentences cut into
        windows); ``None`` is the length the model was trained at (``config.max_length``), or
        :data:`DEFAULT_MAX_LENGTH` for a folder that does not record it. ``precision``: ``"fp32"``
        (the answers the model was evaluated with: the weights in the dtypes they were evaluated in,
        a backbone loaded in bf16 for training included, see ``FSLLMConfig.backbone_dtype``), ``"bf16"`` (the weights
        cast to bfloat16: faster on a CPU with native bf16 or a GPU, with answers that can differ where
        two labels are close) or ``"auto"`` (bf16 where the hardware has it, see
        ``fsllm.config.resolve_precision``). ``device``: ``"auto"`` (the first CUDA GPU when there is
        one, as ``transformers.pipeline`` picks, else the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``;
        the model is moved there (see ``fsllm.config.resolve_device``). ``ner_decoding`` /
        ``word_scores`` (NER models): how word tags are read from the scores (``FSConfig.ner_decoding``:
        ``"greedy"`` or ``"viterbi"``; ``FSConfig.word_scores``: ``"first"`` or ``"mean"``); given, they
        replace those in the config of the model the predictor runs, so every reader of it (``fsllm eval``,
        the server, ``pipeline()`` on ``predictor.model``) decodes the same way; ``None`` keeps the model's.

        ``copy``: the predictor works on its own copy of ``model`` (the default), which it puts in eval
        mode, merges LoRA into, casts and moves, so a model still being trained keeps its LoRA
        gradients, its dropout and its place; ``copy=False`` does all that to ``model`` itself and
        spares the memory of a copy (``from_pretrained`` does so with the model it loaded)."""
        if copy:
            model = copy_module.deepcopy(model)
        set_decoding(model, ner_decoding, word_scores)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self._warned_alone = False  # a document-context model was given sentences without their documents
        self.max_length = max_length or getattr(model.config, "max_length", None) or DEFAULT_MAX_LENGTH
        self.batch_size = batch_size
        if precision not in INFERENCE_PRECISIONS:
            raise FSLLMError(f"precision must be {', '.join(INFERENCE_PRECISIONS[:-1])} or auto, got {precision!r}")
        self.precision, why = resolve_precision(precision)
        if precision == "auto":
            logger.info("precision auto: %s (%s)", self.precision, why)
        elif precision == "bf16" and (slow := emulated_bf16("precision bf16")):
            logger.warning(slow)
        self.device = resolve_device(device)  # checked before any work on the model
        quantized = is_quantized(model.backbone)
        if merge and isinstance(model.backbone, PeftModel) and not quantized:
            # Inference only: fold LoRA into the weights so a forward is one matmul per projection.
            # Not into 4-bit weights: that re-quantises W + BA, and the model would answer otherwise
            # than the one trained and evaluated.
            model.backbone.merge_adapter()
        if self.precision == "bf16" and not quantized:
            # whole weights in bf16 rather than autocast: a small-batch forward mostly streams the
            # weights from memory, and autocast would read them in fp32 and cast them on every call
            model.to(torch.bfloat16)
        if quantized:  # a 4-bit backbone stays where bitsandbytes placed it
            self.device = next(model.parameters()).device
        else:
            model.to(self.device)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs: Any) -> Predictor:
        """A predictor for a run folder (its best model) or a model folder; ``kwargs`` go to the constructor."""
        check_decoding(kwargs.get("ner_decoding"), kwargs.get("word_scores"))  # before the minutes of loading
        path = Path(path)
        run = RunFolder(path)
        model_dir = run.model_dir if run.has_model() else path
        model = load_model(model_dir)
        try:
            tokenizer = load_tokenizer(str(model_dir)) if (model_dir / "tokenizer_config.json").is_file() else load_tokenizer(model.backbone_ref)
        except OSError as e:
            raise ModelFolderError(f"{model_dir}: cannot load the tokenizer: {e}".splitlines()[0]) from e
        # the model folder's own max_length first; a folder written before it existed may sit in a run
        # folder whose config.json (its TrainConfig) says it; else DEFAULT_MAX_LENGTH (the constructor's)
        saved = getattr(model.config, "max_length", None)
        if saved is None and model_dir != path and run.config_path.is_file():
            saved = run.load_config().max_length
        max_length = kwargs.pop("max_length", None) or saved
        kwargs.setdefault("copy", False)  # the model was loaded for this predictor alone
        return cls(model, tokenizer, max_length=max_length, **kwargs)

    @property
    def task(self) -> str:
        return self.model.task

    @property
    def decoding(self) -> tuple[str, str]:
        """``(ner_decoding, word_scores)`` this predictor reads word tags with (see ``fsllm.decoding``)."""
        return decoding_of(self.model)

    def predict(
        self,
        texts: Iterable[str] | None = None,
        progress: bool | str = False,
        *,
        words: Iterable[Sequence[str]] | None = None,
        text_pairs: Iterable[str] | None = None,
        documents: Iterable[Any] | None = None,
    ) -> list:
        """Sequence tasks: ``{"label", "score"}`` per text (multi-label: ``{"labels": [...]}``, regression:
        ``{"value"}``, see :meth:`result_of`). Token tasks: a list of entity spans per text.

        Pair models take ``text_pairs=`` (one second text per text) or ``texts`` as ``(text, text_pair)``
        tuples.

        Raw texts are cut into words by :func:`fsllm.segmentation.segment` (Penn Treebank-style,
        Unicode-aware; the model reads each word's normalised ``form``, the spans point into the
        original text). ``words=`` (token tasks only, instead of ``texts``) takes sentences that are
        already split, e.g. by a dictionary segmenter or from a CoNLL file; each result is then
        ``{"tokens", "tags", "scores", "entities"}`` with the entities' offsets into
        ``" ".join(tokens)``, the text the model reads.

        ``documents=`` (with ``words=``): each sentence's document (any value; consecutive sentences with
        the same one form a document, in order). A model trained with document context
        (``FSLLMConfig.document_context``) then reads each sentence with its neighbours, as it was trained;
        without it, each sentence is read alone. A raw text is read whole, so it is its own context.
        """
        if words is not None:
            if texts is not None or text_pairs is not None:
                raise FSLLMError("give either texts or words=, not both")
            return self._predict_words(words, progress, documents)
        if documents is not None:
            raise FSLLMError("documents= goes with words= (sentences already split); a raw text is read whole")
        if texts is None:
            raise FSLLMError("no texts given")
        texts = list(texts)
        if text_pairs is not None:
            text_pairs = list(text_pairs)
            if len(text_pairs) != len(texts):
                raise DataError(f"{len(texts)} texts but {len(text_pairs)} text_pairs")
        elif texts and all(isinstance(t, (tuple, list)) for t in texts):
            bad = next((n for n, t in enumerate(texts) if len(t) != 2), None)
            if bad is not None:
                raise DataError(f"input {bad + 1}: a pair is (text, text_pair), got {len(texts[bad])} items")
            texts, text_pairs = [t[0] for t in texts], [t[1] for t in texts]
        for n, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise DataError(f"input {n + 1}: empty text")
        for n, t in enumerate(text_pairs or []):
            if not isinstance(t, str) or not t.strip():
                raise DataError(f"input {n + 1}: empty text_pair")
        if text_pairs is not None and self.task == "token":
            raise FSLLMError("text pairs apply to sequence models; this is a token-classification (NER) model")
        if self.task == "token":
            split = [segment(t) for t in texts]
            for n, (t, ws) in enumerate(zip(texts, split)):
                if not ws:
                    raise DataError(f"input {n + 1}: no words in {t[:40]!r} (only invisible or control characters)")
            tags, scores, _ = predict_word_tags(
                self.model, self.tokenizer, [[w.form for w in ws] for ws in split], self.max_length, self.batch_size,
                progress,
            )
            return [
                entities_from_tags(tg, sc, [(w.start, w.end) for w in ws], t)
                for tg, sc, ws, t in zip(tags, scores, split, texts)
            ]
        examples = [{"text": t} if text_pairs is None else {"text": t, "text_pair": b}
                    for t, b in zip(texts, text_pairs or texts)]
        probs = sequence_probabilities(self.model, self.tokenizer, examples, self.max_length, self.batch_size, progress)
        return [self.result_of(p) for p in probs]

    def result_of(self, scores: np.ndarray) -> dict:
        """One sequence prediction from :func:`scores_of`: ``{"label", "score"}`` (single label),
        ``{"labels": [{"label", "score"}, ...]}`` (multi-label: every label over its threshold, best
        first, possibly none) or ``{"value"}`` (regression, in the data's units)."""
        config = self.model.config
        if config.problem_type == "regression":
            return {"value": float(scores[0])}
        if config.problem_type == "multi_label_classification":
            return {"labels": labels_over_threshold(config, scores)}
        return {"label": self.model.id2label[int(scores.argmax())], "score": float(scores.max())}


    def _predict_words(self, words: Iterable[Sequence[str]], progress: bool | str,
                       documents: Iterable[Any] | None = None) -> list[dict]:
        """Tags for pre-split sentences (see :meth:`predict`); bad input is a DataError naming the sentence."""
        if self.task != "token":
            raise FSLLMError("words= (pre-split input) applies to token-classification (NER) models only")
        sentences = [list(ws) if not isinstance(ws, str) else None for ws in words]
        for n, ws in enumerate(sentences):
            if not ws:
                raise DataError(f"input {n + 1}: expected a non-empty list of words")
            for k, w in enumerate(ws):
                if not isinstance(w, str) or not w.strip():
                    raise DataError(f"input {n + 1}: word {k + 1} is {w!r}; words must be non-empty strings")
        contexts = None
        context = document_context_of(self.model)
        if documents is not None:
            documents = list(documents)
            if len(documents) != len(sentences):
                raise DataError(f"{len(sentences)} sentences but {len(documents)} documents")
            if context:  # a model without it reads each sentence alone
                contexts = example_contexts(with_document_context(
                    [{"tokens": ws, "document": d} for ws, d in zip(sentences, documents)], context))
        elif context and not self._warned_alone:  # once: a caller who meant it should not hear it on every call
            self._warned_alone = True
            logger.warning("this model was trained reading each sentence with up to %d sub-tokens of its document's "
                           "neighbours; sentences given without documents= are read alone, which scores lower (about "
                           "10 F1 on CoNLL-2003, docs/levers.md)", context)
        tags, scores, _ = predict_word_tags(
            self.model, self.tokenizer, sentences, self.max_length, self.batch_size, progress, contexts=contexts
        )
        return [words_result(ws, tg, sc) for ws, tg, sc in zip(sentences, tags, scores)]

