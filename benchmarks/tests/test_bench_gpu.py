"""The GPU benchmark's smoke mode runs on a CPU: variants switch in place and the agreement check
tells equal functions (flex vs SDPA decay, with and without the decay horizon) from different ones."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/

import bench_gpu  # noqa: E402

import fsllm.attention as fa  # noqa: E402


@pytest.mark.slow
def test_smoke_run_times_every_variant_and_checks_agreement(tmp_path):
    out = tmp_path / "gpu.json"
    assert bench_gpu.main(["--smoke", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = data["results"]["tiny"]
    assert set(rows) == {"64", "160"}
    for row in rows.values():
        for name in bench_gpu.VARIANTS:
            assert row[name]["step_median_ms"] > 0
    agree = data["agreement"]["tiny"]
    assert agree["tokens"] == 160 > data["horizon"]  # checked where the horizon cuts
    same = ["decay-flex vs decay-sdpa", "decay-flex vs decay-flex-full", "causal-flex vs causal-sdpa"]
    real = agree["decay-sdpa vs causal-sdpa"]["max_abs"]
    for pair in same:
        assert agree[pair]["max_abs"] < real / 10, (pair, agree[pair], real)
    assert fa.DECAY_HORIZON_BIAS == bench_gpu.DEFAULT_HORIZON_BIAS  # the library's value is back
    assert "| 160 |" in out.with_suffix(".md").read_text()
