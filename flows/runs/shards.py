"""Shards: a list of jobs simulated, verified and collected by one event loop, with its own
programs, judge and cache handles. `master run` runs all its jobs as one shard; the augment
flow runs shards as Prefect tasks (threads, or Dask workers for scale-out)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.core.config import MasterConfig
from flows.core.records import Reject
from flows.planning.jobs import ROLES_BY_SCENARIO, Job, Later, judging
from flows.publish.collect import UNFINISHED, Collected
from flows.quality.verification import averify_outcome, verdict_book, verify_outcomes
from flows.simulation.dialogue_cache import DialogueStore
from flows.simulation.saved_programs import configured_programs
from flows.simulation.simulate import Outcome, stream
from modules.lm.budget import BUDGET_SPENT, CallBudget
from modules.lm.call_cache import CallStore
from modules.lm.factory import build_role_lms
from modules.lm.pool import Pool, ReplicaStats
from modules.scenarios.judge import Judge
from modules.scenarios.registry import build_judge, role_adapters

if TYPE_CHECKING:
    from flows.runs.progress import Progress

log = logging.getLogger("master")


def new_budget(cfg: MasterConfig, share: float = 1.0) -> CallBudget | None:
    """The run's budget (or a share of it, for shards that cannot share one counter)."""
    b = cfg.run.budget
    if not b.capped:
        return None

    def part(limit: float | None) -> Any:
        return None if limit is None else type(limit)(max(1, limit * share))

    return CallBudget(part(b.max_calls), part(b.max_tokens), part(b.max_cost_usd))


def open_programs(
    cfg: MasterConfig,
    scenarios: set[str],
    budget: CallBudget | None = None,
    pools: dict[str, Pool] | None = None,
) -> tuple[dict, CallStore | None]:
    """The scenario programs on the LMs of the roles these scenarios need, and the call
    cache. `pools` gets each role's replica pool (for its counts in summary.json)."""
    store = CallStore(cfg.cache.dir) if cfg.cache.enabled else None
    needed = tuple(sorted({r for scenario in scenarios for r in ROLES_BY_SCENARIO[scenario]}))
    lms = build_role_lms(cfg.lms, store, needed, budget)  # type: ignore[arg-type]
    _keep_pools(lms, pools)
    programs = configured_programs(
        lms, cfg.scenarios.programs, cfg.optimize.programs_dir, role_adapters(cfg.lms)
    )
    return programs, store


def open_judge(
    cfg: MasterConfig,
    store: CallStore | None,
    budget: CallBudget | None = None,
    pools: dict[str, Pool] | None = None,
) -> Judge | None:
    if not judging(cfg):
        return None
    lms = build_role_lms(cfg.lms, store, ("judge",), budget)
    _keep_pools(lms, pools)
    return build_judge(cfg.lms, lms["judge"])


def _keep_pools(lms: Mapping[str, Any], pools: dict[str, Pool] | None) -> None:
    if pools is None:
        return
    for role, lm in lms.items():
        if getattr(lm, "pool", None) is not None:
            pools[role] = lm.pool


def replica_counts(pools: Mapping[str, Pool]) -> dict[str, dict[str, ReplicaStats]]:
    """role -> replica base URL -> its counts: what a shard's pools did."""
    return {role: pool.stats() for role, pool in pools.items()}


@dataclass
class ShardResult:
    """What a shard task hands back to its flow: its outcomes, in job order, and what its
    replica pools counted (role -> base URL -> counts)."""

    outcomes: list[Outcome]
    replicas: dict[str, dict[str, ReplicaStats]] = field(default_factory=dict)


def _unfinished(outcome: Outcome) -> None:
    """A dialogue the budget stopped is unfinished work, not a failure: the next run ends it."""
    if outcome.reject is not None and BUDGET_SPENT in outcome.reject.reason:
        outcome.reject.stage = "budget"
    if outcome.dialogue is not None and outcome.dialogue.quality.get("unfinished"):
        seed = outcome.job.seed
        outcome.reject = Reject(
            stage="budget",
            reason="generated but not judged: " + outcome.dialogue.quality["unfinished"],
            source=seed.source,
            location=seed.meta.get("location"),
            seed_id=seed.id,
        )
        outcome.dialogue = None


def _status(outcome: Outcome) -> str:
    """What became of a dialogue, for its log line."""
    reject = outcome.reject
    if reject is not None and reject.stage in UNFINISHED:
        return f"unfinished ({reject.stage}): {reject.reason}"
    if reject is not None:
        return f"failed: {reject.reason}"
    if outcome.dialogue is not None and not outcome.dialogue.quality.get("accepted", True):
        return "rejected by the quality filter"
    return "ok"


def _shard(
    jobs: list[Job],
    cfg: MasterConfig,
    budget: CallBudget | None,
    emit: Callable[[int, Outcome], None],
    progress: Progress | None = None,
    on_waiting: Callable[[], object] | None = None,
    later: Later | None = None,
) -> dict[str, dict[str, ReplicaStats]]:
    """Simulate and verify one shard of jobs, with its own programs and cache handle;
    emit(job index, outcome) as each outcome is final, and count it in `progress`. Each
    dialogue is also logged, at DEBUG (`master run -v`). `on_waiting`, `later` (analogy jobs
    as their partners are found): see simulate.stream. Returns what the shard's replica
    pools counted."""
    scenarios = {job.scenario for job in jobs} | ({"analogy"} if later is not None else set())
    pools: dict[str, Pool] = {}
    programs, store = open_programs(cfg, scenarios, budget, pools)
    dialogues = DialogueStore(cfg.cache.dir, store) if cfg.cache.enabled else None
    judge = open_judge(cfg, store, budget, pools)
    verdicts = verdict_book(cfg, dialogues, judge)
    finished = 0
    total = len(jobs)
    if progress is not None:
        progress.add(len(jobs), waiting=len(later.unplanned) if later is not None else None)

    def joined(batch: list[Job]) -> None:
        nonlocal total
        total += len(batch)
        if progress is not None and later is not None:
            progress.add(len(batch), waiting=len(later.unplanned))

    async def verify(outcome: Outcome) -> None:
        await averify_outcome(outcome, cfg, judge, verdicts)

    def verify_hits(outcomes: list[Outcome]) -> None:  # dialogues the dialogue cache answered
        verify_outcomes(outcomes, cfg, judge, verdicts)

    def final(index: int, outcome: Outcome) -> None:
        nonlocal finished
        _unfinished(outcome)
        finished += 1
        log.debug(
            "dialogue %d/%d %s %s: %s",
            finished, total, outcome.job.scenario, outcome.job.seed.id, _status(outcome),
        )  # fmt: skip
        if progress is not None:
            progress.record(outcome)
        emit(index, outcome)

    checking = cfg.quality.enabled
    try:
        stream(
            jobs,
            programs,
            cfg,
            final,
            dialogues=dialogues,
            after=verify if checking else None,
            after_hits=verify_hits if checking else None,
            on_waiting=on_waiting,
            later=later,
            on_later=joined,
        )
    finally:
        if store is not None:
            store.close()
        if dialogues is not None:
            dialogues.close()
    return replica_counts(pools)


def run_shard(
    jobs: list[Job],
    cfg: MasterConfig,
    budget: CallBudget | None = None,
    progress: Progress | None = None,
) -> ShardResult:
    """A shard's outcomes, in job order, and its replica counts (what a Prefect task hands
    back to its flow); each outcome counted in `progress` (shared by the shards of one
    process) as it is final."""
    outcomes: list[Outcome | None] = [None] * len(jobs)
    replicas = _shard(jobs, cfg, budget, outcomes.__setitem__, progress)
    return ShardResult(outcomes, replicas)  # type: ignore[arg-type]


def collect_shard(
    jobs: list[Job],
    cfg: MasterConfig,
    budget: CallBudget | None,
    collected: Collected,
    progress: Progress | None = None,
    on_waiting: Callable[[], object] | None = None,
    later: Later | None = None,
) -> Collected:
    """A shard taken into `collected` as its dialogues finish: nothing of a finished dialogue
    stays in memory but its traces (flows/publish/collect.py). `later`: see simulate.stream."""
    try:
        add = lambda _, outcome: collected.add(outcome)  # noqa: E731
        collected.calls.add_replicas(_shard(jobs, cfg, budget, add, progress, on_waiting, later))
    finally:
        collected.close()
    return collected


def simulate_jobs(
    jobs: list[Job],
    cfg: MasterConfig,
    spill: Path,
    progress: Progress | None = None,
    on_waiting: Callable[[], object] | None = None,
    later: Later | None = None,
) -> Collected:
    """Every job as one shard in this process, under the run's budget (`master run`); the
    jobs are added to `progress` and counted in it as they finish. `on_waiting`, `later`
    (jobs that join while these run): see flows/simulation/simulate.py:stream."""
    budget = new_budget(cfg)
    collected = Collected(spill / "rows.jsonl")
    return collect_shard(jobs, cfg, budget, collected, progress, on_waiting, later)
