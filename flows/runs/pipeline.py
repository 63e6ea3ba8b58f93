"""The pipeline driver: the one place that says in which order the stages run.

`master run` calls `run_pipeline` (the driver with the plain stage functions of
flows/runs/stages.py); the augment flow (flows/augment.py) calls the same driver with the
same functions as Prefect tasks. Nothing here imports Prefect.

A replay needs only the run cache and the report: the stages import their libraries where a
missed replay runs them, and DSPy's patches are installed then (modules.runtime.setup), so a
replayed `master run` starts in a fraction of the time (benchmarks/RESULTS.md, start-up).
"""

from __future__ import annotations

import functools
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.core.config import MasterConfig
from flows.core.files import output_lock
from flows.planning.jobs import plan_stream, roles_in_use
from flows.publish.spill import clear_spills, spill_folder
from flows.publish.versions import OutputFolder, Release
from flows.runs.stages import (
    Stages,
    load_more_stage,
    load_stage,
    publish,
    simulate_stage,
)
from modules.lm.settings import check_keys
from modules.runtime import setup

if TYPE_CHECKING:
    from flows.planning.retrieval import Embedder
    from flows.runs.progress import Progress

log = logging.getLogger("master")


@dataclass
class RunResult:
    """A run's summary; `published` False when it failed a gate: the output folder still
    holds the previous version, and `message` (one line) says why and where `attempt` is."""

    out: Path
    summary: dict[str, Any]
    published: bool = True
    attempt: Path | None = None
    message: str = ""

    @property
    def files(self) -> Path:
        """Where this run's files are: the output folder, or its attempt when not published."""
        return self.out if self.published else self.attempt or self.out


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


def drive(
    cfg: MasterConfig,
    out: Path,
    seed_paths: list[str] | None = None,
    embedder: Embedder | None = None,
    stages: Stages | None = None,
) -> RunResult:
    """The main job: replay an unchanged run, or load -> plan -> simulate -> publish, into a
    staging folder; then publish it as the output folder's new version if it passes its
    gates, or set it aside (flows/publish/versions.py). Holds the output folder for the whole
    run (a second run on it refuses at once)."""
    stages = stages or Stages()
    started = time.monotonic()
    check_keys(cfg.lms, roles_in_use(cfg))
    with output_lock(out):
        folder = OutputFolder(out)
        folder.prepare()
        release = Release(folder, folder.stage(), folder.current())
        try:
            key, summary = stages.replay(cfg, release, seed_paths, embedder, started)
            if summary is None:
                setup()  # DSPy's patches, before its programs run (a replay has none to run)
                loaded = stages.load(cfg, seed_paths)
                plan = stages.plan(loaded, cfg, embedder)
                collected = stages.simulate(plan, cfg, spill_folder(out, "run"))
                plan_rejects = list(plan.rejects)  # complete: simulate exhausted plan.later
                if cfg.merge.backfill == "resimulate":
                    from flows.runs.backfill import resimulate

                    plan_rejects += resimulate(
                        cfg, out, seed_paths, embedder, stages, loaded, collected
                    )
                summary = stages.publish(
                    cfg, release, loaded, plan_rejects, collected, started, key
                )
            return settle(cfg, release, summary)
        finally:
            clear_spills(out)
            shutil.rmtree(release.staged, ignore_errors=True)


def settle(cfg: MasterConfig, release: Release, summary: dict[str, Any]) -> RunResult:
    """Publish the staged outputs as the new version if they passed their gates (or the run
    was forced), then push that version to the Hub; otherwise set them aside under attempts/
    and leave the published version as it is."""
    folder, gates = release.folder, summary["gates"]
    previous = release.previous.id if release.previous else "none yet"
    if gates["passed"] or gates["forced"]:
        version = folder.publish(release.staged, summary["version"])
        for line in gates["failed"]:
            log.warning("gate failed, published anyway (--force): %s", line)
        log.info("published version %s in %s (previous: %s)", version.id, folder.root, previous)
        removed = folder.prune(cfg.publish.keep_versions)
        if removed:
            log.info("pruned %d old version(s): %s", len(removed), ", ".join(removed))
        if cfg.publish.push_to_hub:
            from flows.publish.writers import push_to_hub

            push_to_hub(version.path, cfg.publish, version.id)
        return RunResult(out=folder.root, summary=summary)
    attempt = folder.set_aside(release.staged, summary["version"])
    folder.prune(cfg.publish.keep_versions)
    message = (
        f"not published, {'; '.join(gates['failed'])}: {folder.root} still holds version "
        f"{previous}; this run's outputs are in {attempt.path} (--force publishes anyway)"
    )
    log.warning("not published: %s", "; ".join(gates["failed"]))
    return RunResult(folder.root, summary, published=False, attempt=attempt.path, message=message)


def run_pipeline(
    cfg: MasterConfig,
    out: Path | None = None,
    seed_paths: list[str] | None = None,
    embedder: Embedder | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """The whole job in this process: what `master run` does. Every seed simulated is added
    to `progress` and counted in it as it finishes, and every long step (loading, dedupe,
    decontamination, embedding, partner matching, backfill rounds' loading, publishing) told
    to it as it goes (flows/runs/progress.py)."""
    tell = progress.step if progress is not None else None
    stages = Stages(
        load=functools.partial(load_stage, progress=progress),
        load_more=functools.partial(load_more_stage, progress=progress),
        plan=functools.partial(plan_stream, tell=tell),
        simulate=functools.partial(simulate_stage, progress=progress),
        publish=functools.partial(publish, progress=progress),
    )
    return drive(cfg, Path(out or cfg.run.out), seed_paths, embedder, stages)
