"""Plots: the right files are written, they are real PNGs, and only figures with data exist."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest

from fsllm.plots import plot_confusion, plot_curves, plot_training

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Check ``path`` is a PNG of non-trivial size; return its (width, height) from the IHDR chunk."""
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    assert len(data) > 2000, f"{path} is suspiciously small ({len(data)} bytes)"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 100 and height > 100
    return width, height


def hf_log(with_eval: bool = True) -> list[dict]:
    """A log shaped like ``Trainer.state.log_history``."""
    log = []
    for step in range(10, 101, 10):
        epoch = step / 50
        log.append({"loss": 2.0 / (1 + step / 20), "grad_norm": 1.0, "learning_rate": 1e-4, "epoch": epoch, "step": step})
        if with_eval and step % 20 == 0:
            ev = {"eval_loss": 1.5 / (1 + step / 30), "eval_f1": step / 120, "eval_accuracy": 0.5}
            log.append({**ev, "epoch": epoch, "step": step})
    log.append({"train_runtime": 12.3, "train_loss": 0.8, "epoch": 2.0, "step": 100})
    return log


def test_training_train_and_eval(tmp_path):
    out = tmp_path / "plots"
    paths = plot_training(hf_log(), out, "f1")
    assert paths == [out / "loss.png", out / "dev_f1.png"]
    for p in paths:
        png_size(p)
    assert sorted(x.name for x in out.iterdir()) == ["dev_f1.png", "loss.png"]


def test_training_eval_prefix_accepted(tmp_path):
    paths = plot_training(hf_log(), str(tmp_path), "eval_accuracy")
    assert [p.name for p in paths] == ["loss.png", "dev_accuracy.png"]
    assert all(isinstance(p, Path) for p in paths)


def test_training_only_train_loss(tmp_path):
    paths = plot_training(hf_log(with_eval=False), tmp_path, "f1")
    assert paths == [tmp_path / "loss.png"]
    png_size(paths[0])
    assert not (tmp_path / "dev_f1.png").exists()


def test_training_metric_missing_or_nan(tmp_path):
    log = hf_log()
    for rec in log:
        if "eval_f1" in rec:
            rec["eval_f1"] = math.nan
    paths = plot_training(log, tmp_path, "f1")
    assert [p.name for p in paths] == ["loss.png"]
    # a metric never logged: only the loss figure
    assert [p.name for p in plot_training(hf_log(), tmp_path / "b", "macro_f1")] == ["loss.png"]


def test_training_only_eval_records(tmp_path):
    log = [{"eval_loss": 0.9, "eval_f1": 0.4, "epoch": 1.0, "step": 5}, {"eval_loss": 0.7, "eval_f1": 0.6, "step": 10}]
    paths = plot_training(log, tmp_path, "f1")
    assert [p.name for p in paths] == ["loss.png", "dev_f1.png"]
    for p in paths:
        png_size(p)


def test_training_nothing_to_plot(tmp_path):
    out = tmp_path / "empty"
    assert plot_training([], out, "f1") == []
    assert plot_training([{"train_runtime": 1.0, "train_loss": 0.5, "step": 3}], out, "f1") == []
    assert not out.exists() or not any(out.iterdir())


def test_confusion_small_and_large(tmp_path):
    path = plot_confusion([[5, 1], [2, 7]], ["neg", "pos"], tmp_path / "cm2.png")
    assert path == tmp_path / "cm2.png"
    w2, h2 = png_size(path)

    n = 20
    labels = [f"label_{i:02d}" for i in range(n)]
    cm = [[(30 if i == j else (i * j) % 4) for j in range(n)] for i in range(n)]
    cm[3] = [0] * n  # a label never seen in gold: no division by zero
    path = plot_confusion(cm, labels, tmp_path / "sub" / "cm20.png", title="20 labels")
    w20, h20 = png_size(path)
    assert w20 > w2 and h20 > h2  # the figure grows with the label count


def test_confusion_shape_mismatch(tmp_path):
    with pytest.raises(ValueError, match="2 x 2"):
        plot_confusion([[1, 2, 3], [4, 5, 6]], ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError):
        plot_confusion([], [], tmp_path / "y.png")
    assert not (tmp_path / "x.png").exists()


def test_curves(tmp_path):
    curves = {
        "fs-llm": [(0, 0.1), (50, 0.6), (100, 0.8)],
        "causal": [(100, 0.6), (0, 0.1), (50, 0.4)],  # unsorted: sorted by x
        "broken": [(10, float("nan"))],  # dropped entirely
        "empty": [],
    }
    path = plot_curves(curves, tmp_path / "curves.png", "step", "dev F1", "FS vs causal")
    assert path == tmp_path / "curves.png"
    png_size(path)


def test_curves_no_data_still_written(tmp_path):
    path = plot_curves({}, tmp_path / "none.png", "step", "F1", "nothing")
    png_size(path)
