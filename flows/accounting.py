"""LM accounting for summary.json: calls, cache hits, tokens and cost, per role."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from modules.callcache import CallRecord
from modules.settings import ROLES, RoleLMs


def lm_block(
    records: Iterable[CallRecord], lms: RoleLMs, all_cached: bool = False
) -> dict[str, Any]:
    """The `lm` block of DESIGN.md section 4; cache hits also count as tokens saved.
    `all_cached`: every record counted as a hit (what a replay of the run reports)."""
    by_role: dict[str, dict[str, Any]] = {
        role: {
            "calls": 0,
            "cache_hits": 0,
            "tokens_in": 0,
            "tokens_out": 0,
            "tokens_saved": 0,
            "cost_usd": 0.0,
        }
        for role in ROLES
    }
    for rec in records:
        row = by_role[rec.role]
        if rec.cached or all_cached:
            row["cache_hits"] += 1
            row["tokens_saved"] += rec.tokens_in + rec.tokens_out
            continue
        row["calls"] += 1
        row["tokens_in"] += rec.tokens_in
        row["tokens_out"] += rec.tokens_out
        settings = lms.for_role(rec.role)  # type: ignore[arg-type]
        row["cost_usd"] += (
            rec.tokens_in * (settings.price_in_per_mtok or 0.0)
            + rec.tokens_out * (settings.price_out_per_mtok or 0.0)
        ) / 1e6
    totals = {
        key: sum(r[key] for r in by_role.values())
        for key in ("calls", "cache_hits", "tokens_in", "tokens_out", "tokens_saved")
    }
    return {
        **totals,
        "cost_usd": round(sum(r["cost_usd"] for r in by_role.values()), 6),
        "by_role": {
            role: {**row, "cost_usd": round(row["cost_usd"], 6)} for role, row in by_role.items()
        },
    }
