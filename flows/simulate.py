"""Simulation: seeds through their scenario programs, many dialogues in flight at once.

The LM calls block on I/O (or on the embedded model's lock), so a thread pool keeps
``run.concurrency`` dialogues in flight. A dialogue that fails (an endpoint down, an answer
that never parses) becomes a Reject with its reason; the others go on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import dspy

from flows.config import MasterConfig, Scenario
from flows.dialogue_cache import DialogueStore, dialogue_key, replayed_calls
from flows.formats import to_messages, to_sharegpt
from flows.jobs import Job
from flows.records import Dialogue, Reject
from modules.analogy import Analogy
from modules.callcache import CallRecord, dialogue_slot, ledger
from modules.debate import Debate
from modules.error_correction import ErrorCorrection


@dataclass
class Outcome:
    job: Job
    dialogue: Dialogue | None
    reject: Reject | None
    calls: list[CallRecord] = field(default_factory=list)


def build_programs(lms: Mapping[str, dspy.LM]) -> dict[Scenario, dspy.Module]:
    return {
        "error_correction": ErrorCorrection(lms),
        "debate": Debate(lms),
        "analogy": Analogy(lms),
    }


def program_version(program: dspy.Module) -> str:
    """Hash of what the program says to the models: instructions, fields and demos."""
    state = {
        name: {
            "instructions": p.signature.instructions,
            "fields": list(p.signature.fields),
            "demos": [dict(d) for d in p.demos],
        }
        for name, p in program.named_predictors()
    }
    canon = json.dumps(state, sort_keys=True, default=str)
    return hashlib.sha256(canon.encode()).hexdigest()[:12]


def run_program(program: dspy.Module, job: Job) -> list[dict[str, Any]]:
    seed = job.seed
    if job.scenario == "debate":
        return program(question=seed.question, reference=seed.reference, rounds=job.rounds).turns
    if job.scenario == "analogy":
        if job.similar is None:
            raise LookupError("no similar question of the same domain in the retrieval pool")
        return program(
            question=seed.question,
            reference=seed.reference,
            similar_question=job.similar.question,
            similar_reference=job.similar.reference,
        ).turns
    return program(question=seed.question, reference=seed.reference).turns


def _error_reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def simulate_one(
    job: Job,
    programs: Mapping[Scenario, dspy.Module],
    cfg: MasterConfig,
    versions: Mapping[Scenario, str],
    dialogues: DialogueStore | None = None,
    key: str | None = None,
) -> Outcome:
    """Simulate one dialogue that is not in the dialogue cache, and store it there under key."""
    seed = job.seed
    with ledger() as book, dialogue_slot(f"{seed.id}:{job.scenario}"):
        try:
            turns = run_program(programs[job.scenario], job)
        except Exception as exc:  # noqa: BLE001 - one dialogue's failure is recorded, not fatal
            reject = Reject(
                stage="simulate",
                reason=_error_reason(exc),
                source=seed.source,
                location=seed.meta.get("location"),
                seed_id=seed.id,
            )
            return Outcome(job, None, reject, list(book.records))
    calls = list(book.records)
    if dialogues is not None and key is not None:
        dialogues.put(key, turns, calls, versions[job.scenario])
    return finished(job, turns, calls, cfg, versions)


def finished(
    job: Job,
    turns: list[dict[str, Any]],
    calls: list[CallRecord],
    cfg: MasterConfig,
    versions: Mapping[Scenario, str],
) -> Outcome:
    """The Dialogue row of a finished dialogue, generated now or read from the cache."""
    seed = job.seed
    conversation = to_sharegpt(turns, cfg.scenarios.debate_mapping)
    roles_used = sorted({t["role"] for t in turns if t["role"]})
    flags = sorted({f"{t['speaker']}:{f}" for t in turns for f in t["flags"]})
    dialogue = Dialogue(
        seed_id=seed.id,
        source=seed.source,
        domain=seed.domain,
        scenario=job.scenario,
        turns=[{k: v for k, v in t.items() if k != "flags"} for t in turns],
        conversations=conversation,
        messages=to_messages(conversation),
        provenance={
            "program_version": versions[job.scenario],
            "config_hash": cfg.fingerprint(),
            "lms": {
                role: cfg.lms.for_role(role).fingerprint()  # type: ignore[arg-type]
                for role in roles_used
            },
            "debate_rounds": job.rounds if job.scenario == "debate" else None,
            "similar_seed_id": job.similar.id if job.similar else None,
        },
        quality={"turn_flags": flags},
    )
    return Outcome(job, dialogue, None, calls)


def simulate(
    jobs: Iterable[Job],
    programs: Mapping[Scenario, dspy.Module],
    cfg: MasterConfig,
    on_done: Callable[[Outcome], None] | None = None,
    dialogues: DialogueStore | None = None,
) -> list[Outcome]:
    """Run every job with up to run.concurrency dialogues in flight; results in job order.

    Dialogues already in the dialogue cache are answered here, without a thread: a fully
    cached rerun costs one cache read per seed."""
    versions = {name: program_version(p) for name, p in programs.items()}
    job_list = list(jobs)
    with ThreadPoolExecutor(max_workers=cfg.run.concurrency, thread_name_prefix="dialogue") as pool:
        pending: list[Future[Outcome] | Outcome] = []
        for job in job_list:
            key = dialogue_key(job, versions[job.scenario], cfg.lms) if dialogues else None
            hit = dialogues.get(key) if dialogues is not None and key is not None else None
            if hit is not None:
                turns, calls = hit["turns"], replayed_calls(hit)
                pending.append(finished(job, turns, calls, cfg, versions))
            else:
                pending.append(
                    pool.submit(simulate_one, job, programs, cfg, versions, dialogues, key)
                )
        outcomes = []
        for item in pending:
            outcome = item.result() if isinstance(item, Future) else item
            if on_done is not None:
                on_done(outcome)
            outcomes.append(outcome)
    return outcomes
