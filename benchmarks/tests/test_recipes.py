"""A packaged recipe that cites a paper-table row trains what that row's cells measured."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from papertables import planner as PL  # noqa: E402
from papertables import runner as RN  # noqa: E402

from fsllm.cli import build_parser, train_config_from_args  # noqa: E402


@pytest.mark.parametrize("recipe,table,row", [("sentiment", "rt-polarity", "fs-verbalizer-causal")])
def test_a_recipe_is_the_row_it_cites(tmp_path, recipe, table, row):
    # the row's cells: the paper table's budget at 1,000 examples, a 500-sentence dev subset, one evaluation an epoch
    budget = PL.Budget(dev_subset=500, evals_per_epoch=1)
    (cell,) = PL.plan(table, [1000], [0], only=[row], n_train=10_000, budget=budget)
    measured = RN.fs_train_config(cell, budget, tmp_path / "run")
    cfg = train_config_from_args(build_parser().parse_args(["train", "--recipe", recipe]))
    # what a recipe leaves to fsllm's defaults: where it writes, the seed, the precision (``auto``: bf16 where
    # the hardware has it, as the main job), evaluating once an epoch (the cells name the same steps), NER readings
    fs = dataclasses.replace(cfg.fs, ner_decoding=measured.fs.ner_decoding, word_scores=measured.fs.word_scores)
    assert cfg.eval_steps is None and measured.eval_steps == -(-1000 // cfg.batch_size)
    same = dataclasses.replace(cfg, fs=fs, output_dir=measured.output_dir, seed=measured.seed,
                               precision=measured.precision, eval_steps=measured.eval_steps)
    assert same == measured
