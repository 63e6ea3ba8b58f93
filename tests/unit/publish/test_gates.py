"""Publish gates: each default, the comparison with the previous version, and overrides."""

from __future__ import annotations

from typing import Any

from flows.core.config import GatesConfig
from flows.publish.gates import check_gates


def summary(
    accepted: int = 90,
    rejected: int = 10,
    failed: int = 0,
    not_started: int = 0,
    rows: int | None = None,
    kept: int = 100,
    tripped: bool = False,
) -> dict[str, Any]:
    return {
        "seeds": {"kept": kept},
        "quality": {"accepted": accepted, "rejected": rejected, "failed": failed},
        "breaker": {"tripped": tripped, "not_started": not_started,
                    "reason": "20 dialogues failed in a row" if tripped else None},
        "budget": {"unfinished": 0},
        "rows": {"published": accepted if rows is None else rows},
    }  # fmt: skip


def test_a_good_first_run_passes() -> None:
    result = check_gates(summary(), None, GatesConfig())
    assert result["passed"] and result["failed"] == [] and not result["forced"]
    assert set(result["checked"]) == {"finished", "failed_share", "min_rows"}


def test_more_than_five_percent_failed_fails_and_five_passes() -> None:
    assert check_gates(summary(accepted=85, failed=5), None, GatesConfig())["passed"]
    result = check_gates(summary(accepted=84, failed=6), None, GatesConfig())
    assert not result["passed"]
    assert result["failed"] == ["6 of 100 seeds failed to generate (6.0%, at most 5.0%)"]


def test_a_dead_endpoint_fails_on_the_breaker_and_the_failures() -> None:
    dead = summary(accepted=0, rejected=0, failed=20, not_started=80, tripped=True)
    result = check_gates(dead, summary(), GatesConfig())
    assert not result["passed"] and len(result["failed"]) == 4
    assert result["failed"][0].startswith("the circuit breaker stopped the run")
    assert "100 of 100 seeds failed" in result["failed"][1]
    assert result["failed"][2] == "0 rows (at least 1)"


def test_rows_below_ninety_percent_of_the_previous_version_fail() -> None:
    before = summary(accepted=100, rejected=0)
    assert check_gates(summary(accepted=90, rejected=0), before, GatesConfig())["passed"]
    result = check_gates(summary(accepted=89, rejected=0), before, GatesConfig())
    assert result["failed"] == ["89 rows, fewer than 90% of the previous version's 100"]


def test_a_smaller_seed_set_scales_the_row_floor() -> None:
    before = summary(accepted=100, rejected=0, kept=100)
    half = summary(accepted=45, rejected=5, kept=50)
    result = check_gates(half, before, GatesConfig())
    assert result["passed"] and result["checked"]["rows_vs_previous"]["limit"] == 45.0


def test_an_accepted_share_ten_points_down_passes_and_more_fails() -> None:
    before = summary(accepted=90, rejected=10, rows=200)
    assert check_gates(summary(accepted=80, rejected=20, rows=200), before, GatesConfig())["passed"]
    result = check_gates(summary(accepted=79, rejected=21, rows=200), before, GatesConfig())
    assert result["failed"] == [
        "accepted share 79.0% is 11.0 points below the previous version's 90.0% (at most 10)"
    ]


def test_a_gate_set_to_null_is_not_checked_and_force_is_recorded() -> None:
    off = GatesConfig(max_failed_share=None, min_rows=None)
    dead = summary(accepted=0, rejected=0, failed=10)
    assert check_gates(dead, None, off)["passed"]
    forced = check_gates(dead, None, GatesConfig(), force=True)
    assert not forced["passed"] and forced["forced"]
    assert not check_gates(summary(), None, GatesConfig(), force=True)["forced"]
