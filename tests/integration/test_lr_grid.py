"""Learning-rate grids trained end to end on a tiny model: the choice, test scored once, resume mid-grid.

Members are made to differ deterministically: the dev accuracy of each (rate, seed) member is set by
the test (the evaluation is wrapped), so the choice the grid must make is known in advance.
"""

from __future__ import annotations

import filecmp
import json
import os
import signal
import statistics

import pytest
from conftest import write_csv_dir
from transformers import TrainerCallback

import fsllm.selection as selection
import fsllm.training as training
from fsllm.cli import main
from fsllm.errors import FSLLMError, TrainingInterrupted
from fsllm.training import train

TINY = ["--max-steps", "1", "--batch-size", "4"]  # one step, dev scored once: members are cheap


class Members:
    """Which member is training, dev accuracy per (rate, seed) member, and the test evaluations counted."""

    def __init__(self, monkeypatch, dev: dict[tuple[float, int], float]):
        self.dev = dev
        self.current: tuple | None = None
        self.test_calls = 0
        self.started: list[tuple] = []
        resolve, evaluate = training.resolve_config, training.evaluate_examples

        def resolve_config(config, resume, overrides):
            cfg, folder = resolve(config, resume, overrides)
            self.current = (cfg.learning_rate if not isinstance(cfg.learning_rate, list) else None, cfg.seed)
            if self.current[0] is not None:
                self.started.append((*self.current, "resume" if resume else "new"))
            return cfg, folder

        def evaluate_examples(*args, progress=False, **kwargs):
            metrics, records = evaluate(*args, progress=progress, **kwargs)
            if progress == "test":
                self.test_calls += 1
            elif progress == "dev" and self.current in self.dev:
                metrics["accuracy"] = self.dev[self.current]
            return metrics, records

        monkeypatch.setattr(training, "resolve_config", resolve_config)
        monkeypatch.setattr(training, "evaluate_examples", evaluate_examples)
        monkeypatch.setattr(selection, "evaluate_examples", evaluate_examples)


def _two_rates_two_seeds(tmp_path, model_dir):
    """``fsllm train`` of a grid of 1e-3 and 5e-2 over seeds 42 and 7 on a small CSV set; its data and run folder."""
    data, run = write_csv_dir(tmp_path), tmp_path / "run"
    assert main(["train", "--data", str(data), "--model", str(model_dir), "--output", str(run), *TINY,
                 "--lr", "1e-3,5e-2", "--grid-seeds", "42,7"]) == 0
    return data, run


def test_grid_chooses_on_the_mean_dev_over_seeds_and_scores_test_once(tmp_path, tiny_model_dir, monkeypatch, capsys):
    # seed 42 alone would choose 1e-3 (0.9 > 0.6); the mean over seeds 42 and 7 chooses 5e-2 (0.65 > 0.5)
    dev = {(1e-3, 42): 0.9, (5e-2, 42): 0.6, (1e-3, 7): 0.1, (5e-2, 7): 0.7}
    members = Members(monkeypatch, dev)
    data, run = _two_rates_two_seeds(tmp_path, tiny_model_dir)
    out = capsys.readouterr().out
    assert members.test_calls == 1  # the chosen model alone, once; no member touched test
    grid = json.loads((run / "grid.json").read_text())
    assert grid["chosen_lr"] == 5e-2 and grid["chosen_member"] == "grid/lr0.05-seed42"
    assert {(m["lr"], m["seed"]): m["dev"] for m in grid["members"]} == dev
    assert grid["mean_dev"] == {"0.001": pytest.approx(statistics.fmean([0.9, 0.1])),
                                "0.05": pytest.approx(statistics.fmean([0.6, 0.7]))}
    assert grid["rates"] == [1e-3, 5e-2] and grid["seeds"] == [42, 7] and grid["metric"] == "accuracy"
    for lr, seed in dev:  # every member is a plain run folder that never scored test
        member = json.loads((run / "grid" / f"lr{lr:g}-seed{seed}" / "metrics.json").read_text())
        assert "test" not in member and member["dev"]["accuracy"] == dev[(lr, seed)]
        assert not (run / "grid" / f"lr{lr:g}-seed{seed}" / "predictions_test.jsonl").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["grid"] == grid and metrics["dev"]["accuracy"] == 0.6 and "accuracy" in metrics["test"]
    chosen = run / "grid" / "lr0.05-seed42" / "model"
    for name in ("adapter/adapter_model.safetensors", "fsllm_head.safetensors", "config.json"):
        assert filecmp.cmp(run / "model" / name, chosen / name, shallow=False), name
    assert f"value: {metrics['test']['accuracy']}" in (run / "model" / "README.md").read_text()
    assert (run / "predictions_test.jsonl").is_file() and (run / "plots" / "confusion_test.png").is_file()
    assert "chosen: lr 0.05 (grid/lr0.05-seed42)" in out and f"run folder: {run}" in out

    # the run folder reads as any other: fsllm eval scores its model as the grid did
    rc = main(["eval", str(run), "--data", str(data), "--split", "test"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(metrics["test"]["accuracy"])


def test_grid_trains_no_member_whose_rate_cannot_win(tmp_path, tiny_model_dir, monkeypatch, capsys):
    # after seed 42, 5e-2 leads and trains first on seed 7 (0.9 again); 1e-3 could then reach (0.2 + 1.0) / 2 = 0.6
    # at best, below 0.9: its seed-7 member is not trained, and the choice is the one the whole grid would make
    dev = {(1e-3, 42): 0.2, (5e-2, 42): 0.9, (5e-2, 7): 0.9, (1e-3, 7): 1.0}
    members = Members(monkeypatch, dev)
    _, run = _two_rates_two_seeds(tmp_path, tiny_model_dir)
    assert members.started == [(1e-3, 42, "new"), (5e-2, 42, "new"), (5e-2, 7, "new")]
    grid = json.loads((run / "grid.json").read_text())
    assert grid["chosen_lr"] == 5e-2 and grid["mean_dev"] == {"0.001": None, "0.05": pytest.approx(0.9)}
    assert [(m["lr"], m["seed"]) for m in grid["members"]] == [(1e-3, 42), (5e-2, 42), (5e-2, 7)]
    assert grid["cannot_win"] == {"0.001": {"seeds_not_run": [7], "bound": pytest.approx(0.6), "leader": "0.05",
                                            "leader_dev": pytest.approx(0.9)}}
    assert not (run / "grid" / "lr0.001-seed7").exists() and members.test_calls == 1
    # resumed, the finished grid stands: nothing trained, test not scored again
    members.started.clear()
    assert main(["train", "--resume", "--output", str(run)]) == 0
    assert members.started == [] and members.test_calls == 1


class StopAfterFirstCheckpoint(TrainerCallback):
    """Raise once, after the first checkpoint of the member trained at ``lr`` (a run killed there)."""

    def __init__(self, lr: float):
        self.lr, self.fired = lr, False

    def on_save(self, args, state, control, **kwargs):
        if args.learning_rate == self.lr and not self.fired:
            self.fired = True
            raise KeyboardInterrupt


class StartStep(TrainerCallback):
    """The global step each training starts from (a resumed one starts at its checkpoint's)."""

    def __init__(self):
        self.steps: list[tuple[float, int]] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.steps.append((args.learning_rate, state.global_step))


def test_grid_resumes_mid_grid_and_matches_a_plain_run(tmp_path, tiny_model_dir, monkeypatch):
    dev = {(1e-3, 42): 0.4, (5e-2, 42): 0.8}
    members = Members(monkeypatch, dev)
    data, run = write_csv_dir(tmp_path), tmp_path / "run"
    # bf16: the grid scores test outside the Trainer, and must do so under the autocast the Trainer used
    options = dict(data=str(data), model=str(tiny_model_dir), max_steps=2, batch_size=4, eval_steps=1, seed=42,
                   precision="bf16")
    with pytest.raises(KeyboardInterrupt):  # killed in the second member, after its checkpoint of step 1
        train(**options, output_dir=str(run), learning_rate=[1e-3, 5e-2], callbacks=[StopAfterFirstCheckpoint(5e-2)])
    assert (run / "grid" / "lr0.001-seed42" / "metrics.json").is_file()
    assert not (run / "grid" / "lr0.05-seed42" / "metrics.json").exists() and not (run / "grid.json").exists()
    first = (run / "grid" / "lr0.001-seed42" / "metrics.json").read_text()

    members.started.clear()
    start = StartStep()
    res = train(resume=True, output_dir=str(run), callbacks=[start])
    assert members.started == [(5e-2, 42, "resume")]  # the finished member is skipped, not trained again
    assert start.steps == [(5e-2, 1)]  # the interrupted one continues from its checkpoint
    assert (run / "grid" / "lr0.001-seed42" / "metrics.json").read_text() == first
    assert res.metrics["grid"]["chosen_lr"] == 5e-2 and members.test_calls == 1

    # a finished grid resumed again returns its result: test is not scored a second time
    again = train(resume=True, output_dir=str(run))
    assert again.metrics == res.metrics and members.test_calls == 1 and members.started == [(5e-2, 42, "resume")]

    # the grid's run is the plain run at the chosen rate: the same dev and test scores, to the last digit
    plain = train(**options, output_dir=str(tmp_path / "plain"), learning_rate=5e-2)
    assert "grid" not in plain.metrics and not (tmp_path / "plain" / "grid").exists()
    def scores(m: dict) -> dict:  # everything but the evaluation's wall-clock time
        return {k: v for k, v in m.items() if k != "seconds"}

    assert scores(plain.metrics["test"]) == scores(res.metrics["test"]) and "seconds" in res.metrics["test"]
    assert scores(plain.metrics["dev"]) == scores(res.metrics["dev"])
    assert members.test_calls == 2


class SignalInMember(TrainerCallback):
    """SIGTERM to this process as step 2 of the member trained at ``lr`` begins (a scheduler's stop)."""

    def __init__(self, lr: float):
        self.lr = lr

    def on_step_begin(self, args, state, control, **kwargs):
        if args.learning_rate == self.lr and state.global_step == 1:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_grid_stopped_by_a_signal_names_the_grid_to_resume_and_resumes_from_the_members_step(
        tmp_path, tiny_model_dir, monkeypatch):
    """A signal in the second member: it saves its step (2, between evaluations every 3 steps), the message
    gives the grid's folder (not the member's) to resume, and the grid resumes that member from step 2."""
    Members(monkeypatch, {(1e-3, 42): 0.4, (5e-2, 42): 0.8})
    data, run = write_csv_dir(tmp_path), tmp_path / "run"
    options = dict(data=str(data), model=str(tiny_model_dir), max_steps=4, batch_size=4, eval_steps=3, seed=42)
    with pytest.raises(TrainingInterrupted) as stop:
        train(**options, output_dir=str(run), learning_rate=[1e-3, 5e-2], callbacks=[SignalInMember(5e-2)])
    assert stop.value.step == 2 and f"--resume --output {run}`" in str(stop.value)
    assert (run / "grid" / "lr0.05-seed42" / "checkpoints" / "checkpoint-2").is_dir()
    start = StartStep()
    res = train(resume=True, output_dir=str(run), callbacks=[start])
    assert start.steps == [(5e-2, 2)] and res.metrics["grid"]["chosen_lr"] == 5e-2


def test_grid_without_dev_split_is_refused_before_anything_is_written(tmp_path, tiny_model_dir, monkeypatch, capsys):
    prepare = selection.prepare_data

    def without_dev(cfg):  # data with no dev split (a folder gets one carved out of train: a catalogue entry may not)
        data = prepare(cfg)
        data.dev = []
        return data

    monkeypatch.setattr(selection, "prepare_data", without_dev)
    run = tmp_path / "run"
    rc = main(["train", "--data", str(write_csv_dir(tmp_path)), "--model", str(tiny_model_dir), "--output", str(run),
               *TINY, "--lr", "1e-3,5e-2"])
    err = capsys.readouterr().err
    assert rc == 2 and "no dev split" in err and len(err.strip().splitlines()) == 1
    assert not run.exists()


def test_grid_with_a_model_that_does_not_load_leaves_nothing_behind(tmp_path):
    run = tmp_path / "run"
    with pytest.raises((FSLLMError, OSError), match="no-such-model"):
        train(data=str(write_csv_dir(tmp_path)), model=str(tmp_path / "no-such-model"), output_dir=str(run),
              max_steps=1, learning_rate=[1e-3, 5e-2])
    assert not run.exists()  # so the corrected command is not refused as "already holds a run"
