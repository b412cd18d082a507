"""benchmarks/grid_replay.py: the finished grids replayed under the skip rule, the members it skips and their time."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/

import grid_replay  # noqa: E402


def _member(folder: Path, row: str, lr: float, seed: int, dev: float, minutes: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{row}__n4000__s{seed}__lr{lr:g}.json").write_text(json.dumps(
        {"method": row, "train_size": 4000, "lr": lr, "seed": seed, "dev_metric": dev, "cell_seconds": minutes * 60}))


def test_the_replay_skips_a_rate_that_cannot_win_and_counts_its_time(tmp_path, capsys):
    grid = tmp_path / "confirm" / "ner" / "grid"
    # 1e-3 after two seeds (0.80, 0.70) could reach 0.833 at most; 5e-4 finishes first on seed 2 at a mean of 0.93
    for (lr, seed), dev in {(5e-4, 0): 0.92, (5e-4, 1): 0.93, (5e-4, 2): 0.94, (1e-3, 0): 0.80, (1e-3, 1): 0.70,
                            (1e-3, 2): 0.99}.items():
        _member(grid, "row", lr, seed, dev, minutes=30.0)
    _member(grid, "one-seed", 5e-4, 0, 0.5, minutes=10.0)  # a single-seed grid: nothing to replay
    out = tmp_path / "replay.md"
    assert grid_replay.main(["--results", str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    assert "| confirm | ner | row | 4000 | 6 | 0.001, 2 | yes | 30 / 180 |" in text
    assert "one-seed" not in text and "In all: 30 of 180 minutes" in text


def test_the_replay_fails_where_it_would_choose_another_rate(tmp_path, monkeypatch, capsys):
    grid = tmp_path / "confirm" / "ner" / "grid"
    for (lr, seed), dev in {(5e-4, 0): 0.9, (5e-4, 1): 0.9, (1e-3, 0): 0.85, (1e-3, 1): 0.99}.items():
        _member(grid, "row", lr, seed, dev, minutes=1.0)
    # a rule that skipped too much (every member of a rate behind after its first seed) would change the choice
    monkeypatch.setattr(grid_replay, "replay", lambda rates, seeds, dev: [(5e-4, 0), (5e-4, 1), (1e-3, 0)])
    assert grid_replay.main(["--results", str(tmp_path)]) == 1
    assert "the replay chose 0.0005, the grid 0.001" in capsys.readouterr().err
