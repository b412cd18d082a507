"""benchmarks/confirm_levers.sh: the commands each lane runs, in order, with ``python`` replaced by a stub that
prints its arguments (``python -c`` still runs, as the full-set step reads the rate chosen at 4,000 with it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "confirm_levers.sh"


def _lane(tmp_path: Path, lane: str, results: Path) -> tuple[int, list[list[str]], str]:
    stub = tmp_path / "bin"
    stub.mkdir(exist_ok=True)
    (stub / "python").write_text(f'#!/bin/sh\nif [ "$1" = "-c" ]; then exec {sys.executable} "$@"; fi\necho "$@"\n')
    (stub / "python").chmod(0o755)
    env = {**os.environ, "PATH": f"{stub}{os.pathsep}{os.environ['PATH']}", "RESULTS": str(results)}
    env.pop("DRY_RUN", None)
    p = subprocess.run(["bash", str(SCRIPT), lane, str(tmp_path / "runs")], env=env, capture_output=True, text=True,
                       timeout=60)
    commands = [line.split() for line in p.stdout.splitlines() if line.startswith("benchmarks/paper_tables.py")]
    return p.returncode, commands, p.stderr


def only_rows(cmds: list[list[str]]) -> str:
    """Every command's ``--only`` rows, comma-joined."""
    return ",".join(_flag(c, "--only") for c in cmds)


def _flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def _last_flag(cmd: list[str], name: str) -> str:
    """A flag's value as argparse reads it when it is given twice: the later one wins."""
    return cmd[len(cmd) - cmd[::-1].index(name)]


def test_lane_a_runs_the_confirmations_in_order_and_the_full_set_at_the_rate_chosen_at_4000(tmp_path):
    results = tmp_path / "results"
    code, cmds, err = _lane(tmp_path, "a", results)
    assert code == 0
    # no 4,000 cell yet: the full-set steps say so and are skipped, the lane goes on
    assert "full set, fs-r16-rslora: no rate chosen at 4,000 yet" in err
    assert "full set, fs-r16-rslora-doc64: no rate chosen at 4,000 yet" in err
    assert "full set, mpnet: no rate chosen at 4,000 yet" in err
    assert "fs-r16-rslora-repeat2-causal at 4,000: no rate chosen for fs-r16-rslora yet; skipped" in err
    assert "fs-r16-rslora-doc64 at 4,000: no rate chosen for fs-r16-rslora yet; skipped" in err
    assert "mpnet-doc64 at 4,000: no rate chosen for mpnet yet; skipped" in err
    assert "fs-r16-rslora-repeat2-causal on rt-polarity: no rate chosen for fs-r16-rslora yet; skipped" in err
    # the verbalizer's sentence confirmation has a grid of its own: it runs whatever NER has chosen
    assert [(c[1], _flag(c, "--only"), _flag(c, "--sizes")) for c in cmds[:3]] == [
        ("ner", "fs-r16-rslora", "4000"), ("rt-polarity", "fs-verbalizer-causal,fs-verbalizer-lambda-schedule-0.3", "1000"),
        ("ner", "mpnet", "4000")]
    assert _flag(cmds[0], "--grid-seeds") == "0,1,2" and _flag(cmds[0], "--out") == f"{results}/confirm-4000"
    assert _flag(cmds[0], "--lr-grid") == "2.5e-4,5e-4,1e-3"  # extended below the edge two seeds preferred
    # MPNet under the same three-seed selection as the LoRA rows
    assert (_flag(cmds[2], "--encoder-lr-grid"), _flag(cmds[2], "--grid-seeds")) == ("2e-5,5e-5,1e-4", "0,1,2")
    assert all(_flag(c, "--runs").startswith(str(tmp_path / "runs")) for c in cmds)
    (results / "confirm-4000" / "ner").mkdir(parents=True)
    (results / "confirm-4000" / "ner" / "fs-r16-rslora__n4000__s0.json").write_text(json.dumps({"lr": 5e-4}))
    (results / "confirm-4000" / "ner" / "mpnet__n4000__s0.json").write_text(json.dumps({"lr": 1e-4}))
    (results / "confirm-4000" / "ner" / "fs-r16-rslora-doc64__n4000__s0.json").write_text(json.dumps({"lr": 5e-4}))
    sentence_cells = results / "confirm-sentences-no-early-stop" / "rt-polarity"
    sentence_cells.mkdir(parents=True)
    (sentence_cells / "fs-r16-rslora__n1000__s0.json").write_text(json.dumps({"lr": 2e-4}))
    code, cmds, err = _lane(tmp_path, "a", results)
    # repetition with rank 16, then document context, at 4,000 at the rate each base row's grid chose, before the
    # full set
    doc = {_flag(c, "--only"): c for c in cmds
           if _flag(c, "--only").endswith(("-doc64", "-repeat2-causal")) and _flag(c, "--sizes") == "4000"}
    assert list(doc) == ["fs-r16-rslora-repeat2-causal", "fs-r16-rslora-doc64", "mpnet-doc64"]
    # repetition, FS's own lever, and document context, FS's largest, before MPNet's nine-run grid
    mpnet_grid = [_flag(c, "--only") for c in cmds].index("mpnet")
    assert cmds.index(doc["fs-r16-rslora-repeat2-causal"]) < cmds.index(doc["fs-r16-rslora-doc64"]) < mpnet_grid
    assert _flag(doc["fs-r16-rslora-repeat2-causal"], "--lr") == "0.0005"
    full = {_flag(c, "--only"): c for c in cmds if _flag(c, "--sizes") == "14041"}
    # FS's NER recipe on the full set (the 91.0 target) after its 4,000 cells, before MPNet's grid; between them
    # FS's own lever on rt-polarity (about 40 min a seed, so it finishes in one sitting before the full set's 5 h
    # a seed), at the rate rank 16's grid chose there, in the no-early-stop folder
    echo = cmds[cmds.index(doc["fs-r16-rslora-doc64"]) + 1]
    assert (echo[1], _flag(echo, "--only"), _flag(echo, "--lr"), _flag(echo, "--seeds")) == (
        "rt-polarity", "fs-r16-rslora-repeat2-causal", "0.0002", "0,1,2")
    assert "--lr-grid" not in echo and "--patience" not in echo
    assert _flag(echo, "--out") == f"{results}/confirm-sentences-no-early-stop"
    # then the verbalizer under the sentence confirmation's own three-seed grid, in the same folder
    verbalizer = cmds[cmds.index(echo) + 1]
    assert (verbalizer[1], _flag(verbalizer, "--only"), _flag(verbalizer, "--grid-seeds")) == (
        "rt-polarity", "fs-verbalizer-causal,fs-verbalizer-lambda-schedule-0.3", "0,1,2")
    assert _flag(verbalizer, "--out") == f"{results}/confirm-sentences-no-early-stop"
    assert cmds.index(verbalizer) + 1 == cmds.index(full["fs-r16-rslora-doc64"]) < mpnet_grid
    # rank 16 alone and MPNet on the full set after MPNet's cells at 4,000
    assert cmds.index(doc["mpnet-doc64"]) < cmds.index(full["fs-r16-rslora"]) < cmds.index(full["mpnet"])
    assert _flag(doc["fs-r16-rslora-doc64"], "--lr") == "0.0005" and "--lr-grid" not in doc["fs-r16-rslora-doc64"]
    mp = doc["mpnet-doc64"]  # MPNet's own budget: the later flag wins
    assert _flag(mp, "--encoder-lr") == "0.0001" and _last_flag(mp, "--epochs") == "10"
    assert all(_flag(c, "--sizes") == "4000" and _flag(c, "--seeds") == "0,1,2" for c in doc.values())
    assert code == 0 and "no rate chosen" not in err and list(full) == ["fs-r16-rslora-doc64", "fs-r16-rslora", "mpnet"]
    assert _flag(full["fs-r16-rslora"], "--lr") == "0.0005" and _flag(full["fs-r16-rslora"], "--epochs") == "2"
    assert _flag(full["fs-r16-rslora-doc64"], "--lr") == "0.0005"
    assert _flag(full["mpnet"], "--encoder-lr") == "0.0001" and "--lr" not in full["mpnet"]
    assert all("--lr-grid" not in c and _flag(c, "--out") == f"{results}/confirm-full" for c in full.values())


@pytest.mark.parametrize("lane", ["b", "c"])
def test_lane_b_starts_with_rt_polarity_document_context_and_the_poolings_and_an_unknown_lane_is_refused(tmp_path, lane):
    code, cmds, err = _lane(tmp_path, lane, tmp_path / "results")
    if lane == "c":
        assert code == 2 and "lane must be a, b or gpu" in err and not cmds
        return
    assert code == 0
    assert (cmds[0][1], _flag(cmds[0], "--only")) == ("rt-polarity", "fs-r16-rslora,hf-native-r16-rslora,minilm")
    # then the document-context screen and the capacity lever's control, a seed at a time, at the screen's rate
    assert [(_flag(c, "--only"), _flag(c, "--seeds"), _flag(c, "--sizes")) for c in cmds[1:10]] == [
        (row, s, "1000") for row in ("fs-doc64", "fs-doc16", "fs-alpha64") for s in "012"]
    assert {_flag(c, "--lr") for c in cmds[1:10]} == {"1e-3"}
    cmds = cmds[:1] + cmds[4:]  # the rest as before the control was queued
    # FS's other poolings at the rate rank 16 chose on rt-polarity, in the same folder, without a grid of their own
    assert (cmds[7][1], _flag(cmds[7], "--only"), _flag(cmds[7], "--lr")) == (
        "rt-polarity", "fs-r16-rslora-max,fs-r16-rslora-last", "5e-4")
    assert "--lr-grid" not in cmds[7] and _flag(cmds[7], "--out") == _flag(cmds[0], "--out")
    assert [_flag(cmds[7], f) for f in ("--seeds", "--epochs", "--patience", "--evals-per-epoch", "--dev-subset")] == [
        _flag(cmds[0], f) for f in ("--seeds", "--epochs", "--patience", "--evals-per-epoch", "--dev-subset")]
    # the first confirmation ran with early stopping, and says so
    assert _flag(cmds[0], "--patience") == "2"
    # then rank 16 again at that rate with every dev evaluation run (no early stopping), in its own folder
    again = cmds[8]
    assert (again[1], _flag(again, "--only"), _flag(again, "--lr"), _flag(again, "--sizes")) == (
        "rt-polarity", "fs-r16-rslora", "5e-4", "1000")
    assert "--patience" not in again and "--lr-grid" not in again
    assert _flag(again, "--out") == f"{tmp_path / 'results'}/sentences-no-early-stop"
    assert [_flag(again, f) for f in ("--seeds", "--epochs", "--evals-per-epoch", "--dev-subset")] == [
        _flag(cmds[0], f) for f in ("--seeds", "--epochs", "--evals-per-epoch", "--dev-subset")]
    # then the whole confirmation so, grids and all, in a folder of its own, before any NER run
    redo = cmds[9]
    assert cmds[0][-2:] == ["--patience", "2"] and redo == [
        a.replace("/confirm-sentences", "/confirm-sentences-no-early-stop") for a in cmds[0][:-2]]
    # and the other sentence confirmations with it
    later = [c for c in cmds if c[1] in ("rt-polarity", "tweets-3") and cmds.index(c) > 9 and "--model" not in c]
    assert later and all("--patience" not in c and _flag(c, "--out").endswith("/confirm-sentences-no-early-stop")
                         for c in later)
    # before the commodity path at 4,000
    assert (cmds[10][1], _flag(cmds[10], "--only"), _flag(cmds[10], "--sizes")) == ("ner", "hf-native-r16-rslora", "4000")
    # then the lambda schedule's third seed and the schedule with rank 16 (three seeds), FS's own lever, and
    # (hf-native's context row waiting for its rate) the LoRA+ and linear-head screens, at the screen's budget, and
    # today's default under the same selection, on the grid of the same scale x rate as rank 16's
    assert [(_flag(c, "--only"), _flag(c, "--seeds")) for c in cmds[11:21]] == [
        ("fs-lambda-schedule-0.3", "2"), *[("fs-r16-rslora-lambda-schedule-0.3", s) for s in "012"],
        *[("fs-loraplus", s) for s in "012"], *[("fs-linear", s) for s in "012"]]
    assert all(_flag(c, "--out").endswith("/levers-screen") and _flag(c, "--lr") == "1e-3" for c in cmds[11:21])
    # the schedule's seed 2 is not run twice (once it was in the lane's tail)
    assert [(_flag(c, "--only"), _flag(c, "--seeds")) for c in cmds].count(("fs-lambda-schedule-0.3", "2")) == 1
    default = cmds[21]
    assert (_flag(default, "--only"), _flag(default, "--sizes"), _flag(default, "--grid-seeds")) == (
        "fs-bidirectional", "4000", "0,1,2")
    assert _last_flag(default, "--lr-grid") == "5e-4,1e-3,2e-3"
    assert "hf-native-r16-rslora-doc64 at 4,000: no rate chosen for hf-native-r16-rslora yet" in err
    assert "repeat2-causal" not in err and "repeat2-causal" not in only_rows(cmds)  # lane a's now
    cells = tmp_path / "results" / "confirm-4000" / "ner"
    cells.mkdir(parents=True)
    (cells / "hf-native-r16-rslora__n4000__s0.json").write_text(json.dumps({"lr": 5e-4}))
    code, cmds, err = _lane(tmp_path, lane, tmp_path / "results")
    only = [_flag(c, "--only") for c in cmds]
    doc = cmds[only.index("hf-native-r16-rslora-doc64")]
    assert code == 0 and _flag(doc, "--lr") == "0.0005" and _flag(doc, "--sizes") == "4000"
    # after hf-native's grid the schedule screens (FS's own lever, at the screen's budget), then the LoRA+ and
    # linear-head screens (about 15 min a seed), then the context row (about 3 h a seed), the default's grid and
    # hf-native's full set
    g = only.index("hf-native-r16-rslora")
    assert [(only[g + i], _flag(cmds[g + i], "--seeds"), _flag(cmds[g + i], "--sizes")) for i in range(1, 11)] == [
        ("fs-lambda-schedule-0.3", "2", "1000"), *[("fs-r16-rslora-lambda-schedule-0.3", s, "1000") for s in "012"],
        *[("fs-loraplus", s, "1000") for s in "012"], *[("fs-linear", s, "1000") for s in "012"]]
    assert all(_flag(cmds[g + i], "--out").endswith("/levers-screen") for i in range(1, 11))
    k = only.index("hf-native-r16-rslora-doc64")
    assert k == g + 11
    default = cmds[k + 1]
    assert (_flag(default, "--only"), _flag(default, "--sizes")) == ("fs-bidirectional", "4000")
    full = cmds[k + 2]
    assert _flag(full, "--only") == "hf-native-r16-rslora" and _flag(full, "--sizes") == "14041"
    gemma = [c for c in cmds if "--model" in c]
    assert gemma and all(_flag(c, "--model") == "gemma3-270m" for c in gemma)


def test_the_gpu_lane_runs_each_rows_seeds_side_by_side_once_its_rate_is_chosen(tmp_path):
    results = tmp_path / "results"
    code, cmds, err = _lane(tmp_path, "gpu", results)
    assert code == 0
    assert "full set, fs-r16-rslora: no rate chosen at 4,000 yet" in err
    assert "full set, fs-r16-rslora-doc64: no rate chosen at 4,000 yet" in err
    # without a chosen rate only the grids run, one command each, every seed's grid inside it
    assert [(_flag(c, "--only"), _flag(c, "--seeds")) for c in cmds] == [
        ("hf-native-r16-rslora", "0,1,2"), ("fs-bidirectional", "0,1,2")]
    cells = results / "confirm-4000" / "ner"
    cells.mkdir(parents=True)
    for row in ("fs-r16-rslora", "fs-r16-rslora-doc64", "hf-native-r16-rslora"):
        (cells / f"{row}__n4000__s0.json").write_text(json.dumps({"lr": 5e-4}))
    code, cmds, err = _lane(tmp_path, "gpu", results)
    assert code == 0 and "no rate chosen" not in err

    steps = [(_flag(c, "--only"), _flag(c, "--sizes")) for c in cmds]
    # the full set first, with document context and without, then the grids, hf-native's full set, repetition
    assert list(dict.fromkeys(steps)) == [
        ("fs-r16-rslora-doc64", "14041"), ("fs-r16-rslora", "14041"), ("hf-native-r16-rslora", "4000"),
        ("hf-native-r16-rslora", "14041"), ("fs-bidirectional", "4000"), ("fs-r16-rslora-repeat2-causal", "4000")]
    for step in steps:
        runs = [_last_flag(c, "--seeds") for c, s in zip(cmds, steps) if s == step]
        if step[0] in ("hf-native-r16-rslora", "fs-bidirectional") and step[1] == "4000":
            assert runs == ["0,1,2"]  # a grid: one command
        else:
            assert sorted(runs) == ["0", "1", "2"]  # each seed its own process
    full = [c for c, s in zip(cmds, steps) if s == ("fs-r16-rslora", "14041")]
    assert all(_flag(c, "--lr") == "0.0005" and _flag(c, "--out") == f"{results}/confirm-full" for c in full)
