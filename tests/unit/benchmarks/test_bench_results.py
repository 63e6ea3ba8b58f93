"""The benchmark runner's bookkeeping: re-measuring some growth sizes keeps the others."""

from __future__ import annotations

import importlib.util

from conftest import PROJECT

BENCH = PROJECT / "benchmarks" / "run.py"


def _runner() -> object:
    spec = importlib.util.spec_from_file_location("bench_runner", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_growth_sizes_measured_now_replace_theirs_and_keep_the_others() -> None:
    merge = _runner().merge_growth  # type: ignore[attr-defined]
    previous = {
        "1000_wall_s": 9.0,
        "10000_wall_s": 99.0,
        "100000_wall_s": 999.0,
        "100000_peak_mb": 1173,
        "latency_s": 0.0,
        "command": "old",
    }
    merged = merge(previous, {"1000_wall_s": 8.0, "10000_wall_s": 88.0, "latency_s": 0.0})
    assert merged["1000_wall_s"] == 8.0 and merged["10000_wall_s"] == 88.0
    assert merged["100000_wall_s"] == 999.0 and merged["100000_peak_mb"] == 1173
    assert merged["command"].endswith("# 1k and 10k; --seeds 100000")
    only_big = merge(merged, {"100000_wall_s": 777.0})
    assert only_big["100000_wall_s"] == 777.0 and "100000_peak_mb" not in only_big
    assert only_big["1000_wall_s"] == 8.0
