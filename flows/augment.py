"""The augment flow: the main job as Prefect tasks, for deployments and schedules.

The steps are the same functions `master run` calls (flows/runs/stages.py); this file only
wires them as tasks, splits simulation into shards (never one task per seed), and publishes the
report and summary as artifacts. Prefect's own task caching is off: it hashes inputs with
cloudpickle and is per flow run, while our content-addressed LM cache already makes reruns
incremental.

Scale-out: with `run.task_runner: dask` the shards run on a Dask cluster (`run.dask_address`, or
a local one) through prefect-dask's DaskTaskRunner, in a `simulate-shards` subflow: the task
runner is chosen from the config at run time, which a decorator argument could not do. Loading,
planning and publishing stay in the flow's own process."""

from __future__ import annotations

import base64
import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_image_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.states import Failed, State
from prefect.task_runners import TaskRunner

from flows.core.config import MasterConfig, RunConfig, load_config
from flows.core.records import Reject
from flows.ingest.seeds import LoadResult
from flows.planning.jobs import Job, Later, Plan, plan_stream
from flows.publish.collect import Collected
from flows.publish.versions import Release
from flows.runs.pipeline import drive, with_overrides
from flows.runs.prewarm import prewarm
from flows.runs.progress import Progress, ProgressLines, run_prices
from flows.runs.shards import ShardResult, new_budget, run_shard
from flows.runs.stages import Stages, load_stage, publish, replay_run
from flows.simulation.simulate import STOP, Breaker, not_started
from modules.lm.budget import CallBudget
from modules.runtime import setup

log = logging.getLogger("master")
PROGRESS_EVERY_S = 10.0  # a progress line in the flow run's logs at most this often


@task(name="replay-run", cache_policy=NO_CACHE)
def replay_task(
    cfg: MasterConfig, release: Release, seeds: list[str] | None, embedder: Any, started: float
) -> tuple[str | None, dict[str, Any] | None]:
    key, summary = replay_run(cfg, release, seeds, embedder, started)
    if summary is not None:
        publish_artifacts(str(release.staged), summary)
    return key, summary


def step_lines() -> Progress:
    """A stage's long steps (reading, dedupe, embedding, partner matching) as lines in the
    flow run's logs, at most every PROGRESS_EVERY_S."""
    progress = Progress()
    progress.watch = ProgressLines(lambda p: log.info("%s", p.line()), PROGRESS_EVERY_S)
    return progress


@task(name="load-seeds", cache_policy=NO_CACHE)
def load_task(cfg: MasterConfig, seeds: list[str] | None) -> LoadResult:
    return load_stage(cfg, seeds, step_lines())


@task(name="plan", cache_policy=NO_CACHE)
def plan_task(loaded: LoadResult, cfg: MasterConfig, embedder: Any) -> Plan:
    """Every seed's scenario now, the analogy partners as simulate_in_shards draws them from
    `plan.later` (the retrieval runs in the flow's thread while the first shards run)."""
    return plan_stream(loaded, cfg, embedder, tell=step_lines().step)


@task(name="simulate-shard", cache_policy=NO_CACHE, task_run_name="simulate-shard-{index}")
def simulate_task(
    jobs: list[Job],
    cfg: MasterConfig,
    index: int,
    budget: CallBudget | None = None,
    progress: Progress | None = None,
) -> ShardResult:
    return run_shard(jobs, cfg, budget, progress)


@task(name="publish", cache_policy=NO_CACHE)
def publish_task(
    cfg: MasterConfig,
    release: Release,
    loaded: LoadResult,
    plan_rejects: list[Reject],
    collected: Collected,
    started: float,
    key: str | None = None,
) -> dict[str, Any]:
    summary = publish(cfg, release, loaded, plan_rejects, collected, started, key)
    publish_artifacts(str(release.staged), summary)
    return summary


def simulate_in_shards(plan: Plan, cfg: MasterConfig, spill: Path) -> Collected:
    """The simulate stage of the flow: run.shard_size jobs a task, on the thread runner or,
    with run.task_runner dask, on a Dask cluster. On threads the ready jobs' shards start at
    once and the analogy jobs' shards join as their partners are found (this thread does the
    retrieval meanwhile); a Dask run shares its budget by the number of shards, so it plans
    every shard first."""
    rows = str(spill / "rows.jsonl")
    prewarm()  # publish's imports while this process waits on the shards
    if cfg.run.task_runner == "dask":
        jobs = [*plan.ready, *(job for batch in plan.later or () for job in batch)]
        runner = dask_runner(cfg.run)
        shards = _in_shards(jobs, cfg.run.shard_size)
        return simulate_shards.with_options(task_runner=runner)(shards, on_cluster(cfg), rows)
    return submit_shards(_in_shards(plan.ready, cfg.run.shard_size), cfg, rows,
                         new_budget(cfg), more=plan.later)  # fmt: skip


def _in_shards(jobs: list[Job], size: int) -> list[list[Job]]:
    return [jobs[i : i + size] for i in range(0, len(jobs), size)]


#: The flow's stages: the driver's own functions as Prefect tasks.
FLOW_STAGES = Stages(
    replay=replay_task,
    load=load_task,
    plan=plan_task,
    simulate=simulate_in_shards,
    publish=publish_task,
)


def publish_artifacts(out: str, summary: dict[str, Any]) -> None:
    """The report, the LM accounting, summary.json and the plots as the flow run's artifacts."""
    create_markdown_artifact(
        markdown=(Path(out) / "report.md").read_text(encoding="utf-8"),
        key="augment-report",
        description="MASTER run report",
    )
    create_table_artifact(
        table=[
            {"role": role, **{k: v for k, v in stats.items()}}
            for role, stats in summary["lm"]["by_role"].items()
        ],
        key="augment-lm-calls",
        description="LM calls, cache hits and tokens per role",
    )
    create_table_artifact(
        table=[
            {"section": section, "key": key, "value": value}
            for section in ("seeds", "dialogues", "quality")
            for key, value in summary[section].items()
            if not isinstance(value, dict)
        ],
        key="augment-summary",
        description="summary.json",
    )
    for png in sorted(Path(out).glob("plot_*.png")):
        # a data URL: the plot travels with the artifact, no file server needed
        encoded = base64.b64encode(png.read_bytes()).decode("ascii")
        create_image_artifact(
            image_url=f"data:image/png;base64,{encoded}",
            key=f"augment-{png.stem.replace('_', '-')}",
            description=f"{png.name} of this run",
        )


def dask_runner(run: RunConfig) -> TaskRunner:
    """A DaskTaskRunner on the configured scheduler, or on a local cluster of 2 processes."""
    from prefect_dask import DaskTaskRunner

    if run.dask_address:
        return DaskTaskRunner(address=run.dask_address)
    return DaskTaskRunner(
        cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": True}
    )


def submit_shards(
    shards: list[list[Job]],
    cfg: MasterConfig,
    spill: str,
    budget: CallBudget | None = None,
    more: Later | None = None,
) -> Collected:
    """Every shard as a task on the current flow's task runner; each shard's outcomes are
    collected (rows spilled to `spill`) as it finishes, then let go. `more` (threads only):
    batches of jobs found while the first shards run (analogy jobs as partners are found),
    submitted as shards as they come.

    Progress (seeds done, calls, cache hits, ETA) is logged and kept in a progress artifact
    as shards finish. One budget object is shared by threads; on a Dask cluster each shard
    gets an equal share instead, since a counter cannot be shared across machines."""
    on_threads = cfg.run.task_runner != "dask"
    if budget is None and not on_threads and shards:
        shares = [new_budget(cfg, 1 / len(shards)) for _ in shards]
    else:
        shares = [budget for _ in shards]
    # on threads, one Progress counts every seed as it finishes and logs a line at most every
    # PROGRESS_EVERY_S; a Dask shard is counted when it is back (below)
    seeds = Progress(run_prices(cfg)) if on_threads else None
    if seeds is not None:
        seeds.watch = ProgressLines(lambda p: log.info("%s", p.line()), PROGRESS_EVERY_S)
    futures = [
        simulate_task.submit(shard, cfg, i, share, seeds)
        for i, (shard, share) in enumerate(zip(shards, shares, strict=True))
    ]
    progress = create_progress_artifact(
        progress=0.0, key="augment-progress", description="seeds simulated and verified"
    )
    collected = Collected(Path(spill))
    total = sum(len(s) for s in shards)
    taker = _Taker(collected, total, progress, seeds is None, cfg.run.breaker_failures)
    STOP.clear()
    try:
        for batch in more or ():  # (an empty batch: a step of the search done)
            for shard in _in_shards(batch, cfg.run.shard_size):
                futures.append(simulate_task.submit(shard, cfg, len(futures), budget, seeds))
                taker.total += len(shard)
            if seeds is not None and more is not None:
                seeds.add(0, waiting=len(more.unplanned))  # (each shard adds its own seeds)
            # what finished meanwhile is taken now: a run's memory does not grow with its
            # finished dialogues (flows/publish/collect.py)
            for future in [f for f in futures if f.wrapped_future.done()]:
                futures.remove(future)
                taker.take(future)
            if taker.breaker.tripped and more is not None:
                # the endpoint is down: the partners still to be found would only be
                # reported not started, so they are not waited for
                for job in more.stop():
                    collected.add(not_started(job, taker.breaker.reason()))
                    taker.total += 1
        for future in as_completed(futures):
            taker.take(future)
    except BaseException:
        STOP.set()  # cancelled (or failing): the shards still running stop at once
        raise
    finally:
        collected.close()
    if seeds is not None and seeds.total:
        log.info("%s", seeds.line())
    return collected


class _Taker:
    """Takes the shards' outcomes as they finish (into an empty `collected`, whose counts the
    progress reports), updating the progress artifact and, with `log_shards`, logging each."""

    def __init__(
        self,
        collected: Collected,
        total: int,
        progress: Any,
        log_shards: bool,
        breaker_failures: int = 0,
    ) -> None:
        self.collected = collected
        self.total = total
        self.progress = progress
        self.log_shards = log_shards
        self.start = time.monotonic()
        # the shards' dialogues failing in a row, in the order they are taken (each shard
        # has its own breaker for its own dialogues)
        self.breaker = Breaker(breaker_failures)

    def take(self, future: Any) -> None:
        shard, collected = future.result(), self.collected
        for outcome in shard.outcomes:
            collected.add(outcome)
            self.breaker.record(outcome)
        collected.calls.add_replicas(shard.replicas)
        done, total = collected.outcomes, self.total
        calls, hits = collected.calls.totals()
        elapsed = time.monotonic() - self.start
        eta = elapsed / done * (total - done) if done else 0.0
        update_progress_artifact(self.progress, progress=100.0 * done / max(total, 1))
        if self.log_shards:
            get_run_logger().info(
                "%d/%d seeds done, %d LM calls, %d cache hits, eta %.0f s",
                done, total, calls, hits, eta,
            )  # fmt: skip


@flow(name="simulate-shards")
def simulate_shards(shards: list[list[Job]], cfg: MasterConfig, spill: str) -> Collected:
    """The shards on whatever task runner this subflow is given (Dask, see `dask_runner`)."""
    return submit_shards(shards, cfg, spill)  # on Dask: a budget share per shard


def on_cluster(cfg: MasterConfig) -> MasterConfig:
    """The config Dask workers get: the cache folder as an absolute path, since a worker's
    working directory is its own (the folder must be the same shared one on every machine)."""
    cache_dir = str(Path(cfg.cache.dir).expanduser().resolve())
    return cfg.model_copy(update={"cache": cfg.cache.model_copy(update={"dir": cache_dir})})


class _ToThisFlowRun(logging.Filter):
    """A record logged outside Prefect's run context (a thread the pipeline started) is sent
    as this flow run's: Prefect's API handler drops what it cannot place."""

    def __init__(self, flow_run_id: str) -> None:
        super().__init__()
        self.flow_run_id = flow_run_id

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "flow_run_id", None) is None:
            from prefect.context import FlowRunContext, TaskRunContext

            if FlowRunContext.get() is None and TaskRunContext.get() is None:
                record.flow_run_id = self.flow_run_id
        return True


@contextlib.contextmanager
def master_logs_in_this_run() -> Iterator[None]:
    """The pipeline's own log lines (the `master` logger: stages, progress, warnings, the
    breaker, the gates) in this flow run's logs, at INFO: Prefect's API log handler on that
    logger for the run, as its `logging.extra_loggers` setting would attach it (which leaves
    the level at the root's WARNING, and drops lines of threads outside its context)."""
    from prefect.logging.handlers import APILogHandler
    from prefect.runtime import flow_run

    logger = logging.getLogger("master")
    handler = APILogHandler()
    handler.addFilter(_ToThisFlowRun(flow_run.id))
    level = logger.level
    logger.setLevel(min(level or logging.INFO, logging.INFO))
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@flow(name="augment")  # log_prints would log what libraries print (dill prints bytecode)
def augment(
    config_path: str | None = None,
    profile: str | None = None,
    out: str | None = None,
    sample: int | None = None,
    seeds: list[str] | None = None,
    scenarios: dict[str, float] | None = None,
    max_calls: int | None = None,
    force: bool = False,
) -> dict[str, Any] | State:
    """Seeds -> dialogues -> a new version of the dataset in `out`, published if it passes
    the gates (publish.gates; `force` publishes anyway). Parameters override the config
    file's values: `scenarios` the proportions (e.g. {"debate": 1, "analogy": 0,
    "error_correction": 0}), `max_calls` the run's LM-call budget."""
    setup()
    cfg = load_config(config_path, profile)
    if sample is not None:
        cfg = cfg.model_copy(update={"seeds": cfg.seeds.model_copy(update={"sample": sample})})
    if force:
        cfg = cfg.model_copy(update={"publish": cfg.publish.model_copy(update={"force": True})})
    cfg = with_overrides(cfg, scenarios, max_calls)
    out_dir = out or cfg.run.out
    with master_logs_in_this_run():
        result = drive(cfg, Path(out_dir), seeds, stages=FLOW_STAGES)
    summary = result.summary
    # Failed, with one line and no traceback: the previous version stays published (a gate
    # failed), or this one was published with --force although the breaker stopped the run
    if not result.published:
        return Failed(message=result.message)
    if summary["breaker"]["tripped"]:
        return Failed(
            message=f"stopped: {summary['breaker']['reason']}; "
            f"{summary['quality']['accepted']} dialogues published in {out_dir} as version "
            f"{summary['version']} (forced), {summary['breaker']['not_started']} not started"
        )
    get_run_logger().info(
        "%d dialogues, %d LM calls, %d cache hits -> %s, version %s",
        summary["quality"]["accepted"],
        summary["lm"]["calls"],
        summary["lm"]["cache_hits"],
        out_dir,
        summary["version"],
    )
    return summary
