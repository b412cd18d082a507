"""PNG plots of training runs and evaluations (no screen needed).

Figures are drawn on ``matplotlib.figure.Figure`` objects with an explicit Agg canvas
(``FigureCanvasAgg``) instead of ``pyplot``: nothing here needs a display, nothing switches the
process-wide matplotlib backend (a notebook importing fsllm keeps its own), no global figure
state is kept, and every figure is freed once written.

* :func:`plot_training` -- ``loss.png`` (train + eval loss vs step) and ``dev_<metric>.png``
  from a HF ``Trainer`` ``state.log_history``.
* :func:`plot_confusion` -- annotated confusion-matrix heat map.
* :func:`plot_curves` -- several named ``(x, y)`` series on one axis.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from . import atomic

__all__ = ["plot_confusion", "plot_curves", "plot_training"]

_DPI = 120


def _new_figure(width: float = 6.4, height: float = 4.0) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    with atomic.replacing(path) as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI, bbox_inches="tight")
    fig.clear()
    return path


def _number(value) -> float | None:
    """``value`` as a finite float, else ``None`` (missing, NaN, inf, non-numeric)."""
    if isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _series(log: Iterable[Mapping], key: str) -> list[tuple[float, float]]:
    """``(step, value)`` of every record holding a finite ``key`` and a ``step``, sorted by step."""
    points = []
    for rec in log:
        if not isinstance(rec, Mapping) or key not in rec:
            continue
        step, value = _number(rec.get("step")), _number(rec[key])
        if step is None or value is None:
            continue
        points.append((step, value))
    points.sort(key=lambda p: p[0])
    return points


def _draw(ax, points: Sequence[tuple[float, float]], label: str, **kw) -> None:
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    marker = "o" if len(points) <= 30 else None
    ax.plot(xs, ys, label=label, marker=marker, markersize=3, linewidth=1.4, **kw)


def _metric_key(metric: str) -> tuple[str, str]:
    """``(name, log key)``: ``"f1"`` and ``"eval_f1"`` both give ``("f1", "eval_f1")``."""
    name = metric[len("eval_") :] if metric.startswith("eval_") else metric
    if not name:
        raise ValueError(f"bad metric name {metric!r}")
    return name, f"eval_{name}"


def plot_training(log: Sequence[Mapping], out_dir: str | Path, metric: str) -> list[Path]:
    """Plot a training log (HF ``Trainer.state.log_history``: dicts with ``step``, ``epoch`` and
    ``loss`` for training records, ``eval_loss``/``eval_<metric>`` for evaluation records).

    Writes into ``out_dir`` (created if needed) only the figures that have data:
      * ``loss.png``: train ``loss`` and ``eval_loss`` vs step (one figure, two lines; only the
        ones present) -- written if either has a point;
      * ``dev_<metric>.png``: ``eval_<metric>`` vs step, best point starred (the highest, or the
        lowest for a metric named ``*loss*``) -- written if it has a point.
    ``metric`` may be given with or without the ``eval_`` prefix. Records without a numeric
    ``step``, and NaN/inf values, are skipped; the final summary record (``train_loss``) is
    ignored. Returns the paths written, in that order (possibly empty).
    """
    out_dir = Path(out_dir)
    name, key = _metric_key(metric)
    log = list(log or [])
    train = _series(log, "loss")
    dev_loss = _series(log, "eval_loss")
    dev_metric = _series(log, key)

    written: list[Path] = []
    if train or dev_loss:
        fig = _new_figure()
        ax = fig.add_subplot()
        if train:
            _draw(ax, train, "train loss")
        if dev_loss:
            _draw(ax, dev_loss, "dev loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title("Loss")
        ax.grid(True, alpha=0.3)
        ax.legend()
        written.append(_save(fig, out_dir / "loss.png"))
    if dev_metric:
        fig = _new_figure()
        ax = fig.add_subplot()
        _draw(ax, dev_metric, f"dev {name}", color="tab:green")
        pick = min if "loss" in name else max  # metrics are higher-is-better, losses not
        best_step, best = pick(dev_metric, key=lambda p: p[1])
        ax.plot([best_step], [best], marker="*", markersize=12, color="tab:red", linestyle="none", label="best")
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.set_title(f"Dev {name} (best {best:.4g} at step {best_step:g})")
        ax.legend()
        ax.grid(True, alpha=0.3)
        written.append(_save(fig, out_dir / f"dev_{_safe_filename(name)}.png"))
    return written


def _safe_filename(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def plot_confusion(
    cm: Sequence[Sequence[int]],
    labels: Sequence[str],
    path: str | Path,
    title: str = "Confusion matrix",
) -> Path:
    """Annotated heat map of a confusion matrix: row = true label, column = predicted label,
    both in ``labels`` order. Cells are coloured by the row-normalised value (share of that true
    label) so rare labels stay visible, and annotated with the raw count. The figure grows with
    the number of labels and fonts shrink, so ~20 labels stay readable. Returns ``path``.
    Raises ``ValueError`` if ``cm`` is not ``len(labels)`` x ``len(labels)``.
    """
    labels = [str(label) for label in labels]
    n = len(labels)
    rows = [[_count(v) for v in row] for row in cm]
    if n == 0 or len(rows) != n or any(len(row) != n for row in rows):
        raise ValueError(f"confusion matrix must be {n} x {n} to match the labels")
    shares = []
    for row in rows:
        total = sum(row)
        shares.append([v / total if total else 0.0 for v in row])

    side = min(max(4.0, 0.45 * n + 2.5), 14.0)
    fig = _new_figure(side + 1.0, side)
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, aspect="equal", interpolation="nearest")
    cbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("share of true label")

    tick_font = 10 if n <= 10 else (8 if n <= 20 else 6)
    cell_font = 10 if n <= 8 else (8 if n <= 14 else (6 if n <= 24 else 4))
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(labels, rotation=45 if n <= 10 else 90, ha="right" if n <= 10 else "center", fontsize=tick_font)
    if n <= 10:
        for tick in ax.get_xticklabels():
            tick.set_rotation_mode("anchor")
    ax.set_yticklabels(labels, fontsize=tick_font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                str(rows[i][j]),
                ha="center",
                va="center",
                fontsize=cell_font,
                color="white" if shares[i][j] > 0.5 else "black",
            )
    return _save(fig, path)


def _count(value) -> int:
    x = _number(value)
    if x is None:
        raise ValueError(f"confusion-matrix cell {value!r} is not a finite number")
    return int(round(x))


def plot_curves(
    curves: Mapping[str, Sequence[tuple[float, float]]],
    path: str | Path,
    xlabel: str = "step",
    ylabel: str = "value",
    title: str = "",
) -> Path:
    """Several named series of ``(x, y)`` points on one axis (e.g. dev F1 vs step, one line per
    model variant). Points with a non-finite coordinate are dropped and each series is sorted by
    x; empty series are left out of the legend. The file is always written (with a "no data"
    note if every series is empty). Returns ``path``.
    """
    fig = _new_figure(7.0, 4.5)
    ax = fig.add_subplot()
    drawn = 0
    for name, points in curves.items():
        clean = []
        for point in points:
            x, y = _number(point[0]), _number(point[1])
            if x is not None and y is not None:
                clean.append((x, y))
        if not clean:
            continue
        clean.sort(key=lambda p: p[0])
        _draw(ax, clean, str(name))
        drawn += 1
    if drawn:
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return _save(fig, path)
