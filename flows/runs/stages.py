"""The stages the driver (flows/runs/pipeline.py) runs, and `Stages`, how it runs them:
replay, load, load more (a backfill round), plan, simulate, publish.

Each stage imports its libraries where it runs (seed loading, retrieval, DSPy, the
simulation, the dataset writers, matplotlib), so a replay loads none of them. A run that
simulates imports the publish stage's libraries on a background thread once its first calls
are out (flows/runs/prewarm.py).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.core.config import SCENARIOS, MasterConfig
from flows.core.files import write_json, write_text
from flows.core.records import Reject
from flows.planning.jobs import Plan, plan_stream, roles_in_use
from flows.publish.merge import PublishedRows, merge_refs, standing_in
from flows.publish.plots import PLOTS, plots_markdown
from flows.publish.report import render_report
from flows.publish.versions import Release
from flows.runs.prewarm import prewarm
from flows.runs.run_cache import RunStore, run_key
from flows.simulation.saved_programs import version_prints

if TYPE_CHECKING:
    from flows.ingest.seeds import LoadResult
    from flows.planning.retrieval import Embedder
    from flows.publish.collect import Collected
    from flows.runs.progress import Progress

log = logging.getLogger("master")
#: publish tells its progress every this many rows
PUBLISH_TELL_EVERY = 2000


def publish(
    cfg: MasterConfig,
    release: Release,
    loaded: LoadResult,
    plan_rejects: list[Reject],
    collected: Collected,
    started: float,
    key: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Filter, merge and write every output file into the release's staging folder; return
    the summary (also summary.json), with the version, the changes and the gates.

    The rows are read back from the spill in published order, a batch at a time (counted in
    `progress` as the step "publishing rows"). With a run key (flows/runs/run_cache.py) a
    settled run's outputs are stored for replay."""
    from flows.publish.card import render_card
    from flows.publish.collect import in_order
    from flows.publish.plots import write_plots
    from flows.publish.writers import write_dataset, write_rejects
    from flows.quality.lengths import row_shape

    out = release.staged

    storing = key is not None and collected.settled
    failed = [*plan_rejects, *in_order(collected.failed)]
    stopped = in_order(collected.stopped)
    dropped = in_order(collected.dropped)
    tripped = next((r.reason for r in stopped if r.stage == "breaker"), None)
    dialogue_ids = {ref.seed_id for ref in collected.refs}
    unfinished = {r.seed_id for r in stopped if r.seed_id}
    originals = standing_in(
        loaded.seeds, dialogue_ids, unfinished, cfg.merge, cfg.scenarios.proportions
    )
    refs, duplicates = merge_refs(collected.refs, loaded.seeds, cfg.merge, originals)
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
            "audit": collected.audit(),
            "pass_rates": pass_rates,
            "turn_flags": dict(sorted(collected.turn_flags.items())),
        },
        "lm": collected.calls.block(cfg.lms),
        "rows": {
            "published": len(refs),
            "duplicates_dropped": duplicates,
            "originals": dict(sorted(Counter(o.why for o in originals).items())),
        },
        "backfill": {"mode": cfg.merge.backfill, **loaded.backfill},
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

    by_scenario: Counter[str] = Counter()  # rows.by_scenario: a replay's unchanged rows

    def seen(row: dict[str, Any]) -> None:
        if progress is not None and (len(shapes) + 1) % PUBLISH_TELL_EVERY == 0:
            progress.step("publishing rows", len(shapes) + 1, len(refs))
        shapes.append(row_shape(row))
        by_scenario[row["scenario"]] += 1
        if all(s["scenario"] != row["scenario"] for s in samples):
            samples.append(row)

    summary["training"] = write_dataset(
        out, PublishedRows(refs), cfg.publish, on_row=seen, mapping=cfg.scenarios.debate_mapping
    )
    if progress is not None:
        progress.step("publishing rows", len(refs), len(refs))
    write_rejects(out, [*loaded.rejects, *failed, *dropped, *stopped])
    plots = write_plots(out, shapes, pass_rates)
    summary["rows"]["by_scenario"] = dict(sorted(by_scenario.items()))
    summary.update(versioned(cfg, release, summary))
    summary["elapsed_s"] = round(time.monotonic() - started, 3)
    embedded = any(cfg.lms.for_role(r).is_embedded for r in collected.roles())  # type: ignore[arg-type]
    images = plots_markdown(plots)
    shown = str(release.folder.root)
    write_text(out / "report.md", render_report(summary, samples, embedded, shown, images))
    card = render_card(cfg, summary, shapes, collected.versions, images)
    write_text(out / "README.md", card)
    write_json(out / "summary.json", summary)
    if storing:
        _remember(cfg, out, key, summary, collected, samples)  # type: ignore[arg-type]
    return summary


def versioned(cfg: MasterConfig, release: Release, summary: dict[str, Any]) -> dict[str, Any]:
    """summary.json's `version`, `previous_version`, `changes` (against the published
    version) and `gates`, once the staged dataset.parquet is written."""
    from flows.publish.changes import changes_block, diff_files, unchanged_block
    from flows.publish.gates import check_gates
    from flows.publish.versions import content_digest

    previous = release.previous
    before = previous.summary if previous else None
    by_scenario = summary["rows"].get("by_scenario")
    digest = content_digest(release.staged)  # read once: the staged rows may be large
    if (
        previous and by_scenario is not None and content_digest(previous.path) == digest
    ):  # the same rows again (a replay): no row is read, nor pyarrow imported
        changes = unchanged_block(previous.id, by_scenario, before, summary)
    else:
        kinds = diff_files(
            previous.path / "dataset.parquet" if previous else None,
            release.staged / "dataset.parquet",
        )
        changes = changes_block(previous.id if previous else None, kinds, before, summary)
    return {
        "version": release.new_id(digest),
        "previous_version": previous.id if previous else None,
        "changes": changes,
        "gates": check_gates(summary, before, cfg.publish.gates, cfg.publish.force),
    }


#: what report.md shows of a scenario's first row, kept with a stored run for its replay
SAMPLE_FIELDS = ("scenario", "seed_id", "source", "turns")


def _remember(
    cfg: MasterConfig,
    out: Path,
    key: str,
    summary: dict[str, Any],
    collected: Collected,
    samples: list[dict[str, Any]],
) -> None:
    body = {
        "summary": summary,
        # what a replay reports: every call this run made or reused, now a cache hit
        "lm_replayed": collected.calls.block(cfg.lms, all_cached=True),
        "samples": [{k: row.get(k) for k in SAMPLE_FIELDS} for row in samples],
    }
    try:
        RunStore(cfg.cache.dir, cfg.cache.keep_runs).remember(key, out, body)
    except OSError as exc:  # the outputs are written; only the next run's shortcut is lost
        log.warning("could not store this run for replay: %s", exc)


def program_versions(cfg: MasterConfig) -> dict[str, str]:
    """The version of every program a run may use (scenarios and judge), without any LM."""
    from flows.simulation.saved_programs import configured_programs
    from modules.scenarios.judge import Judge
    from modules.scenarios.registry import program_version

    programs = configured_programs({}, cfg.scenarios.programs, cfg.optimize.programs_dir)
    versions = {name: program_version(p) for name, p in programs.items()}
    return {**versions, "judge": program_version(Judge())}


def replay(
    cfg: MasterConfig, release: Release, key: str | None, started: float
) -> dict[str, Any] | None:
    """Restore the outputs of an earlier run with exactly these inputs into the release's
    staging folder; None if there is none.

    The dataset files, rejects and plots are the stored ones; summary.json, report.md and the
    card's changes describe this run: no LM call made, every call a cache hit, the changes
    since the version published now."""
    if key is None:
        return None
    out = release.staged
    stored = RunStore(cfg.cache.dir, cfg.cache.keep_runs).restore(key, out)
    if stored is None:
        return None
    summary = {**stored["summary"], "lm": stored["lm_replayed"], "run_cache": "hit"}
    summary.update(versioned(cfg, release, summary))
    sample = stored.get("samples")
    if sample is None:  # stored before the samples were kept
        import polars as pl

        sample = (
            pl.scan_parquet(out / "dataset.parquet")
            .select(*SAMPLE_FIELDS)
            .group_by("scenario", maintain_order=True)
            .first()
            .collect()
            .to_dicts()
        )
    embedded = any(cfg.lms.for_role(r).is_embedded for r in roles_in_use(cfg))
    images = plots_markdown([out / name for name in PLOTS if (out / name).exists()])
    summary["elapsed_s"] = round(time.monotonic() - started, 3)
    shown = str(release.folder.root)
    write_text(out / "report.md", render_report(summary, sample, embedded, shown, images))
    if (out / "README.md").exists():
        from flows.publish.changes import restamp_card

        card = (out / "README.md").read_text(encoding="utf-8")
        write_text(out / "README.md", restamp_card(card, summary))
    write_json(out / "summary.json", summary)
    log.info("inputs unchanged since a stored run: its outputs restored, no LM call made")
    return summary


def replay_run(
    cfg: MasterConfig,
    release: Release,
    seed_paths: list[str] | None,
    embedder: Embedder | None,
    started: float,
) -> tuple[str | None, dict[str, Any] | None]:
    """The run's key, and the summary of a stored run with exactly these inputs, restored.

    The programs enter the key by their saved files (version_prints), not by building them:
    a replay never loads DSPy. A missing saved version is named by building them."""
    versions = version_prints(cfg.scenarios.programs, cfg.optimize.programs_dir)
    if versions is None:
        versions = program_versions(cfg)  # raises the ConfigError that names the missing file
    key = run_key(cfg, versions, seed_paths, embedder)
    return key, replay(cfg, release, key, started)


def load_stage(
    cfg: MasterConfig, seed_paths: list[str] | None, progress: Progress | None = None
) -> LoadResult:
    """flows/ingest/seeds.py:load_seeds, its steps (reading, decontamination, near-dedupe)
    told to `progress`."""
    from flows.ingest.seeds import load_seeds

    loaded = load_seeds(cfg.seeds, seed_paths, progress.step if progress is not None else None)
    log.info(
        "kept %d seeds of %d rows (%d rejected, %d duplicates, %d contaminated)",
        len(loaded.seeds),
        loaded.loaded,
        loaded.rejected,
        loaded.exact_duplicates + loaded.near_duplicates,
        loaded.contaminated,
    )
    return loaded


def load_more_stage(
    cfg: MasterConfig,
    seed_paths: list[str] | None,
    taken: list[Any],
    wanted: dict[str, int],
    round_: int,
    progress: Progress | None = None,
) -> LoadResult:
    """flows/ingest/seeds.py:load_more (merge.backfill: resimulate), imported when used; its
    steps told to `progress`."""
    from flows.ingest.seeds import load_more

    tell = progress.step if progress is not None else None
    return load_more(cfg.seeds, seed_paths, taken, wanted, round_, tell)


def simulate_stage(
    plan: Plan, cfg: MasterConfig, spill: Path, progress: Progress | None = None
) -> Collected:
    """flows/runs/shards.py:simulate_jobs, imported when a run simulates: the plan's ready
    jobs at once, its analogy jobs as planning finds their partners (plan.later, iterated on
    a thread of its own). Publish's imports start on a background thread once the first
    dialogues wait on the network (prewarm): started earlier, they hold the GIL while the
    simulation builds and sends its first calls (benchmarks/decisions.md, cold start)."""
    from flows.runs.shards import simulate_jobs

    return simulate_jobs(plan.ready, cfg, spill, progress, on_waiting=prewarm, later=plan.later)


@dataclass(frozen=True)
class Stages:
    """How the driver runs each stage. `master run` calls the functions; the augment flow
    passes the same functions wrapped as Prefect tasks, and a `simulate` that runs the jobs
    in shards on its task runner (flows/augment.py). The order and the data between the
    stages are the driver's alone."""

    replay: Callable[..., tuple[str | None, dict[str, Any] | None]] = replay_run
    load: Callable[..., LoadResult] = load_stage
    load_more: Callable[..., LoadResult] = load_more_stage
    plan: Callable[..., Plan] = plan_stream
    simulate: Callable[[Plan, MasterConfig, Path], Collected] = simulate_stage
    publish: Callable[..., dict[str, Any]] = publish
