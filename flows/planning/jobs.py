"""Jobs: each seed with everything its scenario needs (scenario, debate rounds, analogy
partner), decided before any LM call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flows.core.config import MasterConfig, Scenario
from flows.core.records import Reject, Seed
from flows.planning.assign import assign_scenario, debate_rounds
from modules.lm.settings import Role

if TYPE_CHECKING:
    from flows.ingest.seeds import LoadResult
    from flows.planning.retrieval import Embedder

ROLES_BY_SCENARIO: dict[str, tuple[Role, ...]] = {
    "error_correction": ("weak", "strong"),
    "debate": ("peer", "strong"),
    "analogy": ("strong",),
}


def judging(cfg: MasterConfig) -> bool:
    return cfg.quality.enabled and cfg.quality.judge


def roles_in_use(cfg: MasterConfig) -> tuple[Role, ...]:
    """The roles the scenarios with a non-zero share need, and the judge when it runs."""
    used = {
        role
        for scenario, weight in cfg.scenarios.proportions.items()
        if weight > 0
        for role in ROLES_BY_SCENARIO[scenario]
    }
    if judging(cfg):
        used.add("judge")
    return tuple(sorted(used))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Job:
    seed: Seed
    scenario: Scenario
    rounds: int = 1
    similar: Seed | None = None

    @property
    def model_turns(self) -> int:
        """The model turns its scenario plays (a retried turn aside): a debate speaks twice a
        round and is then settled, the other scenarios speak three times."""
        return 2 * self.rounds + 1 if self.scenario == "debate" else 3


def assign_jobs(loaded: LoadResult, cfg: MasterConfig) -> tuple[list[Job], list[Seed]]:
    """Every seed's scenario and rounds: the jobs that need nothing more, and the analogy
    seeds, whose similar question is retrieved next (`partner_jobs`). Seeds of a scenario in
    merge.replace_with_original get no job."""
    ready: list[Job] = []
    analogy: list[Seed] = []
    for seed in loaded.seeds:
        scenario = assign_scenario(seed.id, cfg.scenarios.proportions)
        if scenario in cfg.merge.replace_with_original:
            continue  # published as its original question/answer (flows/publish/merge.py)
        if scenario == "analogy":
            analogy.append(seed)
            continue
        rounds = debate_rounds(seed.id, cfg.scenarios.debate_rounds)
        ready.append(Job(seed=seed, scenario=scenario, rounds=rounds))
    return ready, analogy


def retrieval_pool(loaded: LoadResult, cfg: MasterConfig) -> list[Seed]:
    """Where analogy partners come from. `seeds` (the paper): this run's seeds that are not
    analogy seeds, those of earlier backfill rounds included, whether or not their scenario
    is published as the original; `reservoir`: a sample of every loaded row."""
    if cfg.scenarios.analogy_pool == "reservoir":
        return loaded.pool
    return [
        seed
        for seed in (*loaded.earlier, *loaded.seeds)
        if assign_scenario(seed.id, cfg.scenarios.proportions) != "analogy"
    ]


def partner_jobs(
    analogy: list[Seed],
    loaded: LoadResult,
    cfg: MasterConfig,
    embedder: Embedder | None = None,
    remember: bool = True,
) -> tuple[list[Job], list[Reject]]:
    """The analogy jobs, each with the most similar question of the pool as its partner,
    and a reject for each seed whose domain has no other question.

    Partners are sticky: a choice made by an earlier run is kept while that partner is
    still in the pool, so adding seeds to a source never re-runs earlier analogy dialogues."""
    if not analogy:
        return [], []
    # retrieval (numpy, diskcache, the embedder's model) is loaded when analogy seeds exist
    from flows.planning.retrieval import (
        RetrievalMemory,
        cached_embedder,
        minilm_embedder,
        pick_similar,
    )

    similar: dict[str, Any] = {}
    pool = retrieval_pool(loaded, cfg)
    remembered = RetrievalMemory(cfg.cache.dir) if cfg.cache.enabled else None
    try:
        if remembered is not None:
            similar = remembered.recall(analogy, pool)
        fresh = [s for s in analogy if s.id not in similar]
        if fresh:
            embed = embedder or minilm_embedder()
            if cfg.cache.enabled:
                embed = cached_embedder(embed, cfg.cache.dir)
            picked = pick_similar(fresh, pool, embed, cfg.scenarios.retrieval_top_k)
            similar.update(picked)
            if remembered is not None and remember:
                remembered.remember(picked)
    finally:
        if remembered is not None:
            remembered.close()
    jobs, rejects = [], []
    for seed in analogy:
        match = similar.get(seed.id)
        if match is None:
            rejects.append(
                Reject(
                    stage="retrieve",
                    reason=f"no similar {seed.domain} question in the retrieval pool",
                    source=seed.source,
                    location=seed.meta.get("location"),
                    seed_id=seed.id,
                )
            )
            continue
        rounds = debate_rounds(seed.id, cfg.scenarios.debate_rounds)  # as every job has
        jobs.append(Job(seed=seed, scenario="analogy", rounds=rounds, similar=match.seed))
    return jobs, rejects


def plan_jobs(
    loaded: LoadResult,
    cfg: MasterConfig,
    embedder: Embedder | None = None,
    remember: bool = True,
) -> tuple[list[Job], list[Reject]]:
    """Decide every seed's scenario, rounds and analogy partner before any LM call; the jobs
    in seed order, and a reject for each analogy seed with no partner."""
    ready, analogy = assign_jobs(loaded, cfg)
    partnered, rejects = partner_jobs(analogy, loaded, cfg, embedder, remember)
    position = {id(seed): index for index, seed in enumerate(loaded.seeds)}
    jobs = sorted([*ready, *partnered], key=lambda job: position[id(job.seed)])
    return jobs, rejects
