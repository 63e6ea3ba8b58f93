"""Publish gates: what a run must show before it replaces the published version.

Pure functions of two summaries (this run's and the published version's) and the configured
limits (`publish.gates`, flows/core/config.py:GatesConfig). A run that fails one keeps the
published version and sets its own outputs aside (flows/publish/versions.py); `--force`
publishes anyway and says so in `gates.forced`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flows.core.config import GatesConfig


def accepted_share(summary: Mapping[str, Any]) -> float | None:
    """Accepted dialogues over those the quality filter judged; None when it judged none."""
    quality = summary.get("quality") or {}
    judged = quality.get("accepted", 0) + quality.get("rejected", 0)
    return quality.get("accepted", 0) / judged if judged else None


def failed_seeds(summary: Mapping[str, Any]) -> tuple[int, int]:
    """(seeds whose dialogue failed to generate, seeds the run tried): an LM call failed,
    the circuit breaker stopped them, or planning found no partner; a budget stop is the
    user's choice and counts as tried, not failed."""
    quality, breaker = summary["quality"], summary["breaker"]
    failed = quality["failed"] + breaker["not_started"]
    tried = quality["accepted"] + quality["rejected"] + failed + summary["budget"]["unfinished"]
    return failed, tried


def check_gates(
    summary: Mapping[str, Any],
    previous: Mapping[str, Any] | None,
    gates: GatesConfig,
    force: bool = False,
) -> dict[str, Any]:
    """{passed, failed: [reasons], checked: {gate: {value, limit, ok}}, forced}.

    `previous` is the published version's summary (None or {} for the first version): the
    gates that compare with it pass when there is nothing to compare with."""
    checked: dict[str, dict[str, Any]] = {}
    failed: list[str] = []

    def gate(name: str, value: Any, limit: Any, ok: bool, reason: str) -> None:
        checked[name] = {"value": value, "limit": limit, "ok": ok}
        if not ok:
            failed.append(reason)

    breaker = summary["breaker"]
    gate("finished", not breaker["tripped"], True, not breaker["tripped"],
         f"the circuit breaker stopped the run ({breaker['reason']})")  # fmt: skip

    if gates.max_failed_share is not None:
        n_failed, tried = failed_seeds(summary)
        share = n_failed / tried if tried else 0.0
        gate("failed_share", round(share, 4), gates.max_failed_share,
             share <= gates.max_failed_share + 1e-12,
             f"{n_failed} of {tried} seeds failed to generate ({share:.1%}, at most "
             f"{gates.max_failed_share:.1%})")  # fmt: skip

    rows = summary["rows"]["published"]
    if gates.min_rows is not None:
        gate("min_rows", rows, gates.min_rows, rows >= gates.min_rows,
             f"{rows} rows (at least {gates.min_rows})")  # fmt: skip

    before = previous or {}
    if gates.min_rows_vs_previous is not None and before.get("rows"):
        prev_rows = before["rows"]["published"]
        seeds_now = summary["seeds"].get("kept", 0)
        seeds_before = before.get("seeds", {}).get("kept", 0)
        shrink = min(1.0, seeds_now / seeds_before) if seeds_before else 1.0
        floor = gates.min_rows_vs_previous * prev_rows * shrink
        scaled = " (scaled to the smaller seed set)" if shrink < 1 else ""
        gate("rows_vs_previous", rows, round(floor, 2), rows + 1e-9 >= floor,
             f"{rows} rows, fewer than {gates.min_rows_vs_previous:.0%} of the previous "
             f"version's {prev_rows}{scaled}")  # fmt: skip

    if gates.max_accepted_drop is not None:
        now, then = accepted_share(summary), accepted_share(before)
        if now is not None and then is not None:
            drop = then - now
            gate("accepted_share", round(now, 4), round(then - gates.max_accepted_drop, 4),
                 drop <= gates.max_accepted_drop + 1e-12,
                 f"accepted share {now:.1%} is {drop * 100:.1f} points below the previous "
                 f"version's {then:.1%} (at most {gates.max_accepted_drop * 100:.0f})")  # fmt: skip

    return {
        "passed": not failed,
        "failed": failed,
        "checked": checked,
        "forced": force and bool(failed),
    }
