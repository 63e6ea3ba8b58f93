"""Jobs: each seed with everything its scenario needs (scenario, debate rounds, analogy
partner), decided before any LM call."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flows.core.config import MasterConfig, Scenario
from flows.core.records import Reject, Seed
from flows.planning.assign import assign_scenario, debate_rounds
from modules.lm.settings import Role

if TYPE_CHECKING:
    from flows.ingest.seeds import LoadResult
    from flows.planning.retrieval import Embedder, Match, Tell

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
    seeds, whose similar question is retrieved next (`partner_batches`). Seeds of a scenario in
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


class Later(Iterator[list[Job]]):
    """Jobs that join a run while it goes on, a batch at a time (the analogy jobs as their
    partners are found). An empty batch is a step of the search done: the consumer may stop
    there. Iterating does the search, on whichever thread iterates.

    Args:
        batches: the batches, e.g. a generator that searches between them.
        unplanned: the seeds still waiting, by id; `batches` removes a seed when it hands on
            its job or rejects it.

    Example:
        later = Later(iter([[job_a], [], [job_b]]))
        first = next(later)    # [job_a]
        rest = later.stop()    # the run stopped: [] (no seed was left waiting)
    """

    def __init__(
        self, batches: Iterator[list[Job]], unplanned: dict[str, Seed] | None = None
    ) -> None:
        self._batches = batches
        self.unplanned = unplanned if unplanned is not None else {}

    def __next__(self) -> list[Job]:
        return next(self._batches)

    def stop(self) -> list[Job]:
        """End the search (the run has stopped): the jobs of the seeds still waiting, with no
        partner, for the run to report as not started. Call it on the iterating thread."""
        close = getattr(self._batches, "close", None)
        if close is not None:
            close()
        self._batches = iter(())
        rest = [Job(seed=seed, scenario="analogy") for seed in self.unplanned.values()]
        self.unplanned.clear()
        return rest


@dataclass
class Plan:
    """Every seed's job. `ready`: the jobs that need nothing more (seed order), to start at
    once; `later`: the analogy jobs, a batch at a time as their partners are found (None when
    there are none to wait for); `rejects`: a reject per analogy seed with no partner,
    complete once `later` is exhausted. Iterating `later` does the retrieval (on whichever
    thread iterates it); building a Plan does none."""

    ready: list[Job]
    later: Later | None = None
    rejects: list[Reject] = field(default_factory=list)
    waiting: int = 0  # analogy seeds whose partner `later` looks for


def plan_stream(
    loaded: LoadResult,
    cfg: MasterConfig,
    embedder: Embedder | None = None,
    remember: bool = True,
    tell: Tell | None = None,
) -> Plan:
    """Every seed's scenario and rounds now; the analogy partners as `later` finds them.
    `tell(step, done, total)` hears how far the retrieval has got."""
    ready, analogy = assign_jobs(loaded, cfg)
    plan = Plan(ready=ready, waiting=len(analogy))
    if analogy:
        unplanned = {seed.id: seed for seed in analogy}
        batches = partner_batches(plan, analogy, loaded, cfg, embedder, remember, tell, unplanned)
        plan.later = Later(batches, unplanned)
    return plan


def partner_batches(
    plan: Plan,
    analogy: list[Seed],
    loaded: LoadResult,
    cfg: MasterConfig,
    embedder: Embedder | None = None,
    remember: bool = True,
    tell: Tell | None = None,
    unplanned: dict[str, Seed] | None = None,
) -> Iterator[list[Job]]:
    """The analogy jobs, a batch at a time, each with a similar question of the pool as its
    partner; a reject (into plan.rejects) for each seed whose domain has no other question.
    An empty batch after each chunk of the pool embedded (Later: a place to stop). Each seed
    handed on or rejected leaves `unplanned`.

    Partners are sticky: a choice made by an earlier run is kept while that partner is
    still in the pool (those jobs come first, with no embedding), so adding seeds to a
    source never re-runs earlier analogy dialogues. The others are matched in batches
    (retrieval.similar_batches), each remembered as it is found; a partner is the same
    whatever the batches."""
    # retrieval (numpy, diskcache, the embedder's model) is loaded when analogy seeds exist
    from flows.planning.minilm import minilm_embedder
    from flows.planning.retrieval import RetrievalMemory, cached_embedder, similar_batches

    unplanned = unplanned if unplanned is not None else {}
    pool = retrieval_pool(loaded, cfg)
    remembered = RetrievalMemory(cfg.cache.dir) if cfg.cache.enabled else None
    try:
        known = remembered.recall(analogy, pool) if remembered is not None else {}
        if known:
            for seed_id in known:
                unplanned.pop(seed_id, None)
            yield [_partnered(seed, known[seed.id], cfg) for seed in analogy if seed.id in known]
        fresh = [s for s in analogy if s.id not in known]
        if not fresh:
            return
        embed = embedder or minilm_embedder()
        if cfg.cache.enabled:
            embed = cached_embedder(embed, cfg.cache.dir)
        top_k = cfg.scenarios.retrieval_top_k
        for picked in similar_batches(fresh, pool, embed, top_k, tell):
            if remembered is not None and remember:
                remembered.remember(picked)
            jobs = []
            for seed_id, match in picked.items():  # in query order
                seed = unplanned.pop(seed_id)
                if match is None:
                    plan.rejects.append(_no_partner(seed))
                else:
                    jobs.append(_partnered(seed, match, cfg))
            yield jobs  # empty after a chunk of the pool: a place to stop
    finally:
        if remembered is not None:
            remembered.close()


def _partnered(seed: Seed, match: Match, cfg: MasterConfig) -> Job:
    rounds = debate_rounds(seed.id, cfg.scenarios.debate_rounds)  # as every job has
    return Job(seed=seed, scenario="analogy", rounds=rounds, similar=match.seed)


def _no_partner(seed: Seed) -> Reject:
    return Reject(
        stage="retrieve",
        reason=f"no similar {seed.domain} question in the retrieval pool",
        source=seed.source,
        location=seed.meta.get("location"),
        seed_id=seed.id,
    )


def plan_jobs(
    loaded: LoadResult,
    cfg: MasterConfig,
    embedder: Embedder | None = None,
    remember: bool = True,
    tell: Tell | None = None,
) -> tuple[list[Job], list[Reject]]:
    """Every seed's scenario, rounds and analogy partner before any LM call (plan_stream,
    waited for): the jobs in seed order, and a reject for each analogy seed with no
    partner."""
    plan = plan_stream(loaded, cfg, embedder, remember, tell)
    later = [job for batch in plan.later or () for job in batch]
    position = {id(seed): index for index, seed in enumerate(loaded.seeds)}
    jobs = sorted([*plan.ready, *later], key=lambda job: position[id(job.seed)])
    return jobs, plan.rejects
