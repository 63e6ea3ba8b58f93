"""The `master` command: run the pipeline, check the LMs.

Every user mistake (a bad config key, a missing file, an unset key variable, a closed port)
ends in one line per problem on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from flows.commands.terminal import setup_logging, showing
from flows.core.config import ConfigError, MasterConfig, load_config
from modules.runtime import setup

EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_STOPPED = 3  # the circuit breaker stopped the run; not published unless --force
EXIT_GATES = 4  # the run failed a publish gate: the previous version stays published

if TYPE_CHECKING:
    from modules.lm.settings import LMSettings

DESCRIPTION = """\
MASTER turns question/answer seed data into multi-turn teacher-student dialogues for
fine-tuning (Yue et al., "Multi-Agent Simulated Teaching", arXiv 2506.02689): a weak student
errs and a teacher corrects it, peers debate and a strong student settles it, a teacher
explains and a student solves the question and then a retrieved similar one.

Start with `master run` (bundled seeds, embedded demo model), then point the roles at a real
OpenAI-compatible endpoint in data/config.yaml or with `--profile paper`."""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="config file (default: data/config.yaml)")
    p.add_argument(
        "--profile",
        metavar="NAME",
        action="append",
        help="a ready profile from data/profiles/, e.g. 'boostqa' (the paper's procedure) or "
        "'boostqa-clean' (ours on top of it); "
        "several (`--profile a,b` or repeated) apply left to right",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log every dialogue and call")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="master", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="augment seeds into dialogues and write the dataset",
        description="Load seeds, simulate one classroom dialogue per seed, write the dataset "
        "(dataset.parquet, dataset.jsonl, messages.jsonl), the trainers' files "
        "(llamafactory.jsonl, dataset_info.json, llamafactory_lora.yaml, "
        "prompt_completion.jsonl), rejects.parquet, report.md and summary.json into the "
        "output folder. Finished LM calls are cached, so a rerun only pays for what changed.",
    )
    _common(run)
    run.add_argument(
        "--seeds", nargs="+", metavar="FILE", help="seed files instead of the configured sources"
    )
    run.add_argument("--sample", type=int, metavar="N", help="use N seeds in all (split evenly)")
    run.add_argument("--out", metavar="DIR", help="output folder (default: run.out in the config)")
    run.add_argument(
        "--max-calls", type=int, metavar="N", help="stop dispatching after N LM calls (budget)"
    )
    run.add_argument(
        "--force",
        action="store_true",
        help="publish this run's version even if it fails a publish gate (publish.gates)",
    )

    versions = sub.add_parser(
        "versions",
        help="list the versions in an output folder",
        description="List the published versions of an output folder (id, rows, accepted "
        "share, config hash, gates), the current one marked, then the attempts that failed "
        "their gates.",
    )
    versions.add_argument("dir", metavar="DIR", help="an output folder of `master run`")
    versions.add_argument("--json", action="store_true", help="print as JSON")
    versions.add_argument("-v", "--verbose", action="store_true", help="log more")

    diff = sub.add_parser(
        "diff",
        help="what changed between two versions of an output folder",
        description="Rows added, removed, regenerated (same seed, new conversation) and "
        "unchanged between version A and version B, per scenario, with the seed ids. B "
        "defaults to the published version, A to the version before B.",
    )
    diff.add_argument("dir", metavar="DIR", help="an output folder of `master run`")
    diff.add_argument("a", nargs="?", metavar="A", help="older version id (or a prefix)")
    diff.add_argument("b", nargs="?", metavar="B", help="newer version id (or a prefix)")
    diff.add_argument("--ids", type=int, default=20, metavar="N", help="seed ids shown per kind")
    diff.add_argument("--json", action="store_true", help="print as JSON, every seed id")
    diff.add_argument("-v", "--verbose", action="store_true", help="log more")

    seeds = sub.add_parser(
        "seeds",
        help="run seed ingestion alone: load, dedupe, decontaminate, sample",
        description="Read the configured sources and write seeds.parquet, rejects.parquet "
        "(every dropped row with its reason and location) and summary.json (its `seeds` "
        "block) into the output folder. Calls no model.",
    )
    _common(seeds)
    seeds.add_argument("--seeds", nargs="+", metavar="FILE", help="seed files instead")
    seeds.add_argument("--sample", type=int, metavar="N", help="keep N seeds in all")
    seeds.add_argument("--out", metavar="DIR", required=True, help="output folder")

    plan = sub.add_parser(
        "plan",
        help="what `master run` would call and cost, without calling any model",
        description="Same inputs as `master run`. Calls no LM: per scenario and role, prints "
        "how many calls are cached and how many would be made, and why (new seed, "
        "instructions changed, sampling changed, model changed, earlier turn changed), with "
        "estimated tokens and, where prices are configured, cost.",
    )
    _common(plan)
    plan.add_argument("--seeds", nargs="+", metavar="FILE", help="seed files instead")
    plan.add_argument("--sample", type=int, metavar="N", help="use N seeds in all")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")

    cache = sub.add_parser("cache", help="inspect or prune the LM cache")
    cache_sub = cache.add_subparsers(dest="cache_command", metavar="SUBCOMMAND")
    stats = cache_sub.add_parser("stats", help="entries, size, per role and model")
    _common(stats)
    stats.add_argument("--json", action="store_true", help="print as JSON")
    prune = cache_sub.add_parser(
        "prune",
        help="delete old entries, or those no current program uses",
        description="Delete cache entries older than --older-than DAYS, and/or (--unused) "
        "those whose instructions or program version no current program has.",
    )
    _common(prune)
    prune.add_argument("--older-than", type=float, metavar="DAYS")
    prune.add_argument("--unused", action="store_true")

    show = sub.add_parser(
        "show-prompts",
        help="print the prompts every role receives in one dialogue",
        description="Render, without calling any model, the exact prompts (system and user "
        "messages) each role of a scenario receives in one dialogue of the configured seeds. "
        "Model answers appear as placeholders.",
    )
    _common(show)
    show.add_argument(
        "--scenario", required=True, choices=["error_correction", "debate", "analogy"]
    )
    show.add_argument("--seeds", nargs="+", metavar="FILE", help="seed files to take it from")

    verify = sub.add_parser(
        "verify",
        help="run the quality checks over an existing ShareGPT dataset",
        description="Verify every row of a ShareGPT dataset (JSONL, JSON array or Parquet with "
        "a `conversations` column) with the checks `master run` applies: answer fidelity, the "
        "LLM judge (the config's judge role), structure and scenario intent. References come "
        "from a field of each row or from a seeds file. Writes verdicts.parquet (a verdict and "
        "reason per check and row), rejects.parquet (unreadable rows) and verify_summary.json; "
        "with --labels, each check's and the judge's agreement with a person's labels.",
    )
    _common(verify)
    verify.add_argument("--in", dest="source", required=True, metavar="FILE", help="dataset")
    verify.add_argument("--out", required=True, metavar="DIR", help="where verdicts go")
    verify.add_argument(
        "--reference-field", default="reference", metavar="NAME", help="default: reference"
    )
    verify.add_argument(
        "--seeds", metavar="FILE", help="seeds file (id/seed_id, question, reference, domain)"
    )
    verify.add_argument(
        "--domain",
        choices=("math", "code", "general"),
        default="general",
        help="for rows with no domain of their own (default: general)",
    )
    verify.add_argument("--no-judge", action="store_true", help="skip the LLM judge")
    verify.add_argument(
        "--labels",
        metavar="FILE",
        help='JSON Lines {"id": ..., "label": "ok" | KIND | [KIND, ...]}: print and write the '
        "precision, recall and Cohen's kappa of each check and of the judge against them "
        "(KIND: a check's name, structure, intent or procedural_errors)",
    )

    opt = sub.add_parser(
        "optimize",
        help="optimize a scenario's prompts with DSPy, or compare saved versions",
        description="Optimize the agents of one scenario (or all) with the optimizer in the "
        "config's `optimize` section (BootstrapFewShot, MIPROv2, GEPA) on a reproducible "
        "train/dev split of the seeds, within optimize.max_calls LM calls. The result is saved "
        "under data/programs/<scenario>/<version>.json with its metadata; name the version in "
        "scenarios.programs to use it. --compare evaluates the baseline and every saved version "
        "on the dev set instead.",
    )
    _common(opt)
    opt.add_argument(
        "--scenario",
        choices=("error_correction", "debate", "analogy", "all"),
        default="all",
        help="default: all",
    )
    opt.add_argument(
        "--optimizer", choices=("bootstrap_few_shot", "mipro_v2", "gepa"), help="override"
    )
    opt.add_argument("--max-calls", type=int, metavar="N", help="LM call budget (override)")
    opt.add_argument("--compare", action="store_true", help="compare saved versions only")

    lm = sub.add_parser("lm", help="language-model utilities")
    lm_sub = lm.add_subparsers(dest="lm_command", metavar="SUBCOMMAND")
    check = lm_sub.add_parser(
        "check",
        help="call each role's LM once and report",
        description="Call each role's LM once (no cache) and print role, model, endpoint, "
        "latency and ok or the error. Exits non-zero if any role fails.",
    )
    _common(check)
    return parser


def _load(args: argparse.Namespace) -> MasterConfig:
    return load_config(args.config, args.profile)


def _with_sample(cfg: MasterConfig, sample: int | None) -> MasterConfig:
    if sample is None:
        return cfg
    if sample <= 0:
        raise ConfigError("--sample: must be a positive number of seeds")
    return cfg.model_copy(update={"seeds": cfg.seeds.model_copy(update={"sample": sample})})


def cmd_run(args: argparse.Namespace) -> int:
    from flows.runs.pipeline import run_pipeline, with_overrides
    from flows.runs.progress import Progress, run_prices

    if args.max_calls is not None and args.max_calls <= 0:
        raise ConfigError("--max-calls: must be a positive number of calls")
    cfg = with_overrides(_with_sample(_load(args), args.sample), None, args.max_calls)
    if args.force:
        cfg = cfg.model_copy(update={"publish": cfg.publish.model_copy(update={"force": True})})
    out = Path(args.out) if args.out else None
    progress = Progress(run_prices(cfg))
    with showing(progress, sys.stderr.isatty()):
        result = run_pipeline(cfg, out, args.seeds, progress=progress)
    s = result.summary
    if not result.published:
        if s["breaker"]["tripped"]:
            print(
                f"stopped: {s['breaker']['reason'].removeprefix('not started: ')}; "
                f"{s['breaker']['not_started']} dialogues not started, "
                f"{s['quality']['failed']} failed (reasons in summary.json, "
                "quality.failures). Every finished call is cached: once the endpoint answers "
                "again, rerun and only the rest is paid for.",
                file=sys.stderr,
            )
        print(f"error: {result.message}", file=sys.stderr)
        return EXIT_STOPPED if s["breaker"]["tripped"] else EXIT_GATES
    print(
        f"{sum(s['dialogues'].values())} dialogues "
        f"({', '.join(f'{k} {v}' for k, v in s['dialogues'].items())}), "
        f"{s['quality']['rejected']} dropped by the quality filter, "
        f"{s['quality']['failed']} failed, {s['lm']['calls']} LM calls, "
        f"{s['lm']['cache_hits']} cache hits, {s['elapsed_s']:.1f} s"
    )
    print(f"version: {s['version']} (previous: {s['previous_version'] or 'none'})")
    print(f"dataset: {result.out / 'dataset.parquet'} (ShareGPT: {result.out / 'dataset.jsonl'})")
    print(f"report:  {result.out / 'report.md'}")
    if s["breaker"]["tripped"]:  # published anyway: --force
        print(
            f"stopped: {s['breaker']['reason'].removeprefix('not started: ')}. "
            f"{sum(s['dialogues'].values())} dialogues are published in {result.out}; "
            f"{s['breaker']['not_started']} were not started and {s['quality']['failed']} "
            "failed (reasons in summary.json, quality.failures). Every finished call is "
            "cached: once the endpoint answers again, rerun and only the rest is paid for.",
            file=sys.stderr,
        )
        return EXIT_STOPPED
    if s["budget"]["stopped"]:
        print(
            f"stopped early: the run's budget is spent; {s['budget']['unfinished']} dialogues "
            "are unfinished (their finished calls are cached: run again to complete them)",
            file=sys.stderr,
        )
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    import json

    from flows.commands.versions import format_versions, list_versions

    listed = list_versions(Path(args.dir))
    print(json.dumps(listed, indent=2) if args.json else format_versions(listed))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    import json

    from flows.commands.versions import diff_versions, format_diff

    result = diff_versions(Path(args.dir), args.a, args.b)
    print(json.dumps(result, indent=2) if args.json else format_diff(result, args.ids))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from flows.commands.verify_dataset import format_audit, run_audit
    from modules.lm.settings import check_keys

    cfg = _load(args)
    if not args.no_judge and cfg.quality.judge:
        check_keys(cfg.lms, ("judge",))
    summary = run_audit(
        cfg,
        args.source,
        Path(args.out),
        reference_field=args.reference_field,
        seeds=args.seeds,
        domain=args.domain,
        judge=not args.no_judge,
        labels=args.labels,
    )
    print(format_audit(summary))
    print(f"verdicts: {Path(args.out) / 'verdicts.parquet'}")
    if "calibration" in summary:
        print(f"agreement: {Path(args.out) / 'verify_summary.json'} (calibration)")
    return 0


def cmd_optimize(args: argparse.Namespace) -> int:
    from flows.core.config import SCENARIOS
    from flows.optimization.experiment import (
        compare,
        format_compare,
        optimize_lines,
        optimize_scenario,
    )
    from flows.planning.jobs import ROLES_BY_SCENARIO
    from modules.lm.settings import check_keys

    cfg = _load(args)
    updates = {k: v for k, v in (("optimizer", args.optimizer), ("max_calls", args.max_calls)) if v}
    if updates:
        cfg = cfg.model_copy(update={"optimize": cfg.optimize.model_copy(update=updates)})
    scenarios = SCENARIOS if args.scenario == "all" else (args.scenario,)
    roles = {r for s in scenarios for r in ROLES_BY_SCENARIO[s]}
    check_keys(cfg.lms, tuple(sorted(roles | ({"judge"} if cfg.optimize.judge else set()))))
    for scenario in scenarios:
        if not args.compare:
            meta = optimize_scenario(cfg, scenario)
            print(optimize_lines(scenario, meta))
        print(format_compare(scenario, compare(cfg, scenario)))
    return 0


def cmd_seeds(args: argparse.Namespace) -> int:
    from flows.core.files import write_json
    from flows.ingest.seeds import load_seeds
    from flows.publish.writers import write_rejects, write_seeds

    cfg = _with_sample(_load(args), args.sample)
    started = time.monotonic()
    loaded = load_seeds(cfg.seeds, args.seeds)
    out = Path(args.out)
    write_seeds(out, loaded.seeds)
    write_rejects(out, loaded.rejects)
    write_json(
        out / "summary.json",
        {"seeds": loaded.counts(), "elapsed_s": round(time.monotonic() - started, 3)},
    )
    c = loaded.counts()
    print(
        f"{c['kept']} seeds kept of {c['loaded']} rows: {c['rejected']} rejected "
        f"({c['skipped']} skipped), {c['exact_duplicates']} exact and {c['near_duplicates']} "
        f"near duplicates, {c['contaminated']} contaminated"
    )
    print(f"seeds:   {out / 'seeds.parquet'}\nrejects: {out / 'rejects.parquet'}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    import json

    from flows.commands.dry_run import format_plan, plan_run
    from flows.runs.progress import Progress

    cfg = _with_sample(_load(args), args.sample)
    progress = Progress()  # its steps only: loading, retrieval, the dry run of each dialogue
    with showing(progress, sys.stderr.isatty()):
        result = plan_run(cfg, args.seeds, tell=progress.step)
    print(json.dumps(result, indent=2) if args.json else format_plan(result))
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    import json

    from flows.runs.cache_admin import cache_stats, prune

    cfg = _load(args)
    if args.cache_command == "stats":
        stats = cache_stats(cfg.cache.dir)
        if args.json:
            print(json.dumps(stats, indent=2))
        else:
            c = stats["calls"]
            print(
                f"cache {stats['dir']}: {c['entries']} LM calls ({c['bytes']:,} bytes), "
                f"{stats['dialogues']['entries']} dialogues, "
                f"{stats['retrieval']['entries']} analogy partners"
            )
            for role, n in c["by_role"].items():
                print(f"  {role:<7} {n}")
        return 0
    if args.older_than is None and not args.unused:
        raise ConfigError("cache prune: say what to delete (--older-than DAYS and/or --unused)")
    removed = prune(cfg.cache.dir, args.older_than, args.unused)
    print(", ".join(f"{v} {k} removed" for k, v in removed.items()))
    return 0


def cmd_show_prompts(args: argparse.Namespace) -> int:
    from flows.commands.show_prompts import example_job, format_prompts, render_prompts
    from flows.ingest.seeds import load_seeds

    cfg = _load(args)
    loaded = load_seeds(cfg.seeds, args.seeds)
    if not loaded.seeds:
        raise ConfigError("no valid seeds in the configured sources")
    job = example_job(cfg, loaded.pool, args.scenario)
    print(f"seed {job.seed.id} ({job.seed.source}, {job.seed.domain}), scenario {job.scenario}")
    print(format_prompts(render_prompts(cfg, job)))
    return 0


def _endpoints(settings: LMSettings) -> list[tuple[str, LMSettings]]:
    """Each endpoint of a role to check, with the settings that reach it alone."""
    if settings.is_embedded:
        return [("in-process", settings)]
    if not settings.replicas:
        return [("provider default", settings)]
    return [(base, settings.model_copy(update={"api_base": base})) for base in settings.replicas]


def cmd_lm_check(args: argparse.Namespace) -> int:
    """One line per role and endpoint: every replica of a pool is checked on its own."""
    from modules.lm.factory import build_lm
    from modules.lm.settings import LMConfigError

    cfg = _load(args)
    failed = 0
    for role, role_settings in cfg.lms.items():
        for endpoint, settings in _endpoints(role_settings):
            start = time.monotonic()
            try:
                lm = build_lm(
                    role,
                    settings.model_copy(update={"timeout_s": min(settings.timeout_s, 30)}),
                    None,
                    num_retries=0,
                )
                lm(
                    messages=[{"role": "user", "content": "Reply with the single word OK."}],
                    max_tokens=8,
                )
                status = "ok"
            except LMConfigError as exc:
                status, failed = f"FAILED: {exc}", failed + 1
            except Exception as exc:  # noqa: BLE001 - any provider error is reported, one line
                reason = " ".join(str(exc).split())[:200] or type(exc).__name__
                status, failed = f"FAILED: {type(exc).__name__}: {reason}", failed + 1
            latency = time.monotonic() - start
            print(f"{role:<7} {settings.model:<40} {endpoint:<32} {latency:6.2f}s  {status}")
    return EXIT_FAILED if failed else 0


def _user_errors() -> tuple[type[Exception], ...]:
    """The errors that are the user's to fix, one line each. Imported once one is raised, not
    before: `master run` does not load the optimizer, and its module is loaded by then."""
    from flows.commands.versions import VersionsError
    from flows.core.files import OutputLockedError
    from flows.ingest.seeds import SeedSourceError
    from flows.optimization.experiment import ExperimentError
    from flows.publish.versions import ForeignFilesError
    from flows.publish.writers import PublishError
    from modules.lm.embedded import EmbeddedModelError
    from modules.lm.settings import LMConfigError

    return (
        ConfigError,
        SeedSourceError,
        LMConfigError,
        EmbeddedModelError,
        PublishError,
        ExperimentError,
        OutputLockedError,
        ForeignFilesError,
        VersionsError,
    )


def main(argv: list[str] | None = None) -> int:
    # At exit, once the handlers the command registers have run, every object left is frozen:
    # the interpreter's teardown frees them without the collector's passes over the whole
    # heap of the loaded libraries (benchmarks/decisions.md). Python never promised
    # finalizers for objects still alive at exit, so nothing else changes.
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if args.command == "lm" and args.lm_command is None:
        parser.parse_args(["lm", "--help"])
    if args.command == "cache" and args.cache_command is None:
        parser.parse_args(["cache", "--help"])
    # `run` leaves DSPy's patches to the pipeline (a replayed run never loads DSPy); the
    # version commands read files only
    setup(dspy=args.command not in ("run", "versions", "diff"))
    setup_logging(args.verbose)
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "plan":
            return cmd_plan(args)
        if args.command == "cache":
            return cmd_cache(args)
        if args.command == "seeds":
            return cmd_seeds(args)
        if args.command == "show-prompts":
            return cmd_show_prompts(args)
        if args.command == "verify":
            return cmd_verify(args)
        if args.command == "versions":
            return cmd_versions(args)
        if args.command == "diff":
            return cmd_diff(args)
        if args.command == "optimize":
            return cmd_optimize(args)
        return cmd_lm_check(args)
    except Exception as exc:
        if not isinstance(exc, _user_errors()):
            raise
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: finished LM calls are kept in the cache", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
