"""Prompt-optimization experiments: split, optimize one scenario's agents, evaluate, compare.

Plain functions (the Prefect flow in flows/optimize.py and `master optimize` call them). Every
LM call goes through the same content-addressed cache as `master run`, so an experiment that
is interrupted and restarted pays only for calls it had not finished, and evaluating the
baseline reuses what augment runs already generated.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import dspy

from flows.core.config import MasterConfig, Scenario
from flows.core.records import Seed
from flows.ingest.seeds import load_seeds
from flows.optimization.metrics import example_checks, make_metric, score_checks
from flows.planning.assign import debate_rounds
from flows.planning.jobs import ROLES_BY_SCENARIO, Job
from flows.planning.minilm import minilm_embedder
from flows.planning.retrieval import Embedder, cached_embedder, pick_similar
from flows.quality.checks import pass_rates
from flows.simulation.saved_programs import (
    BASELINE,
    apply_state,
    list_versions,
    load_version,
    program_state,
    programs_dir,
    save_version,
)
from flows.simulation.simulate import run_program
from modules.lm.budget import CallBudget
from modules.lm.call_cache import CallStore, dialogue_slot, ledger
from modules.lm.factory import build_role_lms
from modules.scenarios.judge import Judge
from modules.scenarios.registry import build_judge, build_programs, program_version, role_adapters

log = logging.getLogger("master")


class ExperimentError(Exception):
    """An experiment cannot run or finish (too few seeds, budget spent): one line for users."""


#: An optimizer and the settings that go to its compile() rather than its constructor.
Tuner = tuple[Any, dict[str, Any]]


def _configured(cls: type, settings: dict[str, Any], **fixed: Any) -> Tuner:
    """The optimizer built with the settings its constructor takes; the others (MIPROv2's
    num_trials, minibatch, ...) are passed to its compile(). An unknown one is one line."""

    def takes(fn: Callable[..., Any]) -> tuple[set[str], bool]:
        params = inspect.signature(fn).parameters.values()
        names = {p.name for p in params} - {"self", "metric", "student", "trainset"}
        return names, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)

    (init, init_any), (comp, _) = takes(cls.__init__), takes(cls.compile)
    unknown = sorted(set(settings) - init - comp) if not init_any else []
    if unknown:
        raise ExperimentError(
            f"optimize.settings: {', '.join(unknown)} is not a setting of {cls.__name__} "
            f"(it takes: {', '.join(sorted((init | comp) - set(fixed)))})"
        )
    built = {k: v for k, v in settings.items() if k in init or (init_any and k not in comp)}
    return cls(**fixed, **built), {k: v for k, v in settings.items() if k not in built}


def _bootstrap(cfg: MasterConfig, metric: Callable[..., Any], prompt_lm: dspy.LM) -> Tuner:
    settings = {"max_bootstrapped_demos": 2, "max_labeled_demos": 0, **cfg.optimize.settings}
    return _configured(dspy.BootstrapFewShot, settings, metric=metric)


def _mipro(cfg: MasterConfig, metric: Callable[..., Any], prompt_lm: dspy.LM) -> Tuner:
    settings = {"auto": "light", "max_labeled_demos": 0, **cfg.optimize.settings}
    return _configured(
        dspy.MIPROv2, settings, metric=metric, prompt_model=prompt_lm, task_model=prompt_lm
    )


#: LM calls one GEPA metric call costs, about: a dialogue's turns (3 to 5, retries aside) and
#: a share of the reflection calls. Its default metric budget keeps within optimize.max_calls.
CALLS_PER_METRIC_CALL = 6


def _gepa(cfg: MasterConfig, metric: Callable[..., Any], prompt_lm: dspy.LM) -> Tuner:
    settings = dict(cfg.optimize.settings)
    if not {"auto", "max_full_evals", "max_metric_calls"} & set(settings):
        settings["max_metric_calls"] = max(1, cfg.optimize.max_calls // CALLS_PER_METRIC_CALL)
    return _configured(dspy.GEPA, settings, metric=metric, reflection_lm=prompt_lm)


# name -> (builder, whether the metric returns textual feedback); a registry, not an if-chain
OPTIMIZERS: dict[str, tuple[Callable[..., Any], bool]] = {
    "bootstrap_few_shot": (_bootstrap, False),
    "mipro_v2": (_mipro, False),
    "gepa": (_gepa, True),
}


def split(seeds: list[Seed], train: int, dev: int, split_seed: int) -> tuple[list, list]:
    """A reproducible split: seeds ordered by a hash of (split_seed, id), dev first."""
    ordered = sorted(
        seeds, key=lambda s: hashlib.sha256(f"{split_seed}:{s.id}".encode()).hexdigest()
    )
    if len(ordered) < train + dev:
        raise ExperimentError(
            f"optimize: {len(ordered)} seeds with references, need train_size + dev_size = "
            f"{train + dev} (raise seeds.sample or lower the sizes)"
        )
    return ordered[dev : dev + train], ordered[:dev]


def jobs_for(
    scenario: Scenario, seeds: list[Seed], pool: list[Seed], embedder: Embedder, cfg: MasterConfig
) -> list[Job]:
    similar: Mapping[str, Any] = {}
    if scenario == "analogy":
        similar = pick_similar(seeds, pool, embedder, cfg.scenarios.retrieval_top_k)
    jobs = []
    for seed in seeds:
        match = similar.get(seed.id)
        if scenario == "analogy" and match is None:
            continue
        rounds = debate_rounds(seed.id, cfg.scenarios.debate_rounds)
        jobs.append(Job(seed, scenario, rounds, match.seed if match else None))
    return jobs


def to_example(job: Job) -> dspy.Example:
    seed = job.seed
    fields: dict[str, Any] = {
        "question": seed.question,
        "reference": seed.reference,
        "domain": seed.domain,
        "scenario": job.scenario,
    }
    inputs = ["question", "reference"]
    if job.scenario == "debate":
        fields["rounds"] = job.rounds
        inputs.append("rounds")
    if job.scenario == "analogy" and job.similar is not None:
        fields["similar_question"] = job.similar.question
        fields["similar_reference"] = job.similar.reference
        inputs += ["similar_question", "similar_reference"]
    return dspy.Example(**fields).with_inputs(*inputs)


def evaluate(
    program: dspy.Module, jobs: list[Job], cfg: MasterConfig, judge: Judge | None
) -> dict[str, Any]:
    """Metric, pass rate per check, calls and tokens of a program on these jobs."""

    def one(job: Job) -> tuple[dict | None, int | None, list, str | None]:
        with ledger() as book, dialogue_slot(f"{job.seed.id}:{job.scenario}"):
            try:
                turns = run_program(program, job)
            except Exception as exc:  # noqa: BLE001 - counted as failed, never scored 0
                return None, None, list(book.records), f"{type(exc).__name__}: {exc}"[:200]
            checks, score = example_checks(to_example(job), turns, cfg.quality, judge)
            return checks, score, list(book.records), None

    with ThreadPoolExecutor(max_workers=cfg.run.concurrency) as pool:
        results = list(pool.map(one, jobs))
    # the metric is over the dialogues that ran: a failure is reported beside it, not a 0
    scores = [score_checks(c, s) for c, s, _, _ in results if c is not None]
    calls = [r for _, _, records, _ in results for r in records]
    errors = [e for _, _, _, e in results if e is not None]
    return {
        "metric": round(sum(scores) / max(len(scores), 1), 4),
        "pass_rates": pass_rates(c for c, _, _, _ in results if c is not None),
        "ran": len(scores),
        "failed": len(errors),
        "failures": dict(Counter(errors).most_common(3)),
        "calls": sum(1 for r in calls if not r.cached),
        "cache_hits": sum(1 for r in calls if r.cached),
        "tokens": sum(r.tokens_in + r.tokens_out for r in calls),
    }


def _no_embedder(texts: Any) -> Any:
    raise AssertionError("only analogy retrieves similar questions")


class Lab:
    """What an experiment works with: the LMs (cached, under one budget), the data split."""

    def __init__(self, cfg: MasterConfig, scenario: Scenario, embedder: Embedder | None = None):
        self.cfg, self.scenario = cfg, scenario
        self.budget = CallBudget(max_calls=cfg.optimize.max_calls)
        self.store = CallStore(cfg.cache.dir) if cfg.cache.enabled else None
        roles = (*ROLES_BY_SCENARIO[scenario], "judge") if cfg.optimize.judge else None
        self.lms = build_role_lms(cfg.lms, self.store, roles or ROLES_BY_SCENARIO[scenario],
                                  budget=self.budget)  # type: ignore[arg-type]  # fmt: skip
        self.judge = build_judge(cfg.lms, self.lms["judge"]) if cfg.optimize.judge else None  # type: ignore[index]
        loaded = load_seeds(cfg.seeds)
        train, dev = split(
            loaded.seeds, cfg.optimize.train_size, cfg.optimize.dev_size, cfg.optimize.split_seed
        )
        embed = embedder or (minilm_embedder() if scenario == "analogy" else _no_embedder)
        if cfg.cache.enabled and scenario == "analogy":
            embed = cached_embedder(embed, cfg.cache.dir)
        self.train = jobs_for(scenario, train, loaded.pool, embed, cfg)
        self.dev = jobs_for(scenario, dev, loaded.pool, embed, cfg)
        self.root = programs_dir(cfg.optimize.programs_dir)

    def program(self, version: str = BASELINE) -> dspy.Module:
        program = build_programs(self.lms, role_adapters(self.cfg.lms))[self.scenario]
        return load_version(program, self.scenario, version, self.root)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    def guard(self, work: Callable[[], Any]) -> Any:
        """Run work; a spent budget becomes one clear line (the cache keeps what finished)."""
        try:
            result = work()
        except Exception:
            if not self.budget.refused:
                raise
            result = None
        if self.budget.refused:
            raise ExperimentError(
                f"optimize: stopped, {self.budget.reason()}; finished calls are cached, "
                "rerun with a larger optimize.max_calls to go on from there"
            )
        return result


def _restrict(compiled: dspy.Module, baseline: dspy.Module, agents: list[str]) -> dspy.Module:
    """Keep the optimizer's changes only for the chosen agents; the others stay as they were."""
    if not agents:
        return compiled
    before = program_state(baseline)
    keep = {
        name: state
        for name, state in program_state(compiled).items()
        if name.split(".")[0] in agents
    }
    return apply_state(compiled, {**before, **keep})


def as_saved(program: dspy.Module, lab: Lab) -> dspy.Module:
    """The program exactly as `master run` loads it once saved: its state through JSON (what
    save_version writes), applied to a fresh program on the lab's LMs (what load_version does)."""
    state = json.loads(json.dumps(program_state(program), ensure_ascii=False))
    return apply_state(lab.program(), state)


#: More dialogues of the dev set failing than this share ends an experiment, saving nothing.
MAX_FAILED_SHARE = 0.1


def too_many_failed(scenario: str, label: str, result: dict[str, Any], size: int) -> None:
    """Raise ExperimentError when more than a tenth of the dev set failed to run."""
    if result["failed"] > MAX_FAILED_SHARE * size:
        why = "; ".join(result["failures"]) or "unknown"
        raise ExperimentError(
            f"optimize {scenario}: {result['failed']} of {size} dev dialogues of the {label} "
            f"failed (more than {MAX_FAILED_SHARE:.0%}), so nothing was saved: {why}"
        )


def changed_agents(before: dspy.Module, after: dspy.Module) -> list[str]:
    a, b = program_state(before), program_state(after)
    return sorted({name.split(".")[0] for name in a if a[name] != b.get(name)})


def optimize_scenario(
    cfg: MasterConfig, scenario: Scenario, embedder: Embedder | None = None
) -> dict[str, Any]:
    """Optimize one scenario's agents; save the program; return its metadata."""
    name = cfg.optimize.optimizer
    build, with_feedback = OPTIMIZERS[name]
    lab = Lab(cfg, scenario, embedder)
    try:
        started = time.monotonic()
        baseline = lab.program()
        before = lab.guard(lambda: evaluate(baseline, lab.dev, cfg, lab.judge))
        metric = make_metric(cfg.quality, lab.judge, with_feedback)
        optimizer, compile_settings = build(cfg, metric, lab.lms["strong"])
        trainset = [to_example(j) for j in lab.train]
        compiled = lab.guard(
            lambda: optimizer.compile(lab.program(), trainset=trainset, **compile_settings)
        )
        compiled = _restrict(compiled, lab.program(), cfg.optimize.agents)
        # evaluated as `master run` will load it once saved: its saved state on fresh agents
        candidate = as_saved(compiled, lab)
        after = lab.guard(lambda: evaluate(candidate, lab.dev, cfg, lab.judge))
        for label, result in (("baseline", before), ("optimized program", after)):
            too_many_failed(scenario, label, result, len(lab.dev))
        meta = {
            "optimizer": name,
            "optimizer_settings": dict(cfg.optimize.settings),
            "agents": changed_agents(baseline, candidate),
            "roles": list(ROLES_BY_SCENARIO[scenario]),
            "lms": {r: cfg.lms.for_role(r).fingerprint() for r in ROLES_BY_SCENARIO[scenario]},  # type: ignore[arg-type]
            "train_size": len(lab.train),
            "dev_size": len(lab.dev),
            "split_seed": cfg.optimize.split_seed,
            "metric_before": before["metric"],
            "metric_after": after["metric"],
            "beats_baseline": after["metric"] > before["metric"],
            "dev_before": before,
            "dev_after": after,
            "baseline_version": program_version(baseline),
            "calls": lab.budget.calls,
            "elapsed_s": round(time.monotonic() - started, 2),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        meta["version"] = save_version(candidate, scenario, meta, lab.root)
        return meta
    finally:
        lab.close()


def compare(
    cfg: MasterConfig, scenario: Scenario, embedder: Embedder | None = None
) -> list[dict[str, Any]]:
    """The baseline and every saved version of a scenario on the same dev set."""
    lab = Lab(cfg, scenario, embedder)
    try:
        rows = []
        versions = [BASELINE, *(m["version"] for m in list_versions(scenario, lab.root))]
        for version in versions:
            program = lab.program(version)
            result = lab.guard(lambda p=program: evaluate(p, lab.dev, cfg, lab.judge))
            rows.append({"version": version, **result})
        return rows
    finally:
        lab.close()


def _dev(result: dict[str, Any]) -> str:
    """A dev metric as printed: with the dialogues it is over, and its failures if any."""
    failed = f", {result['failed']} FAILED (not scored)" if result.get("failed") else ""
    return f"{result['metric']:.3f} (over {result.get('ran', '?')} dialogues{failed})"


def optimize_lines(scenario: str, meta: dict[str, Any]) -> str:
    """What `master optimize` prints for a saved version: its figures and whether to use it."""
    head = (
        f"{scenario}: saved version {meta['version']} ({meta['optimizer']}, agents changed: "
        f"{', '.join(meta['agents']) or 'none'}); dev metric {_dev(meta['dev_before'])} -> "
        f"{_dev(meta['dev_after'])}, {meta['calls']} calls"
    )
    if meta["beats_baseline"]:
        return f"{head}\n  use it: scenarios.programs.{scenario}: {meta['version']}"
    return (
        f"{head}\n  it does not beat the baseline on the dev set "
        f"({meta['metric_after']:.3f} <= {meta['metric_before']:.3f}): saved for the record, "
        "keep the baseline"
    )


def format_compare(scenario: str, rows: list[dict[str, Any]]) -> str:
    checks = sorted({c for r in rows for c in r["pass_rates"]})
    header = ["version", "metric", "failed", *checks, "calls", "cache hits", "tokens"]
    lines = [f"{scenario}: dev set comparison", " | ".join(header)]
    for r in rows:
        rates = [f"{r['pass_rates'].get(c, float('nan')):.0%}" for c in checks]
        lines.append(
            " | ".join(
                [
                    r["version"],
                    f"{r['metric']:.3f}",
                    str(r.get("failed", 0)),
                    *rates,
                    str(r["calls"]),
                    str(r["cache_hits"]),
                    str(r["tokens"]),
                ]  # fmt: skip
            )
        )
    return "\n".join(lines)
