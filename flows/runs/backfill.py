"""merge.backfill `resimulate`: the dataset as large as its seed set (the paper's BOOST-QA is
equal-sized to its 19K seeds), by simulating further seeds of each source that fell short.

Each source is refilled to its own quota (`seeds.sample` split over the sources, or the
source's `sample`), so the mix stays the configured one; its new seeds get scenarios the
same way as every seed (by id), so the scenario mix stays too. A round asks each short
source for its shortfall divided by the share of its seeds that made rows so far, and the
rows beyond a quota are trimmed from the last seeds added, so most runs need a round or two.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from flows.core.config import MasterConfig
from flows.core.records import Reject
from flows.ingest.seeds import LoadResult, quotas
from flows.planning.assign import assign_scenario, replaced_by_original
from flows.planning.retrieval import Embedder
from flows.publish.collect import Collected
from flows.publish.spill import SPILL_PREFIX

if TYPE_CHECKING:
    from flows.runs.stages import Stages

log = logging.getLogger("master")

#: Rounds at most; round r samples 2**r times each quota, so a few reach every row.
MAX_ROUNDS = 12
#: The smallest share of a source's seeds assumed to make rows, when sizing a round.
MIN_YIELD = 0.05


def rows_by_source(cfg: MasterConfig, loaded: LoadResult, collected: Collected) -> Counter[str]:
    """Rows each source has now: its seeds with an accepted dialogue, and its seeds published
    as the original (merge.replace_with_original)."""
    source = {seed.id: seed.source for seed in loaded.seeds}
    rows = Counter(source[ref.seed_id] for ref in collected.refs if ref.seed_id in source)
    replaced = set(cfg.merge.replace_with_original)
    proportions = cfg.scenarios.proportions
    rows.update(s.source for s in loaded.seeds if replaced_by_original(s.id, proportions, replaced))
    return rows


def balance(rows: Counter[str], limits: dict[str, int | None]) -> dict[str, int]:
    """Per source with a quota and not exactly at it, its rows minus its quota: negative for
    a shortfall, positive for a surplus."""
    return {
        label: rows[label] - quota
        for label, quota in limits.items()
        if quota is not None and rows[label] != quota
    }


def _round_sizes(short: dict[str, int], loaded: LoadResult, rows: Counter[str]) -> dict[str, int]:
    """Seeds to ask of each short source: its shortfall over the share of its seeds so far
    that made rows (at least MIN_YIELD)."""
    tried = Counter(seed.source for seed in loaded.seeds)
    return {
        label: math.ceil(need / max(MIN_YIELD, rows[label] / max(tried[label], 1)))
        for label, need in short.items()
    }


def _left_to_spend(cfg: MasterConfig, collected: Collected) -> MasterConfig | None:
    """The config with the budget this run has left (None when it is spent)."""
    budget = cfg.run.budget
    if not budget.capped:
        return cfg
    lm = collected.calls.block(cfg.lms)
    spent = {
        "max_calls": lm["calls"],
        "max_tokens": lm["tokens_in"] + lm["tokens_out"],
        "max_cost_usd": lm["cost_usd"],
    }
    left = {
        key: None if getattr(budget, key) is None else getattr(budget, key) - used
        for key, used in spent.items()
    }
    if any(v is not None and v <= 0 for v in left.values()):
        return None
    capped = budget.model_copy(update=left)
    return cfg.model_copy(update={"run": cfg.run.model_copy(update={"budget": capped})})


def _trim(
    cfg: MasterConfig,
    surplus: dict[str, int],
    loaded: LoadResult,
    collected: Collected,
    added: list[str],
) -> int:
    """Drop each source's `surplus` rows, the last added seeds' first; how many."""
    if not surplus:
        return 0
    source = {seed.id: seed.source for seed in loaded.seeds}
    with_row = {ref.seed_id for ref in collected.refs}
    left = dict(surplus)
    dropped: set[str] = set()
    for seed_id in reversed(added):
        label = source[seed_id]
        if left.get(label, 0) > 0 and seed_id in with_row:
            dropped.add(seed_id)
            left[label] -= 1
    collected.refs = [ref for ref in collected.refs if ref.seed_id not in dropped]
    for seed_id in dropped:
        collected.accepted[assign_scenario(seed_id, cfg.scenarios.proportions)] -= 1
    return len(dropped)


def resimulate(
    cfg: MasterConfig,
    out: Path,
    seed_paths: list[str] | None,
    embedder: Embedder | None,
    stages: Stages,
    loaded: LoadResult,
    collected: Collected,
) -> list[Reject]:
    """Simulate further seeds of the sources short of their quota, round after round, until
    each has its rows or has no seed left. `loaded` and `collected` grow in place (and
    `loaded.backfill` says what was done); returns the new rounds' plan rejects. Stops early
    when the budget or the breaker stopped the run (what is left is the next run's work)."""
    rejects: list[Reject] = []
    reported = {r.seed_id for r in loaded.rejects if r.seed_id}
    exhausted: list[str] = []
    added: list[str] = []
    limits = quotas(cfg.seeds, seed_paths)
    rounds = 0
    while rounds < MAX_ROUNDS:
        rows = rows_by_source(cfg, loaded, collected)
        short = {k: -d for k, d in balance(rows, limits).items() if d < 0 and k not in exhausted}
        spendable = _left_to_spend(cfg, collected)
        if not short or collected.stopped or spendable is None:
            break
        rounds += 1
        wanted = _round_sizes(short, loaded, rows)
        more = stages.load_more(cfg, seed_paths, loaded.seeds, wanted, rounds)
        exhausted += more.exhausted
        loaded.rejects += [r for r in more.rejects if r.seed_id not in reported]
        reported.update(r.seed_id for r in more.rejects if r.seed_id)
        if not more.seeds:
            continue
        more.earlier, more.pool = loaded.seeds, loaded.pool
        plan = stages.plan(more, cfg, embedder)
        spill = out / f"{SPILL_PREFIX}backfill-{rounds}"
        collected.merge(stages.simulate(plan, spendable, spill))
        rejects += plan.rejects  # complete: simulate exhausted plan.later
        loaded.seeds = [*loaded.seeds, *more.seeds]
        added += [seed.id for seed in more.seeds]
        log.info(
            "backfill round %d: %d more seeds for the rows still missing %s",
            rounds,
            len(more.seeds),
            short,
        )
    # trimming takes a surplus down to its quota, never below: the shortfalls stay as they are
    final = balance(rows_by_source(cfg, loaded, collected), limits)
    trimmed = _trim(cfg, {k: d for k, d in final.items() if d > 0}, loaded, collected, added)
    short = {k: -d for k, d in final.items() if d < 0}
    for label in exhausted:
        if label in short:
            log.warning(
                "%s: %d rows short of its quota: the source has no seed left to backfill",
                label,
                short[label],
            )
    loaded.backfill = {
        "rounds": rounds,
        "seeds_added": len(added),
        "surplus_dropped": trimmed,
        "short": short,
        "exhausted": sorted(set(exhausted) & set(short)),
    }
    return rejects
