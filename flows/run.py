"""The main job, as plain functions: load -> assign -> retrieve -> simulate -> write.

`master run` calls `run_pipeline` directly; the Prefect flow (flows/augment.py) wires the
same steps as tasks. Nothing here imports Prefect.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from flows.assign import assign_scenario, debate_rounds
from flows.card import render_card
from flows.collect import Collected, in_order
from flows.config import SCENARIOS, MasterConfig
from flows.dialogue_cache import DialogueStore
from flows.jobs import ROLES_BY_SCENARIO, Job
from flows.lengths import row_shape
from flows.local_workers import forking_is_safe, in_forked_process, run_forked, worker_count
from flows.merge import PublishedRows, merge_refs
from flows.output import (
    output_lock,
    push_to_hub,
    write_dataset,
    write_json,
    write_rejects,
    write_text,
)
from flows.plots import PLOTS, plots_markdown, write_plots
from flows.programs import configured_programs
from flows.records import Reject, Seed
from flows.report import render_report
from flows.retrieval import (
    Embedder,
    RetrievalMemory,
    cached_embedder,
    minilm_embedder,
    pick_similar,
)
from flows.run_cache import RunStore, run_key
from flows.seeds import LoadResult, load_seeds
from flows.simulate import Outcome, program_version, stream
from flows.spill import clear_spills, spill_folder
from flows.verify import averify_outcome, verdict_book, verify_outcomes
from modules.budget import BUDGET_SPENT, CallBudget
from modules.callcache import CallStore
from modules.judge import Judge
from modules.lm import build_judge, build_role_lms, check_keys, role_adapters
from modules.settings import Role

log = logging.getLogger("master")


@dataclass
class RunResult:
    out: Path
    summary: dict[str, Any]


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


def assign_jobs(loaded: LoadResult, cfg: MasterConfig) -> tuple[list[Job], list[Seed]]:
    """Every seed's scenario and rounds: the jobs that need nothing more, and the analogy
    seeds, whose similar question is retrieved next (`partner_jobs`)."""
    ready: list[Job] = []
    analogy: list[Seed] = []
    for seed in loaded.seeds:
        scenario = assign_scenario(seed.id, cfg.scenarios.proportions)
        if scenario == "analogy":
            analogy.append(seed)
            continue
        rounds = debate_rounds(seed.id, cfg.scenarios.debate_rounds)
        ready.append(Job(seed=seed, scenario=scenario, rounds=rounds))
    return ready, analogy


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
    similar: dict[str, Any] = {}
    remembered = RetrievalMemory(cfg.cache.dir) if cfg.cache.enabled and analogy else None
    try:
        if remembered is not None:
            similar = remembered.recall(analogy, loaded.pool)
        fresh = [s for s in analogy if s.id not in similar]
        if fresh:
            embed = embedder or minilm_embedder()
            if cfg.cache.enabled:
                embed = cached_embedder(embed, cfg.cache.dir)
            picked = pick_similar(fresh, loaded.pool, embed, cfg.scenarios.retrieval_top_k)
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
    in seed order. (`master run` retrieves the partners while the other jobs already run:
    `run_jobs` with `later`.)"""
    ready, analogy = assign_jobs(loaded, cfg)
    partnered, rejects = partner_jobs(analogy, loaded, cfg, embedder, remember)
    position = {id(seed): index for index, seed in enumerate(loaded.seeds)}
    jobs = sorted([*ready, *partnered], key=lambda job: position[id(job.seed)])
    return jobs, rejects


class LaterJobs:
    """Jobs planned while others already run (the analogy jobs, whose retrieval is the one
    slow step of planning), and the rejects their planning gave."""

    def __init__(self, plan: Callable[[], tuple[list[Job], list[Reject]]], seeds: int) -> None:
        self._plan = plan
        self.seeds = seeds  # the seeds being planned: at most this many jobs
        self.rejects: list[Reject] = []

    def __call__(self) -> list[Job]:
        return self._took(self._plan())

    def _took(self, planned: tuple[list[Job], list[Reject]]) -> list[Job]:
        jobs, self.rejects = planned
        return jobs

    def in_process(self) -> Future[list[Job]]:
        """Planned in a forked process while this one simulates the other jobs."""
        jobs: Future[list[Job]] = Future()

        def took(planned: Future[tuple[list[Job], list[Reject]]]) -> None:
            try:
                jobs.set_result(self._took(planned.result()))
            except BaseException as exc:  # noqa: BLE001 - raised on the simulation's loop
                jobs.set_exception(exc)

        in_forked_process(self._plan, "master-planner").add_done_callback(took)
        return jobs


def _progress(total: int, later: Future[list[Job]] | None = None) -> Any:
    state = {"done": 0, "total": total, "start": time.monotonic()}

    def planned(future: Future[list[Job]]) -> None:  # later jobs join the count as they come
        if not future.cancelled() and future.exception() is None:
            state["total"] += len(future.result())

    if later is not None:
        later.add_done_callback(planned)

    def on_done(outcome: Outcome) -> None:
        state["done"] += 1
        done, total = state["done"], state["total"]
        elapsed = time.monotonic() - state["start"]
        eta = elapsed / done * max(total - done, 0)
        status = "ok" if outcome.dialogue else f"failed ({outcome.reject.reason})"  # type: ignore[union-attr]
        log.info("dialogue %d/%d %s %s, eta %.0fs", done, total, outcome.job.scenario, status, eta)

    return on_done


def with_overrides(
    cfg: MasterConfig, proportions: dict[str, float] | None = None, max_calls: int | None = None
) -> MasterConfig:
    """The config with a run's own scenario mix or call budget (flow parameters, CLI flags)."""
    if proportions:
        scen = cfg.scenarios.model_copy(update={"proportions": proportions})
        cfg = cfg.model_copy(update={"scenarios": type(scen).model_validate(scen.model_dump())})
    if max_calls:
        budget = cfg.run.budget.model_copy(update={"max_calls": max_calls})
        cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"budget": budget})})
    return cfg


def new_budget(cfg: MasterConfig, share: float = 1.0) -> CallBudget | None:
    """The run's budget (or a share of it, for shards that cannot share one counter)."""
    b = cfg.run.budget
    if not b.capped:
        return None

    def part(limit: float | None) -> Any:
        return None if limit is None else type(limit)(max(1, limit * share))

    return CallBudget(part(b.max_calls), part(b.max_tokens), part(b.max_cost_usd))


def open_programs(
    cfg: MasterConfig, scenarios: set[str], budget: CallBudget | None = None
) -> tuple[dict, CallStore | None]:
    """The scenario programs on the LMs of the roles these scenarios need, and the call
    cache."""
    store = CallStore(cfg.cache.dir) if cfg.cache.enabled else None
    needed = tuple(sorted({r for scenario in scenarios for r in ROLES_BY_SCENARIO[scenario]}))
    lms = build_role_lms(cfg.lms, store, needed, budget)  # type: ignore[arg-type]
    programs = configured_programs(
        lms, cfg.scenarios.programs, cfg.optimize.programs_dir, role_adapters(cfg.lms)
    )
    return programs, store


def open_judge(
    cfg: MasterConfig, store: CallStore | None, budget: CallBudget | None = None
) -> Judge | None:
    if not judging(cfg):
        return None
    return build_judge(cfg.lms, build_role_lms(cfg.lms, store, ("judge",), budget)["judge"])


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


def _shard(
    jobs: list[Job],
    cfg: MasterConfig,
    budget: CallBudget | None,
    emit: Callable[[int, Outcome], None],
    later: Future[list[Job]] | None = None,
) -> None:
    """Simulate and verify one shard of jobs (and the `later` ones, when they come), with
    its own programs and cache handle; emit(job index, outcome) as each outcome is final."""
    scenarios = {job.scenario for job in jobs} | ({"analogy"} if later is not None else set())
    programs, store = open_programs(cfg, scenarios, budget)
    dialogues = DialogueStore(cfg.cache.dir, store) if cfg.cache.enabled else None
    judge = open_judge(cfg, store, budget)
    verdicts = verdict_book(cfg, dialogues, judge)
    progress = _progress(len(jobs), later)

    async def verify(outcome: Outcome) -> None:
        await averify_outcome(outcome, cfg, judge, verdicts)

    def verify_hits(outcomes: list[Outcome]) -> None:  # dialogues the dialogue cache answered
        verify_outcomes(outcomes, cfg, judge, verdicts)

    def final(index: int, outcome: Outcome) -> None:
        _unfinished(outcome)
        progress(outcome)
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
            later=later,
        )
    finally:
        if store is not None:
            store.close()
        if dialogues is not None:
            dialogues.close()


def run_shard(
    jobs: list[Job], cfg: MasterConfig, budget: CallBudget | None = None
) -> list[Outcome]:
    """A shard's outcomes, in job order (what a Prefect task hands back to its flow)."""
    outcomes: list[Outcome | None] = [None] * len(jobs)
    _shard(jobs, cfg, budget, outcomes.__setitem__)
    return outcomes  # type: ignore[return-value]


def collect_shard(
    jobs: list[Job],
    cfg: MasterConfig,
    budget: CallBudget | None,
    collected: Collected,
    later: Future[list[Job]] | None = None,
) -> Collected:
    """A shard taken into `collected` as its dialogues finish: nothing of a finished dialogue
    stays in memory but its traces (flows/collect.py)."""
    try:
        _shard(jobs, cfg, budget, lambda _, outcome: collected.add(outcome), later)
    finally:
        collected.close()
    return collected


def run_jobs(
    jobs: list[Job], cfg: MasterConfig, spill: Path, later: LaterJobs | None = None
) -> Collected:
    """Every job simulated, verified and collected (accepted rows spilled under `spill`), in
    this process or over run.workers forked ones (each with an equal share of the budget,
    as Dask shards have, and a spill file of its own).

    `later` plans more jobs while these run, so the analogy retrieval overlaps the
    simulation: over workers, in the parent once they are started (it is otherwise idle),
    which sends each its share through a pipe; in one process, in a forked planning
    process (a thread would hold the GIL the event loop needs: measured, the simulation
    slowed by more than the planning it hid). Where forking is not safe they are planned
    first."""
    embedded = any(cfg.lms.for_role(r).is_embedded for r in roles_in_use(cfg))
    workers = worker_count(cfg, len(jobs) + (later.seeds if later is not None else 0), embedded)
    if workers == 1:
        pending = None
        if later is not None and forking_is_safe():
            pending = later.in_process()
        elif later is not None:
            jobs = [*jobs, *later()]
        collected = Collected(spill / "rows.jsonl")
        return collect_shard(jobs, cfg, new_budget(cfg), collected, pending)

    def shard(
        part: list[Job],
        child: MasterConfig,
        budget: CallBudget | None,
        pending: Future[list[Job]] | None,
    ) -> Collected:
        rows = Collected(spill / f"rows-{os.getpid()}.jsonl")
        return collect_shard(part, child, budget, rows, pending)

    budgets = [new_budget(cfg, 1 / workers) for _ in range(workers)]
    collected, *others = run_forked(shard, jobs, cfg, budgets, later)
    for other in others:
        collected.merge(other)
    return collected


def publish(
    cfg: MasterConfig,
    out: Path,
    loaded: LoadResult,
    plan_rejects: list[Reject],
    collected: Collected,
    started: float,
    key: str | None = None,
) -> dict[str, Any]:
    """Filter, merge and write every output file; return the summary (also summary.json).

    The rows are read back from the spill in published order, a batch at a time. With a run
    key (flows/run_cache.py) a settled run's outputs are stored for replay."""
    storing = key is not None and collected.settled
    failed = [*plan_rejects, *in_order(collected.failed)]
    stopped = in_order(collected.stopped)
    dropped = in_order(collected.dropped)
    tripped = next((r.reason for r in stopped if r.stage == "breaker"), None)
    refs, duplicates = merge_refs(collected.refs, loaded.seeds, cfg.merge)
    accepted = sum(collected.accepted.values())
    pass_rates = collected.checks.rates()
    summary: dict[str, Any] = {
        "seeds": loaded.counts(),
        "dialogues": {s: collected.accepted[s] for s in SCENARIOS},
        "quality": {
            "accepted": accepted,
            "rejected": len(dropped),
            "by_check": dict(
                sorted(Counter(c for r in dropped for c in (r.checks or "").split(",")).items())
            ),
            "failed": len(failed),
            # why, most common first: what the next run retries (failed calls are not cached)
            "failures": dict(Counter(r.reason[:160] for r in failed).most_common(10)),
            "flagged": collected.flagged,
            "unjudged": collected.unjudged,
            "pass_rates": pass_rates,
            "turn_flags": dict(sorted(collected.turn_flags.items())),
        },
        "lm": collected.calls.block(cfg.lms),
        "rows": {"published": len(refs), "duplicates_dropped": duplicates},
        "budget": {
            **cfg.run.budget.model_dump(),
            "stopped": any(r.stage == "budget" for r in stopped),
            "unfinished": sum(1 for r in stopped if r.stage == "budget"),
        },
        "breaker": {
            "tripped": tripped is not None,
            "not_started": sum(1 for r in stopped if r.stage == "breaker"),
            "reason": tripped,
        },
        "elapsed_s": 0.0,
        "config_hash": cfg.fingerprint(),
        "run_cache": "stored" if storing else "off" if key is None else "unsettled",
    }
    shapes: list[dict[str, Any]] = []  # what the plots and the card count, per row
    samples: list[dict[str, Any]] = []  # the first row of each scenario, for the report

    def seen(row: dict[str, Any]) -> None:
        shapes.append(row_shape(row))
        if all(s["scenario"] != row["scenario"] for s in samples):
            samples.append(row)

    write_dataset(out, PublishedRows(refs), cfg.publish, on_row=seen)
    write_rejects(out, [*loaded.rejects, *failed, *dropped, *stopped])
    plots = write_plots(out, shapes, pass_rates)
    summary["elapsed_s"] = round(time.monotonic() - started, 3)
    embedded = any(cfg.lms.for_role(r).is_embedded for r in collected.roles())  # type: ignore[arg-type]
    images = plots_markdown(plots)
    write_text(out / "report.md", render_report(summary, samples, embedded, str(out), images))
    card = render_card(cfg, summary, shapes, collected.versions, images)
    write_text(out / "README.md", card)
    write_json(out / "summary.json", summary)
    if storing:
        _remember(cfg, out, key, summary, collected)  # type: ignore[arg-type]
    push_to_hub(out, cfg.publish)
    return summary


def _remember(
    cfg: MasterConfig, out: Path, key: str, summary: dict[str, Any], collected: Collected
) -> None:
    # what a replay reports: every call this run made or reused, now a cache hit
    body = {"summary": summary, "lm_replayed": collected.calls.block(cfg.lms, all_cached=True)}
    try:
        RunStore(cfg.cache.dir, cfg.cache.keep_runs).remember(key, out, body)
    except OSError as exc:  # the outputs are written; only the next run's shortcut is lost
        log.warning("could not store this run for replay: %s", exc)


def program_versions(cfg: MasterConfig) -> dict[str, str]:
    """The version of every program a run may use (scenarios and judge), without any LM."""
    programs = configured_programs({}, cfg.scenarios.programs, cfg.optimize.programs_dir)
    versions = {name: program_version(p) for name, p in programs.items()}
    return {**versions, "judge": program_version(Judge())}


def replay(cfg: MasterConfig, out: Path, key: str | None, started: float) -> dict[str, Any] | None:
    """Restore the outputs of an earlier run with exactly these inputs; None if there is none.

    The dataset files, rejects, card and plots are the stored ones; summary.json and
    report.md describe this run: no LM call made, every call a cache hit."""
    if key is None:
        return None
    stored = RunStore(cfg.cache.dir, cfg.cache.keep_runs).restore(key, out)
    if stored is None:
        return None
    summary = {**stored["summary"], "lm": stored["lm_replayed"], "run_cache": "hit"}
    sample = (
        pl.scan_parquet(out / "dataset.parquet")
        .select("scenario", "seed_id", "source", "turns")
        .group_by("scenario", maintain_order=True)
        .first()
        .collect()
        .to_dicts()
    )
    embedded = any(cfg.lms.for_role(r).is_embedded for r in roles_in_use(cfg))
    images = plots_markdown([out / name for name in PLOTS if (out / name).exists()])
    summary["elapsed_s"] = round(time.monotonic() - started, 3)
    write_text(out / "report.md", render_report(summary, sample, embedded, str(out), images))
    write_json(out / "summary.json", summary)
    push_to_hub(out, cfg.publish)
    log.info("inputs unchanged since a stored run: its outputs restored, no LM call made")
    return summary


def _run_pipeline(
    cfg: MasterConfig,
    out: Path | None = None,
    seed_paths: list[str] | None = None,
    embedder: Embedder | None = None,
) -> RunResult:
    started = time.monotonic()
    out = Path(out or cfg.run.out)
    check_keys(cfg.lms, roles_in_use(cfg))
    key = run_key(cfg, program_versions(cfg), seed_paths, embedder)
    replayed = replay(cfg, out, key, started)
    if replayed is not None:
        return RunResult(out=out, summary=replayed)
    loaded = load_seeds(cfg.seeds, seed_paths)
    log.info(
        "kept %d seeds of %d rows (%d rejected, %d duplicates, %d contaminated)",
        len(loaded.seeds),
        loaded.loaded,
        loaded.rejected,
        loaded.exact_duplicates + loaded.near_duplicates,
        loaded.contaminated,
    )
    ready, analogy = assign_jobs(loaded, cfg)
    later = None
    if analogy:
        later = LaterJobs(lambda: partner_jobs(analogy, loaded, cfg, embedder), len(analogy))
    try:
        collected = run_jobs(ready, cfg, spill_folder(out, "run"), later)
        plan_rejects = later.rejects if later is not None else []
        summary = publish(cfg, out, loaded, plan_rejects, collected, started, key)
    finally:
        clear_spills(out)
    return RunResult(out=out, summary=summary)


def run_pipeline(
    cfg: MasterConfig,
    out: Path | None = None,
    seed_paths: list[str] | None = None,
    embedder: Embedder | None = None,
) -> RunResult:
    """The whole job in this process: what `master run` does, holding the output folder."""
    target = Path(out or cfg.run.out)
    with output_lock(target):
        return _run_pipeline(cfg, target, seed_paths, embedder)
