"""Readers for the data formats fsllm accepts, all returning plain Python structures.

* :func:`read_conll` -- CoNLL-style token/tag columns -> ``[{"tokens": [...], "tags": [...]}]``
  with every tag scheme converted to IOB2.
* :func:`read_table` -- CSV / TSV / JSON lines -> ``[{"text": str, "label": str}]``.
* :func:`load_hf` -- a ``datasets`` ``save_to_disk`` folder or a Hugging Face hub name ->
  :class:`TaskData`.
* :func:`split_deterministic` -- the seeded (optionally stratified) split the catalogue uses.

Every problem in a file raises :class:`~fsllm.errors.DataError` whose message starts with
``path:line:`` so the user can open the file at the right place.

Tag schemes
-----------
``scheme`` is one of ``"auto"``, ``"iob1"``, ``"iob2"`` (alias ``"bio"``), ``"bioes"``
(alias ``"iobes"``) or ``"bilou"`` (``L-`` = ``E-``, ``U-`` = ``S-``).  The output is always IOB2.

Auto-detection looks at the whole file (all sentences together):

1. any ``E-``/``S-``/``L-``/``U-`` tag -> ``bioes`` (``bilou`` when only ``L-``/``U-`` occur);
2. otherwise, if some ``I-X`` starts a chunk (first token, or the previous tag is ``O`` or of
   another type) **and** no ``B-X`` starts a chunk (every ``B-X`` directly follows an ``X``
   tag, which is the only place IOB1 uses ``B-``) -> ``iob1``;
3. otherwise -> ``iob2`` (this includes files with only ``O``).  A file that has both kinds of
   evidence is therefore read as IOB2 whose chunk-initial ``I-`` tags are errors (or repairs).

Validation happens in the source scheme:

* iob2: ``I-X`` must follow ``B-X`` or ``I-X``;
* iob1: ``B-X`` must follow ``B-X`` or ``I-X`` (it only separates two adjacent ``X`` chunks);
* bioes/bilou: ``I-X``/``E-X`` must follow ``B-X``/``I-X``, and ``B-X``/``I-X`` must be followed
  by ``I-X``/``E-X``.

Without ``repair`` the first violation raises ``DataError(path, line)``.  With ``repair=True``
every violation is fixed the IOB2 way (a chunk-initial ``I-X`` becomes ``B-X``; an unclosed
``B-X``/``I-X`` simply ends the chunk) and counted: pass ``stats={}`` to receive
``{"scheme": ..., "repairs": n, "sentences": n, "tokens": n}``; the count is also logged as a
warning on the ``fsllm.data`` logger.  Nothing is sent through the ``warnings`` module.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsllm.errors import DataError, FSLLMError

logger = logging.getLogger("fsllm.data")

__all__ = [
    "TaskData",
    "read_conll",
    "read_table",
    "load_hf",
    "split_deterministic",
    "convert_to_iob2",
    "is_saved_dataset",
    "build_task_data",
    "table_format",
    "decode_text",
    "split_lines",
    "SCHEMES",
]

SCHEMES = ("auto", "iob1", "iob2", "bio", "bioes", "iobes", "bilou")
_SCHEME_ALIASES = {"bio": "iob2", "iobes": "bioes"}
_TAG_RE = re.compile(r"^([BIESLU])-(\S+)$")
_VALIDATION_NAMES = ("validation", "dev", "valid", "val")
#: what separates the labels of a multi-label CSV/TSV cell (``"sports|politics"``)
DEFAULT_LABEL_SEPARATOR = "|"
LABEL_KINDS = ("single", "multi", "number")


@dataclass
class TaskData:
    """A loaded data set.

    ``task`` is ``"sequence"`` (columns ``text``, ``label``) or ``"token"`` (columns ``tokens``,
    ``tags`` in IOB2).  Labels and tags are strings (a list of strings for multi-label data, a float
    for regression; pairs add a ``text_pair`` column).  ``label_names`` is the canonical label
    order when the source defines one, else ``None``.  ``source`` says where the data came from
    and how splits were made.
    """

    task: str
    splits: Any  # datasets.DatasetDict
    label_names: list[str] | None
    source: str
    #: ``None`` (single label), ``"multi_label_classification"`` or ``"regression"``
    problem_type: str | None = None


# --------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------


# Byte-order marks, longest first (the UTF-32 LE mark starts with the UTF-16 LE one).
_BOMS = (
    (b"\xff\xfe\x00\x00", "utf-32"),
    (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xef\xbb\xbf", "utf-8-sig"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
)
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# C0 controls other than tab, LF and CR, and DEL: no text format fsllm reads has them, so one is a
# sign of a binary file or of UTF-16 read as UTF-8 (every other byte NUL), not of data.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def show(value: Any, limit: int = 60) -> str:
    """``repr`` of a piece of the input, cut to ``limit`` characters: an error stays one short line
    even when the offending line is 100,000 characters long."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 5] + "...'" + f" ({len(str(value)):,} characters)"


def split_lines(text: str) -> list[str]:
    """Lines of ``text`` split at LF, CRLF or a lone CR, as editors number them.

    ``str.split("\\n")`` would leave a file with old Mac line ends (CR only) as one line, whose
    whitespace-separated fields then silently turn into one token and one tag.
    """
    return _LINE_BREAK.split(text)


def decode_text(raw: bytes, p: str) -> str:
    """Decode a data file: a byte-order mark selects UTF-8/16/32 (and is dropped), else UTF-8.

    UTF-16 with a BOM is what Windows tools write as "Unicode" text, and it is unambiguous, so it
    is read rather than refused. Invalid bytes and control characters raise a DataError with
    their line and column.
    """
    enc = next((e for bom, e in _BOMS if raw.startswith(bom)), "utf-8")
    try:
        text = raw.decode(enc)
    except UnicodeDecodeError as e:
        before = raw[: e.start].decode(enc, errors="replace")
        line = len(split_lines(before))
        col = len(split_lines(before)[-1]) + 1
        name = "UTF-8" if enc.startswith("utf-8") else enc.upper()
        raise DataError(
            f"not valid {name} (byte 0x{raw[e.start]:02x} at column {col}); re-save the file as UTF-8", p, line
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    m = _CONTROL.search(text)
    if m is not None:
        before = split_lines(text[: m.start()])
        hint = (
            "; UTF-16 without a byte-order mark? re-save the file as UTF-8"
            if m.group() == "\x00"
            else "; a binary file, or a control character to remove"
        )
        raise DataError(
            f"control character U+{ord(m.group()):04X} at column {len(before[-1]) + 1}{hint}", p, len(before)
        )
    return text


def read_text(path: str | os.PathLike) -> str:
    """Read ``path`` as text (:func:`decode_text`); a missing file or a folder -> DataError."""
    p = str(path)
    try:
        raw = Path(p).read_bytes()
    except FileNotFoundError:
        raise DataError("file not found", p) from None
    except IsADirectoryError:
        raise DataError("is a folder, expected a file", p) from None
    except OSError as e:
        raise DataError(f"cannot read: {e.strerror}", p) from None
    return decode_text(raw, p)


def _parse_tag(tag: str) -> tuple[str, str | None] | None:
    if tag == "O":
        return "O", None
    m = _TAG_RE.match(tag)
    if m is None:
        return None
    return m.group(1), m.group(2)


def _norm_scheme(scheme: str) -> str:
    s = scheme.lower()
    s = _SCHEME_ALIASES.get(s, s)
    if s not in ("auto", "iob1", "iob2", "bioes", "bilou"):
        raise FSLLMError(f"unknown tag scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    return s


def _detect_scheme(parsed: list[list[tuple[str, str | None]]]) -> str:
    has_es = has_lu = False
    i_start = b_start = False
    for seq in parsed:
        prev_type = None
        for prefix, typ in seq:
            if prefix in ("E", "S"):
                has_es = True
            elif prefix in ("L", "U"):
                has_lu = True
            elif prefix == "I" and typ != prev_type:
                i_start = True
            elif prefix == "B" and typ != prev_type:
                b_start = True
            prev_type = typ
    if has_es:
        return "bioes"
    if has_lu:
        return "bilou"
    if i_start and not b_start:
        return "iob1"
    return "iob2"


def _convert_parsed(
    parsed: list[list[tuple[str, str | None]]],
    scheme: str,
    repair: bool,
    fail: Callable[[int, int, str], DataError],
) -> tuple[list[list[str]], str, int]:
    """Validate ``parsed`` (prefix, type) sequences in ``scheme`` and convert them to IOB2.

    ``fail(seq_index, token_index, message)`` builds the error raised when ``repair`` is off.
    Returns (IOB2 tag sequences, scheme used, number of repairs).
    """
    scheme = _norm_scheme(scheme)
    if scheme == "auto":
        scheme = _detect_scheme(parsed)
    allowed = {"iob1": "BI", "iob2": "BI", "bioes": "BIES", "bilou": "BILU"}[scheme]
    repairs = 0
    out: list[list[str]] = []
    for si, seq in enumerate(parsed):
        # map BILOU onto BIOES, check the prefixes belong to the scheme
        norm: list[tuple[str, str | None]] = []
        for ti, (prefix, typ) in enumerate(seq):
            if prefix != "O" and prefix not in allowed:
                raise fail(si, ti, f"tag {prefix}-{typ} is not valid in scheme {scheme}")
            if scheme == "bilou":
                prefix = {"L": "E", "U": "S"}.get(prefix, prefix)
            norm.append((prefix, typ))
        tags: list[str] = []
        n = len(norm)
        for ti, (prefix, typ) in enumerate(norm):
            prev = norm[ti - 1] if ti > 0 else ("O", None)
            nxt = norm[ti + 1] if ti + 1 < n else ("O", None)
            prev_tag = f"{prev[0]}-{prev[1]}" if prev[1] else "O"
            problem = None
            if prefix == "O":
                tags.append("O")
                continue
            if scheme == "iob2":
                if prefix == "I" and not (prev[1] == typ and prev[0] in "BI"):
                    problem = f"I-{typ} follows {prev_tag if ti else 'the sentence start'} (IOB2 chunks start with B-{typ})"
                    prefix = "B"
            elif scheme == "iob1":
                if prefix == "B" and prev[1] != typ:
                    problem = (
                        f"B-{typ} follows {prev_tag if ti else 'the sentence start'}; in IOB1, B-{typ} "
                        f"may only separate two adjacent {typ} chunks"
                    )
                elif prefix == "I" and prev[1] != typ:
                    prefix = "B"  # normal IOB1 -> IOB2 conversion
            else:  # bioes
                if prefix in ("I", "E") and not (prev[1] == typ and prev[0] in "BI"):
                    problem = f"{prefix}-{typ} follows {prev_tag if ti else 'the sentence start'} (a chunk must start with B-{typ} or be S-{typ})"
                    prefix = "B"
                elif prefix in ("B", "I") and not (nxt[1] == typ and nxt[0] in "IE"):
                    nxt_tag = f"{nxt[0]}-{nxt[1]}" if nxt[1] else "O"
                    what = nxt_tag if ti + 1 < n else "the sentence end"
                    problem = f"{prefix}-{typ} is followed by {what} (the chunk must end with E-{typ})"
                else:
                    prefix = {"S": "B", "E": "I"}.get(prefix, prefix)
            if problem is not None:
                if not repair:
                    raise fail(si, ti, f"invalid {scheme.upper()} sequence: {problem}; pass repair=True to fix such tags")
                repairs += 1
            tags.append(f"{prefix}-{typ}")
        out.append(tags)
    return out, scheme, repairs


def convert_to_iob2(
    tag_sequences: Sequence[Sequence[str]],
    scheme: str = "auto",
    repair: bool = False,
    stats: dict | None = None,
    where: str | None = None,
) -> list[list[str]]:
    """Convert tag sequences (lists of strings) to IOB2; see the module docstring for rules.

    Errors say ``sequence i, token j`` (0-based); ``where`` (e.g. a data set name) is used as
    the DataError path.  ``stats`` (a dict) receives ``scheme`` and ``repairs``.
    """
    parsed: list[list[tuple[str, str | None]]] = []
    for si, seq in enumerate(tag_sequences):
        row = []
        for ti, tag in enumerate(seq):
            p = _parse_tag(str(tag))
            if p is None:
                raise DataError(
                    f"sequence {si}, token {ti}: tag {show(tag)} does not match O or B-/I-/E-/S-/L-/U-TYPE", where
                )
            row.append(p)
        parsed.append(row)

    def fail(si: int, ti: int, msg: str) -> DataError:
        return DataError(f"sequence {si}, token {ti}: {msg}", where)

    out, used, repairs = _convert_parsed(parsed, scheme, repair, fail)
    if stats is not None:
        stats.update(scheme=used, repairs=repairs)
    if repairs:
        logger.warning("%s: repaired %d invalid %s tag(s)", where or "tags", repairs, used.upper())
    return out


# --------------------------------------------------------------------------------------------
# CoNLL
# --------------------------------------------------------------------------------------------


def read_conll(
    path: str | os.PathLike,
    scheme: str = "auto",
    repair: bool = False,
    token_col: int = 0,
    tag_col: int = -1,
    stats: dict | None = None,
    keep_lines: bool = False,
) -> list[dict]:
    """Read a CoNLL-style file into ``[{"tokens": [...], "tags": [...], "document": n}]`` with IOB2 tags.

    Columns are separated by tabs when the line has a tab (so tokens may hold spaces), else by
    any whitespace.  Lines whose first column is ``-DOCSTART-`` end the current sentence and
    begin a new document: ``document`` counts them (0 before the first), so that a sentence can be
    read with its neighbours (``TrainConfig.document_context``); a file without them is one document.
    Blank (whitespace-only) lines separate sentences.  ``stats`` (a dict), when given,
    receives ``scheme`` (the scheme used, auto-detected or given), ``repairs``, ``sentences`` and
    ``tokens``. ``keep_lines=True`` adds ``"lines"``, each token's line number, so that a later
    check (a label the model does not know) can point at the line as the reader's own errors do.
    """
    p = str(path)
    _norm_scheme(scheme)
    text = read_text(p)
    if not text.strip():
        raise DataError("empty file: no sentences found", p)

    sentences: list[tuple[list[str], list[tuple[str, str | None]], list[int]]] = []
    documents: list[int] = []  # each sentence's document
    document = 0
    toks: list[str] = []
    parsed: list[tuple[str, str | None]] = []
    lines: list[int] = []

    def flush() -> None:
        nonlocal toks, parsed, lines
        if toks:
            sentences.append((toks, parsed, lines))
            documents.append(document)
        toks, parsed, lines = [], [], []

    for lineno, line in enumerate(split_lines(text), start=1):
        if not line.strip():
            flush()
            continue
        if "\t" in line:
            fields = [f.strip() for f in line.split("\t")]
            fields = [f for f in fields if f]
        else:
            fields = line.split()
        if fields[0] == "-DOCSTART-":
            flush()
            document += bool(sentences)  # the first marker opens document 0
            continue
        if len(fields) < 2:
            raise DataError(
                f"expected at least 2 columns (token ... tag), found 1: {show(line.strip())}", p, lineno
            )
        try:
            token, tag = fields[token_col], fields[tag_col]
        except IndexError:
            raise DataError(
                f"line has {len(fields)} columns; token_col={token_col}, tag_col={tag_col} is out of range", p, lineno
            ) from None
        pt = _parse_tag(tag)
        if pt is None:
            raise DataError(f"tag {show(tag)} does not match O or B-/I-/E-/S-/L-/U-TYPE", p, lineno)
        toks.append(token)
        parsed.append(pt)
        lines.append(lineno)
    flush()
    if not sentences:
        raise DataError("no sentences found (only -DOCSTART- or blank lines)", p)

    def fail(si: int, ti: int, msg: str) -> DataError:
        return DataError(msg, p, sentences[si][2][ti])

    tags, used, repairs = _convert_parsed([s[1] for s in sentences], scheme, repair, fail)
    if repairs:
        logger.warning("%s: repaired %d invalid %s tag(s)", p, repairs, used.upper())
    if stats is not None:
        stats.update(
            scheme=used,
            repairs=repairs,
            sentences=len(sentences),
            tokens=sum(len(s[0]) for s in sentences),
        )
    if keep_lines:
        return [{"tokens": s[0], "tags": t, "document": d, "lines": s[2]} for s, t, d in zip(sentences, tags, documents)]
    return [{"tokens": s[0], "tags": t, "document": d} for s, t, d in zip(sentences, tags, documents)]


# --------------------------------------------------------------------------------------------
# CSV / TSV / JSON lines
# --------------------------------------------------------------------------------------------

_EXT_FMT = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"}


def table_format(path: str | os.PathLike) -> str | None:
    """The table format implied by the file extension, or None."""
    return _EXT_FMT.get(Path(path).suffix.lower())


def read_table(
    path: str | os.PathLike,
    text_column: str = "text",
    label_column: str | None = "label",
    fmt: str | None = None,
    keep_lines: bool = False,
    *,
    text_pair_column: str | None = None,
    label_kind: str = "single",
    label_separator: str = DEFAULT_LABEL_SEPARATOR,
) -> list[dict]:
    """Read CSV, TSV or JSON lines into ``[{"text": str, "label": str}]``.

    ``text_pair_column`` adds ``"text_pair"`` (the second text of a pair, e.g. a hypothesis).
    ``label_kind`` says what the label column holds: ``"single"`` (one label, a string), ``"multi"``
    (several labels: a JSON list of strings, or one string cut at ``label_separator``, ``|`` by
    default, the form a CSV/TSV cell can hold; an empty list is allowed: no label applies) or
    ``"number"`` (a regression target, a float).

    ``fmt`` is ``"csv"``, ``"tsv"``, ``"jsonl"`` or ``"json"``; by default it comes from the
    extension (``.csv``, ``.tsv``/``.tab``, ``.jsonl``/``.ndjson``, ``.json``).  ``.json`` files
    are JSON lines unless the file starts with ``[`` (a JSON array of objects; errors then name
    the record number instead of a line).  CSV uses the ``csv`` module (quoted fields may span
    lines; the line reported is where the row starts, the header being line 1).  TSV is read
    one row per physical line with no quoting (``csv.QUOTE_NONE``), so quotes stay in the text.
    Labels are converted with ``str``.  ``label_column=None`` reads unlabelled text (no
    ``label`` key).  ``keep_lines=True`` adds ``"line"`` (the row's first line; for a JSON array
    ``None`` and ``"record"``, its index) so later checks can name the place.
    """
    p = str(path)
    if fmt is None:
        fmt = table_format(p)
        if fmt is None:
            raise DataError(
                "cannot tell the table format from the extension; use .csv, .tsv, .jsonl or .json, or pass fmt", p
            )
    fmt = fmt.lower()
    if fmt not in ("csv", "tsv", "jsonl", "json"):
        raise FSLLMError(f"unknown table format {fmt!r}; choose csv, tsv, jsonl or json")
    text = read_text(p)
    if not text.strip():
        raise DataError("empty file", p)

    if fmt in ("csv", "tsv"):
        records = _iter_delimited(text, p, fmt)
        header_line = 1
    else:
        records = _iter_json(text, p, fmt)
        header_line = None

    if label_kind not in LABEL_KINDS:
        raise FSLLMError(f"label_kind must be one of {LABEL_KINDS}, got {label_kind!r}")
    out: list[dict] = []
    for where, rec, keys in records:
        loc = {"line": where} if isinstance(where, int) else {}
        rec_note = "" if isinstance(where, int) or where is None else f"{where}: "
        for col in (text_column, text_pair_column, label_column):
            if col is not None and (keys.count(col) > 1 or col in getattr(rec, "repeated", ())):
                # csv/json keep one of the values silently: which one was meant is unknowable
                raise DataError(
                    f"{rec_note}column {col!r} occurs more than once; rename or remove the extra one",
                    p,
                    header_line if header_line is not None else loc.get("line"),
                )
            if col is not None and col not in rec:
                line = header_line if header_line is not None else loc.get("line")
                raise DataError(
                    f"{rec_note}column {col!r} not found; columns found: {', '.join(show(k, 40) for k in keys[:20])}",
                    p,
                    line,
                )
        value = rec[text_column]
        for col in (text_column, text_pair_column, label_column):
            v = rec.get(col) if col is not None else None
            if col == label_column and label_kind == "multi" and isinstance(v, list):
                continue
            if isinstance(v, (list, dict)):
                raise DataError(
                    f"{rec_note}column {col!r} holds a JSON {'array' if isinstance(v, list) else 'object'}; "
                    "expected a string or a number",
                    p,
                    loc.get("line"),
                )
        if value is None or _is_nan(value) or not str(value).strip():
            raise DataError(f"{rec_note}empty text in column {text_column!r}", p, loc.get("line"))
        item = {"text": str(value)}
        if text_pair_column is not None:
            second = rec[text_pair_column]
            if second is None or _is_nan(second) or not str(second).strip():
                raise DataError(f"{rec_note}empty text in column {text_pair_column!r}", p, loc.get("line"))
            item["text_pair"] = str(second)
        if label_column is not None:
            item["label"] = _parse_label(rec[label_column], label_kind, label_separator,
                                         f"{rec_note}column {label_column!r}", p, loc.get("line"))
        if keep_lines:
            item["line"] = loc.get("line")
            if not isinstance(where, int):
                item["record"] = int(str(where).split()[-1])
        out.append(item)
    if not out:
        raise DataError("no rows found (only a header)" if fmt in ("csv", "tsv") else "no records found", p)
    return out


def _parse_label(lab: Any, kind: str, separator: str, where: str, p: str, line: int | None) -> Any:
    """One cell of the label column as ``kind`` wants it; a bad value is a DataError at its line."""
    if kind == "multi":
        if isinstance(lab, list):
            bad = [v for v in lab if not isinstance(v, (str, int)) or isinstance(v, bool) or not str(v).strip()]
            if bad:
                raise DataError(f"{where}: label list holds {show(bad[0])}; expected non-empty strings", p, line)
            parts = [str(v).strip() for v in lab]
        elif lab is None or _is_nan(lab):
            raise DataError(f"{where}: empty label (write [] or an empty cell for 'no label applies')", p, line)
        else:
            parts = [x.strip() for x in str(lab).split(separator)] if str(lab).strip() else []
            if any(not x for x in parts):
                raise DataError(f"{where}: empty label between separators {separator!r} in {show(lab)}", p, line)
        return sorted(set(parts), key=parts.index)  # each label once, in the order written
    if lab is None or _is_nan(lab) or (isinstance(lab, str) and not lab.strip()):
        raise DataError(f"{where}: empty label", p, line)
    if kind == "number":
        try:
            value = float(lab) if not isinstance(lab, bool) else math.nan
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value):
            raise DataError(f"{where}: target {show(lab)} is not a finite number", p, line)
        return value
    return lab.strip() if isinstance(lab, str) else str(lab)


def _is_nan(v: Any) -> bool:
    """JSON ``NaN`` (pandas writes missing values so): a missing value, not the label "nan"."""
    return isinstance(v, float) and math.isnan(v)


def _iter_delimited(text: str, p: str, fmt: str):
    # strict: a stray quote (``"abc"def``) or a quote never closed is an error, not silently
    # merged text; the field limit (128 KiB by default) is raised so a long text is no error.
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, len(text) + 1))
    try:
        yield from _iter_rows(text, p, fmt)
    finally:
        csv.field_size_limit(limit)


def _iter_rows(text: str, p: str, fmt: str):
    if fmt == "csv":
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    else:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE, strict=True)
    header: list[str] | None = None
    last_end = 0
    try:
        for row in reader:
            start = last_end + 1
            last_end = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if header is None:
                header = [c.strip() for c in row]
                continue
            if len(row) != len(header):
                raise DataError(
                    f"row has {len(row)} fields but the header has {len(header)}"
                    + (" (unquoted comma in the text?)" if fmt == "csv" else " (tab in the text?)"),
                    p,
                    start,
                )
            yield start, dict(zip(header, row)), header
    except csv.Error as e:
        hint = " (a quoted field is never closed?)" if "end of data" in str(e) else ""
        raise DataError(f"malformed {fmt.upper()}: {e}{hint}", p, last_end + 1) from None
    if header is None:  # pragma: no cover - text.strip() was non-empty
        raise DataError("empty file", p)


class _Record(dict):
    """A JSON object that remembers its repeated keys (``json`` silently keeps the last value)."""

    def __init__(self, pairs: list[tuple[str, Any]]):
        super().__init__(pairs)
        seen: set[str] = set()
        self.repeated = {k for k, _ in pairs if k in seen or seen.add(k)}


def _iter_json(text: str, p: str, fmt: str):
    if fmt == "json" and text.lstrip().startswith("["):
        try:
            data = json.loads(text, object_pairs_hook=_Record)
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON: {e.msg}", p, e.lineno) from None
        for i, rec in enumerate(data):
            if not isinstance(rec, dict):
                raise DataError(f"record {i}: expected a JSON object, found {type(rec).__name__}", p)
            yield f"record {i}", rec, list(rec)
        return
    for lineno, line in enumerate(split_lines(text), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line, object_pairs_hook=_Record)
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON: {e.msg} (column {e.colno})", p, lineno) from None
        if not isinstance(rec, dict):
            raise DataError(f"expected a JSON object, found {type(rec).__name__}", p, lineno)
        yield lineno, rec, list(rec)


# --------------------------------------------------------------------------------------------
# deterministic split
# --------------------------------------------------------------------------------------------


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def split_deterministic(
    examples: Sequence[Any],
    dev_frac: float,
    test_frac: float,
    seed: int = 0,
    stratify_key: str | Callable[[Any], Any] | None = None,
) -> dict[str, list]:
    """Split ``examples`` into ``{"train", "validation", "test"}`` lists.

    Examples are grouped by ``stratify_key`` (a dict key such as ``"label"`` or a function;
    ``None`` = one group).  Groups are visited in sorted order of their key; each group's
    indices are shuffled with one ``random.Random(seed)`` and the first
    ``round_half_up(n * test_frac)`` go to test, the next ``round_half_up(n * dev_frac)`` to
    validation, the rest to train.  Each split keeps the original example order.  The result
    depends only on the examples' order, their keys and ``seed``.
    """
    if dev_frac < 0 or test_frac < 0 or dev_frac + test_frac >= 1:
        raise FSLLMError(f"bad split fractions dev={dev_frac}, test={test_frac}: need 0 <= dev + test < 1")
    groups: dict[Any, list[int]] = {}
    for i, ex in enumerate(examples):
        if stratify_key is None:
            k = 0
        elif callable(stratify_key):
            k = stratify_key(ex)
        else:
            k = ex[stratify_key]
        groups.setdefault(k, []).append(i)
    rng = random.Random(seed)
    which: dict[int, str] = {}
    for k in sorted(groups, key=lambda x: (str(type(x)), str(x))):
        idx = list(groups[k])
        rng.shuffle(idx)
        n_test = _round_half_up(len(idx) * test_frac)
        n_dev = _round_half_up(len(idx) * dev_frac)
        for j, i in enumerate(idx):
            which[i] = "test" if j < n_test else ("validation" if j < n_test + n_dev else "train")
    out: dict[str, list] = {"train": [], "validation": [], "test": []}
    for i, ex in enumerate(examples):
        out[which[i]].append(ex)
    return out


# --------------------------------------------------------------------------------------------
# Hugging Face datasets
# --------------------------------------------------------------------------------------------


def is_saved_dataset(path: str | os.PathLike) -> bool:
    """True for a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    p = Path(path)
    return p.is_dir() and ((p / "dataset_dict.json").is_file() or (p / "state.json").is_file())


def _sequence_dataset(rows: list[dict]):
    import datasets
    import pyarrow as pa
    from datasets.table import InMemoryTable

    # the label's type follows the rows: a string, a list of strings (multi-label) or a float
    first = rows[0]["label"] if rows else ""
    kind = pa.list_(pa.string()) if isinstance(first, list) else pa.float64() if isinstance(first, float) else pa.string()
    cols = {"text": pa.array([r["text"] for r in rows], type=pa.string())}
    if rows and "text_pair" in rows[0]:
        cols["text_pair"] = pa.array([r["text_pair"] for r in rows], type=pa.string())
    cols["label"] = pa.array([r["label"] for r in rows], type=kind)
    return datasets.Dataset(InMemoryTable(pa.table(cols)))


def _token_dataset(rows: list[dict]):
    import datasets
    import pyarrow as pa
    from datasets.table import InMemoryTable

    # built through Arrow directly: Dataset.from_dict(features=...) is ~20x slower here
    strings = pa.list_(pa.string())
    cols = {
        "tokens": pa.array([list(r["tokens"]) for r in rows], type=strings),
        "tags": pa.array([list(r["tags"]) for r in rows], type=strings),
    }
    if rows and all("document" in r for r in rows):  # CoNLL files: which document each sentence is in
        cols["document"] = pa.array([int(r["document"]) for r in rows], type=pa.int64())
    return datasets.Dataset(InMemoryTable(pa.table(cols)))


def build_task_data(
    task: str, split_rows: dict[str, list[dict]], label_names: list[str] | None, source: str,
    problem_type: str | None = None,
) -> TaskData:
    """Wrap ``{"train": rows, ...}`` (reader output) into a :class:`TaskData`."""
    import datasets

    make = _sequence_dataset if task == "sequence" else _token_dataset
    dd = datasets.DatasetDict({k: make(v) for k, v in split_rows.items() if v})
    return TaskData(task=task, splits=dd, label_names=label_names, source=source, problem_type=problem_type)


_TEXT_CANDIDATES = ("text", "sentence", "content", "document", "review")
_LABEL_CANDIDATES = ("label", "labels", "label_text")


def _inner_feature(feat):
    return getattr(feat, "feature", None)


def load_hf(
    name_or_path: str | os.PathLike,
    task: str | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    tokens_column: str = "tokens",
    tags_column: str = "ner_tags",
    config_name: str | None = None,
    label_names: list[str] | None = None,
    scheme: str = "auto",
    repair: bool = False,
    carve_validation: bool = True,
) -> TaskData:
    """Load a ``save_to_disk`` folder (``datasets.load_from_disk``) or a hub data set.

    * Splits ``validation``/``dev``/``valid``/``val`` become ``validation``; ``train`` and
      ``test`` are kept; any other split is dropped (noted in ``source``).  A single saved
      ``Dataset`` becomes the ``train`` split.
    * ``task=None`` -> ``"token"`` when ``tokens_column`` exists, else ``"sequence"``.
    * Sequence: ``text_column``/``label_column`` default to the first present of
      text/sentence/content/document/review and label/labels/label_text.  ``ClassLabel``
      integers become their names (also ``label_names``); plain integers are mapped through
      ``label_names`` when given, else ``str(int)``.  A split whose labels are all ``-1``/None
      (unlabelled, e.g. GLUE test sets) is dropped and noted; a partly unlabelled split is an
      error.
    * Token: tags in ``tags_column`` (``Sequence(ClassLabel)`` -> names; plain ints through
      ``label_names``; strings as is) are converted to IOB2 (``scheme``, ``repair`` as in
      :func:`read_conll`; errors name the split and example).
    * Without a validation split, when ``carve_validation`` is on and there is a train split,
      a deterministic 10 % of train (seed 0, stratified by label for sequence tasks) becomes
      ``validation``; ``source`` says so.
    """
    import datasets

    name = str(name_or_path)
    if is_saved_dataset(name):
        try:
            obj = datasets.load_from_disk(name)
        except Exception as e:  # corrupt folder
            raise DataError(f"cannot load the saved data set: {e}", name) from None
        origin = f"saved data set {name}"
    else:
        try:
            obj = datasets.load_dataset(name, config_name)
        except Exception as e:
            raise FSLLMError(
                f"cannot load the Hugging Face data set {name!r}"
                + (f" (config {config_name!r})" if config_name else "")
                + f": {type(e).__name__}: {e}"
            ) from None
        origin = f"hub {name}" + (f" ({config_name})" if config_name else "")
    if isinstance(obj, datasets.Dataset):
        obj = datasets.DatasetDict(train=obj)
    notes: list[str] = []
    splits: dict[str, Any] = {}
    for sname in obj:
        key = sname.lower()
        target = "validation" if key in _VALIDATION_NAMES else key if key in ("train", "test") else None
        if target is None:
            notes.append(f"split {sname!r} ignored")
            continue
        if target in splits:
            raise DataError(f"two splits map to {target!r}: {list(obj)}", name)
        if target != sname:
            notes.append(f"split {sname!r} used as {target!r}")
        splits[target] = obj[sname]
    if not splits:
        raise DataError(f"no train/validation/test split; splits found: {list(obj)}", name)

    first = next(iter(splits.values()))
    cols = list(first.column_names)
    if task is None:
        task = "token" if tokens_column in cols else "sequence"
    if task not in ("sequence", "token"):
        raise FSLLMError(f"task must be 'sequence' or 'token', not {task!r}")

    rows: dict[str, list[dict]] = {}
    names_out: list[str] | None = None
    if task == "sequence":
        tcol = text_column or next((c for c in _TEXT_CANDIDATES if c in cols), None)
        lcol = label_column or next((c for c in _LABEL_CANDIDATES if c in cols), None)
        for what, col, flag in (("text", tcol, "text_column"), ("label", lcol, "label_column")):
            if col is None or col not in cols:
                raise DataError(
                    f"{what} column {col!r} not found; columns found: {', '.join(cols)} (set {flag})"
                    if col
                    else f"no {what} column found among {', '.join(cols)}; set {flag}",
                    name,
                )
        for sname, ds in splits.items():
            if tcol not in ds.column_names or lcol not in ds.column_names:
                raise DataError(f"split {sname!r} lacks column {tcol!r} or {lcol!r}; has {ds.column_names}", name)
            feat = ds.features[lcol]
            names = list(feat.names) if isinstance(feat, datasets.ClassLabel) else label_names
            if isinstance(feat, datasets.ClassLabel):
                names_out = names
            elif label_names is not None:
                names_out = list(label_names)
            cols_d = ds.select_columns([tcol, lcol]).to_dict()  # far faster than iterating ds[col]
            texts, labs = cols_d[tcol], cols_d[lcol]
            unl = [i for i, v in enumerate(labs) if v is None or (isinstance(v, int) and v < 0)]
            if unl and len(unl) == len(labs):
                notes.append(f"split {sname!r} dropped (unlabelled)")
                continue
            if unl:
                raise DataError(f"split {sname!r} example {unl[0]}: missing label ({labs[unl[0]]!r})", name)
            out = []
            for i, (t, v) in enumerate(zip(texts, labs)):
                if isinstance(v, str) and not v.strip():
                    raise DataError(f"split {sname!r} example {i}: empty label", name)
                if isinstance(v, bool) or not isinstance(v, int) or names is None:
                    lab = str(v)
                else:
                    if v >= len(names):
                        raise DataError(f"split {sname!r} example {i}: label id {v} has no name ({len(names)} names)", name)
                    lab = names[v]
                out.append({"text": "" if t is None else str(t), "label": lab})
            rows[sname] = out
    else:
        tcol, gcol = tokens_column, tags_column
        for sname, ds in splits.items():
            for col, flag in ((tcol, "tokens_column"), (gcol, "tags_column")):
                if col not in ds.column_names:
                    raise DataError(
                        f"split {sname!r}: column {col!r} not found; columns found: {', '.join(ds.column_names)} (set {flag})",
                        name,
                    )
            inner = _inner_feature(ds.features[gcol])
            names = list(inner.names) if isinstance(inner, datasets.ClassLabel) else label_names
            if isinstance(inner, datasets.ClassLabel):
                names_out = names
            elif label_names is not None:
                names_out = list(label_names)
            cols_d = ds.select_columns([tcol, gcol]).to_dict()
            toks, raw = cols_d[tcol], cols_d[gcol]
            tag_strs = []
            for i, seq in enumerate(raw):
                if len(seq) != len(toks[i]):
                    raise DataError(f"split {sname!r} example {i}: {len(toks[i])} tokens but {len(seq)} tags", name)
                cur = []
                for v in seq:
                    if isinstance(v, int) and not isinstance(v, bool):
                        if names is None:
                            raise DataError(
                                f"split {sname!r}: tags are integers without names; pass label_names", name
                            )
                        if not 0 <= v < len(names):
                            raise DataError(f"split {sname!r} example {i}: tag id {v} has no name", name)
                        cur.append(names[v])
                    else:
                        cur.append(str(v))
                tag_strs.append(cur)
            st: dict = {}
            conv = convert_to_iob2(tag_strs, scheme=scheme, repair=repair, stats=st, where=f"{name} [{sname}]")
            if st.get("repairs"):
                notes.append(f"{st['repairs']} tag(s) repaired in {sname!r}")
            for i, t in enumerate(toks):
                empty = next((j for j, x in enumerate(t) if x is None or not str(x).strip()), None)
                if empty is not None:  # it would get no sub-token, and fail far from here
                    raise DataError(f"split {sname!r} example {i}: token {empty} is empty ({t[empty]!r})", name)
            rows[sname] = [{"tokens": [str(x) for x in t], "tags": g} for t, g in zip(toks, conv)]

    if "validation" not in rows and carve_validation and "train" in rows:
        parts = split_deterministic(rows["train"], 0.1, 0.0, seed=0, stratify_key="label" if task == "sequence" else None)
        rows["train"], rows["validation"] = parts["train"], parts["validation"]
        notes.append("validation = deterministic 10% of train (seed 0" + (", stratified by label)" if task == "sequence" else ")"))
    order = [s for s in ("train", "validation", "test") if s in rows]
    source = origin + ("; " + "; ".join(notes) if notes else "")
    return build_task_data(task, {s: rows[s] for s in order}, names_out, source)
