"""`master plan`: what a run would cost, without calling any model.

Every job goes through the real programs on a DryRunEngine: cached calls answer from the
cache (so later prompts are rendered exactly), missing ones are counted with the reason and
estimated tokens, per scenario and role. Whole dialogues found in the dialogue cache count
all their calls as cached.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import dspy

from flows.core.config import MasterConfig
from flows.ingest.seeds import load_seeds
from flows.planning.jobs import plan_jobs
from flows.planning.retrieval import Embedder, Tell
from flows.simulation.dialogue_cache import DialogueStore, dialogue_key, replayed_calls
from flows.simulation.saved_programs import configured_programs
from flows.simulation.simulate import run_program
from modules.lm.call_cache import CallStore, DryRunEngine, dialogue_slot, ledger
from modules.scenarios.registry import program_version

#: the dry run tells how many dialogues it has gone through every this many
TELL_EVERY = 500


def plan_run(
    cfg: MasterConfig,
    seed_paths: list[str] | None = None,
    embedder: Embedder | None = None,
    tell: Tell | None = None,
) -> dict[str, Any]:
    """What a run would call and cost; `tell(step, done, total)` hears how far loading,
    retrieval and the dry run of the dialogues have got."""
    loaded = load_seeds(cfg.seeds, seed_paths, tell)
    jobs, rejects = plan_jobs(loaded, cfg, embedder, remember=False, tell=tell)
    store = CallStore(cfg.cache.dir)
    dialogues = DialogueStore(cfg.cache.dir)
    try:
        lms = {
            role: dspy.LM(
                settings.model,
                engine=DryRunEngine(role, store),
                cache=False,
                num_retries=0,
                temperature=settings.temperature,
                max_tokens=settings.max_tokens,
            )
            for role, settings in cfg.lms.items()
        }
        programs = configured_programs(lms, cfg.scenarios.programs, cfg.optimize.programs_dir)
        versions = {name: program_version(p) for name, p in programs.items()}
        rows: dict[tuple[str, str], dict[str, Any]] = defaultdict(
            lambda: {
                "cached": 0,
                "to_call": 0,
                "reasons": Counter(),
                "tokens_in": 0,
                "tokens_out": 0,
            }
        )
        whole = 0
        for number, job in enumerate(jobs, 1):
            if tell is not None and (number % TELL_EVERY == 0 or number == len(jobs)):
                tell("dry-running dialogues", number, len(jobs))
            hit = dialogues.get(dialogue_key(job, versions[job.scenario], cfg.lms))
            if hit is not None:
                whole += 1
                records = replayed_calls(hit)
            else:
                with ledger() as book, dialogue_slot(f"{job.seed.id}:{job.scenario}"):
                    run_program(programs[job.scenario], job)
                records = book.records
            for rec in records:
                row = rows[(job.scenario, rec.role)]
                if rec.cached:
                    row["cached"] += 1
                    continue
                row["to_call"] += 1
                row["reasons"][rec.reason or "unknown"] += 1
                row["tokens_in"] += rec.tokens_in
                row["tokens_out"] += rec.tokens_out
    finally:
        store.close()
        dialogues.close()
    table = []
    for (scenario, role), row in sorted(rows.items()):
        settings = cfg.lms.for_role(role)  # type: ignore[arg-type]
        priced = settings.price_in_per_mtok is not None or settings.price_out_per_mtok is not None
        cost = (
            row["tokens_in"] * (settings.price_in_per_mtok or 0)
            + row["tokens_out"] * (settings.price_out_per_mtok or 0)
        ) / 1e6
        table.append(
            {
                "scenario": scenario,
                "role": role,
                "cached": row["cached"],
                "to_call": row["to_call"],
                "reasons": dict(sorted(row["reasons"].items())),
                "est_tokens_in": row["tokens_in"],
                "est_tokens_out": row["tokens_out"],
                "est_cost_usd": round(cost, 4) if priced else None,
            }
        )
    return {
        "seeds": loaded.counts(),
        "dialogues": len(jobs),
        "dialogues_cached_whole": whole,
        "not_simulated": len(rejects),
        "calls_cached": sum(r["cached"] for r in table),
        "calls_to_make": sum(r["to_call"] for r in table),
        "by_scenario_role": table,
    }


def format_plan(plan: dict[str, Any]) -> str:
    lines = [
        f"{plan['dialogues']} dialogues ({plan['dialogues_cached_whole']} fully cached); "
        f"{plan['calls_to_make']} LM calls to make, {plan['calls_cached']} cached",
        "",
        f"{'scenario':<17} {'role':<7} {'cached':>7} {'to call':>8} {'est tok in':>11} "
        f"{'est tok out':>12} {'est cost':>9}  why",
    ]
    for r in plan["by_scenario_role"]:
        cost = "-" if r["est_cost_usd"] is None else f"${r['est_cost_usd']:.4f}"
        why = ", ".join(f"{k} {v}" for k, v in r["reasons"].items()) or "-"
        lines.append(
            f"{r['scenario']:<17} {r['role']:<7} {r['cached']:>7} {r['to_call']:>8} "
            f"{r['est_tokens_in']:>11} {r['est_tokens_out']:>12} {cost:>9}  {why}"
        )
    return "\n".join(lines)
