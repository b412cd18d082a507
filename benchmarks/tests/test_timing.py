"""The benchmark scripts' one way of timing: warm-up calls are not timed, the preparation between calls is
not timed, the order rotates, the statistics are the median and quartiles, and a fresh-process worker's
result comes back (on a fake clock, so the tests are exact and take no time)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/

import common  # noqa: E402
import timing  # noqa: E402


class FakeClock:
    """``time.perf_counter`` that moves only when a timed function says how long it took."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def spend(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    c = FakeClock()
    monkeypatch.setattr(timing.time, "perf_counter", c)
    return c


def test_round_robin_times_each_call_alone_after_untimed_warmup(clock):
    calls: list[str] = []
    cost = {"a": iter([100.0, 1.0, 3.0, 2.0]), "b": iter([100.0, 10.0, 30.0, 20.0])}  # first call: the warm-up

    def fn(name: str):
        def run() -> None:
            calls.append(name)
            clock.spend(next(cost[name]))
        return run

    prepared: list[str] = []

    def prepare(name: str) -> None:
        prepared.append(name)
        clock.spend(1000.0)  # switching variants costs time that must not be counted

    t = timing.time_round_robin({"a": fn("a"), "b": fn("b")}, repeats=3, warmup=1, prepare=prepare)
    assert t["a"].samples == [1.0, 3.0, 2.0] and t["b"].samples == [10.0, 30.0, 20.0]
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then the first name rotates
    assert prepared == calls  # before every call, warm-up included
    assert t["a"].median == 2.0 and t["a"].min == 1.0 and t["a"].max == 3.0
    assert (t["a"].q1, t["a"].q3, t["a"].iqr) == (1.5, 2.5, 1.0)


def test_time_repeats_and_timed(clock):
    costs = iter([5.0, 1.0, 4.0, 2.0])
    t = timing.time_repeats(lambda: clock.spend(next(costs)), repeats=3, warmup=1)
    assert t.samples == [1.0, 4.0, 2.0] and t.median == 2.0
    out, seconds = timing.timed(lambda: clock.spend(0.5) or "answer")
    assert (out, seconds) == ("answer", 0.5)
    one = timing.Timing([0.25])
    assert one.median == one.q1 == one.q3 == one.min == 0.25 and one.iqr == 0.0


def test_compare_steps_reports_samples_medians_and_the_ratio(clock):
    costs = {"new": iter([9.0, 1.0, 1.0, 3.0]), "old": iter([9.0, 2.0, 4.0, 6.0])}
    out = timing.compare_steps({n: (lambda n=n: clock.spend(next(costs[n]))) for n in ("new", "old")}, repeats=3)
    assert out == {"step_seconds": {"new": [1.0, 1.0, 3.0], "old": [2.0, 4.0, 6.0]},
                   "median_seconds": {"new": 1.0, "old": 4.0}, "new_vs_old": 0.25}


def test_percentile_is_a_latency_some_request_saw():
    xs = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert timing.percentile(xs, 0.5) == 3.0 and timing.percentile(xs, 0.99) == 5.0 and timing.percentile(xs, 0) == 1.0


def test_rss_peak_counts_what_the_calls_allocate():
    pytest.importorskip("numpy")
    import numpy as np

    def allocate() -> int:
        a = np.ones(64 * 2**20 // 8)  # 64 MB, touched
        return int(a.sum())

    out, mem = timing.rss_peak(allocate)
    assert out == 64 * 2**20 // 8
    if mem.reset:  # Linux >= 4.0: the high-water mark restarts at the current RSS
        assert 50 < mem.step_peak_mb < 200, mem
    assert mem.peak_rss_mb >= mem.rss_before_mb


def test_run_worker_returns_the_marked_line_and_names_a_failure(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(
        "import json, sys\n"
        f"sys.path.insert(0, {str(Path(common.__file__).parent)!r})\n"
        "import common\n"
        "spec = json.loads(open(sys.argv[2]).read())\n"
        "if spec.get('fail'): sys.exit('broken on purpose')\n"
        "print('noise')\n"
        "common.print_result({'twice': 2 * spec['x']})\n"
    )
    assert common.run_worker(script, "--w", {"x": 21}, tmp_path / "spec.json", "doubler") == {"twice": 42}
    with pytest.raises(RuntimeError, match="doubler failed:\n.*broken on purpose"):
        common.run_worker(script, "--w", {"fail": True}, tmp_path / "spec.json", "doubler")
