"""Verification: every check on every dialogue, the LLM judge included, and the filter policy.

One code path for both uses: `master run` verifies the dialogues it just simulated, and
`master verify --in FILE` verifies any ShareGPT dataset (ours, or the paper's BOOST-QA) after
mapping its rows back to speakers. Judge calls go through the same content-addressed cache as
the agents, so re-verifying an unchanged dataset costs nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from flows.core.config import MasterConfig, QualityConfig
from flows.core.records import Dialogue, Reject
from flows.quality.checks import Turns, Verdict, check_dialogue, failed_hard, judge_check, verdict
from flows.simulation.dialogue_cache import DialogueStore, Verdicts
from flows.simulation.simulate import Outcome
from modules.lm.budget import BUDGET_SPENT
from modules.lm.call_cache import CallRecord, dialogue_slot, ledger
from modules.scenarios.judge import Judge
from modules.scenarios.registry import program_version


@dataclass
class Item:
    """One dialogue to verify, with what its checks compare it against."""

    key: str
    turns: Turns
    scenario: str | None
    domain: str
    question: str
    reference: str
    similar_reference: str = ""


@dataclass
class Verified:
    checks: dict[str, Verdict]
    failed: list[str]
    judge_score: int | None = None
    calls: list[CallRecord] = field(default_factory=list)
    unfinished: str | None = None  # why a check could not run (the budget): retried next run
    judge_failed: bool = False  # the judge call failed: the verdict is retried next run

    @property
    def settled(self) -> bool:
        """Whether these verdicts may be stored: nothing in them is waiting for a retry."""
        return self.unfinished is None and not self.judge_failed

    @property
    def accepted(self) -> bool:
        return not self.failed

    def quality(self) -> dict[str, Any]:
        """What is stored on the dataset row (DESIGN.md section 3: each check's verdict)."""
        return {
            "accepted": self.accepted,
            "failed": self.failed,
            "judge_score": self.judge_score,
            "checks": self.checks,
            **({"unfinished": self.unfinished} if self.unfinished else {}),
        }

    def reason(self) -> str:
        return "; ".join(f"{name}: {self.checks[name]['reason']}" for name in self.failed)


def _judge_one(judge: Judge, item: Item) -> tuple[dict[str, Any] | None, str | None, list]:
    with ledger() as book, dialogue_slot(f"{item.key}:{item.scenario}:judge"):
        try:
            pred = judge(**_judge_inputs(item))
        except Exception as exc:  # noqa: BLE001 - a judge failure fails the check, not the run
            return None, _judge_error(exc), book.records
        return _judge_result(pred), None, list(book.records)


async def _ajudge_one(judge: Judge, item: Item) -> tuple[dict[str, Any] | None, str | None, list]:
    """_judge_one on the event loop (the same request, cache key and slot)."""
    with ledger() as book, dialogue_slot(f"{item.key}:{item.scenario}:judge"):
        try:
            pred = await judge.acall(**_judge_inputs(item))
        except Exception as exc:  # noqa: BLE001 - a judge failure fails the check, not the run
            return None, _judge_error(exc), book.records
        return _judge_result(pred), None, list(book.records)


def _judge_inputs(item: Item) -> dict[str, Any]:
    return {
        "question": item.question,
        "reference": item.reference,
        "turns": item.turns,
        "scenario": item.scenario,
        "similar_reference": item.similar_reference,
    }


def _judge_error(exc: Exception) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:200]


def _judge_result(pred: Any) -> dict[str, Any]:
    return {"verdict": pred.verdict, "score": pred.score, "reason": pred.reason}


def _checks(item: Item, q: QualityConfig) -> dict[str, Verdict]:
    return check_dialogue(
        item.turns,
        scenario=item.scenario,
        domain=item.domain,
        question=item.question,
        reference=item.reference,
        q=q,
        similar_reference=item.similar_reference,
    )


def _verified(
    item: Item,
    q: QualityConfig,
    checks: dict[str, Verdict],
    judged: tuple[dict[str, Any] | None, str | None, list] | None,
) -> Verified:
    """The verdicts of one item, given its checks and the judge's answer (None: no judge)."""
    calls: list[CallRecord] = []
    score = None
    unfinished = None
    error = None
    if judged is not None:
        result, error, calls = judged
        if error is not None and BUDGET_SPENT in error:
            unfinished, error = error, None
        checks["judge"] = judge_check(result, q.judge_min_score, error, q.unjudged)
        score = result["score"] if result else None
        if item.domain == "general" and checks["judge"]["ok"] is not None:
            checks["fidelity"] = verdict(
                checks["judge"]["ok"], "judge: " + checks["judge"]["reason"]
            )
    else:
        checks["judge"] = judge_check(None, q.judge_min_score)
    failed = failed_hard(checks, q.hard_checks())
    return Verified(checks, failed, score, calls, unfinished, judge_failed=error is not None)


def verify_items(
    items: Sequence[Item],
    q: QualityConfig,
    judge: Judge | None = None,
    concurrency: int = 16,
    on_done: Callable[[int], None] | None = None,
) -> list[Verified]:
    """Checks for every item; judge calls run concurrently, results in item order."""

    def one(item: Item) -> Verified:
        checks = _checks(item, q)
        return _verified(item, q, checks, _judge_one(judge, item) if judge is not None else None)

    if judge is None or len(items) <= 1:
        results = [one(item) for item in items]
    else:
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="judge") as pool:
            results = list(pool.map(one, items))
    if on_done is not None:
        on_done(len(results))
    return results


def _item(outcome: Outcome) -> Item:
    job, dialogue = outcome.job, outcome.dialogue
    return Item(
        key=job.seed.id,
        turns=[t.model_dump() for t in dialogue.turns],  # type: ignore[union-attr]
        scenario=job.scenario,
        domain=job.seed.domain,
        question=job.seed.question,
        reference=job.seed.reference,
        similar_reference=job.similar.reference if job.similar else "",
    )


def _apply(outcome: Outcome, result: Verified, verdicts: Verdicts | None) -> None:
    quality = result.quality()
    outcome.dialogue.quality.update(quality)  # type: ignore[union-attr]
    outcome.calls.extend(result.calls)
    outcome.verified = True
    outcome.settled = result.settled
    if verdicts is not None and outcome.key is not None and result.settled:
        version = outcome.dialogue.provenance["program_version"]  # type: ignore[union-attr]
        verdicts.put(outcome.key, quality, result.calls, version)


def _recall(outcome: Outcome, verdicts: Verdicts | None) -> bool:
    """The stored verdicts of a dialogue verified before under the same checks and judge."""
    if verdicts is None or outcome.key is None or outcome.dialogue is None:
        return False
    hit = verdicts.get(outcome.key)
    if hit is None:
        return False
    quality, calls = hit
    outcome.dialogue.quality.update(quality)
    outcome.calls.extend(calls)
    outcome.verified = True
    return True


def verify_outcomes(
    outcomes: Sequence[Outcome],
    cfg: MasterConfig,
    judge: Judge | None,
    verdicts: Verdicts | None = None,
) -> None:
    """Verify the finished dialogues of a shard in place: verdicts on each row, judge calls
    added to the dialogue's call records (so accounting and the cache see them). Dialogues
    already verified on the event loop (`averify_outcome`), or verified by an earlier run
    (`verdicts`), are not verified again."""
    done = [
        o
        for o in outcomes
        if o.dialogue is not None and not o.verified and not _recall(o, verdicts)
    ]
    results = verify_items([_item(o) for o in done], cfg.quality, judge, cfg.run.concurrency)
    for outcome, result in zip(done, results, strict=True):
        _apply(outcome, result, verdicts)


async def averify_outcome(
    outcome: Outcome,
    cfg: MasterConfig,
    judge: Judge | None,
    verdicts: Verdicts | None = None,
) -> None:
    """verify_outcomes for one dialogue, in its own task on the simulation's event loop: the
    judge call overlaps the other dialogues' turns instead of waiting for all of them. Same
    checks, same judge request (and cache key and slot), same verdicts."""
    if outcome.dialogue is None or outcome.verified or _recall(outcome, verdicts):
        return
    item = _item(outcome)
    checks = _checks(item, cfg.quality)
    judged = await _ajudge_one(judge, item) if judge is not None else None
    _apply(outcome, _verified(item, cfg.quality, checks, judged), verdicts)


def verdict_book(
    cfg: MasterConfig, store: DialogueStore | None, judge: Judge | None
) -> Verdicts | None:
    """Where this run's verdicts are kept: beside the dialogues, salted by what decides them."""
    if store is None:
        return None
    judged = None
    if judge is not None:
        settings = cfg.lms.for_role("judge").fingerprint()
        settings.pop("api_base", None)
        judged = {"lm": settings, "program": program_version(judge)}
    return Verdicts(store, Verdicts.salt_for(cfg.quality.model_dump(mode="json"), judged))


def quality_reject(dialogue: Dialogue) -> Reject:
    """The rejects.parquet row of a dialogue the filter dropped: every failed hard check."""
    failed = dialogue.quality.get("failed", [])
    checks = dialogue.quality.get("checks", {})
    return Reject(
        stage="quality",
        reason="; ".join(f"{name}: {checks[name]['reason']}" for name in failed),
        source=dialogue.source,
        seed_id=dialogue.seed_id,
        detail=json.dumps({"scenario": dialogue.scenario, "checks": checks}, sort_keys=True),
        checks=",".join(failed),
    )
