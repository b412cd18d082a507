"""Learning-rate grids without training: the choice rule, the --lr / --grid-seeds options and their checks."""

from __future__ import annotations

import math
import random

import pytest

from fsllm.cli import build_parser, train_config_from_args
from fsllm.config import TrainConfig
from fsllm.errors import ConfigError
from fsllm.selection import beaten_rates, choose_rate, member_config, member_name, next_member, next_to_train


def test_choose_rate_takes_the_best_mean_over_seeds():
    # seed 0 alone would choose 1e-3 (0.9 > 0.6); the mean over both seeds chooses 5e-4 (0.65 > 0.5)
    chosen, scores = choose_rate({5e-4: [0.6, 0.7], 1e-3: [0.9, 0.1]})
    assert chosen == 5e-4
    assert scores == {5e-4: pytest.approx(0.65), 1e-3: pytest.approx(0.5)}
    assert choose_rate({5e-4: [0.6], 1e-3: [0.9]})[0] == 1e-3


def test_choose_rate_ties_go_to_the_first_rate_and_missing_scores_never_win():
    assert choose_rate({2e-4: [0.5], 5e-4: [0.5], 1e-3: [0.4]})[0] == 2e-4
    assert choose_rate({1e-3: [0.5], 2e-4: [0.5]})[0] == 1e-3  # the order given, not the smallest
    chosen, scores = choose_rate({2e-4: [0.2, 0.2], 5e-4: [0.9, None], 1e-3: [math.nan, 0.9]})
    assert chosen == 2e-4 and scores[5e-4] is None and scores[1e-3] is None


def test_choose_rate_lower_is_better_metrics():
    assert choose_rate({2e-4: [0.3], 5e-4: [0.2], 1e-3: [0.4]}, greater_is_better=False)[0] == 5e-4
    assert choose_rate({2e-4: [None], 5e-4: [0.9]}, greater_is_better=False)[0] == 5e-4


def _cfg(argv: list[str]) -> TrainConfig:
    return train_config_from_args(build_parser().parse_args(["train", "--data", "x", *argv]))


def test_lr_option_reads_one_rate_as_before_and_a_comma_list_as_a_grid():
    assert _cfg(["--lr", "1e-3"]).learning_rate == 1e-3  # a plain run: a number, as before the grids
    assert _cfg(["--lr", "1e-3"]) == TrainConfig(data="x", learning_rate=1e-3)
    cfg = _cfg(["--lr", "5e-4,1e-3,2e-3", "--grid-seeds", "0,1,2", "--seed", "1"])
    assert cfg.learning_rate == [5e-4, 1e-3, 2e-3] and cfg.grid_seeds == [0, 1, 2]
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # config.json round trip (resume, --config)


def test_member_config_is_a_plain_run_without_test(tmp_path):
    cfg = TrainConfig(data="x", learning_rate=[5e-4, 1e-3], grid_seeds=[0, 42], output_dir=str(tmp_path))
    m = member_config(cfg, 1e-3, 0)
    assert m.learning_rate == 1e-3 and m.seed == 0 and m.grid_seeds is None and not m.evaluate_test
    assert m.output_dir == str(tmp_path / "grid" / member_name(1e-3, 0)) and member_name(1e-3, 0) == "lr0.001-seed0"
    assert m.fs == cfg.fs and m.data == cfg.data


@pytest.mark.parametrize("argv, message", [
    (["--lr", "5e-4,5e-4"], "two or more different rates"),
    (["--lr", "5e-4,"], "two or more different rates"),
    (["--lr", "5e-4,-1"], "learning_rate must be > 0"),
    (["--lr", "1e-3", "--grid-seeds", "0,1"], "applies to a learning-rate grid"),
    (["--lr", "1e-3,2e-3", "--grid-seeds", "0,1"], "lacks seed 42"),
    (["--lr", "1e-3,2e-3", "--grid-seeds", "1,1", "--seed", "1"], "different integers"),
])
def test_bad_grids_are_config_errors(argv, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(argv)


def test_bad_rate_text_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--lr", "1e-3,fast"])
    assert "comma-separated numbers" in capsys.readouterr().err


def _run_grid_skipping(full: dict[tuple[float, int], float], rates, seeds, greater: bool) -> dict:
    """The members a grid trains when it skips the beaten ones, in the order it trains them."""
    dev: dict[tuple[float, int], float] = {}
    while (member := next_to_train(rates, seeds, dev, greater)[0]) is not None:
        dev[member] = full[member]
    return dev


@pytest.mark.parametrize("greater", [True, False])
def test_skipping_beaten_members_never_changes_the_choice(greater):
    # over many random grids (ties and near-ties included: scores on a 0.01 grid), the choice with the
    # beaten members skipped is the whole grid's, and the rule does skip in many of them
    rng = random.Random(0)
    rates, seeds = (2e-4, 5e-4, 1e-3), (0, 1, 2)
    skipped = 0
    for _ in range(2000):
        centre = [rng.choice([0.5, 0.9, 0.97]) for _ in rates]
        full = {(lr, s): round(min(1.0, max(0.0, centre[i] + rng.gauss(0, 0.05))), 2)
                for i, lr in enumerate(rates) for s in seeds}
        if not greater:  # an error metric: 0 at best
            full = {k: round(1.0 - v, 2) for k, v in full.items()}
        dev = _run_grid_skipping(full, rates, seeds, greater)
        skipped += len(dev) < len(full)
        partial = choose_rate({lr: [dev.get((lr, s)) for s in seeds] for lr in rates}, greater)[0]
        assert partial == choose_rate({lr: [full[lr, s] for s in seeds] for lr in rates}, greater)[0]
    assert skipped > 200


def test_a_rate_that_could_still_tie_the_leader_is_not_beaten():
    # 2e-4 at 1.0 on seed 1 would tie 5e-4's 0.75 and win the tie (first in the grid): it must train
    assert beaten_rates((2e-4, 5e-4), (0, 1), {(2e-4, 0): 0.5, (5e-4, 0): 0.75, (5e-4, 1): 0.75}) == {}
    assert beaten_rates((2e-4, 5e-4), (0, 1), {(2e-4, 0): 0.5, (5e-4, 0): 0.75, (5e-4, 1): 0.76}) == {
        2e-4: {"seeds_not_run": [1], "bound": 0.75, "leader": 5e-4, "leader_dev": pytest.approx(0.755)}}
    # lower is better: 0 is the best an error can reach
    assert beaten_rates((2e-4, 5e-4), (0, 1), {(2e-4, 0): 0.9, (5e-4, 0): 0.3, (5e-4, 1): 0.4}, False) == {
        2e-4: {"seeds_not_run": [1], "bound": 0.45, "leader": 5e-4, "leader_dev": pytest.approx(0.35)}}
    # scores past the metric's best (percentages): the bound would not hold, so nothing is skipped
    assert beaten_rates((2e-4, 5e-4), (0, 1), {(2e-4, 0): 50.0, (5e-4, 0): 75.0, (5e-4, 1): 76.0}) == {}
    # no rate finished on every seed: nothing to compare with, nothing beaten
    assert beaten_rates((2e-4, 5e-4), (0, 1), {(2e-4, 0): 0.1, (5e-4, 0): 0.9}) == {}
    # a finished member without a score: its rate never wins, so its other members need not train
    assert beaten_rates((2e-4, 5e-4), (0, 1), {(2e-4, 0): math.nan}) == {
        2e-4: {"seeds_not_run": [1], "reason": "a finished member has no dev score"}}


def test_the_next_member_is_the_earliest_seed_s_leading_rate():
    rates, seeds = (2e-4, 5e-4, 1e-3), (0, 1, 2)
    todo = [(lr, s) for s in (1, 2) for lr in rates]
    # nothing known: the grid's order
    assert next_member(todo, rates, seeds, {}) == (2e-4, 1)
    dev = {(2e-4, 0): 0.7, (5e-4, 0): 0.9, (1e-3, 0): 0.8}
    assert next_member(todo, rates, seeds, dev) == (5e-4, 1)
    assert next_member(todo, rates, seeds, dev, greater_is_better=False) == (2e-4, 1)
