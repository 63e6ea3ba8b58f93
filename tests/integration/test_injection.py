"""Seeds that try to take over the roles, against a model that obeys them: every payload that
would break the turn structure is caught (dropped or flagged), as benchmarks/injection.py
reports in RESULTS.md."""

from __future__ import annotations

import sys

from conftest import PROJECT

sys.path.insert(0, str(PROJECT / "benchmarks"))

from injection import bench_injection  # noqa: E402


def test_no_structural_injection_reaches_the_dataset_unflagged() -> None:
    result = bench_injection()
    assert result["cases"] >= 10
    assert result["structural_unflagged"] == 0.0, result["detail"]
    assert result["other_unflagged"] == 0.0, result["detail"]
    # a structural payload is dropped, or its markers were stripped before it became a turn
    structural = [c for c in result["detail"] if c["structural"]]
    assert all(
        c["how"] == "dropped" or c["how"] == "accepted: marker stripped by the adapter"
        for c in structural
    ), structural
    assert sum(c["how"] == "dropped" for c in result["detail"]) >= 7
