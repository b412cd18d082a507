"""Training runs killed mid-way (during training, during the report) resume to the same result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import write_conll_dir

# ------------------------------------------------------------------ kill and resume

TRAIN_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from transformers import TrainerCallback
    from fsllm.training import train

    class Slow(TrainerCallback):  # gives the test time to kill the run between steps
        def on_step_end(self, args, state, control, **kw):
            time.sleep(float(sys.argv[3]))

    train(data=sys.argv[1], model=sys.argv[2], output_dir=sys.argv[4], max_steps=10, eval_steps=2, batch_size=4,
          learning_rate=5e-3, seed=7, save_total_limit=None, logging_steps=1, callbacks=[Slow()])
    """
)


def kill_once_written(proc: subprocess.Popen, target: Path, never: str, timeout: float = 240) -> None:
    """SIGKILL ``proc`` as soon as ``target`` exists (polled; bounded by ``timeout`` seconds)."""
    deadline = time.time() + timeout
    while not target.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert target.is_file(), never
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


REPORT_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import fsllm.training as training
    from fsllm.training import train

    evaluate = training.evaluate_examples

    def slow_evaluate(*args, **kwargs):  # the final report takes long enough to be killed in it
        out = evaluate(*args, **kwargs)
        if kwargs.get("progress") == "test":
            time.sleep(30)
        return out

    training.evaluate_examples = slow_evaluate
    train(data=sys.argv[1], model=sys.argv[2], output_dir=sys.argv[3], max_steps=4, batch_size=4,
          learning_rate=5e-3, seed=7)
    """
)


def test_run_killed_during_its_report_leaves_whole_files_and_resumes(tmp_path, tiny_model_dir):
    """Every file of the report is whole or absent after a kill, and --resume writes the report."""
    from fsllm.training import train

    data = write_conll_dir(tmp_path)
    script = tmp_path / "report.py"
    script.write_text(REPORT_SCRIPT)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(script), str(data), str(tiny_model_dir), str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    target = run / "predictions_dev.jsonl"  # written before the (slowed) test evaluation
    kill_once_written(proc, target, "the run never reached its report")
    assert not (run / "metrics.json").exists() and not (run / "predictions_test.jsonl").exists()
    assert [json.loads(line)["tokens"] for line in target.read_text().splitlines()]  # whole lines
    assert (run / "model" / "config.json").is_file() and not list(run.glob(".*"))  # no temporaries left

    resumed = train(resume=True, output_dir=str(run))
    assert json.loads((run / "metrics.json").read_text())["test"]["f1"] == resumed.metrics["test"]["f1"]
    assert len((run / "predictions_test.jsonl").read_text().splitlines()) == resumed.metrics["sizes"]["test"]


def test_killed_run_resumes_to_the_same_metrics(tmp_path, tiny_model_dir):
    from fsllm.training import train

    data = write_conll_dir(tmp_path)
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(data), str(tiny_model_dir), "0.4", str(killed)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    target = killed / "checkpoints" / "checkpoint-4" / "trainer_state.json"
    kill_once_written(proc, target, "the run never reached checkpoint-4")
    assert not (killed / "metrics.json").exists(), "the run finished before it was killed"

    resumed = train(resume=True, output_dir=str(killed))
    full = subprocess.run(
        [sys.executable, str(script), str(data), str(tiny_model_dir), "0", str(tmp_path / "full")],
        capture_output=True, text=True, env=env,
    )
    assert full.returncode == 0, full.stderr[-2000:]
    expected = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert resumed.metrics["train"]["steps"] == expected["train"]["steps"] == 10
    for split in ("dev", "test"):
        for key in ("f1", "precision", "recall", "token_accuracy"):
            assert resumed.metrics[split][key] == pytest.approx(expected[split][key], abs=1e-9), (split, key)
    assert resumed.metrics["train"]["best_dev_metric"] == pytest.approx(expected["train"]["best_dev_metric"])
    # the last checkpoint's weights agree (the tiny model's F1 alone could agree by chance)
    from safetensors.torch import load_file

    last = Path("checkpoints") / "checkpoint-10"
    for name in ("adapter/adapter_model.safetensors", "fsllm_head.safetensors"):
        got, want = load_file(str(killed / last / name)), load_file(str(tmp_path / "full" / last / name))
        assert got.keys() == want.keys()
        for k in want:
            assert torch.allclose(got[k], want[k], atol=1e-6), (name, k)
    # the training log reads like one run: each step once, same losses (to float noise: the two
    # processes may sum in another order when their thread counts differ)
    def losses(run):
        rows = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in rows if "loss" in r]

    got, want = losses(killed), losses(tmp_path / "full")
    assert [step for step, _ in got] == [step for step, _ in want]
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in want], abs=1e-5)


# ------------------------------------------------------------------ stop on a signal and resume

# ``fsllm train`` as a user runs it, each step slowed (before it runs) so the test can signal it in step 2
CLI_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from transformers import TrainerCallback
    import fsllm.training as training
    from fsllm.cli import main

    class Slow(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            time.sleep(float(sys.argv[1]))

    levers = training.lever_callbacks
    training.lever_callbacks = lambda cfg: [*levers(cfg), Slow()]
    sys.exit(main(sys.argv[2:]))
    """
)


def signal_once_logged(proc: subprocess.Popen, log: Path, signum: int, timeout: float = 240) -> None:
    """Send ``signum`` to ``proc`` once its training log holds step 1's loss (polled, bounded in time)."""
    deadline = time.time() + timeout

    def record(line: str) -> dict:  # a line being written may be partial
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            return {}

    def started() -> bool:
        return log.is_file() and any(r.get("step") == 1 and "loss" in r for r in map(record, log.read_text().splitlines()))

    while not started() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert started(), "the run never logged step 1"
    proc.send_signal(signum)


@pytest.mark.parametrize(("signum", "evaluation"), [(signal.SIGTERM, ["--eval-steps", "4"]), (signal.SIGINT, [])])
def test_a_signal_stops_training_with_a_checkpoint_at_that_step_and_resume_finishes_it(tmp_path, tiny_model_dir,
                                                                                      signum, evaluation):
    """SIGTERM (a scheduler, ``kill``) or Ctrl-C in step 2: the step finishes, a checkpoint is saved there
    (between evaluations: every 4 steps, or every epoch of 3 steps), ``fsllm train`` exits with 128 + the
    signal and says how to resume, and ``--resume`` ends where an uninterrupted run ends, with its log (no
    evaluation at the stop, where the epoch strategy would make one at the end of the cut epoch)."""
    from fsllm.training import train

    data = write_conll_dir(tmp_path)  # 10 sentences: 3 steps an epoch at batch 4
    script = tmp_path / "cli.py"
    script.write_text(CLI_SCRIPT)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    args = ["train", "--data", str(data), "--model", str(tiny_model_dir), "--max-steps", "10", "--batch-size", "4",
            "--learning-rate", "5e-3", "--seed", "7", "--logging-steps", "1", *evaluation]

    stopped = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, str(script), "1.0", *args, "--output-dir", str(stopped)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    signal_once_logged(proc, stopped / "train_log.jsonl", signum)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signum, err[-2000:]
    assert not (stopped / "metrics.json").exists()
    assert sorted(d.name for d in (stopped / "checkpoints").iterdir()) == ["checkpoint-2"]
    state = json.loads((stopped / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    last = err.strip().splitlines()[-1]
    assert f"stopped by {signal.Signals(signum).name} at step 2" in last and "--resume" in last, last

    resumed = train(resume=True, output_dir=str(stopped))
    full = subprocess.run([sys.executable, str(script), "0", *args, "--output-dir", str(tmp_path / "full")],
                          capture_output=True, text=True, env=env)
    assert full.returncode == 0, full.stderr[-2000:]
    expected = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert resumed.metrics["train"]["steps"] == expected["train"]["steps"] == 10
    assert resumed.metrics["train"]["best_checkpoint"].endswith(Path(expected["train"]["best_checkpoint"]).name)
    assert resumed.metrics["train"]["best_dev_metric"] == pytest.approx(expected["train"]["best_dev_metric"])

    def log(run):  # each record's step, keys and losses (the summary's timings differ from run to run)
        rows = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
        return [(r["step"], sorted(k for k in r if not k.endswith(("runtime", "per_second"))), r.get("loss"))
                for r in rows]

    got, want = log(stopped), log(tmp_path / "full")
    assert [g[:2] for g in got] == [w[:2] for w in want]
    assert [g[2] for g in got] == pytest.approx([w[2] for w in want], abs=1e-5)
