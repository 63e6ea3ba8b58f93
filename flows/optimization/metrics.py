"""Optimization metrics per scenario, built from the quality checks a run applies.

One score in [0, 1]: the mean of answer fidelity (when it applies), the structure checks (all
pass or not), each scenario-intent check that applies, and the judge's score / 5 when the judge
is on. The failed checks' reasons are the textual feedback GEPA reflects on. Using the same
checks as the filter means an optimizer is rewarded for exactly what the dataset keeps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dspy

from flows.core.config import INTENT_CHECKS, STRUCTURE_CHECKS, QualityConfig
from flows.quality.checks import Verdict, check_dialogue, judge_check
from modules.scenarios.judge import Judge


def score_checks(checks: dict[str, Verdict], judge_score: int | None = None) -> float:
    parts: list[float] = []
    if checks["fidelity"]["ok"] is not None:
        parts.append(1.0 if checks["fidelity"]["ok"] else 0.0)
    parts.append(0.0 if any(checks[c]["ok"] is False for c in STRUCTURE_CHECKS) else 1.0)
    parts += [1.0 if checks[c]["ok"] else 0.0 for c in INTENT_CHECKS if checks[c]["ok"] is not None]
    if judge_score is not None:
        parts.append(max(0, min(5, judge_score)) / 5)
    return sum(parts) / len(parts)


def feedback(checks: dict[str, Verdict]) -> str:
    failed = [f"{name}: {v['reason']}" for name, v in checks.items() if v["ok"] is False]
    return "; ".join(failed) if failed else "every check passed"


def example_checks(
    example: dspy.Example, turns: list[dict[str, Any]], q: QualityConfig, judge: Judge | None
) -> tuple[dict[str, Verdict], int | None]:
    """Every check of one generated dialogue against its example's references."""
    checks = check_dialogue(
        turns,
        scenario=example.scenario,
        domain=example.domain,
        question=example.question,
        reference=example.reference,
        q=q,
        similar_reference=example.get("similar_reference", "") or "",
    )
    score = None
    if judge is not None:
        try:
            pred = judge(
                question=example.question,
                reference=example.reference,
                turns=turns,
                scenario=example.scenario,
                similar_reference=example.get("similar_reference", "") or "",
            )
            result = {"verdict": pred.verdict, "score": pred.score, "reason": pred.reason}
            checks["judge"] = judge_check(result, q.judge_min_score, unjudged=q.unjudged)
            score = int(pred.score) if pred.score is not None else None
        except Exception as exc:  # noqa: BLE001 - a judge failure scores as a failed check
            checks["judge"] = judge_check(None, q.judge_min_score, error=type(exc).__name__)
    return checks, score


def make_metric(
    q: QualityConfig, judge: Judge | None = None, with_feedback: bool = False
) -> Callable[..., Any]:
    """A DSPy metric: (example, prediction, trace) -> score, or score and feedback for GEPA."""

    def metric(
        gold: dspy.Example,
        pred: dspy.Prediction,
        trace: Any = None,
        pred_name: str | None = None,
        pred_trace: Any = None,
    ) -> Any:
        checks, judge_score = example_checks(gold, pred.turns, q, judge)
        score = score_checks(checks, judge_score)
        if with_feedback:
            return dspy.Prediction(score=score, feedback=feedback(checks))
        return score

    return metric
