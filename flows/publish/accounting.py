"""LM accounting for summary.json: calls, cache hits, tokens and cost, per role."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from modules.lm.settings import ROLES, RoleLMs

if TYPE_CHECKING:
    from modules.lm.call_cache import CallRecord
    from modules.lm.pool import ReplicaStats


class CallTally:
    """Per-role sums of a run's call records, added as dialogues finish, so a run need not
    keep every record until it writes summary.json. Cost is linear in tokens, so pricing
    the sums equals pricing each call."""

    def __init__(self) -> None:
        # role -> [calls, cache hits, tokens in, tokens out, tokens of cache hits,
        #          replies repaired, replies that failed to parse]
        self.by_role: dict[str, list[int]] = {role: [0] * 7 for role in ROLES}
        # role -> replica base URL -> attempts, failures, ejections, latency (its pools' own
        # counts: a call that failed over is one call here, two attempts there)
        self.replicas: dict[str, dict[str, ReplicaStats]] = {}

    def add(self, records: Iterable[CallRecord]) -> CallTally:
        for rec in records:
            row = self.by_role[rec.role]
            if rec.format == "repaired":
                row[5] += 1
            elif rec.format == "failed":
                row[6] += 1
            if rec.cached:
                row[1] += 1
                row[4] += rec.tokens_in + rec.tokens_out
            else:
                row[0] += 1
                row[2] += rec.tokens_in
                row[3] += rec.tokens_out
        return self

    def totals(self) -> tuple[int, int]:
        """LM calls made and calls the cache answered, over every role."""
        return sum(r[0] for r in self.by_role.values()), sum(r[1] for r in self.by_role.values())

    def add_replicas(self, replicas: dict[str, dict[str, ReplicaStats]]) -> None:
        """Add what a shard's replica pools counted (role -> base URL -> counts)."""
        from modules.lm.pool import ReplicaStats  # not at import: a replay loads no asyncio

        for role, bases in replicas.items():
            mine = self.replicas.setdefault(role, {})
            for base, stats in bases.items():
                mine.setdefault(base, ReplicaStats()).merge(stats)

    def merge(self, other: CallTally) -> None:
        for role, sums in other.by_role.items():
            self.by_role[role] = [a + b for a, b in zip(self.by_role[role], sums, strict=True)]
        self.add_replicas(other.replicas)

    def block(self, lms: RoleLMs, all_cached: bool = False) -> dict[str, Any]:
        """The `lm` block of DESIGN.md section 4; cache hits also count as tokens saved.
        `all_cached`: every call counted as a hit (what a replay of the run reports)."""
        by_role: dict[str, dict[str, Any]] = {}
        for role, row in self.by_role.items():
            calls, hits, tokens_in, tokens_out, hit_tokens, repairs, failures = row
            if all_cached:
                calls, hits = 0, calls + hits
                hit_tokens, tokens_in, tokens_out = hit_tokens + tokens_in + tokens_out, 0, 0
            settings = lms.for_role(role)  # type: ignore[arg-type]
            cost = (
                tokens_in * (settings.price_in_per_mtok or 0.0)
                + tokens_out * (settings.price_out_per_mtok or 0.0)
            ) / 1e6
            by_role[role] = {
                "calls": calls,
                "cache_hits": hits,
                "tokens_in": tokens_in,
                "tokens_out": tokens_out,
                "tokens_saved": hit_tokens,
                "cost_usd": cost,
                "format_repairs": repairs,
                "format_failures": failures,
            }
            if not all_cached and self.replicas.get(role):
                by_role[role]["replicas"] = {
                    base: stats.block() for base, stats in self.replicas[role].items()
                }
        totals = {
            key: sum(r[key] for r in by_role.values())
            for key in (
                "calls",
                "cache_hits",
                "tokens_in",
                "tokens_out",
                "tokens_saved",
                "format_repairs",
                "format_failures",
            )
        }
        return {
            **totals,
            "cost_usd": round(sum(r["cost_usd"] for r in by_role.values()), 6),
            "by_role": {
                role: {**row, "cost_usd": round(row["cost_usd"], 6)}
                for role, row in by_role.items()
            },
        }


def lm_block(
    records: Iterable[CallRecord], lms: RoleLMs, all_cached: bool = False
) -> dict[str, Any]:
    """CallTally.block of these records."""
    return CallTally().add(records).block(lms, all_cached)
